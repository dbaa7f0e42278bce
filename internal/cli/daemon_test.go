package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/brood-go/brood/internal/wire"
)

// envHelper makes the test binary play the daemon master that `start --daemon`
// executes: it logs a line to stderr, writes the ready line and exits.
const envHelper = "CLI_TEST_HELPER"

const helperLine = "helper master running"

func TestMain(m *testing.M) {
	switch os.Getenv(envHelper) {
	case "master":
		os.Exit(Execute(context.Background(), testApp(nil, nil), os.Args[1:]))
	case "fakemaster": // stop_test.go
		os.Exit(fakeMaster())
	}
	os.Exit(m.Run())
}

// testApp is a program whose cluster only reports itself ready on the daemon
// handshake.
func testApp(stdout, stderr *bytes.Buffer) App {
	app := App{
		Defaults:      Options{Name: "clitest", Workers: 1},
		DefaultRunDir: func(name string) string { return filepath.Join(os.TempDir(), "clitest-unused", name) },
		Run: func(ctx context.Context, opts Options) error {
			fmt.Fprintln(os.Stderr, helperLine)
			notify := os.NewFile(3, "notify")
			st, err := json.Marshal(wire.Status{Name: opts.Name, PID: os.Getpid()})
			if err != nil {
				return fmt.Errorf("helper master: %w", err)
			}
			if _, err := fmt.Fprintf(notify, "ready %s\n", st); err != nil {
				return fmt.Errorf("helper master: notify: %w", err)
			}
			return notify.Close()
		},
	}
	if stdout != nil {
		app.Stdout, app.Stderr = stdout, stderr
	}
	return app
}

// startDaemonCmd runs `start --daemon` with args and returns the exit code and
// the outputs.
func startDaemonCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	t.Setenv(envHelper, "master") // for the master it executes
	var stdout, stderr bytes.Buffer
	code := Execute(t.Context(), testApp(&stdout, &stderr), append([]string{"start", "--daemon", "--timeout", "60s"}, args...))
	return code, stdout.String(), stderr.String()
}

// unsetHome unsets HOME for the test and points TMPDIR at an empty directory,
// which it returns.
func unsetHome(t *testing.T) string {
	t.Helper()
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	t.Setenv("HOME", "")
	os.Unsetenv("HOME") // t.Setenv restores it
	return tmp
}

func TestStartDaemonWithoutHomeLogsUnderRunDir(t *testing.T) {
	tmp := unsetHome(t)
	runDir := filepath.Join(t.TempDir(), "run")
	code, out, errOut := startDaemonCmd(t, "--run-dir", runDir)
	if code != 0 {
		t.Fatalf("start: exit %d\n%s%s", code, out, errOut)
	}
	logDir := filepath.Join(runDir, "logs")
	stderrLog := filepath.Join(logDir, "master-stderr.log")
	if !strings.Contains(out, "log: "+stderrLog) {
		t.Errorf("start does not report the log under the run dir %s:\n%s", logDir, out)
	}
	b, err := os.ReadFile(stderrLog)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), helperLine) {
		t.Errorf("%s holds %q, want the master's stderr", stderrLog, b)
	}
	fi, err := os.Lstat(logDir)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Errorf("%s: mode %v, want a directory with mode 0700", logDir, fi.Mode())
	}
	if entries, _ := os.ReadDir(tmp); len(entries) > 0 {
		t.Errorf("start created %v in TMPDIR %s", entries, tmp)
	}
}

