package master

import (
	"errors"
	"strings"
	"testing"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/wire"
)

// The state × operation table of ops.go, case by case: every operation
// arriving in every state has a defined outcome (done, waited for, or refused
// with a message), and the master never crashes.

type opCase struct {
	name string
	// run performs the operation and checks its outcome; the cluster is in
	// the state under test when it is called.
	run func(t *testing.T, h *harness)
}

func ops() []opCase {
	return []opCase{
		{"reload", func(t *testing.T, h *harness) {
			h.outcome(t, "reload", func() error { _, err := h.m.Reload(); return err })
		}},
		{"scale", func(t *testing.T, h *harness) {
			h.outcome(t, "scale", func() error { _, err := h.m.Scale(h.workersNow() + 1); return err })
		}},
		{"SIGHUP", func(t *testing.T, h *harness) {
			h.m.ReloadInBackground("SIGHUP")
			h.settle(t)
		}},
		{"SIGUSR1", func(t *testing.T, h *harness) {
			if err := h.m.RotateLogs("SIGUSR1"); err != nil {
				t.Errorf("rotate-logs: %v", err)
			}
			h.wait("logs reopened", is(wire.EventLogsRotated))
		}},
		{"stop", func(t *testing.T, h *harness) {
			h.m.RequestStop("test") // idempotent while stopping
			if h.state != "stopping" {
				h.wait("the stop", is(wire.EventStopping))
			}
		}},
	}
}

// state is a way to bring a fresh cluster into one state, and what an
// operation (reload or scale) there should do: "" for done, else the words a
// refusal must contain.
type state struct {
	name    string
	refusal string
	enter   func(t *testing.T, h *harness) (leave func())
	play    func(gate chan struct{}) func(role ipc.Role, id, n int) script
}

func states() []state {
	return []state{
		{
			name: "starting", refusal: "the cluster is starting",
			play: func(gate chan struct{}) func(ipc.Role, int, int) script {
				return func(role ipc.Role, id, n int) script {
					if role == ipc.RoleWorker {
						return script{ready: gate}
					}
					return script{}
				}
			},
			enter: func(t *testing.T, h *harness) func() {
				h.wait("worker 1 to start", ofSlot(wire.EventStarted, "worker", 1))
				return nil
			},
		},
		{
			name: "running",
			play: func(chan struct{}) func(ipc.Role, int, int) script {
				return func(ipc.Role, int, int) script { return script{} }
			},
			enter: func(t *testing.T, h *harness) func() {
				h.wait("the cluster", is(wire.EventClusterReady))
				return nil
			},
		},
		{
			name: "reloading", refusal: "a reload is in progress",
			play: func(gate chan struct{}) func(ipc.Role, int, int) script {
				return func(role ipc.Role, id, n int) script {
					if role == ipc.RoleWorker && n == 2 {
						return script{ready: gate} // the reload's new worker waits
					}
					return script{}
				}
			},
			enter: func(t *testing.T, h *harness) func() {
				h.wait("the cluster", is(wire.EventClusterReady))
				done := make(chan error, 1)
				go func() { _, err := h.m.Reload(); done <- err }()
				h.wait("the reload's new worker", func(ev wire.Event) bool { return ev.Type == wire.EventStarted && ev.Role == "worker" })
				return func() { <-done }
			},
		},
		{
			name: "scaling", refusal: "a scale is in progress",
			play: func(gate chan struct{}) func(ipc.Role, int, int) script {
				return func(role ipc.Role, id, n int) script {
					if role == ipc.RoleWorker && id == 2 {
						return script{ready: gate} // the scale's new worker waits
					}
					return script{}
				}
			},
			enter: func(t *testing.T, h *harness) func() {
				h.wait("the cluster", is(wire.EventClusterReady))
				done := make(chan error, 1)
				go func() { _, err := h.m.Scale(2); done <- err }()
				h.wait("the new worker", ofSlot(wire.EventStarted, "worker", 2))
				return func() { <-done }
			},
		},
		{
			name: "replacing",
			play: func(gate chan struct{}) func(ipc.Role, int, int) script {
				return func(role ipc.Role, id, n int) script {
					switch {
					case role == ipc.RoleWorker && n == 1:
						return script{replaceMe: "panic in a test handler"} // a guarded panic
					case role == ipc.RoleWorker && n == 2:
						return script{ready: gate} // its replacement takes its time
					}
					return script{}
				}
			},
			enter: func(t *testing.T, h *harness) func() {
				// The replacement may start before the cluster-ready event.
				h.find("the replacement", nth(2, ofSlot(wire.EventStarted, "worker", 1)))
				return nil
			},
		},
		{
			name: "stopping", refusal: "the cluster is stopping",
			play: func(gate chan struct{}) func(ipc.Role, int, int) script {
				return func(role ipc.Role, id, n int) script { return script{stopGate: gate} }
			},
			enter: func(t *testing.T, h *harness) func() {
				h.wait("the cluster", is(wire.EventClusterReady))
				h.m.RequestStop("test")
				h.wait("the stop", is(wire.EventStopping))
				return nil
			},
		},
	}
}

