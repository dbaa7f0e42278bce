package master

import (
	"fmt"
	"strings"
	"testing"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/wire"
)

// A reload onto a build that speaks a protocol this master does not is
// aborted with an error naming both versions, the old processes keep their
// slots, and the slot's failed process says why in its exit event. A build
// speaking MinVersion is taken, and its version recorded.
func TestReloadOntoOtherProtocol(t *testing.T) {
	h := startHarness(t, 2, func(role ipc.Role, id, n int) script {
		switch {
		case role != ipc.RoleWorker || id != 1:
		case n == 2:
			return script{hello: "7"}
		case n == 3:
			return script{hello: "-"}
		case n == 4:
			return script{hello: fmt.Sprint(ipc.MinVersion)}
		}
		return script{}
	})
	h.wait("the cluster", is(wire.EventClusterReady))
	before := h.m.Status()
	want := fmt.Sprintf("child speaks IPC protocol 7, this master speaks %d to %d", ipc.MinVersion, ipc.Version)
	for _, want := range []string{want, "Ready before Hello"} {
		_, err := h.m.Reload()
		if err == nil || !strings.Contains(err.Error(), "reload aborted at worker 1; the old workers keep serving") || !strings.Contains(err.Error(), want) {
			t.Fatalf("reload onto a bad build: %v; want it aborted with %q", err, want)
		}
		if ev := h.wait("the failed process's exit", ofSlot(wire.EventExited, "worker", 1)); ev.Reason != wire.ReasonExit || !strings.Contains(ev.Detail, want) {
			t.Errorf("exit event %+v; want reason exit and %q", ev, want)
		}
		after := h.m.Status()
		if after.State != "running" || after.Operation != "" || len(after.Processes) != len(before.Processes) {
			t.Fatalf("status after the aborted reload: %+v", after)
		}
		for i, p := range after.Processes {
			if p.PID != before.Processes[i].PID || p.State != "ready" {
				t.Errorf("after the aborted reload, %s %d is pid %d %s; want pid %d ready", p.Role, p.ID, p.PID, p.State, before.Processes[i].PID)
			}
		}
	}

	if _, err := h.m.Reload(); err != nil {
		t.Fatalf("reload onto a build speaking protocol %d: %v", ipc.MinVersion, err)
	}
	h.m.mu.Lock()
	defer h.m.mu.Unlock()
	for _, s := range h.m.slotsLocked() {
		want := ipc.Version
		if s.role == ipc.RoleWorker && s.id == 1 {
			want = ipc.MinVersion
		}
		if s.serving == nil || s.serving.protocol != want {
			t.Errorf("%s after the reload: %+v; want it serving with protocol %d", s, s.serving, want)
		}
	}
}

// Children below the fleet's protocol are refused in a cluster in a fleet,
// so no fleet frame ever reaches a process that cannot decode it.
func TestCheckProtocol(t *testing.T) {
	local := &Master{}
	fleet := &Master{cfg: Config{Fleet: FleetConfig{URLs: "nats://127.0.0.1:4222"}}}
	for _, c := range []struct {
		m    *Master
		v    int
		want string
	}{
		{local, ipc.MinVersion, ""},
		{local, ipc.Version, ""},
		{local, ipc.Version + 1, fmt.Sprintf("child speaks IPC protocol %d, this master speaks %d to %d", ipc.Version+1, ipc.MinVersion, ipc.Version)},
		{local, 0, "child speaks IPC protocol 0, this master speaks"},
		{fleet, ipc.FleetVersion, ""},
		{fleet, ipc.FleetVersion - 1, fmt.Sprintf("child speaks IPC protocol %d, which has no fleet messages; this cluster is in a fleet and needs protocol %d or later", ipc.FleetVersion-1, ipc.FleetVersion)},
	} {
		err := c.m.checkProtocol(c.v)
		if (c.want == "") != (err == nil) || (err != nil && !strings.HasPrefix(err.Error(), c.want)) {
			t.Errorf("checkProtocol(%d), fleet %v: %v; want %q", c.v, c.m.cfg.Fleet.URLs != "", err, c.want)
		}
	}
}
