package proc

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func startSleep(t *testing.T, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "1000")
	if len(args) > 0 {
		cmd = exec.Command(args[0], args[1:]...)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd
}

func TestOpenChild(t *testing.T) {
	self, err := OpenPidfd(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	defer self.Close()

	child := startSleep(t)
	p, err := OpenChild(child.Process.Pid, self)
	if err != nil {
		t.Fatalf("OpenChild of our child: %v", err)
	}
	defer p.Close()
	if p.PID() != child.Process.Pid || p.Exited() {
		t.Errorf("got pid %d exited %v, want pid %d running", p.PID(), p.Exited(), child.Process.Pid)
	}

	// A grandchild: sh's child, not ours.
	sh := exec.Command("sh", "-c", "sleep 1000 & echo $!; wait")
	out, err := sh.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := sh.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	grandchild, _ := strconv.Atoi(strings.TrimSpace(line))
	t.Cleanup(func() {
		unix.Kill(grandchild, unix.SIGKILL)
		sh.Wait()
	})
	if ppid, err := ParentPID(grandchild); err != nil || ppid != sh.Process.Pid {
		t.Errorf("ParentPID(%d): got %d, %v, want %d", grandchild, ppid, err, sh.Process.Pid)
	}
	if _, err := OpenChild(grandchild, self); !errors.Is(err, ErrNotChild) {
		t.Errorf("OpenChild of a grandchild: got %v, want ErrNotChild", err)
	}

	// A child that exited (a zombie until reaped) is gone.
	dead := exec.Command("true")
	if err := dead.Start(); err != nil {
		t.Fatal(err)
	}
	dp, err := OpenPidfd(dead.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if left := WaitExit([]*Pidfd{dp}, 10*time.Second); len(left) != 0 {
		t.Fatalf("true still running after 10s")
	}
	dp.Close()
	if _, err := OpenChild(dead.Process.Pid, self); !errors.Is(err, unix.ESRCH) {
		t.Errorf("OpenChild of an exited child: got %v, want ESRCH", err)
	}
	dead.Wait()
	if _, err := OpenChild(dead.Process.Pid, self); !errors.Is(err, unix.ESRCH) {
		t.Errorf("OpenChild of a reaped child: got %v, want ESRCH", err)
	}
}

func TestSignalAndWaitExit(t *testing.T) {
	a, b := startSleep(t), startSleep(t)
	pa, err := OpenPidfd(a.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer pa.Close()
	pb, err := OpenPidfd(b.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	defer pb.Close()

	if left := WaitExit([]*Pidfd{pa, pb}, 50*time.Millisecond); len(left) != 2 {
		t.Fatalf("WaitExit of two sleeping processes: %d left, want 2", len(left))
	}
	if err := pa.Signal(unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	if left := WaitExit([]*Pidfd{pa}, 10*time.Second); len(left) != 0 {
		t.Fatalf("a still running 10s after SIGKILL")
	}
	if left := WaitExit([]*Pidfd{pa, pb}, 0); len(left) != 1 || left[0] != pb {
		t.Fatalf("after killing a: got %v, want only b left", left)
	}
	// a is a zombie now (not reaped): signalling it through the pidfd
	// reaches nobody else.
	if !pa.Exited() {
		t.Errorf("a: Exited false after SIGKILL")
	}
	a.Wait()
	if err := pa.Signal(unix.SIGKILL); !errors.Is(err, unix.ESRCH) {
		t.Errorf("signal to a reaped process: got %v, want ESRCH", err)
	}
}

func TestParentPID(t *testing.T) {
	if ppid, err := ParentPID(os.Getpid()); err != nil || ppid != os.Getppid() {
		t.Errorf("ParentPID(self): got %d, %v, want %d", ppid, err, os.Getppid())
	}
	if _, err := ParentPID(1 << 23); err == nil {
		t.Errorf("ParentPID of no process: got nil error")
	}
}

// comm is the process's own choice of name: spaces and parentheses included,
// even a fake state and ppid.
func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		in    string
		state byte
		ppid  int
	}{
		{"42 (sh) S 1 42 42 0 -1", 'S', 1},
		{"42 (a b) Z 7 0 0", 'Z', 7},
		{"42 (x) R 9 (y) Z 1 0) Z 123 1 1", 'Z', 123},
		{"42 ()) S 5 1", 'S', 5},
	} {
		st, err := ParseStat(tc.in)
		if err != nil || st.State != tc.state || st.PPID != tc.ppid {
			t.Errorf("ParseStat(%q): got %c %d %v, want %c %d", tc.in, st.State, st.PPID, err, tc.state, tc.ppid)
		}
	}
	for _, bad := range []string{"", "42 sh S 1", "42 (sh)", "42 (sh) S", "42 (sh) S x", "42 (sh) SS 1"} {
		if _, err := ParseStat(bad); err == nil {
			t.Errorf("ParseStat(%q): got nil error", bad)
		}
	}
}
