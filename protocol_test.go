package brood_test

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/wire"
)

// A real cluster whose binary on disk is replaced by a build speaking an IPC
// protocol its master does not: the reload is aborted with an error naming
// both versions, the old workers keep serving, and status still shows them.
// A build speaking only MinVersion is taken by the same master.
func TestReloadOntoOtherIPCProtocol(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the test app three times")
	}
	dir := t.TempDir()
	app := filepath.Join(dir, "reloadapp")
	override := func(v int) string {
		return fmt.Sprintf(" -X github.com/brood-go/brood/internal/ipc.versionOverride=%d", v)
	}
	buildAppWith(t, app, "-X main.version=v1")
	a := startDaemon(t, dir, "reloadapp", app)
	run, versions := a.run, func() map[string]int { return a.versions(20) }
	before := statusPIDs(t, run)

	buildAppWith(t, app, "-X main.version=v7"+override(7))
	out, err := run("reload")
	want := fmt.Sprintf("child speaks IPC protocol 7, this master speaks %d to %d", ipc.MinVersion, ipc.Version)
	if err == nil || !strings.Contains(out, "reload aborted at worker 1; the old workers keep serving") || !strings.Contains(out, want) {
		t.Fatalf("reload onto a build of protocol 7: %v\n%s\nwant it aborted with %q", err, out, want)
	}
	t.Logf("reload onto protocol 7: %s", strings.TrimSpace(out))
	if v := versions(); v["v1"] != 20 {
		t.Fatalf("after the aborted reload: %v; want every answer from v1", v)
	}
	st := statusJSONOf(t, run)
	if st.State != "running" || st.Operation != "" {
		t.Errorf("status after the aborted reload: state %q, operation %q", st.State, st.Operation)
	}
	for _, p := range st.Processes {
		if p.State != "ready" {
			t.Errorf("after the aborted reload: %s %d is %s", p.Role, p.ID, p.State)
		}
	}
	if after := statusPIDs(t, run); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("the aborted reload changed the processes: %v, before %v", after, before)
	}

	buildAppWith(t, app, "-X main.version=oldest"+override(ipc.MinVersion))
	if out, err := run("reload"); err != nil {
		t.Fatalf("reload onto a build of protocol %d: %v\n%s", ipc.MinVersion, err, out)
	}
	if v := versions(); v["oldest"] != 20 {
		t.Fatalf("after the reload onto protocol %d: %v", ipc.MinVersion, v)
	}
	if out, err := run("stop"); err != nil {
		t.Fatalf("stop: %v\n%s", err, out)
	}
}

func statusJSONOf(t *testing.T, run func(...string) (string, error)) wire.Status {
	t.Helper()
	out, err := run("status", "--json")
	if err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
	var st wire.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	return st
}
