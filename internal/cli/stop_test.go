package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// nobody is the uid and gid root tests run an attacker's processes as.
const nobody = 65534

// TestStopPlantedRunDir is the attack of a user who creates root's default run
// dir before root ever runs and serves a fake control socket there, naming a
// victim's pid as the master and as a worker: stop must refuse the run dir and
// signal nothing.
func TestStopPlantedRunDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to be the target, and to run the attacker as uid 65534")
	}
	tmp := shortDir(t, 0o755) // reachable by the attacker, like /tmp
	t.Setenv("TMPDIR", tmp)
	t.Setenv("XDG_RUNTIME_DIR", "")
	planted := filepath.Join(tmp, "brood-0", "hello")
	for _, d := range []string{filepath.Dir(planted), planted} {
		if err := os.Mkdir(d, 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o777); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, nobody, nobody); err != nil {
			t.Fatal(err)
		}
	}
	exe := copySelf(t, tmp)
	victim := startVictim(t)
	v := strconv.Itoa(victim)
	startFakeMaster(t, exe, &syscall.Credential{Uid: nobody, Gid: nobody}, envRunDir+"="+planted, envMasterPID+"="+v, envPIDs+"="+v)

	code, _, stderr := runCLI(t, "stop", "--timeout", "2s")
	want := fmt.Sprintf("Error: control: unsafe run dir %s: %s (owner uid %d, mode 0777) is owned by uid %d, not by uid 0", planted, filepath.Dir(planted), nobody, nobody)
	if code != ExitFailure || !strings.HasPrefix(stderr, want) {
		t.Errorf("stop: got exit %d, stderr %q; want exit 1 and %q", code, stderr, want)
	}
	if s := state(victim); !running(victim) {
		t.Errorf("victim pid %d: state %s after stop, want it still running", victim, s)
	}
}

// TestStopSignalsOnlyVerifiedChildren runs a master that ignores the stop
// request and reports its two children, each twice, and an unrelated process:
// after the timeout stop kills the master and its children, each once, and
// leaves the unrelated process alone.
func TestStopSignalsOnlyVerifiedChildren(t *testing.T) {
	dir := shortDir(t, 0o700)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	victim := startVictim(t)
	fm := startFakeMaster(t, exe, nil, envRunDir+"="+dir, envChildren+"=2", envPIDs+"="+strconv.Itoa(victim))
	master := fm.cmd.Process.Pid

	code, _, stderr := runCLI(t, "stop", "--timeout", "300ms", "--run-dir", dir)
	wantKilled := fmt.Sprintf("Error: hello did not stop within 300ms; killed (SIGKILL) pids [%d %d %d]", master, fm.children[0], fm.children[1])
	wantSkipped := fmt.Sprintf("hello: not waiting for worker 9 (pid %d): pid %d: its parent is pid %d, not %d: not a child of the given process", victim, victim, os.Getpid(), master)
	if code != ExitFailure || !strings.Contains(stderr, wantKilled+"\n") || !strings.Contains(stderr, wantSkipped+"\n") {
		t.Errorf("stop: got exit %d, stderr:\n%s\nwant exit 1 and the lines\n%s\n%s", code, stderr, wantSkipped, wantKilled)
	}
	select {
	case <-fm.done:
		if ws, ok := fm.state.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
			t.Errorf("master: %v, want killed by SIGKILL", fm.state)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("master pid %d still running 10s after stop returned", master)
	}
	for _, c := range fm.children {
		// Orphaned by the master's death; nothing may reap them here, so
		// dead is gone or a zombie.
		if running(c) {
			t.Errorf("child pid %d: state %s after stop, want it killed", c, state(c))
		}
	}
	if !running(victim) {
		t.Errorf("unrelated pid %d: state %s after stop, want it still running", victim, state(victim))
	}
}

// TestStopRefusesMismatchedMaster: a server that names another process as the
// master gets nothing signalled, neither that process nor itself.
func TestStopRefusesMismatchedMaster(t *testing.T) {
	dir := shortDir(t, 0o700)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	victim := startVictim(t)
	v := strconv.Itoa(victim)
	fm := startFakeMaster(t, exe, nil, envRunDir+"="+dir, envMasterPID+"="+v, envPIDs+"="+v)

	code, _, stderr := runCLI(t, "stop", "--timeout", "300ms", "--run-dir", dir)
	want := fmt.Sprintf("Error: stop hello: the control socket %s/control.sock is served by pid %d, but it names pid %d as the master; not signalling anything\n", dir, fm.cmd.Process.Pid, victim)
	if code != ExitFailure || stderr != want {
		t.Errorf("stop: got exit %d, stderr %q; want exit 1 and %q", code, stderr, want)
	}
	if !running(victim) {
		t.Errorf("victim pid %d: state %s after stop, want it still running", victim, state(victim))
	}
	if !running(fm.cmd.Process.Pid) {
		t.Errorf("server pid %d: state %s after stop, want it still running", fm.cmd.Process.Pid, state(fm.cmd.Process.Pid))
	}
}
