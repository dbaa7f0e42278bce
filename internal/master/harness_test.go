package master

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/wire"
)

// The tests of this package run masters in single-process mode over scripted
// children: goroutines that speak the child side of the IPC protocol (hello,
// pong, ready, replace-me, replies) and do what their script says, when the
// test opens a gate. Nothing waits on time: every step waits on an event of
// the master's stream, with a deadline.

// script says how one process of a slot behaves; n counts the slot's
// processes from 1.
type script struct {
	ready     <-chan struct{} // Ready once this is closed (nil: at once)
	fail      string          // return this error instead of becoming ready
	replaceMe string          // on brood:ready, ask to be replaced (a guarded panic)
	stopGate  <-chan struct{} // on stop, exit only once this is closed
	reply     func(f ipc.Frame) (handled bool)
	forge     <-chan uint64 // send the master a reply with each of these request ids
	hello     string        // the KindHello payload ("": ipc.Version; "-": send none)
}

type harness struct {
	t      *testing.T
	m      *Master
	runErr chan error
	cancel context.CancelFunc

	mu     sync.Mutex
	starts map[string]int // "worker 1" -> processes started
	play   func(role ipc.Role, id, n int) script
	sub    <-chan wire.Event
	logs   *logSink
	expect string // the refusal operations should meet in the state under test
	state  string // the state under test
	seen   []wire.Event
}

// startHarness runs a master with an agent and workers workers, each process
// following play, and returns once Run is running (not once it is ready).
func startHarness(t *testing.T, workers int, play func(role ipc.Role, id, n int) script) *harness {
	t.Helper()
	h := &harness{t: t, runErr: make(chan error, 1), starts: map[string]int{}, play: play}
	h.logs = &logSink{t: t, changed: make(chan struct{}, 1)}
	dir, err := os.MkdirTemp("", "bm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	cfg := Config{
		Name: "harness", Workers: workers, Agent: true, Single: true, RunInProcess: h.child,
		ReadyTimeout: 20 * time.Second, StopTimeout: 20 * time.Second,
		HeartbeatInterval: time.Hour, HeartbeatTimeout: time.Hour,
		Restart:  Backoff{MinDelay: time.Millisecond, MaxDelay: time.Millisecond, ResetAfter: time.Hour},
		MaxFrame: ipc.DefaultMaxFrame, RunDir: dir + "/run",
		Logger: slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	h.m, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, h.sub, _ = h.m.events.subscribe(0)
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.runErr <- h.m.Run(ctx, nil) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-h.runErr:
		case <-time.After(30 * time.Second):
			t.Error("the master did not stop")
		}
	})
	return h
}

// logSink keeps the master's log lines (warnings and errors), shows them in
// the test's output, and lets the test wait for one.
type logSink struct {
	t       *testing.T
	mu      sync.Mutex
	text    strings.Builder
	changed chan struct{}
}

func (l *logSink) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(p)))
	l.mu.Lock()
	l.text.Write(p)
	l.mu.Unlock()
	select {
	case l.changed <- struct{}{}:
	default:
	}
	return len(p), nil
}

// waitLogged waits until a log line contains s.
func (h *harness) waitLogged(t *testing.T, s string) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		h.logs.mu.Lock()
		found := strings.Contains(h.logs.text.String(), s)
		h.logs.mu.Unlock()
		if found {
			return
		}
		select {
		case <-h.logs.changed:
		case <-deadline.C:
			t.Fatalf("no log line with %q within 10s", s)
		}
	}
}

// wait returns the next event (from the start of the run) that matches, or
// fails the test after 20 seconds.
func (h *harness) wait(what string, match func(wire.Event) bool) wire.Event {
	h.t.Helper()
	deadline := time.NewTimer(20 * time.Second)
	defer deadline.Stop()
	for {
		select {
		case ev, ok := <-h.sub:
			if !ok {
				h.t.Fatalf("event stream ended while waiting for %s", what)
			}
			h.seen = append(h.seen, ev)
			if match(ev) {
				return ev
			}
		case <-deadline.C:
			h.t.Fatalf("no %s within 20s; events: %v", what, h.seen)
		}
	}
}

