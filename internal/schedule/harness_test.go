package schedule_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/schedule"
)

// t0 is where every test's clock starts: a Thursday, midnight UTC.
var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// guard bounds waits for the scheduler's goroutine so that a bug fails the test
// instead of hanging it. It is never used to let time pass.
const guard = 10 * time.Second

// harness runs a Scheduler on a FakeClock with a Dispatch that records ticks.
type harness struct {
	t     *testing.T
	clock *schedule.FakeClock
	s     *schedule.Scheduler
	ticks chan schedule.Tick
	logs  syncBuffer

	mu    sync.Mutex
	reply func(schedule.Tick) (int, error) // what Dispatch returns; nil: 1, nil

	cancel context.CancelFunc
	done   chan error
}

// start builds a Scheduler for specs (opts may leave Clock, Logger and Dispatch
// unset) and runs it until the test ends.
func start(t *testing.T, specs []schedule.Spec, opts schedule.Options) *harness {
	t.Helper()
	h := &harness{t: t, clock: schedule.NewFakeClock(t0), ticks: make(chan schedule.Tick, 100)}
	opts.Clock = h.clock
	opts.Logger = slog.New(slog.NewTextHandler(&h.logs, &slog.HandlerOptions{
		Level: slog.LevelDebug,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.Attr{}
			}
			return a
		},
	}))
	if opts.Dispatch == nil {
		opts.Dispatch = h.dispatch
	}
	s, err := schedule.New(specs, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	h.s = s
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- s.Run(ctx) }()
	t.Cleanup(h.stop)
	h.settle()
	return h
}

func (h *harness) dispatch(tk schedule.Tick) (int, error) {
	h.ticks <- tk
	h.mu.Lock()
	reply := h.reply
	h.mu.Unlock()
	if reply == nil {
		return 1, nil
	}
	return reply(tk)
}

// setReply sets what Dispatch returns from now on.
func (h *harness) setReply(n int, err error) {
	h.mu.Lock()
	h.reply = func(schedule.Tick) (int, error) { return n, err }
	h.mu.Unlock()
}

// stop ends Run and checks it returned nil. It is idempotent.
func (h *harness) stop() {
	h.t.Helper()
	if h.cancel == nil {
		return
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.done:
		if err != nil {
			h.t.Errorf("Run returned %v, want nil", err)
		}
	case <-time.After(guard):
		h.t.Fatalf("Run did not return after its context was cancelled")
	}
}

// settle waits until the loop is idle: it has handled everything due and waits
// on its timer.
func (h *harness) settle() { h.clock.BlockUntil(1) }

// advance moves the clock once the loop is idle.
func (h *harness) advance(d time.Duration) {
	h.settle()
	h.clock.Advance(d)
}

// next returns the next dispatched tick.
func (h *harness) next() schedule.Tick {
	h.t.Helper()
	select {
	case tk := <-h.ticks:
		return tk
	case <-time.After(guard):
		h.t.Fatalf("no tick dispatched")
		return schedule.Tick{}
	}
}

// noTick checks that the loop, once idle, has dispatched nothing more.
func (h *harness) noTick() {
	h.t.Helper()
	h.settle()
	select {
	case tk := <-h.ticks:
		h.t.Fatalf("unexpected tick %+v", tk)
	default:
	}
}

// status returns the named task's Status once the loop is idle.
func (h *harness) status(name string) schedule.Status {
	h.t.Helper()
	h.settle()
	for _, st := range h.s.List() {
		if st.Name == name {
			return st
		}
	}
	h.t.Fatalf("no status for %q", name)
	return schedule.Status{}
}

// ok reports a successful outcome of tk from one process.
func (h *harness) ok(tk schedule.Tick) {
	h.s.Report(schedule.Outcome{Task: tk.Task, Seq: tk.Seq, PID: 100})
}

// logged checks that the logs contain every one of parts on one line.
func (h *harness) logged(parts ...string) {
	h.t.Helper()
	h.settle()
	for line := range strings.Lines(h.logs.String()) {
		found := true
		for _, p := range parts {
			found = found && strings.Contains(line, p)
		}
		if found {
			return
		}
	}
	h.t.Fatalf("no log line with %q; logs:\n%s", parts, h.logs.String())
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
