// Package cli is the command tree every brood program gets through brood.Main.
// It knows nothing of clusters: package brood hands it the actions to run.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Exit codes, defined here once (the README lists them). The foreground
// master's (`run`, the default: a systemd unit's or a container's main
// process, pid 1 or not) says why it ended:
//
//	0    stopped gracefully (SIGTERM, SIGINT, `stop`): every process stopped in time
//	1    the start failed, or was interrupted by a stop, and nothing is left running
//	2    bad flags or arguments
//	4    stopped, but some process did not stop within StopTimeout and was killed
//	130  a forced stop (a second SIGINT) killed what was still draining
//
// The other commands exit 0, 1 when they fail, 2 on bad usage, and 3 when no
// instance is running (status, events, schedule list). A forced stop that
// also had processes killed after StopTimeout is 130.
const (
	ExitOK          = 0
	ExitFailure     = 1 // the command failed; a start that fails is not worth retrying blindly
	ExitUsage       = 2 // bad flags or arguments
	ExitNotRunning  = 3 // status: no instance is running (LSB)
	ExitStopKilled  = 4 // run: the cluster stopped, but a process had to be killed after StopTimeout
	ExitInterrupted = 130
)

// Options are the settings shared by every command. Flags override the
// environment (BROOD_*), which overrides the program's Config.
type Options struct {
	Name        string
	Workers     int
	Listen      []string
	RunDir      string
	StopTimeout time.Duration
	Single      bool
	RelayOnly   bool
	Admin       string
	DrainDelay  time.Duration

	// The fleet (see brood.Config.Fleet).
	Fleet                                 string
	FleetUser, FleetPassword, FleetToken  string
	FleetCreds                            string
	FleetTLSCA, FleetTLSCert, FleetTLSKey string
	FleetOptional                         bool
	FleetLeaseTTL                         time.Duration
	Node                                  string
}

// App is what package brood plugs into the command tree.
type App struct {
	Defaults Options
	// Run runs the cluster in the foreground until ctx is done. An
	// *ExitError it returns sets the exit code; any other error exits 1.
	Run func(ctx context.Context, opts Options) error
	// DefaultRunDir is the run dir of a cluster named name when --run-dir is unset.
	DefaultRunDir func(name string) string
	// Stdout and Stderr default to the process's.
	Stdout, Stderr io.Writer
	// Preflight is check mode (upgrade.EnvPreflight): the command line is
	// parsed as usual, so a bad flag fails with cobra's own message; the
	// commands that run a master in this process (run, the default, and
	// start, which does not detach then even with --daemon) call Run, which
	// checks instead of running; every other command is refused. Any
	// failure is one line on Stderr and exit code 1.
	Preflight bool
}

