package admin

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuffer is a bytes.Buffer a logger and a test can share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// serve starts src's handler (heartbeat hb, 0 for the default) on a test server.
func serve(t *testing.T, src Source, opts Options, hb time.Duration) *httptest.Server {
	t.Helper()
	if hb == 0 {
		hb = heartbeat
	}
	srv := httptest.NewServer(newHandler(src, opts, hb))
	t.Cleanup(func() {
		srv.CloseClientConnections()
		srv.Close()
		srv.Client().CloseIdleConnections()
	})
	return srv
}

func get(t *testing.T, srv *httptest.Server, path string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest("GET", srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func sampleStatus() wire.Status {
	start := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	return wire.Status{
		Name: "shop", PID: 4100, State: "running", Listen: []string{"tcp://[::]:8080"}, Workers: 2,
		StartedAt: start, RSSBytes: 20 << 20, CPUPercent: 0.5, RunDir: "/run/shop",
		Processes: []wire.Process{
			{Role: "agent", ID: 0, PID: 4101, State: "ready", StartedAt: start, Uptime: 60},
			{Role: "worker", ID: 0, PID: 4102, State: "ready", StartedAt: start, Uptime: 60},
			{Role: "worker", ID: 1, PID: 4200, State: "ready", Restarts: 1, LastReason: "signal: killed by SIGKILL", LastKind: wire.ReasonSignal, StartedAt: start, Uptime: 3},
		},
		Messages:           wire.Messages{Relayed: 10, Held: 1, Redelivered: 2, Refused: 3, LostReplies: 4},
		DroppedOutputLines: 7,
		Schedules:          json.RawMessage(`[{"name":"cleanup","type":"worker","every":"1m0s","running":0,"last_result":"ok","last_duration_seconds":0.2,"runs":3,"failures":0,"skips":0}]`),
	}
}

func TestStatus(t *testing.T) {
	src := newFakeSource()
	src.SetStatus(sampleStatus())
	srv := serve(t, src, Options{}, 0)

	resp, body := get(t, srv, "/status")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("status %d, content type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	var got wire.Status
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	want := sampleStatus()
	if got.Name != want.Name || got.PID != want.PID || len(got.Processes) != 3 || got.Processes[2] != want.Processes[2] || got.Messages != want.Messages || got.DroppedOutputLines != 7 {
		t.Fatalf("status = %+v", got)
	}
	var sched []wire.ScheduleStatus
	if err := json.Unmarshal(got.Schedules, &sched); err != nil || len(sched) != 1 || sched[0].Name != "cleanup" {
		t.Fatalf("schedules = %s (%v)", got.Schedules, err)
	}
	for _, key := range []string{`"last_restart_reason":"signal: killed by SIGKILL"`, `"last_restart_kind":"signal"`, `"uptime_seconds":3`} {
		if !strings.Contains(body, key) {
			t.Errorf("body lacks %s: %s", key, body)
		}
	}

	// A schedule table that is not JSON costs the schedules, not the status.
	logs := &syncBuffer{}
	src.UpdateStatus(func(s *wire.Status) { s.Schedules = json.RawMessage(`{broken`) })
	srv2 := serve(t, src, Options{Logger: slog.New(slog.NewTextHandler(logs, nil))}, 0)
	resp, body = get(t, srv2, "/status")
	if resp.StatusCode != 200 || strings.Contains(body, "schedules") || !strings.Contains(body, `"name":"shop"`) {
		t.Fatalf("broken schedules: %d %s", resp.StatusCode, body)
	}
	if !strings.Contains(logs.String(), "schedules do not encode") {
		t.Errorf("not logged: %q", logs)
	}
}

func TestHealth(t *testing.T) {
	src := newFakeSource()
	srv := serve(t, src, Options{}, 0)
	check := func(path string, code int, body string) {
		t.Helper()
		resp, got := get(t, srv, path)
		if resp.StatusCode != code || got != body {
			t.Errorf("%s = %d %q, want %d %q", path, resp.StatusCode, got, code, body)
		}
		if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
			t.Errorf("%s content type %q", path, ct)
		}
	}
	check("/livez", 200, "ok\n")
	check("/readyz", 200, "ok\n")

	src.SetHealth(true, "", false, "starting: 2 of 4 workers ready")
	check("/livez", 200, "ok\n")
	check("/readyz", 503, "starting: 2 of 4 workers ready\n")

	src.SetHealth(false, "worker 3 missed 3 heartbeats\n", false, "")
	check("/livez", 503, "worker 3 missed 3 heartbeats\n")
	check("/readyz", 503, "not ready\n")

	// HEAD is answered like GET, other methods are not.
	resp, err := srv.Client().Head(srv.URL + "/livez")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Errorf("HEAD /livez = %d", resp.StatusCode)
	}
	resp, err = srv.Client().Post(srv.URL+"/readyz", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST /readyz = %d", resp.StatusCode)
	}
}

// metricsSource has a registry with a counter and a gauge, and a child that
// fails to gather.
func metricsSource(t *testing.T, broken prometheus.Gatherer) *fakeSource {
	t.Helper()
	reg := prometheus.NewRegistry()
	relayed := prometheus.NewCounter(prometheus.CounterOpts{Name: "brood_messages_relayed_total", Help: "Messages relayed."})
	relayed.Add(42)
	rss := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "brood_process_resident_memory_bytes", Help: "RSS."}, []string{"role", "slot"})
	rss.WithLabelValues("worker", "0").Set(1 << 20)
	rss.WithLabelValues("worker", "1").Set(2 << 20)
	reg.MustRegister(relayed, rss)
	src := newFakeSource()
	src.gatherer = prometheus.Gatherers{reg, broken}
	return src
}

