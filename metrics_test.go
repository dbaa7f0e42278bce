package brood_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/brood-go/brood"
	"github.com/brood-go/brood/internal/helperproc"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// metricsMain is an HTTP cluster with an admin listener whose workers count
// their requests with a promauto counter (no other metrics code).
// GET /block blocks this worker's message handlers until GET /unblock.
// GET /gate?pid=P makes pid P's gathers wait (see gatedCollector).
func metricsMain() {
	requests := promauto.NewCounter(prometheus.CounterOpts{Name: "app_requests_total", Help: "Requests served."})
	inflight := promauto.NewGauge(prometheus.GaugeOpts{Name: "app_pool_size", Help: "A pool, summed over the cluster."})
	gate := &gatedCollector{desc: prometheus.NewDesc("app_collects", "Gathers this process began.", nil, nil), pass: make(chan struct{}, 16)}
	prometheus.MustRegister(gate)
	brood.Main(brood.Config{
		Name:    "metrics-test",
		Workers: 2,
		Listen:  []string{"127.0.0.1:0"},
		Admin:   "127.0.0.1:0",
		Logger:  helperproc.Logger(),
		Metrics: brood.Metrics{Gauges: map[string]brood.GaugeMerge{"app_pool_size": brood.GaugeSum}},
		Worker: func(ctx context.Context, p *brood.Process) error {
			inflight.Set(10)
			var unblock chan struct{}
			var mu sync.Mutex
			blocking := make(chan struct{}, 1)
			p.Messenger().On("block", func(brood.Message) {
				mu.Lock()
				ch := unblock
				mu.Unlock()
				blocking <- struct{}{}
				<-ch
			})
			mux := http.NewServeMux()
			mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
				requests.Inc()
				fmt.Fprintf(w, "worker %d pid %d\n", p.ID(), os.Getpid())
			})
			mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
				helperproc.Event("slow-start %d", os.Getpid())
				time.Sleep(2 * time.Second) // the slow request's work
				fmt.Fprintf(w, "slow done by pid %d\n", os.Getpid())
			})
			mux.HandleFunc("/block", func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				unblock = make(chan struct{})
				mu.Unlock()
				p.Messenger().SendTo(p.PID(), "block", nil)
				select { // answer once the handlers are stuck
				case <-blocking:
				case <-time.After(10 * time.Second):
					http.Error(w, "the block handler did not run", 500)
					return
				}
				fmt.Fprintf(w, "blocked pid %d\n", os.Getpid())
			})
			mux.HandleFunc("/gate", func(w http.ResponseWriter, r *http.Request) {
				if !gate.control(r.URL.Query().Get("pid"), r.URL.Query().Get("do")) {
					http.Error(w, "not this pid", http.StatusConflict)
					return
				}
				fmt.Fprintf(w, "gate %s pid %d\n", r.URL.Query().Get("do"), os.Getpid())
			})
			mux.HandleFunc("/unblock", func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				close(unblock)
				mu.Unlock()
			})
			return brood.ServeHTTP(ctx, p, &http.Server{Handler: mux})
		},
	})
}

// gatedCollector reports how many gathers of this process it has been part
// of (app_collects, a gauge: kept per slot). Once gated, each gather waits in
// it for one pass; open lets every gather through again.
type gatedCollector struct {
	desc     *prometheus.Desc
	collects atomic.Int64
	pass     chan struct{}
	mu       sync.Mutex
	gated    bool
}

func (g *gatedCollector) Describe(ch chan<- *prometheus.Desc) { ch <- g.desc }

func (g *gatedCollector) Collect(ch chan<- prometheus.Metric) {
	n := g.collects.Add(1)
	g.mu.Lock()
	gated := g.gated
	g.mu.Unlock()
	if gated {
		helperproc.Event("gather-waits %d", os.Getpid())
		<-g.pass
	}
	ch <- prometheus.MustNewConstMetric(g.desc, prometheus.GaugeValue, float64(n))
}

