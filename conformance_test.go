package brood_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/brood-go/brood"
	"github.com/brood-go/brood/internal/helperproc"
)

// The messenger conformance suite: who receives each kind of send, run over real
// processes (agent + 3 workers) and over the in-memory transport. Each process
// registers handlers for "m" (counted) and "fence"; the sender runs the case's
// send when brood:ready arrives and then broadcasts "fence". Messages from one
// sender arrive in order, so once a process has seen the fence, its count of "m"
// from that sender is final.

type msgCase struct {
	name    string
	sender  string // "agent" or "workerN"
	send    func(p *brood.Process) error
	want    map[string]int // receiver -> count of "m"
	wantErr error          // errors.Is target for send's result, if any
}

func workerPID(p *brood.Process, id int) int {
	for _, mb := range p.Messenger().Members() {
		if mb.Role == brood.Worker && mb.ID == id {
			return mb.PID
		}
	}
	return 0
}

var all4 = []string{"agent", "worker1", "worker2", "worker3"}

func counts(agent, w1, w2, w3 int) map[string]int {
	return map[string]int{"agent": agent, "worker1": w1, "worker2": w2, "worker3": w3}
}

var msgCases = []msgCase{
	{name: "broadcast-from-worker", sender: "worker1", want: counts(1, 1, 1, 1),
		send: func(p *brood.Process) error { return p.Messenger().Broadcast("m", 1) }},
	{name: "broadcast-from-agent", sender: "agent", want: counts(1, 1, 1, 1),
		send: func(p *brood.Process) error { return p.Messenger().Broadcast("m", 1) }},
	{name: "sendtoapp-from-worker", sender: "worker2", want: counts(0, 1, 1, 1),
		send: func(p *brood.Process) error { return p.Messenger().SendToApp("m", 1) }},
	{name: "sendtoapp-from-agent", sender: "agent", want: counts(0, 1, 1, 1),
		send: func(p *brood.Process) error { return p.Messenger().SendToApp("m", 1) }},
	{name: "sendtoagent-from-worker", sender: "worker3", want: counts(1, 0, 0, 0),
		send: func(p *brood.Process) error { return p.Messenger().SendToAgent("m", 1) }},
	{name: "sendtoagent-from-agent", sender: "agent", want: counts(1, 0, 0, 0),
		send: func(p *brood.Process) error { return p.Messenger().SendToAgent("m", 1) }},
	{name: "sendrandom-from-agent", sender: "agent", want: counts(0, 10, 10, 10),
		send: func(p *brood.Process) error {
			for range 30 {
				if err := p.Messenger().SendRandom("m", 1); err != nil {
					return err
				}
			}
			return nil
		}},
	{name: "sendrandom-from-worker", sender: "worker1", want: counts(1, 0, 0, 0),
		send: func(p *brood.Process) error { return p.Messenger().SendRandom("m", 1) }},
	{name: "sendto-other-worker", sender: "worker1", want: counts(0, 0, 1, 0),
		send: func(p *brood.Process) error { return p.Messenger().SendTo(workerPID(p, 2), "m", 1) }},
	{name: "sendto-self", sender: "worker3", want: counts(0, 0, 0, 1),
		send: func(p *brood.Process) error { return p.Messenger().SendTo(p.PID(), "m", 1) }},
	{name: "sendto-agent", sender: "worker2", want: counts(1, 0, 0, 0),
		send: func(p *brood.Process) error { return p.Messenger().SendTo(p.Messenger().AgentPID(), "m", 1) }},
	{name: "sendto-unknown-pid", sender: "worker1", want: counts(0, 0, 0, 0), wantErr: brood.ErrNoProcess,
		send: func(p *brood.Process) error { return p.Messenger().SendTo(999999999, "m", 1) }},
	{name: "reserved-action", sender: "agent", want: counts(0, 0, 0, 0), wantErr: brood.ErrReservedAction,
		send: func(p *brood.Process) error { return p.Messenger().SendToApp("brood:m", 1) }},
	{name: "frame-too-large", sender: "worker2", want: counts(0, 0, 0, 0), wantErr: brood.ErrTooLarge,
		send: func(p *brood.Process) error { return p.Messenger().SendToAgent("m", make([]byte, 17<<20)) }},
	{name: "request-reply", sender: "agent", want: counts(0, 0, 1, 0),
		send: func(p *brood.Process) error {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			reply, err := p.Messenger().Request(ctx, workerPID(p, 2), "m", map[string]int{"x": 20})
			if err != nil {
				return err
			}
			var got map[string]int
			if err := reply.Decode(&got); err != nil {
				return err
			}
			if got["x"] != 21 || reply.From != workerPID(p, 2) {
				return fmt.Errorf("reply %v from %d, want x=21 from worker 2", got, reply.From)
			}
			return nil
		}},
	{name: "request-timeout", sender: "worker1", want: counts(1, 0, 0, 0), wantErr: context.DeadlineExceeded,
		send: func(p *brood.Process) error {
			ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
			defer cancel()
			_, err := p.Messenger().Request(ctx, p.Messenger().AgentPID(), "m", "no-reply")
			return err
		}},
	{name: "once-fires-once", sender: "agent", want: counts(0, 3, 3, 3),
		send: func(p *brood.Process) error {
			for range 3 {
				if err := p.Messenger().SendToApp("m", "once"); err != nil {
					return err
				}
			}
			return nil
		}},
	{name: "off-stops-delivery", sender: "agent", want: counts(0, 2, 2, 2),
		send: func(p *brood.Process) error {
			for range 2 {
				if err := p.Messenger().SendToApp("m", "off"); err != nil {
					return err
				}
			}
			return nil
		}},
}

