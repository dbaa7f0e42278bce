package brood

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/brood-go/brood/internal/master"
	"github.com/brood-go/brood/internal/upgrade"
)

// Check mode (a preflight, DESIGN §12). Before a master re-executes a new
// binary in place, it runs that binary with its own command line and
// environment plus BROOD_PREFLIGHT=1 and BROOD_STATE_VERSION (see
// upgrade.Preflight). In that mode Main and Run only check: they resolve the
// Config as `run` would (the command line through the CLI, so an unknown
// flag fails with the CLI's message; the defaults; every check New does
// before it creates anything), confirm that this build can restore the state
// format BROOD_STATE_VERSION names, print the build (upgrade.Build) as one
// JSON line on stdout and exit 0; on any failure they print one line on
// stderr and exit 1. Nothing is opened, no run dir is touched, no process or
// goroutine is started.
//
// The master started by `start --daemon` runs with `run <the options>`
// (internal/cli daemonArgs), so its preflight is that of `run`. A preflight
// of a `start` command line, with or without --daemon, checks what that
// master would run and detaches nothing; any command that runs no master
// (stop, status, reload, ...) fails the check.

// preflightMode reports whether this process is a preflight.
func preflightMode() bool { return os.Getenv(upgrade.EnvPreflight) == "1" }

// preflight checks cfg as a master about to start with it would.
func preflight(cfg Config) (upgrade.Build, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return upgrade.Build{}, err
	}
	if err := master.Check(cfg.master()); err != nil {
		return upgrade.Build{}, err
	}
	if err := upgrade.CheckStateVersion(os.Getenv(upgrade.EnvStateVersion)); err != nil {
		return upgrade.Build{}, fmt.Errorf("brood: %w", err)
	}
	return upgrade.CurrentBuild(), nil
}

// printBuild writes b as the preflight's one JSON line.
func printBuild(w io.Writer, b upgrade.Build) error {
	line, err := json.Marshal(b)
	if err != nil {
		return fmt.Errorf("brood: preflight: %w", err)
	}
	_, err = fmt.Fprintf(w, "%s\n", line)
	return err
}

// preflightCode is the preflight of Run: the check, its output, the exit code.
func preflightCode(cfg Config, stdout, stderr io.Writer) int {
	b, err := preflight(cfg)
	if err == nil {
		err = printBuild(stdout, b)
	}
	if err != nil {
		fmt.Fprintln(stderr, "Error:", strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; "))
		return 1
	}
	return 0
}