func failingChild() prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		return nil, errors.New("worker 3 missed the scrape deadline")
	})
}

func checkFamilies(t *testing.T, mfs map[string]*dto.MetricFamily) {
	t.Helper()
	c := mfs["brood_messages_relayed_total"]
	if c == nil || c.GetType() != dto.MetricType_COUNTER || c.Metric[0].GetCounter().GetValue() != 42 {
		t.Fatalf("relayed = %v", c)
	}
	g := mfs["brood_process_resident_memory_bytes"]
	if g == nil || len(g.Metric) != 2 || g.Metric[1].GetGauge().GetValue() != 2<<20 {
		t.Fatalf("rss = %v", g)
	}
}

func TestMetricsText(t *testing.T) {
	logs := &syncBuffer{}
	src := metricsSource(t, failingChild())
	srv := serve(t, src, Options{Logger: slog.New(slog.NewTextHandler(logs, nil))}, 0)

	resp, body := get(t, srv, "/metrics")
	if resp.StatusCode != 200 {
		t.Fatalf("a failing child made the scrape %d: %s", resp.StatusCode, body)
	}
	if f := expfmt.ResponseFormat(resp.Header); f.FormatType() != expfmt.TypeTextPlain {
		t.Fatalf("format %q", f)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("exposition does not parse: %v\n%s", err, body)
	}
	checkFamilies(t, mfs)
	if !strings.Contains(logs.String(), "worker 3 missed the scrape deadline") {
		t.Errorf("the gather error was not logged: %q", logs)
	}
}

func TestMetricsProtobuf(t *testing.T) {
	src := metricsSource(t, failingChild())
	srv := serve(t, src, Options{}, 0)
	resp, body := get(t, srv, "/metrics", "Accept", "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3")
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	format := expfmt.ResponseFormat(resp.Header)
	if format.FormatType() != expfmt.TypeProtoDelim {
		t.Fatalf("format %q, want delimited protobuf", format)
	}
	dec := expfmt.NewDecoder(strings.NewReader(body), format)
	mfs := map[string]*dto.MetricFamily{}
	for {
		mf := &dto.MetricFamily{}
		if err := dec.Decode(mf); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		mfs[mf.GetName()] = mf
	}
	checkFamilies(t, mfs)
}