// The private fallback dir is refused when someone else could have prepared it.
func TestStartDaemonRefusesUnsafeFallbackLogDir(t *testing.T) {
	unsetHome(t)
	for _, c := range []struct {
		name    string
		prepare func(t *testing.T, logDir string) error
		want    string
	}{
		{"symlink", func(t *testing.T, logDir string) error { return os.Symlink(t.TempDir(), logDir) }, "not a directory"},
		{"writable", func(t *testing.T, logDir string) error {
			if err := os.Mkdir(logDir, 0o700); err != nil {
				return err
			}
			return os.Chmod(logDir, 0o777)
		}, "writable by group or others"},
		{"owner", func(t *testing.T, logDir string) error {
			if err := os.Mkdir(logDir, 0o700); err != nil {
				return err
			}
			if err := os.Chown(logDir, 65534, 65534); errors.Is(err, os.ErrPermission) {
				t.Skipf("cannot chown to another uid: %v", err)
			}
			return nil
		}, "owned by uid 65534"},
	} {
		t.Run(c.name, func(t *testing.T) {
			runDir := t.TempDir()
			logDir := filepath.Join(runDir, "logs")
			if err := c.prepare(t, logDir); err != nil {
				t.Fatal(err)
			}
			code, out, errOut := startDaemonCmd(t, "--run-dir", runDir)
			if code != ExitFailure || !strings.Contains(errOut, logDir) || !strings.Contains(errOut, c.want) {
				t.Errorf("start: exit %d, want %d and an error naming %s and saying %q:\n%s%s", code, ExitFailure, logDir, c.want, out, errOut)
			}
		})
	}
}

// The fallback log dir is inside the run dir, so the run dir is checked (as
// the master will check it) before anything is written there.
func TestStartDaemonChecksRunDirBeforeLogging(t *testing.T) {
	unsetHome(t)
	runDir := filepath.Join(t.TempDir(), "run")
	if err := os.Mkdir(runDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(runDir, 65534, 65534); errors.Is(err, os.ErrPermission) {
		t.Skipf("cannot chown to another uid: %v", err)
	}
	code, out, errOut := startDaemonCmd(t, "--run-dir", runDir)
	if code != ExitFailure || !strings.Contains(errOut, "unsafe run dir "+runDir) {
		t.Fatalf("start: exit %d, want %d and the unsafe run dir named:\n%s%s", code, ExitFailure, out, errOut)
	}
	if _, err := os.Lstat(filepath.Join(runDir, "logs")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("start created the log dir in a run dir it refused: %v", err)
	}
}

func TestStartDaemonRefusesSymlinkedLogFile(t *testing.T) {
	for _, name := range []string{"master-stdout.log", "master-stderr.log"} {
		t.Run(name, func(t *testing.T) {
			logDir := t.TempDir()
			target := filepath.Join(t.TempDir(), "secret")
			if err := os.WriteFile(target, []byte("root only\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(logDir, name)
			if err := os.Symlink(target, path); err != nil {
				t.Fatal(err)
			}
			code, out, errOut := startDaemonCmd(t, "--run-dir", t.TempDir(), "--log-dir", logDir)
			if code != ExitFailure || !strings.Contains(errOut, path) || !strings.Contains(errOut, "symbolic link") {
				t.Errorf("start: exit %d, want %d and an error naming the link %s:\n%s%s", code, ExitFailure, path, out, errOut)
			}
			if b, _ := os.ReadFile(target); string(b) != "root only\n" {
				t.Errorf("the link's target was written to: %q", b)
			}
		})
	}
}

func TestStartDaemonRefusesAnotherUsersLogFile(t *testing.T) {
	logDir := t.TempDir()
	path := filepath.Join(logDir, "master-stderr.log")
	if err := os.WriteFile(path, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, 65534, 65534); errors.Is(err, os.ErrPermission) {
		t.Skipf("cannot chown to another uid: %v", err)
	} else if err != nil {
		t.Fatal(err)
	}
	code, out, errOut := startDaemonCmd(t, "--run-dir", t.TempDir(), "--log-dir", logDir)
	if code != ExitFailure || !strings.Contains(errOut, path) || !strings.Contains(errOut, "uid 65534") {
		t.Errorf("start: exit %d, want %d and an error naming %s and its owner:\n%s%s", code, ExitFailure, path, out, errOut)
	}
	if b, _ := os.ReadFile(path); len(b) != 0 {
		t.Errorf("another user's file was written to: %q", b)
	}
}