// control does what a GET /gate?pid=P&do=D asks, if P is this process:
// "close" (gather waits), "pass" (one waiting gather goes on), "open".
func (g *gatedCollector) control(pid, do string) bool {
	if pid != strconv.Itoa(os.Getpid()) {
		return false
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	switch do {
	case "close":
		g.gated = true
	case "pass":
		g.pass <- struct{}{}
	case "open":
		g.gated = false
		for range cap(g.pass) - len(g.pass) {
			g.pass <- struct{}{}
		}
	}
	return true
}

func startMetrics(t *testing.T) (c *helperproc.Cluster, addr, admin string) {
	t.Helper()
	c = helperproc.Start(t, "metrics", nil)
	addr = c.WaitReady(startTimeout)
	admin = c.WaitFor(5*time.Second, "the admin listener", helperproc.MasterMsg("admin listener")).Str("addr")
	return c, addr, trimTCP(admin)
}

func trimTCP(a string) string {
	if len(a) > 6 && a[:6] == "tcp://" {
		return a[6:]
	}
	return a
}

// scrape gets /metrics and parses it; it fails the test unless the scrape
// answered 200 with text exposition that parses.
func scrape(t *testing.T, admin string) (map[string]*dto.MetricFamily, []byte) {
	t.Helper()
	resp, err := http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape: %d %v\n%s", resp.StatusCode, err, b)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("scrape: parse: %v\n%s", err, b)
	}
	return fams, b
}

// value sums the family's samples whose labels include all of want.
func value(fams map[string]*dto.MetricFamily, name string, want map[string]string) (float64, bool) {
	f, ok := fams[name]
	if !ok {
		return 0, false
	}
	sum, found := 0.0, false
	for _, m := range f.Metric {
		labels := map[string]string{}
		for _, l := range m.Label {
			labels[l.GetName()] = l.GetValue()
		}
		match := true
		for k, v := range want {
			if labels[k] != v {
				match = false
			}
		}
		if !match {
			continue
		}
		found = true
		switch {
		case m.Counter != nil:
			sum += m.Counter.GetValue()
		case m.Gauge != nil:
			sum += m.Gauge.GetValue()
		case m.Untyped != nil:
			sum += m.Untyped.GetValue()
		}
	}
	return sum, found
}

func TestMetricsCountEveryRequestOnce(t *testing.T) {
	c, addr, admin := startMetrics(t)
	const n = 200
	pids := map[string]bool{}
	for range n {
		pids[get(t, newConnClient(), "http://"+addr+"/")] = true
	}
	fams, text := scrape(t, admin)
	if got, _ := value(fams, "app_requests_total", nil); got != n {
		t.Fatalf("app_requests_total = %v over %d workers, want %d", got, len(pids), n)
	}
	if got, _ := value(fams, "app_pool_size", nil); got != 20 {
		t.Errorf("app_pool_size (GaugeSum) = %v, want 20 (10 per worker)", got)
	}
	for _, name := range []string{"brood_processes", "brood_process_resident_memory_bytes", "brood_process_cpu_seconds_total",
		"brood_messages_relayed_total", "brood_messages_held", "brood_messages_refused_total", "go_goroutines"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if ready, _ := value(fams, "brood_processes", map[string]string{"role": "worker", "state": "ready"}); ready != 2 {
		t.Errorf("brood_processes{role=worker,state=ready} = %v, want 2", ready)
	}
	promtoolCheck(t, text)
	stopCluster(t, c)
}

// promtoolCheck runs `promtool check metrics` on an exposition, if promtool is
// installed (Debian's prometheus package; .ci/run installs it).
func promtoolCheck(t *testing.T, text []byte) {
	t.Helper()
	path, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("promtool is not installed; .ci/run installs it")
		}
		t.Log("promtool not installed: exposition not linted")
		return
	}
	cmd := exec.Command(path, "check", "metrics")
	cmd.Stdin = bytes.NewReader(text)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

