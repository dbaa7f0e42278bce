package brood_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/upgrade"
)

// A real program (testdata/reloadapp) in check mode, as the upgrading master
// runs it: its build comes back, and each kind of bad command line, config or
// state version is refused with the program's own one-line reason.
func TestPreflightOfAProgram(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the test app")
	}
	dir := t.TempDir()
	app := filepath.Join(dir, "reloadapp")
	buildAppWith(t, app, "-X main.version=pf -X github.com/brood-go/brood/internal/upgrade.buildLabel=preflight-test")
	runDir := filepath.Join(dir, "run")
	env := upgrade.PreflightEnv(os.Environ(), upgrade.StateVersion)
	check := func(args []string, env []string) (upgrade.Build, error) {
		return upgrade.Preflight(context.Background(), app, args, env, 30*time.Second)
	}

	for _, args := range [][]string{
		nil,
		{"run", "--workers", "2", "--listen", "127.0.0.1:0"},
		// What the master started by `start --daemon` runs with (daemonArgs).
		{"run", "--name", "reloadapp", "--workers", "2", "--listen", "127.0.0.1:0", "--run-dir", runDir},
		// A start command line is checked as the master it would start, here.
		{"start", "--daemon", "--workers", "2", "--log-dir", filepath.Join(dir, "logs"), "--run-dir", runDir},
	} {
		b, err := check(args, env)
		if err != nil {
			t.Fatalf("preflight of %q: %v", args, err)
		}
		if b.Version != "preflight-test" || b.GoVersion == "" {
			t.Errorf("preflight of %q: build %+v; want the -X label as version", args, b)
		}
	}
	for _, p := range []string{runDir, filepath.Join(dir, "logs")} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("a preflight created %s", p)
		}
	}
	if left := processesMentioning(app); len(left) > 0 {
		t.Errorf("processes left by the preflights: %v", left)
	}

	prefix := "preflight of " + app + ": exited with status 1: "
	for _, c := range []struct {
		args []string
		env  []string
		want string
	}{
		{[]string{"run", "--bogus"}, env, "Error: unknown flag: --bogus"},
		{[]string{"--workers", "5000"}, env, "Error: brood: Config.Workers is 5000; want 0 (one per CPU) to 1024"},
		{[]string{"run", "--listen", "bogus://x"}, env, "Error: brood: "},
		{[]string{"stop"}, env, `Error: preflight: "reloadapp stop" runs no master`},
		{nil, upgrade.PreflightEnv(os.Environ(), 99), "Error: brood: cannot restore state version 99: this build reads state version 1"},
	} {
		_, err := check(c.args, c.env)
		if err == nil || !strings.HasPrefix(err.Error(), prefix+c.want) || strings.Contains(err.Error(), "\n") {
			t.Errorf("preflight of %q: %v; want one line starting %q", c.args, err, prefix+c.want)
		}
	}
}

// buildAppWith builds testdata/reloadapp with the given -ldflags into path.
func buildAppWith(t *testing.T, path, ldflags string) {
	t.Helper()
	tmp := path + ".tmp"
	cmd := exec.Command("go", "build", "-ldflags", ldflags, "-o", tmp, "./testdata/reloadapp")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if err := os.Rename(tmp, path); err != nil { // replace the file, as a deploy would
		t.Fatal(err)
	}
}