func TestMetricsNeverFail(t *testing.T) {
	panicky := prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) { panic("collector bug") })
	for name, src := range map[string]*fakeSource{
		"failing child": metricsSource(t, failingChild()),
		"panic":         func() *fakeSource { s := newFakeSource(); s.gatherer = panicky; return s }(),
		"all fail":      func() *fakeSource { s := newFakeSource(); s.gatherer = failingChild(); return s }(),
		"nil":           func() *fakeSource { s := newFakeSource(); s.gatherer = nil; return s }(),
	} {
		logs := &syncBuffer{}
		srv := serve(t, src, Options{Logger: slog.New(slog.NewTextHandler(logs, nil))}, 0)
		resp, body := get(t, srv, "/metrics")
		if resp.StatusCode != 200 {
			t.Errorf("%s: status %d: %s", name, resp.StatusCode, body)
		}
		p := expfmt.NewTextParser(model.UTF8Validation)
		mfs, err := p.TextToMetricFamilies(strings.NewReader(body))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if name == "failing child" {
			checkFamilies(t, mfs)
		} else if len(mfs) != 0 {
			t.Errorf("%s: %d families", name, len(mfs))
		}
		if !strings.Contains(logs.String(), "admin: metrics scrape") {
			t.Errorf("%s: not logged: %q", name, logs)
		}
	}
}

type ctxKey struct{}

type ctxGatherer struct{ got chan any }

func (c ctxGatherer) Gather() ([]*dto.MetricFamily, error) { return nil, errors.New("Gather called") }
func (c ctxGatherer) GatherContext(ctx context.Context) ([]*dto.MetricFamily, error) {
	c.got <- ctx.Value(ctxKey{})
	return nil, nil
}

func TestMetricsContext(t *testing.T) {
	src := newFakeSource()
	g := ctxGatherer{got: make(chan any, 1)}
	src.gatherer = g
	ctx := context.WithValue(context.Background(), ctxKey{}, "scrape")
	rec := httptest.NewRecorder()
	Handler(src, Options{}).ServeHTTP(rec, httptest.NewRequestWithContext(ctx, "GET", "/metrics", nil))
	if rec.Code != 200 {
		t.Fatalf("status %d", rec.Code)
	}
	if v := <-g.got; v != "scrape" {
		t.Fatalf("GatherContext got %v, not the request's context", v)
	}
}

// sse reads a Server-Sent Events stream one block (up to a blank line) at a time.
type sse struct {
	t    *testing.T
	r    *bufio.Reader
	body io.Closer
}

type block struct {
	raw                      string
	id, event, data, comment string
	retry                    string
}

func openStream(t *testing.T, ctx context.Context, srv *httptest.Server, path string, hdr ...string) *sse {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, "GET", srv.URL+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("GET %s: %d %q", path, resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control %q", cc)
	}
	return &sse{t: t, r: bufio.NewReader(resp.Body), body: resp.Body}
}

// next returns the next block; io.EOF when the stream ended.
func (s *sse) next() (block, error) {
	var b block
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			if line == "" && b.raw == "" {
				return b, err
			}
			return b, io.ErrUnexpectedEOF
		}
		b.raw += line
		line = strings.TrimSuffix(line, "\n")
		if line == "" {
			return b, nil
		}
		if strings.HasPrefix(line, ":") {
			b.comment = strings.TrimSpace(line[1:])
			continue
		}
		k, v, _ := strings.Cut(line, ": ")
		switch k {
		case "id":
			b.id = v
		case "event":
			b.event = v
		case "data":
			b.data = v
		case "retry":
			b.retry = v
		default:
			s.t.Fatalf("unknown field in %q", line)
		}
	}
}