// conformanceConfig builds the cluster for one case. rec records an event.
// With direct, the sender first waits until it has a direct channel to every
// process of the other role, so that the case exercises the channels, and
// records its count of frames sent over them after the fence.
func conformanceConfig(c msgCase, direct bool, rec func(string)) brood.Config {
	setup := func(p *brood.Process) {
		me := "agent"
		if p.Role() == brood.Worker {
			me = fmt.Sprintf("worker%d", p.ID())
		}
		m := p.Messenger()
		m.On("m", func(msg brood.Message) {
			rec("recv " + me + " m")
			if msg.IsRequest() {
				var v map[string]int
				if msg.Decode(&v) == nil {
					v["x"]++
					msg.Reply(v)
				}
			}
		})
		// once-fires-once: a Once handler sees only the first of three.
		m.Once("m", func(msg brood.Message) {
			if string(msg.Data) == `"once"` {
				rec("once " + me)
			}
		})
		// off-stops-delivery: a handler that is switched off after its first call.
		var off func()
		off = m.On("m", func(msg brood.Message) {
			if string(msg.Data) == `"off"` {
				rec("off " + me)
				off()
			}
		})
		m.On("fence", func(brood.Message) { rec("fence " + me) })
		m.On(brood.ActionReady, func(brood.Message) {
			if me != c.sender {
				return
			}
			if direct {
				others := 3 // the agent sends to the workers
				if p.Role() == brood.Worker {
					others = 1
				}
				if err := waitDirectPeers(p, others, 10*time.Second); err != nil {
					rec("direct-wait-error " + err.Error())
				}
			}
			err := c.send(p)
			rec(fmt.Sprintf("sent %s err=%v", me, err))
			if err := m.Broadcast("fence", nil); err != nil {
				rec("fence-error " + err.Error())
			}
			rec(fmt.Sprintf("direct %s %d", me, m.Stats().Direct))
		})
	}
	return brood.Config{
		Name:        "conformance",
		Workers:     3,
		Logger:      helperproc.Logger(),
		StopTimeout: 5 * time.Second,
		Agent: func(ctx context.Context, p *brood.Process) error {
			setup(p)
			p.Ready()
			<-ctx.Done()
			return nil
		},
		Worker: func(ctx context.Context, p *brood.Process) error {
			setup(p)
			p.Ready()
			<-ctx.Done()
			return nil
		},
	}
}

func conformanceMain() {
	name := os.Getenv("CONFORMANCE_CASE")
	for _, c := range msgCases {
		if c.name == name {
			brood.Main(conformanceConfig(c, os.Getenv("CONFORMANCE_DIRECT") == "1", func(ev string) { helperproc.Event("%s", ev) }))
		}
	}
	fmt.Fprintf(os.Stderr, "no case %q\n", name)
	os.Exit(2)
}

// checkCase checks the recorded events of one case.
func checkCase(t *testing.T, c msgCase, events []string) {
	t.Helper()
	got := map[string]int{}
	var sentErr string
	for _, ev := range events {
		f := strings.Fields(ev)
		switch {
		case strings.HasPrefix(ev, "direct-wait-error "), strings.HasPrefix(ev, "fence-error "):
			t.Error(ev)
		case len(f) == 3 && f[0] == "recv":
			got[f[1]]++
		case strings.HasPrefix(ev, "sent "):
			sentErr = strings.TrimPrefix(ev, "sent "+c.sender+" err=")
		}
	}
	for _, who := range all4 {
		if got[who] != c.want[who] {
			t.Errorf("%s received %d, want %d (all: %v)", who, got[who], c.want[who], got)
		}
	}
	switch {
	case c.wantErr == nil && sentErr != "<nil>":
		t.Errorf("send returned %s, want nil", sentErr)
	case c.wantErr != nil && !strings.Contains(sentErr, c.wantErr.Error()):
		t.Errorf("send returned %s, want an error containing %q", sentErr, c.wantErr)
	}
	if c.name == "once-fires-once" && countEvents(events, "once ") != 3 {
		t.Errorf("Once handlers fired %d times over 3 workers, want 3", countEvents(events, "once "))
	}
	if c.name == "off-stops-delivery" && countEvents(events, "off ") != 3 {
		t.Errorf("switched-off handlers fired %d times over 3 workers, want 3", countEvents(events, "off "))
	}
}