// Over 120 scrapes under load, with a worker SIGKILLed every 20, no counter of
// the cluster ever decreases, and the kills are counted by reason.
func TestMetricsNeverDecreaseAcrossKills(t *testing.T) {
	c, addr, admin := startMetrics(t)
	ctx, stopLoad := context.WithCancel(t.Context())
	var served atomic.Int64
	var load sync.WaitGroup
	for range 4 {
		load.Go(func() {
			client := newConnClient()
			for ctx.Err() == nil {
				if resp, err := client.Get("http://" + addr + "/"); err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					served.Add(1)
				}
			}
		})
	}
	last := map[string]float64{}
	kills, victim := 0, 0
	for i := range 120 {
		if i%20 == 10 {
			if kills > 0 { // the last victim's slot is back before the next kill
				c.WaitFor(10*time.Second, "the restart", func(l helperproc.Line) bool {
					return helperproc.MasterMsg("restarted")(l) && l.Int("old_pid") == victim
				})
			}
			victim = c.ChildPIDs("worker")[kills%2]
			syscall.Kill(victim, syscall.SIGKILL)
			kills++
		}
		fams, _ := scrape(t, admin)
		for name, f := range fams {
			if f.GetType() != dto.MetricType_COUNTER {
				continue
			}
			for _, m := range f.Metric {
				key := name + labelKey(m)
				v := m.Counter.GetValue()
				if prev, ok := last[key]; ok && v < prev {
					t.Fatalf("scrape %d: %s went down from %v to %v", i, key, prev, v)
				}
				last[key] = v
			}
		}
	}
	stopLoad()
	load.Wait()
	fams, _ := scrape(t, admin)
	if got, _ := value(fams, "brood_restarts_total", map[string]string{"reason": "signal"}); got != float64(kills) {
		t.Errorf("brood_restarts_total{reason=signal} = %v, want %d", got, kills)
	}
	if got, _ := value(fams, "app_requests_total", nil); got <= 0 || got > float64(served.Load()) {
		t.Errorf("app_requests_total = %v after %d served (some lost with the killed workers, never more)", got, served.Load())
	}
	stopCluster(t, c)
}

func labelKey(m *dto.Metric) string {
	var b bytes.Buffer
	for _, l := range m.Label {
		fmt.Fprintf(&b, ",%s=%s", l.GetName(), l.GetValue())
	}
	return "{" + b.String() + "}"
}

// A worker that does not answer (stopped: SIGSTOP) does not fail the
// scrape: it is served from its last copy and the miss is counted. A worker
// stuck in a message handler still answers: the gather does not wait behind
// the handlers.
func TestStuckChildDoesNotFailTheScrape(t *testing.T) {
	c, addr, admin := startMetrics(t)
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1}}
	for range 10 {
		get(t, client, "http://"+addr+"/")
	}
	scrape(t, admin) // a copy of every worker

	get(t, client, "http://"+addr+"/block")
	fams, _ := scrape(t, admin)
	if got, _ := value(fams, "brood_scrape_errors_total", map[string]string{"role": "worker"}); got != 0 {
		t.Errorf("a worker stuck in a handler missed the gather: brood_scrape_errors_total{role=worker} = %v", got)
	}
	get(t, client, "http://"+addr+"/unblock")

	victim := c.ChildPIDs("worker")[0]
	syscall.Kill(victim, syscall.SIGSTOP)
	defer syscall.Kill(victim, syscall.SIGCONT)
	waitStopped(t, victim) // kill returns before the signal has stopped it
	start := time.Now()
	fams, _ = scrape(t, admin)
	if took := time.Since(start); took > 5*time.Second {
		t.Errorf("the scrape took %v with a stopped worker", took)
	}
	if got, _ := value(fams, "app_requests_total", nil); got != 10 {
		t.Errorf("app_requests_total = %v, want 10 (the stopped worker served from its last copy)", got)
	}
	if got, _ := value(fams, "brood_scrape_errors_total", map[string]string{"role": "worker"}); got != 1 {
		t.Errorf("brood_scrape_errors_total{role=worker} = %v, want the stopped worker counted once", got)
	}
	syscall.Kill(victim, syscall.SIGCONT)
	stopCluster(t, c)
}