func TestEveryOperationInEveryState(t *testing.T) {
	for _, st := range states() {
		for _, op := range ops() {
			t.Run(st.name+"/"+op.name, func(t *testing.T) {
				gate := make(chan struct{})
				h := startHarness(t, 1, st.play(gate))
				leave := st.enter(t, h)
				h.expect, h.state = st.refusal, st.name
				if st.name == "replacing" && (op.name == "reload" || op.name == "SIGHUP") {
					// A reload waits for the replacement in progress, then goes on.
					if op.name == "reload" {
						go h.m.Reload()
					} else {
						h.m.ReloadInBackground("SIGHUP")
					}
					h.wait("the reload", is(wire.EventReloadBegun))
					close(gate)
					gate = nil
					h.wait("the guarded-panic replacement to be done", func(ev wire.Event) bool { return ev.Type == wire.EventReplaced && ev.Reason == wire.ReasonPanic })
					if ev := h.wait("the reload to end", is(wire.EventReloadEnded)); ev.Result != "ok" {
						t.Errorf("reload during a replacement: %s %s", ev.Result, ev.Detail)
					}
				} else {
					op.run(t, h)
				}
				if gate != nil {
					close(gate)
				}
				if leave != nil {
					leave()
				}
				h.m.RequestStop("end of test")
				if err := <-h.runErr; err != nil && st.name != "starting" {
					t.Errorf("Run: %v", err)
				} else if st.name == "starting" && (err == nil || !strings.Contains(err.Error(), "start interrupted")) && op.name == "stop" {
					t.Errorf("Run after a stop during the start: %v, want the interruption", err)
				}
				h.runErr <- nil // for the cleanup
			})
		}
	}
}

// outcome runs an operation that should be refused with h.expect, or done.
func (h *harness) outcome(t *testing.T, op string, f func() error) {
	t.Helper()
	err := f()
	var se *StateError
	switch {
	case h.expect == "" && err != nil:
		t.Errorf("%s: %v, want it done", op, err)
	case h.expect != "" && (!errors.As(err, &se) || !strings.Contains(err.Error(), h.expect)):
		t.Errorf("%s: %v, want a refusal saying %q", op, err, h.expect)
	case h.expect != "" && errorStatus(err) != 409:
		t.Errorf("%s: refusal answered %d on the control socket, want 409", op, errorStatus(err))
	}
}

// settle waits until a background reload has had its outcome: done, failed or
// refused.
func (h *harness) settle(t *testing.T) {
	t.Helper()
	if h.expect != "" {
		return // refused at once (logged); nothing to wait for
	}
	h.wait("the reload to end", is(wire.EventReloadEnded))
}

func (h *harness) workersNow() int {
	h.m.mu.Lock()
	defer h.m.mu.Unlock()
	return len(h.m.workers)
}