func countEvents(events []string, prefix string) int {
	n := 0
	for _, ev := range events {
		if strings.HasPrefix(ev, prefix) {
			n++
		}
	}
	return n
}

// memRecorder collects events from the goroutine "processes" of an in-memory run.
type memRecorder struct {
	mu      sync.Mutex
	events  []string
	changed chan struct{}
}

func newMemRecorder() *memRecorder { return &memRecorder{changed: make(chan struct{})} }

func (r *memRecorder) rec(ev string) {
	r.mu.Lock()
	r.events = append(r.events, ev)
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

// wait waits until n events satisfy match, or fails after timeout.
func (r *memRecorder) wait(t *testing.T, timeout time.Duration, n int, match func(string) bool) []string {
	t.Helper()
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		evs, changed := slices.Clone(r.events), r.changed
		r.mu.Unlock()
		k := 0
		for _, ev := range evs {
			if match(ev) {
				k++
			}
		}
		if k >= n {
			return evs
		}
		select {
		case <-changed:
		case <-deadline.C:
			t.Fatalf("waited %v for %d matching events; have %v", timeout, n, evs)
		}
	}
}

// runMem runs cfg in memory until stop is called; stop waits for a clean exit.
func runMem(t *testing.T, cfg brood.Config) (stop func()) {
	t.Helper()
	cfg.RunDir = helperproc.ShortTempDir(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- brood.RunInMemory(ctx, cfg) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("in-memory cluster: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("in-memory cluster did not stop within 10s")
		}
	}
	t.Cleanup(stop)
	return stop
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(discard{}, &slog.HandlerOptions{Level: slog.LevelError}))
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// TestConformance runs every messenger case over three transports: a cluster
// of real processes whose messages all go through the master (relay-only),
// one whose agent and workers talk over direct channels (direct), and the
// in-memory one. In the direct runs the sender has a channel to every process
// of the other role before it sends, and must have sent over them (at least
// the fence); in relay-only runs it must not have.
func TestConformance(t *testing.T) {
	for _, c := range msgCases {
		for _, direct := range []bool{false, true} {
			name, args, env := "/relay-only", []string{"--listen", "", "--relay-only"}, "CONFORMANCE_DIRECT=0"
			if direct {
				name, args, env = "/direct", []string{"--listen", ""}, "CONFORMANCE_DIRECT=1"
			}
			t.Run(c.name+name, func(t *testing.T) {
				t.Parallel()
				cl := helperproc.Start(t, "conformance", args, helperproc.Options{Env: []string{"CONFORMANCE_CASE=" + c.name, env}})
				cl.WaitEvents(startTimeout, "the fence in every process", 4, func(ev string) bool { return strings.HasPrefix(ev, "fence ") })
				l := cl.WaitFor(10*time.Second, "the sender's direct count", helperproc.IsEvent(hasPrefix("direct "+c.sender+" ")))
				checkCase(t, c, cl.ReadEvents())
				n := atoi(strings.Fields(l.Str("event"))[2])
				switch {
				case direct && n == 0:
					t.Errorf("%s sent nothing over direct channels (Stats.Direct 0), with a channel to every peer", c.sender)
				case !direct && n != 0:
					t.Errorf("%s sent %d frames over direct channels with --relay-only", c.sender, n)
				}
				cl.Signal(syscall.SIGTERM)
				if code := cl.Wait(10 * time.Second); code != 0 {
					t.Fatalf("exit code %d", code)
				}
			})
		}
		t.Run(c.name+"/in-memory", func(t *testing.T) {
			r := newMemRecorder()
			cfg := conformanceConfig(c, false, r.rec)
			cfg.Logger = quietLogger()
			stop := runMem(t, cfg)
			evs := r.wait(t, 10*time.Second, 4, func(ev string) bool { return strings.HasPrefix(ev, "fence ") })
			checkCase(t, c, evs)
			stop()
		})
	}
}