// event returns the next block that carries an event, skipping the retry hint.
func (s *sse) event() block {
	s.t.Helper()
	for {
		b, err := s.next()
		if err != nil {
			s.t.Fatalf("stream: %v", err)
		}
		if b.event != "" {
			return b
		}
	}
}

func (s *sse) wantEvent(seq string, typ wire.EventType) wire.Event {
	s.t.Helper()
	b := s.event()
	var e wire.Event
	if err := json.Unmarshal([]byte(b.data), &e); err != nil {
		s.t.Fatalf("data %q: %v", b.data, err)
	}
	if b.id != seq || b.event != string(typ) || e.Type != typ || e.Seq == 0 || b.id != jsonNum(e.Seq) {
		s.t.Fatalf("got block %q, want id %s event %s", b.raw, seq, typ)
	}
	wantRaw := "id: " + b.id + "\nevent: " + b.event + "\ndata: " + b.data + "\n\n"
	if b.raw != wantRaw {
		s.t.Fatalf("framing %q, want %q", b.raw, wantRaw)
	}
	return e
}

func (s *sse) wantEnd(reason string) {
	s.t.Helper()
	b := s.event()
	if b.event != "end" || b.id != "" || b.data != `{"reason":"`+reason+`"}` {
		s.t.Fatalf("got %q, want the end (%s)", b.raw, reason)
	}
	if _, err := s.next(); err != io.EOF {
		s.t.Fatalf("after the end: %v, want EOF", err)
	}
}

func jsonNum(n uint64) string { b, _ := json.Marshal(n); return string(b) }

func publishSome(src *fakeSource) {
	src.Publish(wire.Event{Type: wire.EventStarted, Role: "worker", ID: 1, PID: 4102})
	src.Publish(wire.Event{Type: wire.EventReady, Role: "worker", ID: 1, PID: 4102})
	src.Publish(wire.Event{Type: wire.EventExited, Role: "worker", ID: 1, PID: 4102, Reason: wire.ReasonSignal, Detail: "killed by SIGKILL", Result: "crashed", Uptime: 12.5})
}

func TestEventsStream(t *testing.T) {
	src := newFakeSource()
	publishSome(src)
	srv := serve(t, src, Options{}, 0)
	s := openStream(t, t.Context(), srv, "/events")

	first, err := s.next()
	if err != nil || first.retry == "" {
		t.Fatalf("first block %q (%v), want a retry hint", first.raw, err)
	}
	s.wantEvent("1", wire.EventStarted)
	s.wantEvent("2", wire.EventReady)
	e := s.wantEvent("3", wire.EventExited)
	if e.Reason != wire.ReasonSignal || e.Detail != "killed by SIGKILL" || e.Result != "crashed" || e.PID != 4102 {
		t.Fatalf("exited = %+v", e)
	}

	// Live events follow, in order.
	src.Publish(wire.Event{Type: wire.EventRestarted, Role: "worker", ID: 1, PID: 4200, OldPID: 4102, Reason: wire.ReasonSignal})
	src.Publish(wire.Event{Type: wire.EventScheduleRun, Task: "cleanup", Result: "ok", Took: 0.25})
	e = s.wantEvent("4", wire.EventRestarted)
	if e.OldPID != 4102 || e.PID != 4200 {
		t.Fatalf("restarted = %+v", e)
	}
	s.wantEvent("5", wire.EventScheduleRun)

	// The master ends the subscription (or it fell behind): the client is told.
	src.EndSubscriptions()
	s.wantEnd(endClosed)
}

