package brood_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/control"
	"github.com/brood-go/brood/internal/helperproc"
	"github.com/brood-go/brood/internal/proc"
)

// daemonApp is a brood program built by a test and started with `start
// --daemon` (2 workers, on a free port), with builds of it to install and
// its CLI to run. The master is killed at the end of the test if it is
// still there.
type daemonApp struct {
	t      *testing.T
	dir    string // builds and logs
	name   string // the program's name: its control socket's
	app    string // the path the master runs: install renames a build onto it
	cli    string // the build the commands run: never a broken one
	runDir string
	env    []string
	addr   string // host:port
	pid    int    // the master's
}

// startDaemon installs build as dir/name and starts it as a daemon with the
// test's environment plus env.
func startDaemon(t *testing.T, dir, name, build string, env ...string) *daemonApp {
	t.Helper()
	a := &daemonApp{t: t, dir: dir, name: name, app: filepath.Join(dir, name), cli: build, runDir: helperproc.ShortTempDir(t)}
	a.env = append(append(os.Environ(), "BROOD_RUN_DIR="+a.runDir, "GORACE=atexit_sleep_ms=0"), env...)
	a.install(build)
	if build == a.app { // built in place: the commands keep a copy that later builds do not replace
		a.cli = a.app + ".cli"
		a.copyTo(build, a.cli)
	}
	t.Cleanup(func() {
		if pid, err := control.ReadPID(a.runDir); err == nil {
			syscall.Kill(pid, syscall.SIGKILL)
			proc.WaitGone([]int{pid}, 5*time.Second)
		}
	})
	cmd := exec.Command(a.app, "start", "--daemon", "--workers", "2", "--log-dir", dir)
	cmd.Env = a.env
	b, err := cmd.CombinedOutput()
	out := string(b)
	if err != nil {
		t.Fatalf("start: %v\n%s", err, out)
	}
	for _, l := range strings.Split(out, "\n") {
		if s, ok := strings.CutPrefix(strings.TrimSpace(l), "listening on tcp://"); ok {
			a.addr = s
		}
	}
	if a.addr == "" {
		t.Fatalf("start printed no address:\n%s", out)
	}
	if a.pid, err = control.ReadPID(a.runDir); err != nil {
		t.Fatal(err)
	}
	return a
}

// install puts a build where the master's executable is, as a deploy does:
// a copy renamed over it.
func (a *daemonApp) install(build string) {
	a.t.Helper()
	if build != a.app {
		a.copyTo(build, a.app)
	}
}

func (a *daemonApp) copyTo(from, to string) {
	a.t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		a.t.Fatal(err)
	}
	mode := os.FileMode(0o755)
	if fi, err := os.Stat(from); err == nil {
		mode = fi.Mode().Perm()
	}
	tmp := to + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		a.t.Fatal(err)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		a.t.Fatal(err)
	}
	if err := os.Rename(tmp, to); err != nil {
		a.t.Fatal(err)
	}
}

// run runs a command of the program's CLI.
func (a *daemonApp) run(args ...string) (string, error) {
	cmd := exec.Command(a.cli, args...)
	cmd.Env = a.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// versions asks n new connections which build answers (the first word of
// each answer).
func (a *daemonApp) versions(n int) map[string]int {
	seen := map[string]int{}
	for range n {
		b := get(a.t, newConnClient(), "http://"+a.addr+"/")
		seen[strings.Fields(b)[0]]++
	}
	return seen
}
