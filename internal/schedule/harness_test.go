package schedule_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/brood-go/brood/internal/schedule"
)

// t0 is where every test's clock starts: synctest starts the fake clock of
// every bubble at midnight UTC, 1 January 2000 (a Saturday).
var t0 = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)

// guard bounds the wait for Run to return so that a bug fails the test instead
// of hanging it. It is fake time, and never used to let time pass otherwise.
const guard = 10 * time.Second

// harness runs a Scheduler inside a synctest bubble with a Dispatch that
// records ticks. Time passes only when the test sleeps (advance); the
// bubble's fake clock moves on when every goroutine in it is durably blocked,
// and settle (synctest.Wait) waits until the loop is.
type harness struct {
	t     *testing.T
	s     *schedule.Scheduler
	ticks chan schedule.Tick
	logs  syncBuffer

	mu    sync.Mutex
	reply func(schedule.Tick) (int, error) // what Dispatch returns; nil: 1, nil

	cancel context.CancelFunc
	done   chan error
}

// start builds a Scheduler for specs (opts may leave Logger and Dispatch unset)
// and runs it until the test ends. It must be called first thing in a
// synctest.Test bubble, so that the Scheduler, its channels and its goroutine
// all belong to the bubble and the clock reads t0.
func start(t *testing.T, specs []schedule.Spec, opts schedule.Options) *harness {
	t.Helper()
	h := prepare(t, specs, opts)
	h.run()
	return h
}

// prepare is start without running the Scheduler, for a test whose Dispatch
// uses the harness: it assigns prepare's result, then calls run, so that the
// assignment happens before Run's goroutine starts.
func prepare(t *testing.T, specs []schedule.Spec, opts schedule.Options) *harness {
	t.Helper()
	if now := time.Now(); !now.Equal(t0) {
		t.Fatalf("start: the clock reads %v, want %v: not at the start of a synctest bubble", now, t0)
	}
	h := &harness{t: t, ticks: make(chan schedule.Tick, 100)}
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
	return h
}

// run runs the Scheduler until the test ends, and waits until its loop is idle.
func (h *harness) run() {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- h.s.Run(ctx) }()
	h.t.Cleanup(h.stop)
	h.settle()
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

// settle waits until the loop is idle: it has handled everything due and is
// durably blocked (on its timer, or in a Dispatch that sleeps).
func (h *harness) settle() { synctest.Wait() }

// advance lets d pass, then waits until the loop has handled everything that
// became due. Timers due on the way fire at their own time: the loop sees the
// clock read each deadline, not the end of d.
func (h *harness) advance(d time.Duration) {
	h.settle()
	time.Sleep(d)
	h.settle()
}

// next returns the next dispatched tick, once the loop is idle; it lets no
// time pass. Its At is normalized (see norm) so that ticks compare with ==.
func (h *harness) next() schedule.Tick {
	h.t.Helper()
	h.settle()
	select {
	case tk := <-h.ticks:
		tk.At = norm(tk.At)
		return tk
	default:
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

// list returns List once the loop is idle, with its times normalized (see
// norm) so that statuses compare with ==.
func (h *harness) list() []schedule.Status {
	h.settle()
	out := h.s.List()
	for i := range out {
		out[i].LastRun = norm(out[i].LastRun)
		out[i].Next = norm(out[i].Next)
	}
	return out
}

// status returns the named task's Status once the loop is idle, normalized.
func (h *harness) status(name string) schedule.Status {
	h.t.Helper()
	for _, st := range h.list() {
		if st.Name == name {
			return st
		}
	}
	h.t.Fatalf("no status for %q", name)
	return schedule.Status{}
}

// norm returns t without its monotonic clock reading and in UTC. The
// scheduler's times come from time.Now, which has both; two times of the same
// instant are then equal with == (as t0 and the times derived from it are),
// and a zero time stays zero.
func norm(t time.Time) time.Time { return t.Round(0).UTC() }

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
