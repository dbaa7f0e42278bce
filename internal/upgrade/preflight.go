package upgrade

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/brood-go/brood/internal/sdnotify"
	"github.com/brood-go/brood/internal/wire"
)

// Bounds of what a preflight's output is kept of: its last bytes, where the
// build line and the error line are.
const (
	preflightStdoutMax = 64 << 10
	preflightStderrMax = 4 << 10
	// preflightWaitDelay bounds the wait for the check's output pipes to
	// close once it has exited or been killed (a descendant of it that
	// escaped its process group may hold them).
	preflightWaitDelay = time.Second
)

// Preflight runs the binary exe in check mode (EnvPreflight, see
// PreflightEnv for env) with args (the master's own os.Args[1:]) before the
// master re-executes it, and returns the Build it prints. The check runs
// with stdin from /dev/null, in a process group of its own that is killed
// when timeout passes or ctx ends, and after it exits (a check leaves no
// process behind). Its output is kept bounded: the last 64 KiB of stdout,
// the last 4 KiB of stderr.
//
// Every error is one line that names exe and says what went wrong:
// "preflight of /usr/local/bin/app: not found", "...: not executable",
// "...: exec format error (built for another architecture?)", "...: exited
// with status 1: <its last line on stderr>", "...: did not finish within
// 10s", "...: printed no build info".
func Preflight(ctx context.Context, exe string, args, env []string, timeout time.Duration) (Build, error) {
	fail := func(format string, a ...any) error {
		return fmt.Errorf("preflight of %s: "+format, append([]any{exe}, a...)...)
	}
	path := exe
	if !strings.Contains(path, "/") {
		path = "./" + path // a file, never a lookup in $PATH
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var stdout, stderr tailBuffer
	stdout.max, stderr.max = preflightStdoutMax, preflightStderrMax
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Args[0] = exe
	cmd.Env = env
	if cmd.Env == nil {
		cmd.Env = []string{} // nil would mean this process's environment
	}
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return killGroup(cmd) }
	cmd.WaitDelay = preflightWaitDelay
	if ctx.Err() != nil {
		return Build{}, fail("interrupted: %v", context.Cause(ctx))
	}
	err := cmd.Start()
	if err != nil {
		return Build{}, fail("%s", startFailure(err))
	}
	err = cmd.Wait()
	_ = killGroup(cmd) // whatever it left in its group
	if errors.Is(err, exec.ErrWaitDelay) && cmd.ProcessState.Success() {
		// It exited 0, but something it started held its output open
		// past preflightWaitDelay: what it printed until then counts.
		err = nil
	}
	switch {
	case ctx.Err() != nil && (err != nil || cmd.ProcessState == nil || !cmd.ProcessState.Success()):
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return Build{}, fail("did not finish within %v", timeout)
		}
		return Build{}, fail("interrupted: %v", context.Cause(ctx))
	case err != nil:
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return Build{}, fail("%v", err)
		}
		ws, _ := ee.Sys().(syscall.WaitStatus)
		how := "exited with status " + strconv.Itoa(ee.ExitCode())
		if ws.Signaled() {
			how = "killed by signal " + ws.Signal().String()
		}
		if line := lastLine(stderr.Bytes()); line != "" {
			return Build{}, fail("%s: %s", how, line)
		}
		return Build{}, fail("%s, with nothing on stderr", how)
	}
	b, ok := parseBuild(stdout.Bytes())
	if !ok {
		if line := lastLine(stdout.Bytes()); line != "" {
			return Build{}, fail("printed no build info (its last line on stdout: %q)", truncate(line, 200))
		}
		return Build{}, fail("printed no build info")
	}
	return b, nil
}

// startFailure says why exec refused the file.
func startFailure(err error) string {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "not found"
	case errors.Is(err, syscall.EACCES), errors.Is(err, fs.ErrPermission):
		return "not executable"
	case errors.Is(err, syscall.ENOEXEC):
		return "exec format error (built for another architecture?)"
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

// killGroup kills the process group the check leads.
func killGroup(cmd *exec.Cmd) error {
	if cmd.Process == nil {
		return nil
	}
	err := syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// parseBuild finds the build line: the last line of out that is a JSON
// object describing a build (every Go binary knows its Go version).
func parseBuild(out []byte) (Build, bool) {
	lines := bytes.Split(out, []byte("\n"))
	for i := len(lines) - 1; i >= 0; i-- {
		l := bytes.TrimSpace(lines[i])
		if len(l) == 0 || l[0] != '{' {
			continue
		}
		var b Build
		if json.Unmarshal(l, &b) == nil && b.GoVersion != "" {
			return b, true
		}
	}
	return Build{}, false
}

// lastLine is the last non-blank line of out.
func lastLine(out []byte) string {
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	max int
	buf []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	n := len(p)
	if len(p) > t.max {
		p = p[len(p)-t.max:]
	}
	t.buf = append(t.buf, p...)
	if len(t.buf) > 2*t.max { // trim now and then, not on every write
		t.buf = append(t.buf[:0], t.buf[len(t.buf)-t.max:]...)
	}
	return n, nil
}

// Bytes returns the last max bytes written.
func (t *tailBuffer) Bytes() []byte {
	if len(t.buf) > t.max {
		return t.buf[len(t.buf)-t.max:]
	}
	return t.buf
}

// PreflightEnv is the environment of a preflight: environ (the master's
// own) without brood's child contract (wire.IsChildOnly: role, descriptors,
// the daemon handshake's BROOD_NOTIFY_FD, fleet secrets), the service
// manager's variables (sdnotify.IsServiceEnv: NOTIFY_SOCKET, WATCHDOG_*,
// LISTEN_*, FDSTORE) and any upgrade variable, plus EnvPreflight=1 and
// EnvStateVersion=stateVersion. The check must not look like a child, talk
// to systemd or take inherited sockets.
func PreflightEnv(environ []string, stateVersion int) []string {
	out := make([]string, 0, len(environ)+2)
	for _, kv := range environ {
		if wire.IsChildOnly(kv) || sdnotify.IsServiceEnv(kv) || isUpgradeEnv(kv) {
			continue
		}
		out = append(out, kv)
	}
	return append(out, EnvPreflight+"=1", EnvStateVersion+"="+strconv.Itoa(stateVersion))
}

func isUpgradeEnv(kv string) bool {
	k, _, _ := strings.Cut(kv, "=")
	switch k {
	case EnvPreflight, EnvStateVersion, EnvStateFD, EnvRollbackFD:
		return true
	}
	return false
}

// CheckStateVersion is the preflight's check of EnvStateVersion's value v:
// nil if this build can restore that state format, else an error naming the
// versions it reads.
func CheckStateVersion(v string) error {
	reads := "this build reads state version " + strconv.Itoa(StateVersion)
	if MinStateVersion != StateVersion {
		reads = fmt.Sprintf("this build reads state versions %d to %d", MinStateVersion, StateVersion)
	}
	if v == "" {
		return fmt.Errorf("%s is not set; %s", EnvStateVersion, reads)
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return fmt.Errorf("%s=%q is not a version; %s", EnvStateVersion, v, reads)
	}
	if !Supported(n) {
		return fmt.Errorf("cannot restore state version %d: %s", n, reads)
	}
	return nil
}