// find is wait, but also looks at the events already seen.
func (h *harness) find(what string, match func(wire.Event) bool) wire.Event {
	h.t.Helper()
	for _, ev := range h.seen {
		if match(ev) {
			return ev
		}
	}
	return h.wait(what, match)
}

// nth matches the n-th event (from 1) that match matches, counting from the
// start of the run; use it with find.
func nth(n int, match func(wire.Event) bool) func(wire.Event) bool {
	k := 0
	return func(ev wire.Event) bool {
		if match(ev) {
			k++
		}
		return k == n
	}
}

func is(t wire.EventType) func(wire.Event) bool {
	return func(ev wire.Event) bool { return ev.Type == t }
}

// ofSlot matches events of type t about the slot role/id.
func ofSlot(t wire.EventType, role string, id int) func(wire.Event) bool {
	return func(ev wire.Event) bool { return ev.Type == t && ev.Role == role && ev.ID == id }
}

// child is Config.RunInProcess: one scripted process.
func (h *harness) child(ctx context.Context, ip InProcess) error {
	h.mu.Lock()
	key := wire.RoleName(ip.Role) + " " + strconv.Itoa(ip.ID)
	h.starts[key]++
	sc := h.play(ip.Role, ip.ID, h.starts[key])
	h.mu.Unlock()

	w := ipc.NewWriter(ip.Conn, 0, 0)
	defer ip.Conn.Close()
	defer w.Close(time.Now().Add(time.Second))
	header := func(k ipc.Kind) *ipc.Header { return &ipc.Header{Kind: k, Role: ip.Role, From: ip.PID} }
	switch sc.hello {
	case "":
		w.Append(header(ipc.KindHello), "", []byte(strconv.Itoa(ipc.Version)))
	case "-":
	default:
		w.Append(header(ipc.KindHello), "", []byte(sc.hello))
	}
	welcomed := make(chan struct{})
	go func() {
		var once sync.Once
		rd := ipc.NewReader(ip.Conn, 0)
		for {
			f, err := rd.Next()
			if err != nil {
				return
			}
			switch f.Kind {
			case ipc.KindPing:
				h := header(ipc.KindPong)
				h.ID = f.ID
				w.Append(h, "", nil)
			case ipc.KindMembers:
				once.Do(func() {
					close(welcomed)
					if sc.forge != nil {
						master := f.From
						go func() {
							for id := range sc.forge {
								rh := &ipc.Header{Kind: ipc.KindReply, Dest: ipc.DestPID, Role: ip.Role, From: master, To: master, Ref: id}
								w.Append(rh, wire.ActScheduleList, []byte(`[{"name":"forged"}]`))
							}
						}()
					}
				})
			case ipc.KindMessage:
				if string(f.Action) == wire.ActionReady && sc.replaceMe != "" {
					w.Append(header(ipc.KindReplaceMe), "", []byte(sc.replaceMe))
				}
				if f.Flags&ipc.FlagRequest == 0 || (sc.reply != nil && sc.reply(f)) {
					continue
				}
				rh := &ipc.Header{Kind: ipc.KindReply, Dest: ipc.DestPID, Role: ip.Role, From: ip.PID, To: f.From, Ref: f.ID}
				body, _ := json.Marshal(wire.ErrorBody{})
				if string(f.Action) == wire.ActScheduleList {
					body = []byte("[]")
				}
				w.Append(rh, string(f.Action), body)
			}
		}
	}()
	select {
	case <-welcomed:
	case <-ctx.Done():
		return nil
	}
	if sc.ready != nil {
		select {
		case <-sc.ready:
		case <-ctx.Done():
			return nil
		}
	}
	if sc.fail != "" {
		w.Append(header(ipc.KindFatal), "", []byte(sc.fail))
		return fmt.Errorf("%s", sc.fail)
	}
	w.Append(header(ipc.KindReady), "", nil)
	<-ctx.Done()
	if sc.stopGate != nil {
		<-sc.stopGate
	}
	return nil
}
