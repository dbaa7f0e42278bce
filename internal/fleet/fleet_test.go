package fleet

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/natstest"
	"github.com/nats-io/nats.go"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// FuzzDecodeEnvelope decodes arbitrary headers: it never panics, every error
// wraps ErrMalformed, and what it accepts encodes back to an equal envelope.
func FuzzDecodeEnvelope(f *testing.F) {
	f.Add("m1", "42", "worker", "ping", "1", "100", "")           // a well-formed request envelope
	f.Add("", "1", "agent", "a", "", "", "")                      // no node id
	f.Add("m1", "-1", "agent", "a", "", "", "")                   // a negative pid
	f.Add("m1", "4294967296", "agent", "a", "", "", "")           // a pid beyond 32 bits
	f.Add("m1", "1", "boss", "a", "", "", "")                     // an unknown role
	f.Add("m1", "1", "master", "a", "", "", "refused")            // a refusal
	f.Add("m\n1", "1", "agent", "a", "2", "x", "")                // control characters, a bad raw flag and timeout
	f.Add(strings.Repeat("n", 300), "1", "agent", "", "", "", "") // a node id too long, no action
	f.Fuzz(func(t *testing.T, node, pid, role, action, raw, timeout, errText string) {
		h := nats.Header{}
		for k, v := range map[string]string{HdrNode: node, HdrPID: pid, HdrRole: role, HdrAction: action, HdrRaw: raw, HdrTimeout: timeout, HdrError: errText} {
			if v != "" {
				h.Set(k, v)
			}
		}
		e, err := DecodeEnvelope(h)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		again, err := DecodeEnvelope(e.Header())
		if err != nil || again != e {
			t.Fatalf("round trip: %+v -> %+v, %v", e, again, err)
		}
	})
}

func TestRedactURLs(t *testing.T) {
	got := RedactURLs("nats://u:secret@a:4222, nats://tok@b:4222,nats://c:4222")
	if strings.Contains(got, "secret") || strings.Contains(got, "tok@") || !strings.Contains(got, "nats://c:4222") {
		t.Errorf("RedactURLs: %s", got)
	}
}

func TestValidName(t *testing.T) {
	for name, ok := range map[string]bool{"app": true, "my.app": true, "a-b_c": true, "a..b": false, "a.": false, "": false, "a*": false} {
		if err := ValidName(name); (err == nil) != ok {
			t.Errorf("ValidName(%q) = %v", name, err)
		}
	}
}

// recorder is a member's cluster, as Deliver and Serve see it.
type recorder struct {
	mu  sync.Mutex
	got []string
	ch  chan struct{}
}

func (r *recorder) deliver(k Kind, env Envelope, data []byte) error {
	r.mu.Lock()
	r.got = append(r.got, k.String()+":"+env.Node+":"+env.Action+":"+string(data))
	r.mu.Unlock()
	select {
	case r.ch <- struct{}{}:
	default:
	}
	return nil
}

func (r *recorder) wait(t *testing.T, n int) []string {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		got := append([]string(nil), r.got...)
		r.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-r.ch:
		case <-deadline.C:
			t.Fatalf("got %v, want %d deliveries", got, n)
		}
	}
}