// A child whose gather answers after the scrape's deadline: the scrapes
// meanwhile are served from its last copy and count the miss, it is not asked
// again while its answer is due (no gathers pile up in it), and the late
// answer is its copy from then on.
func TestLateGatherServesTheNextScrape(t *testing.T) {
	c, addr, admin := startMetrics(t)
	victim := c.ChildPIDs("worker")[0]
	slot := ""
	for deadline := time.Now().Add(10 * time.Second); slot == "" && time.Now().Before(deadline); {
		var id, pid int
		if _, err := fmt.Sscanf(get(t, newConnClient(), "http://"+addr+"/"), "worker %d pid %d", &id, &pid); err == nil && pid == victim {
			slot = strconv.Itoa(id)
		}
	}
	if slot == "" {
		t.Fatalf("pid %d served no request", victim)
	}
	var fams map[string]*dto.MetricFamily
	collects := func(fams map[string]*dto.MetricFamily) float64 {
		v, _ := value(fams, "app_collects", map[string]string{"slot": slot})
		return v
	}
	misses := func(fams map[string]*dto.MetricFamily) float64 {
		v, _ := value(fams, "brood_scrape_errors_total", map[string]string{"role": "worker", "slot": slot})
		return v
	}
	gate := func(do string) {
		t.Helper()
		url := fmt.Sprintf("http://%s/gate?pid=%d&do=%s", addr, victim, do)
		deadline := time.Now().Add(10 * time.Second)
		for time.Now().Before(deadline) { // until the victim is the worker that answers
			resp, err := newConnClient().Get(url)
			if err != nil {
				t.Fatalf("GET %s: %v", url, err)
			}
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		t.Fatalf("GET %s never reached pid %d", url, victim)
	}
	// Scrape until one has gathered the victim in time (no miss counted
	// since the scrape before): its copy is fresh and no gather is due.
	prev := -1.0
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); {
		fams, _ = scrape(t, admin)
		if misses(fams) == prev && collects(fams) > 0 {
			break
		}
		prev = misses(fams)
	}
	before := collects(fams)
	if before == 0 || misses(fams) != prev {
		t.Fatalf("no scrape gathered pid %d in time within 20s", victim)
	}
	gate("close") // until "open" (before the stop, which gathers one last time)

	fams, _ = scrape(t, admin) // the victim's gather waits: served from its copy
	c.WaitEvents(5*time.Second, "the victim's gather", 1, hasPrefix(fmt.Sprintf("gather-waits %d", victim)))
	if got := collects(fams); got != before {
		t.Errorf("app_collects{slot=%s} = %v while its gather waits, want its last copy's %v", slot, got, before)
	}
	missed := misses(fams)
	if missed < 1 {
		t.Errorf("brood_scrape_errors_total{slot=%s} = %v, want the late gather counted", slot, missed)
	}
	fams, _ = scrape(t, admin) // its answer is due: not asked again
	if got := misses(fams); got != missed+1 {
		t.Errorf("brood_scrape_errors_total{slot=%s} = %v on the next scrape, want %v", slot, got, missed+1)
	}

	gate("pass") // the late answer comes; every gather after waits again
	// Scrape until the late answer is the copy served and a scrape since has
	// asked again (that gather waits now).
	waits := hasPrefix(fmt.Sprintf("gather-waits %d", victim))
	for deadline := time.Now().Add(10 * time.Second); (collects(fams) != before+1 || c.EventCount(waits) < 2) && time.Now().Before(deadline); {
		fams, _ = scrape(t, admin)
	}
	if got := collects(fams); got != before+1 {
		t.Fatalf("app_collects{slot=%s} = %v, want the late answer's %v", slot, got, before+1)
	}
	if n := c.EventCount(waits); n != 2 {
		t.Fatalf("%d gathers waited in pid %d, want 2 (the late one, and the one asked after its answer)", n, victim)
	}
	gate("open")
	for deadline := time.Now().Add(10 * time.Second); collects(fams) < before+2 && time.Now().Before(deadline); {
		fams, _ = scrape(t, admin)
	}
	if got := collects(fams); got < before+2 {
		t.Errorf("app_collects{slot=%s} = %v after the gate opened, want at least %v", slot, got, before+2)
	}
	if n := c.EventCount(waits); n != 2 {
		t.Errorf("%d gathers waited in pid %d, want 2: one for each scrape that asked it, none asked while an answer was due", n, victim)
	}
	stopCluster(t, c)
}