// ExitError carries an exit code through cobra.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// Execute runs the command line args (without the program name) and returns the
// exit code.
func Execute(ctx context.Context, app App, args []string) int {
	if app.Stdout == nil {
		app.Stdout = os.Stdout
	}
	if app.Stderr == nil {
		app.Stderr = os.Stderr
	}
	root := newRoot(ctx, &app)
	root.SetArgs(args)
	root.SetOut(app.Stdout)
	root.SetErr(app.Stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	if app.Preflight {
		// One line, whatever failed: the upgrading master shows the last one.
		fmt.Fprintln(app.Stderr, "Error:", strings.ReplaceAll(strings.TrimSpace(err.Error()), "\n", "; "))
		return ExitFailure
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		if ee.Err != nil {
			fmt.Fprintln(app.Stderr, "Error:", ee.Err)
		}
		return ee.Code
	}
	// cobra's own errors: unknown flag or command, bad argument.
	fmt.Fprintln(app.Stderr, "Error:", err)
	fmt.Fprintf(app.Stderr, "Run '%s --help' for usage.\n", root.CommandPath())
	return ExitUsage
}

func newRoot(ctx context.Context, app *App) *cobra.Command {
	opts := app.Defaults
	name := opts.Name
	root := &cobra.Command{
		Use:           name,
		Short:         name + ": a brood cluster (master, agent, workers)",
		Long:          name + " runs as a brood cluster: one master that manages processes, an optional agent for background work, and N workers sharing the listeners.\nWithout a command it runs in the foreground, like '" + name + " run'.",
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
	}
	pf := root.PersistentFlags()
	pf.StringVar(&opts.Name, "name", opts.Name, "application name: process titles, run-dir files, logs (env BROOD_NAME)")
	pf.IntVarP(&opts.Workers, "workers", "w", opts.Workers, "number of worker processes; 0 = one per CPU (env BROOD_WORKERS)")
	pf.StringSliceVarP(&opts.Listen, "listen", "l", opts.Listen, "listen address, repeatable or comma-separated: :7001, tcp://127.0.0.1:0, unix:///run/app.sock (env BROOD_LISTEN)")
	pf.StringVar(&opts.RunDir, "run-dir", opts.RunDir, "directory for the control socket and pid file (env BROOD_RUN_DIR)")
	pf.DurationVar(&opts.StopTimeout, "stop-timeout", opts.StopTimeout, "time a process gets to drain before SIGKILL (env BROOD_STOP_TIMEOUT)")
	pf.StringVar(&opts.Admin, "admin", opts.Admin, "admin listener of the master: /metrics, /livez, /readyz, /events and a dashboard at /; 127.0.0.1:9090, :9090 or unix:///run/app-admin.sock; empty = off (env BROOD_ADMIN)")
	pf.DurationVar(&opts.DrainDelay, "drain-delay", opts.DrainDelay, "on a stop, time workers keep serving after /readyz turns 503, before they drain (Kubernetes endpoint removal; env BROOD_DRAIN_DELAY)")
	pf.StringVar(&opts.Fleet, "fleet", opts.Fleet, "join the fleet of clusters of this name over NATS: server URLs, comma-separated (nats://host:4222); empty = off (env BROOD_FLEET)")
	pf.StringVar(&opts.Node, "node", opts.Node, "this member's id in the fleet; default <hostname>:<run dir> (env BROOD_NODE)")
	pf.StringVar(&opts.FleetUser, "fleet-user", opts.FleetUser, "NATS user (env BROOD_FLEET_USER)")
	pf.StringVar(&opts.FleetPassword, "fleet-password", opts.FleetPassword, "NATS password; prefer env BROOD_FLEET_PASSWORD, argv is visible to every user")
	pf.StringVar(&opts.FleetToken, "fleet-token", opts.FleetToken, "NATS token; prefer env BROOD_FLEET_TOKEN")
	pf.StringVar(&opts.FleetCreds, "fleet-creds", opts.FleetCreds, "NATS .creds file (JWT and NKey seed) (env BROOD_FLEET_CREDS)")
	pf.StringVar(&opts.FleetTLSCA, "fleet-tls-ca", opts.FleetTLSCA, "CA bundle to verify the NATS server with (env BROOD_FLEET_TLS_CA)")
	pf.StringVar(&opts.FleetTLSCert, "fleet-tls-cert", opts.FleetTLSCert, "client certificate for the NATS server (env BROOD_FLEET_TLS_CERT)")
	pf.StringVar(&opts.FleetTLSKey, "fleet-tls-key", opts.FleetTLSKey, "key of the client certificate (env BROOD_FLEET_TLS_KEY)")
	pf.BoolVar(&opts.FleetOptional, "fleet-optional", opts.FleetOptional, "start even if no fleet server can be reached, and keep trying (env BROOD_FLEET_OPTIONAL)")
	pf.DurationVar(&opts.FleetLeaseTTL, "fleet-lease-ttl", opts.FleetLeaseTTL, "lifetime of the fleet's leader and singleton leases; 0 = 10s (env BROOD_FLEET_LEASE_TTL)")
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		if app.Preflight && cmd != root && cmd.Name() != "run" && cmd.Name() != "start" {
			return fmt.Errorf("preflight: %q runs no master; check the command line the master runs with (run ...)", cmd.CommandPath())
		}
		return applyEnv(cmd.Flags(), &opts)
	}

	runCmd := &cobra.Command{
		Use:   "run",
		Short: "Run the cluster in the foreground (the default)",
		Long:  "Run the cluster in the foreground, logging to standard error. SIGTERM or Ctrl-C stops it gracefully; a second Ctrl-C forces it.",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runForeground(cmd.Context(), app, opts)
		},
	}
	runCmd.Flags().BoolVar(&opts.Single, "single", opts.Single, "run the agent and one worker in this process (development; env BROOD_SINGLE)")
	runCmd.Flags().BoolVar(&opts.RelayOnly, "relay-only", opts.RelayOnly, "send every message through the master: no direct agent-worker channels (env BROOD_RELAY_ONLY)")
	root.Flags().AddFlagSet(runCmd.Flags())
	root.RunE = runCmd.RunE
	root.AddCommand(runCmd, newStartCmd(app, &opts), newStopCmd(app, &opts), newStatusCmd(app, &opts), newReloadCmd(app, &opts), newUpgradeCmd(app, &opts), newScaleCmd(app, &opts),
		newScheduleCmd(app, &opts), newRotateLogsCmd(app, &opts), newEventsCmd(app, &opts), newUnitCmd(app, &opts))
	return root
}

