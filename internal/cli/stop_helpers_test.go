package cli

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/control"
	"github.com/brood-go/brood/internal/helperproc"
	"github.com/brood-go/brood/internal/wire"

	"github.com/brood-go/brood/internal/proc"
)

// The test binary doubles as a fake master (the os/exec helper pattern, with
// envHelper=fakemaster; see TestMain in daemon_test.go).
const (
	envRunDir    = "CLI_TEST_RUN_DIR"    // where the fake master listens
	envMasterPID = "CLI_TEST_MASTER_PID" // the pid it reports as the master's (default: its own)
	envPIDs      = "CLI_TEST_PIDS"       // comma-separated pids it reports as processes, each twice
	envChildren  = "CLI_TEST_CHILDREN"   // how many sleeping children it starts and reports, each twice
)

// fakeMaster listens on the control socket of $CLI_TEST_RUN_DIR with plain
// net/http (no run-dir checks, no SO_PEERCRED check, as an attacker's server
// would), answers every request with the same status and never stops. It
// prints "ready" and the pids of its children on one line.
func fakeMaster() int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	st := wire.Status{Name: "hello", PID: os.Getpid(), State: "running"}
	if v := os.Getenv(envMasterPID); v != "" {
		pid, err := strconv.Atoi(v)
		if err != nil {
			return fail(err)
		}
		st.PID = pid
	}
	var children []string
	n, _ := strconv.Atoi(os.Getenv(envChildren))
	for i := range n {
		cmd := exec.Command("sleep", "1000")
		if err := cmd.Start(); err != nil {
			return fail(err)
		}
		children = append(children, strconv.Itoa(cmd.Process.Pid))
		p := wire.Process{Role: "worker", ID: i + 1, PID: cmd.Process.Pid, State: "ready"}
		st.Processes = append(st.Processes, p, p)
	}
	for _, v := range strings.Split(os.Getenv(envPIDs), ",") {
		if v == "" {
			continue
		}
		pid, err := strconv.Atoi(v)
		if err != nil {
			return fail(err)
		}
		p := wire.Process{Role: "worker", ID: 9, PID: pid, State: "ready"}
		st.Processes = append(st.Processes, p, p)
	}
	ln, err := net.Listen("unix", control.SocketPath(os.Getenv(envRunDir)))
	if err != nil {
		return fail(err)
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		control.WriteJSON(w, http.StatusAccepted, st)
	}))
	fmt.Println(strings.Join(append([]string{"ready"}, children...), " "))
	select {}
}

// fakeMasterProc is a running fakeMaster.
type fakeMasterProc struct {
	cmd      *exec.Cmd
	children []int
	done     chan struct{} // closed when it has exited and been waited for
	state    *os.ProcessState
}

// startFakeMaster runs fakeMaster from exe with env, as cred unless nil, and
// waits until it serves. It is killed at the end of the test, children
// included.
func startFakeMaster(t *testing.T, exe string, cred *syscall.Credential, env ...string) *fakeMasterProc {
	t.Helper()
	cmd := exec.Command(exe)
	cmd.Dir = filepath.Dir(exe)
	cmd.Env = append(os.Environ(), append([]string{envHelper + "=fakemaster", "GORACE=atexit_sleep_ms=0"}, env...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	fm := &fakeMasterProc{cmd: cmd, done: make(chan struct{})}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		io.Copy(io.Discard, stdout)
		cmd.Wait()
		fm.state = cmd.ProcessState
		close(fm.done)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		for _, c := range fm.children {
			syscall.Kill(c, syscall.SIGKILL)
		}
		<-fm.done
	})
	select {
	case line := <-lines:
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "ready" {
			t.Fatalf("fake master said %q, want ready; stderr: %s", line, stderr.String())
		}
		for _, s := range f[1:] {
			pid, _ := strconv.Atoi(s)
			fm.children = append(fm.children, pid)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("fake master not ready after 10s; stderr: %s", stderr.String())
	}
	return fm
}

// startVictim starts a sleeping process that is no child of any master; it is
// killed and reaped at the end of the test.
func startVictim(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("sleep", "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd.Process.Pid
}

// state returns the state letter of pid in /proc/<pid>/stat (R, S, Z, ...), or
// "gone". A process killed but not yet reaped is Z: kill -0 would still
// succeed on it.
func state(pid int) string {
	st, err := proc.ReadStat(pid)
	if err != nil {
		return "gone"
	}
	return string(st.State)
}

// running reports whether pid exists and is not a zombie.
func running(pid int) bool {
	s := state(pid)
	return s != "gone" && s != "Z" && s != "X"
}

// runCLI runs one command line of a program named hello whose default run
// dir is control.DefaultRunDir, and returns its exit code, stdout and stderr.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr helperproc.SyncBuffer
	app := App{
		Defaults:      Options{Name: "hello"},
		DefaultRunDir: control.DefaultRunDir,
		Run:           func(context.Context, Options) error { return fmt.Errorf("not in this test") },
		Stdout:        &stdout,
		Stderr:        &stderr,
	}
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	code := Execute(ctx, app, args)
	return code, stdout.String(), stderr.String()
}

// copySelf copies the test binary into dir (mode 0755), for helpers running
// as another uid that cannot reach the go build directory.
func copySelf(t *testing.T, dir string) string {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "cli.test")
	if err := os.WriteFile(exe, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(exe, 0o755); err != nil { // whatever the umask
		t.Fatal(err)
	}
	return exe
}

// shortDir returns a new directory under /tmp (socket paths must stay short),
// of the given mode, removed at the end of the test.
func shortDir(t *testing.T, mode os.FileMode) string {
	t.Helper()
	d, err := os.MkdirTemp("", "cli")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, mode); err != nil {
		t.Fatal(err)
	}
	return d
}