func connect(t *testing.T, url, node string, r *recorder) *Conn {
	t.Helper()
	c, err := Connect(Options{
		URLs: url, Name: "unit", Node: node, Deliver: r.deliver, AnnounceInterval: 50 * time.Millisecond,
		Serve: func(ctx context.Context, env Envelope, data []byte) (Envelope, []byte, error) {
			return Envelope{Node: node, PID: 7, Role: "worker", Action: env.Action}, append([]byte("re:"), data...), nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// Two members on one server: fan-out reaches both (the sender's own
// included, once), requests need a member with ready workers, and with none
// fail at once with ErrNoResponders.
func TestConnTwoMembers(t *testing.T) {
	srv := natstest.Start(t)
	ra, rb := &recorder{ch: make(chan struct{}, 1)}, &recorder{ch: make(chan struct{}, 1)}
	a, b := connect(t, srv.URL(), "a", ra), connect(t, srv.URL(), "b", rb)

	if err := a.Publish(Outgoing{Kind: KindAll, Env: Envelope{Node: "a", PID: 1, Role: "agent", Action: "hi"}, Data: []byte(`"x"`)}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []*recorder{ra, rb} {
		if got := r.wait(t, 1); len(got) != 1 || got[0] != `bcast:a:hi:"x"` {
			t.Errorf("delivered %v", got)
		}
	}

	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	start := time.Now()
	_, _, err := a.Request(ctx, Envelope{Node: "a", PID: 1, Role: "agent", Action: "q"}, nil)
	if !errors.Is(err, ErrNoResponders) || time.Since(start) > time.Second {
		t.Fatalf("request with no ready worker: %v after %v", err, time.Since(start))
	}

	b.SetReadyWorkers(2)
	deadline := time.Now().Add(10 * time.Second)
	for !b.InQueueGroups() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond) // the owner goroutine subscribes; no event to wait on
	}
	// The queue subscription reaches the server with b's next flush.
	if err := b.NATS().Flush(); err != nil {
		t.Fatal(err)
	}
	env, data, err := a.Request(ctx, Envelope{Node: "a", PID: 1, Role: "agent", Action: "q"}, []byte("1"))
	if err != nil || env.Node != "b" || string(data) != "re:1" {
		t.Fatalf("request: %+v %q %v", env, data, err)
	}

	for len(a.Members()) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // announcements every 50ms
	}
	if ms := a.Members(); len(ms) != 2 || ms[0].Node != "a" || ms[1].Node != "b" {
		t.Errorf("members: %+v", ms)
	}
	if n := a.Counters(); n.SentOK < 2 || n.RequestsOut != 2 {
		t.Errorf("counters: %+v", n)
	}
}

// The outgoing queue is bounded: a full queue is an error, never a wait.
func TestPublishBounded(t *testing.T) {
	srv := natstest.Start(t)
	c, err := Connect(Options{URLs: srv.URL(), Name: "unit", Node: "q", MaxPending: 1, MaxPendingBytes: 10,
		Deliver: func(Kind, Envelope, []byte) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	err = c.Publish(Outgoing{Kind: KindApp, Env: Envelope{Node: "q", PID: 1, Role: "worker", Action: "a"}, Data: make([]byte, 11)})
	if !errors.Is(err, ErrQueueFull) {
		t.Errorf("over the byte bound: %v", err)
	}
}

// A message over the server's max_payload is refused after the fact: the
// sender is told through Options.Refused and it is counted.
func TestPublishOverMaxPayloadIsRefused(t *testing.T) {
	srv := natstest.Start(t)
	refused := make(chan error, 1)
	c, err := Connect(Options{URLs: srv.URL(), Name: "unit", Node: "p",
		Deliver: func(Kind, Envelope, []byte) error { return nil },
		Refused: func(out Outgoing, err error) {
			if out.Tag != "mine" {
				t.Errorf("refused %+v", out)
			}
			refused <- err
		}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	big := make([]byte, int(c.NATS().MaxPayload())+1)
	if err := c.Publish(Outgoing{Kind: KindAll, Env: Envelope{Node: "p", PID: 1, Role: "agent", Action: "big"}, Data: big, Tag: "mine"}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-refused:
		if !errors.Is(err, nats.ErrMaxPayload) {
			t.Errorf("refused with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("not refused")
	}
	if n := c.Counters(); n.SendErrors != 1 {
		t.Errorf("counters: %+v", n)
	}
}

// Restarting the server: the connection reports down then up, counts both,
// and traffic resumes.
func TestConnReconnects(t *testing.T) {
	srv := natstest.Start(t)
	states := make(chan bool, 8)
	r := &recorder{ch: make(chan struct{}, 1)}
	c, err := Connect(Options{URLs: srv.URL(), Name: "unit", Node: "r", Deliver: r.deliver,
		OnConnState: func(up bool) { states <- up }})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// Connected (the first connection's handler), then down and up again.
	next := func() bool {
		select {
		case up := <-states:
			return up
		case <-time.After(20 * time.Second):
			t.Fatal("no connection state reported")
			return false
		}
	}
	if !next() {
		t.Fatal("first state is not connected")
	}
	srv.Restart()
	for _, want := range []bool{false, true} {
		if got := next(); got != want {
			t.Fatalf("connection state %v, want %v", got, want)
		}
	}
	if err := c.Publish(Outgoing{Kind: KindAll, Env: Envelope{Node: "r", PID: 1, Role: "agent", Action: "back"}}); err != nil {
		t.Fatal(err)
	}
	r.wait(t, 1)
	if n := c.Counters(); n.Reconnects != 1 || n.Disconnects != 1 {
		t.Errorf("counters: %+v", n)
	}
}

// Options.Flush follows every burst: after the last delivery of a burst
// there is a Flush of its kind, on the delivering goroutine, so a receiver
// that queues in Deliver never leaves a message unwritten.
func TestFlushAfterBurst(t *testing.T) {
	srv := natstest.Start(t)
	const n = 5000
	var mu sync.Mutex
	delivered, flushedAt, flushes := 0, 0, 0
	done := make(chan struct{})
	c, err := Connect(Options{
		URLs: srv.URL(), Name: "unit", Node: "f",
		Deliver: func(k Kind, _ Envelope, _ []byte) error {
			mu.Lock()
			delivered++
			mu.Unlock()
			return nil
		},
		Flush: func(k Kind) {
			mu.Lock()
			defer mu.Unlock()
			if k != KindApp {
				t.Errorf("Flush(%v)", k)
			}
			flushes++
			flushedAt = delivered
			if delivered == n {
				select {
				case <-done:
				default:
					close(done)
				}
			}
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for range n {
		if err := c.Publish(Outgoing{Kind: KindApp, Env: Envelope{Node: "f", PID: 1, Role: "agent", Action: "m"}, Data: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("%d delivered, last Flush after %d", delivered, flushedAt)
	}
	mu.Lock()
	defer mu.Unlock()
	if flushes == 0 || flushes > n {
		t.Errorf("%d flushes for %d deliveries", flushes, n)
	}
	t.Logf("%d deliveries, %d flushes", n, flushes)
}