func TestEventsResume(t *testing.T) {
	src := newFakeSource()
	publishSome(src)
	src.Publish(wire.Event{Type: wire.EventRestarted, Role: "worker", ID: 1, PID: 4200, OldPID: 4102})
	srv := serve(t, src, Options{}, 0)

	for _, c := range []struct {
		name  string
		path  string
		hdr   []string
		first string
	}{
		{"Last-Event-ID", "/events", []string{"Last-Event-ID", "2"}, "3"},
		{"since", "/events?since=3", nil, "4"},
		{"Last-Event-ID wins over since", "/events?since=1", []string{"Last-Event-ID", "3"}, "4"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(t.Context())
			defer cancel()
			s := openStream(t, ctx, srv, c.path, c.hdr...)
			b := s.event()
			if b.id != c.first {
				t.Fatalf("first event %q, want id %s", b.raw, c.first)
			}
		})
	}

	// Resuming after the last event waits for the next one.
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	s := openStream(t, ctx, srv, "/events", "Last-Event-ID", "4")
	eventually(t, "the subscription", func() bool { return src.Subscribers() == 1 })
	src.Publish(wire.Event{Type: wire.EventLogsRotated, Detail: "SIGUSR1"})
	s.wantEvent("5", wire.EventLogsRotated)

	for _, bad := range []string{"/events?since=x", "/events?since=-1"} {
		if resp, body := get(t, srv, bad); resp.StatusCode != 400 {
			t.Errorf("%s = %d %q", bad, resp.StatusCode, body)
		}
	}
	if resp, _ := get(t, srv, "/events", "Last-Event-ID", "seven"); resp.StatusCode != 400 {
		t.Errorf("bad Last-Event-ID = %d", resp.StatusCode)
	}
}

// A subscription that hands back an event the client already has (the master
// keeps and sends at the same time) does not send it twice.
type overlapSource struct{ *fakeSource }

func (o overlapSource) Subscribe(seq uint64) ([]wire.Event, <-chan wire.Event, func()) {
	past, ch, cancel := o.fakeSource.Subscribe(seq)
	out := make(chan wire.Event, 8)
	for _, e := range past {
		out <- e
	}
	go func() {
		defer close(out)
		for e := range ch {
			out <- e
		}
	}()
	return past, out, cancel
}

func TestEventsNoDuplicates(t *testing.T) {
	src := newFakeSource()
	publishSome(src)
	srv := serve(t, overlapSource{src}, Options{}, 0)
	s := openStream(t, t.Context(), srv, "/events?since=1")
	s.wantEvent("2", wire.EventReady)
	s.wantEvent("3", wire.EventExited)
	src.Publish(wire.Event{Type: wire.EventStopping, Detail: "SIGTERM"})
	s.wantEvent("4", wire.EventStopping)
	src.EndSubscriptions()
	s.wantEnd(endClosed)
}

func TestEventsHeartbeat(t *testing.T) {
	src := newFakeSource()
	srv := serve(t, src, Options{}, 20*time.Millisecond)
	s := openStream(t, t.Context(), srv, "/events")
	for {
		b, err := s.next()
		if err != nil {
			t.Fatal(err)
		}
		if b.comment != "" {
			if b.raw != ": heartbeat\n\n" || b.event != "" || b.data != "" {
				t.Fatalf("heartbeat %q", b.raw)
			}
			break
		}
	}
	// Still a working stream.
	src.Publish(wire.Event{Type: wire.EventClusterReady})
	s.wantEvent("1", wire.EventClusterReady)
}

func TestEventsMasterStops(t *testing.T) {
	src := newFakeSource()
	publishSome(src)
	srv := serve(t, src, Options{}, 0)
	s := openStream(t, t.Context(), srv, "/events?since=2")
	s.wantEvent("3", wire.EventExited)
	src.Publish(wire.Event{Type: wire.EventStopped})
	src.Stop()
	s.wantEvent("4", wire.EventStopped)
	s.wantEnd(endStopped)
	eventually(t, "the subscription to end", func() bool { return src.Subscribers() == 0 })

	// A stream opened after the stop gets the kept events and the end.
	s = openStream(t, t.Context(), srv, "/events?since=3")
	s.wantEvent("4", wire.EventStopped)
	s.wantEnd(endStopped)
}