// waitStopped waits until pid is in state T (stopped), as /proc says.
func waitStopped(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
			if i := bytes.LastIndexByte(b, ')'); i > 0 && i+2 < len(b) && b[i+2] == 'T' {
				return
			}
		}
		runtime.Gosched()
	}
	t.Fatalf("pid %d did not stop within 10s of SIGSTOP", pid)
}

// /livez and /readyz; /readyz turns 503 at the first instant of a stop, while
// the workers still drain.
func TestHealthEndpoints(t *testing.T) {
	c, addr, admin := startMetrics(t)
	status := func(path string) int {
		t.Helper()
		resp, err := http.Get("http://" + admin + path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if l, r := status("/livez"), status("/readyz"); l != 200 || r != 200 {
		t.Fatalf("running: /livez %d /readyz %d, want 200 and 200", l, r)
	}
	slow := make(chan error, 1)
	go func() {
		resp, err := newConnClient().Get("http://" + addr + "/slow")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		slow <- err
	}()
	c.WaitEvents(5*time.Second, "the slow request", 1, hasPrefix("slow-start "))
	c.Signal(syscall.SIGTERM)
	c.WaitFor(5*time.Second, "the stop", helperproc.MasterMsg("stopping"))
	if r := status("/readyz"); r != http.StatusServiceUnavailable {
		t.Errorf("stopping: /readyz %d, want 503", r)
	}
	if err := <-slow; err != nil {
		t.Errorf("the request in flight during the stop: %v", err)
	}
	if code := c.Wait(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d", code)
	}
}

// A reload replaces every process gracefully: each sends its metrics one last
// time as it stops, so a counter loses nothing even with no scrape between the
// requests and the reload.
func TestMetricsSurviveReload(t *testing.T) {
	c, addr, admin := startMetrics(t)
	const n = 100
	for range n {
		get(t, newConnClient(), "http://"+addr+"/")
	}
	before := c.ChildPIDs("worker")
	c.Signal(syscall.SIGHUP)
	c.WaitFor(30*time.Second, "the reload", helperproc.MasterMsg("reload done"))
	for _, pid := range before {
		waitMaster(t, c, "exited", pid)
	}
	fams, _ := scrape(t, admin)
	if got, _ := value(fams, "app_requests_total", nil); got != n {
		t.Fatalf("app_requests_total = %v after a reload, want %d", got, n)
	}
	if got, _ := value(fams, "brood_reloads_total", map[string]string{"result": "ok"}); got != 1 {
		t.Errorf("brood_reloads_total{result=ok} = %v, want 1", got)
	}
	if got, _ := value(fams, "brood_restarts_total", map[string]string{"reason": "reload"}); got != 2 {
		t.Errorf("brood_restarts_total{reason=reload} = %v, want 2 (the workers; this cluster has no agent)", got)
	}
	stopCluster(t, c)
}