// runForeground runs the cluster. An *ExitError from app.Run keeps its code
// (how a stop went); any other error is a failed start.
func runForeground(ctx context.Context, app *App, opts Options) error {
	err := app.Run(ctx, opts)
	if err == nil || errors.As(err, new(*ExitError)) {
		return err
	}
	return &ExitError{Code: ExitFailure, Err: err}
}

// applyEnv fills options whose flags were not given from BROOD_* variables.
func applyEnv(fs *pflag.FlagSet, opts *Options) error {
	env := func(flag, key string, set func(string) error) error {
		if fs.Lookup(flag) == nil || fs.Changed(flag) {
			return nil
		}
		v, ok := os.LookupEnv(key)
		if !ok || v == "" {
			return nil
		}
		if err := set(v); err != nil {
			return fmt.Errorf("%s=%q: %w", key, v, err)
		}
		return nil
	}
	return errors.Join(
		env("name", "BROOD_NAME", func(v string) error { opts.Name = v; return nil }),
		env("workers", "BROOD_WORKERS", func(v string) (err error) { opts.Workers, err = strconv.Atoi(v); return }),
		env("listen", "BROOD_LISTEN", func(v string) error { opts.Listen = strings.Split(v, ","); return nil }),
		env("run-dir", "BROOD_RUN_DIR", func(v string) error { opts.RunDir = v; return nil }),
		env("stop-timeout", "BROOD_STOP_TIMEOUT", func(v string) (err error) { opts.StopTimeout, err = time.ParseDuration(v); return }),
		env("drain-delay", "BROOD_DRAIN_DELAY", func(v string) (err error) { opts.DrainDelay, err = time.ParseDuration(v); return }),
		env("admin", "BROOD_ADMIN", func(v string) error { opts.Admin = v; return nil }),
		env("single", "BROOD_SINGLE", func(v string) (err error) { opts.Single, err = strconv.ParseBool(v); return }),
		env("relay-only", "BROOD_RELAY_ONLY", func(v string) (err error) { opts.RelayOnly, err = strconv.ParseBool(v); return }),
		env("fleet", "BROOD_FLEET", func(v string) error { opts.Fleet = v; return nil }),
		env("node", "BROOD_NODE", func(v string) error { opts.Node = v; return nil }),
		env("fleet-user", "BROOD_FLEET_USER", func(v string) error { opts.FleetUser = v; return nil }),
		env("fleet-password", "BROOD_FLEET_PASSWORD", func(v string) error { opts.FleetPassword = v; return nil }),
		env("fleet-token", "BROOD_FLEET_TOKEN", func(v string) error { opts.FleetToken = v; return nil }),
		env("fleet-creds", "BROOD_FLEET_CREDS", func(v string) error { opts.FleetCreds = v; return nil }),
		env("fleet-tls-ca", "BROOD_FLEET_TLS_CA", func(v string) error { opts.FleetTLSCA = v; return nil }),
		env("fleet-tls-cert", "BROOD_FLEET_TLS_CERT", func(v string) error { opts.FleetTLSCert = v; return nil }),
		env("fleet-tls-key", "BROOD_FLEET_TLS_KEY", func(v string) error { opts.FleetTLSKey = v; return nil }),
		env("fleet-optional", "BROOD_FLEET_OPTIONAL", func(v string) (err error) { opts.FleetOptional, err = strconv.ParseBool(v); return }),
		env("fleet-lease-ttl", "BROOD_FLEET_LEASE_TTL", func(v string) (err error) { opts.FleetLeaseTTL, err = time.ParseDuration(v); return }),
	)
}