func TestEventsClientGoes(t *testing.T) {
	src := newFakeSource()
	srv := serve(t, src, Options{}, 0)
	ctx, cancel := context.WithCancel(t.Context())
	s := openStream(t, ctx, srv, "/events")
	if b, err := s.next(); err != nil || b.retry == "" {
		t.Fatalf("%q %v", b.raw, err)
	}
	eventually(t, "the subscription", func() bool { return src.Subscribers() == 1 })
	cancel()
	eventually(t, "the subscription to end with the client", func() bool { return src.Subscribers() == 0 })
}

func TestEventsJSON(t *testing.T) {
	src := newFakeSource()
	srv := serve(t, src, Options{}, 0)
	resp, body := get(t, srv, "/events?json")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/json" || strings.TrimSpace(body) != "[]" {
		t.Fatalf("no events: %d %q %q", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	publishSome(src)
	for path, n := range map[string]int{"/events?json": 3, "/events?json&since=2": 1, "/events?json=1&since=3": 0} {
		_, body := get(t, srv, path)
		var evs []wire.Event
		if err := json.Unmarshal([]byte(body), &evs); err != nil || len(evs) != n {
			t.Fatalf("%s: %d events (%v): %s", path, len(evs), err, body)
		}
		if n == 3 && (evs[2].Type != wire.EventExited || evs[2].Reason != wire.ReasonSignal || !strings.Contains(body, `"reason":"signal"`)) {
			t.Fatalf("%s: %s", path, body)
		}
	}
	if src.Subscribers() != 0 {
		t.Fatalf("?json left %d subscriptions open", src.Subscribers())
	}
}

func TestDashboardPage(t *testing.T) {
	src := newFakeSource()
	srv := serve(t, src, Options{Name: `shop <"&">`}, 0)
	resp, page := get(t, srv, "/")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/html; charset=utf-8" {
		t.Fatalf("GET / = %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	if !strings.Contains(page, "<title>shop &lt;&#34;&amp;&#34;&gt; · brood</title>") {
		t.Errorf("title not escaped: %s", regexp.MustCompile(`<title>.*</title>`).FindString(page))
	}
	// The inline style and script are exactly what the policy allows.
	csp := resp.Header.Get("Content-Security-Policy")
	for _, tag := range []string{"style", "script"} {
		m := regexp.MustCompile(`(?s)<`+tag+`>(.*?)</`+tag+`>`).FindAllStringSubmatch(page, -1)
		if len(m) != 1 {
			t.Fatalf("%d inline <%s>", len(m), tag)
		}
		sum := sha256.Sum256([]byte(m[0][1]))
		if h := "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"; !strings.Contains(csp, tag+"-src "+h) {
			t.Errorf("CSP %q does not allow the inline %s (%s)", csp, tag, h)
		}
	}
	if !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "connect-src 'self'") {
		t.Errorf("CSP %q", csp)
	}
	// Self-contained: nothing loaded from elsewhere.
	for _, ref := range regexp.MustCompile(`(?:src|href)=["']?([^"' >]+)|url\(([^)]*)\)|@import`).FindAllStringSubmatch(page, -1) {
		u := ref[1] + ref[2]
		if ref[0] == "@import" || !strings.HasPrefix(strings.Trim(u, `"'`), "data:") {
			t.Errorf("external reference %q", ref[0])
		}
	}
	// Data goes in as text only.
	for _, sink := range []string{"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("} {
		if strings.Contains(pageJS, sink) {
			t.Errorf("the script uses %s", sink)
		}
	}

	if resp, _ := get(t, srv, "/nope"); resp.StatusCode != 404 {
		t.Errorf("GET /nope = %d", resp.StatusCode)
	}
	resp, err := srv.Client().Post(srv.URL+"/", "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST / = %d", resp.StatusCode)
	}
}
