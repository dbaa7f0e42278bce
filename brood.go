package brood

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/brood-go/brood/internal/cli"
	"github.com/brood-go/brood/internal/master"
)

// Run runs the cluster described by cfg in the foreground until ctx is done,
// then stops it gracefully: workers drain, then the agent stops, then the
// listeners close. It returns an error if the cluster could not start (a
// listener, or a child that failed or timed out before Ready: nothing is left
// running) and nil after a clean stop.
//
// Run is also the entry point of the child processes: the master starts its own
// executable again, and in a child Run sees the role in the environment and runs
// cfg.Agent or cfg.Worker instead. Call Run (or Main) early in main, with the same
// cfg in every process. In a child, Run handles signals itself: SIGTERM stops it
// gracefully; SIGINT and SIGHUP are ignored, because the master orchestrates.
//
// Run installs no signal handlers in the master; Main does.
//
// In check mode (BROOD_PREFLIGHT=1: an upgrading master preflights this
// binary, see preflight.go) Run checks cfg instead, prints this build as one
// JSON line and exits the process: 0 if a master could start with cfg, 1 with
// the reason on stderr if not. It never returns then, so that nothing the
// program does after Run happens in a check.
func Run(ctx context.Context, cfg Config) error {
	if preflightMode() && !isChild() {
		os.Exit(preflightCode(cfg, os.Stdout, os.Stderr))
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	if isChild() {
		return runChildProcess(ctx, cfg)
	}
	return runCluster(ctx, cfg, nil)
}

// Main is the whole program for a brood application: it parses the command line
// (run, the default; see the README for every command and flag), runs it, and
// exits. The master's exit code says why it ended: 0 after a graceful stop, 1
// if the start failed, 2 for bad usage, 4 if a process had to be killed after
// StopTimeout, 130 after a forced stop (the README's "Exit codes"). In a child
// process it runs the child and exits with 0 after a clean stop, 1 after an
// error and 2 after a panic. In check mode (BROOD_PREFLIGHT=1, see Run) it
// checks the command line and cfg and exits 0 or 1.
func Main(cfg Config) {
	os.Exit(mainCode(context.Background(), cfg, os.Args[1:]))
}

func mainCode(ctx context.Context, cfg Config, args []string) int {
	if isChild() {
		cfg, err := cfg.withDefaults()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return cli.ExitFailure
		}
		return childExitCode(runChildProcess(ctx, cfg))
	}
	app := cli.App{
		Defaults: cli.Options{Name: cfg.Name, Workers: cfg.Workers, Listen: cfg.Listen, RunDir: cfg.RunDir, StopTimeout: cfg.StopTimeout, Single: cfg.Single, RelayOnly: cfg.RelayOnly, Admin: cfg.Admin, DrainDelay: cfg.DrainDelay,
			Fleet: cfg.Fleet, Node: cfg.Node, FleetOptional: cfg.FleetOptional, FleetLeaseTTL: cfg.FleetLeaseTTL,
			FleetUser: cfg.FleetAuth.User, FleetPassword: cfg.FleetAuth.Password, FleetToken: cfg.FleetAuth.Token, FleetCreds: cfg.FleetAuth.Creds,
			FleetTLSCA: cfg.FleetAuth.TLSCA, FleetTLSCert: cfg.FleetAuth.TLSCert, FleetTLSKey: cfg.FleetAuth.TLSKey},
		Run: func(ctx context.Context, opts cli.Options) error {
			return runWithSignals(ctx, cfg.withOptions(opts))
		},
		DefaultRunDir: DefaultRunDir,
	}
	if preflightMode() {
		// Check mode: the command line as `run` parses it, checked, not run.
		app.Preflight = true
		app.Run = func(_ context.Context, opts cli.Options) error {
			b, err := preflight(cfg.withOptions(opts))
			if err != nil {
				return err
			}
			return printBuild(os.Stdout, b)
		}
	}
	if app.Defaults.Name == "" {
		app.Defaults.Name = defaultName()
	}
	return cli.Execute(ctx, app, args)
}

func (c Config) withOptions(o cli.Options) Config {
	c.Name, c.Workers, c.Listen, c.RunDir, c.StopTimeout, c.Single, c.Admin, c.DrainDelay = o.Name, o.Workers, o.Listen, o.RunDir, o.StopTimeout, o.Single, o.Admin, o.DrainDelay
	c.RelayOnly = o.RelayOnly
	c.Fleet, c.Node, c.FleetOptional, c.FleetLeaseTTL = o.Fleet, o.Node, o.FleetOptional, o.FleetLeaseTTL
	c.FleetAuth = FleetAuth{User: o.FleetUser, Password: o.FleetPassword, Token: o.FleetToken, Creds: o.FleetCreds,
		TLSCA: o.FleetTLSCA, TLSCert: o.FleetTLSCert, TLSKey: o.FleetTLSKey}
	return c
}

// masterProcs is the GOMAXPROCS of a master (not in single-process mode)
// whose environment does not set GOMAXPROCS. The master only manages and
// relays, as Egg's single-threaded one does; with one P the goroutines that
// hand a message on to each other (a child's reader, the fleet's NATS
// connection, the writers) run on one thread in turn, instead of waking
// another thread each time (a futex wake and a CPU the workers want).
// bench/RESULTS.md has what it changed (the fleet's round trip above all).
// The master's low-priority work (internal/aside: a scrape's decoding and
// merging) gets a second P while it runs. A program whose master relays much
// (worker-to-worker broadcasts on many cores) can set GOMAXPROCS, which its
// workers then inherit.
const masterProcs = 1

// masterGOMAXPROCS says what the master sets GOMAXPROCS to, if anything: in
// single-process mode the master runs the program's code and keeps Go's
// default, and a GOMAXPROCS in the environment is the operator's choice.
func masterGOMAXPROCS(single bool, lookupEnv func(string) (string, bool)) (int, bool) {
	if _, set := lookupEnv("GOMAXPROCS"); set || single {
		return 0, false
	}
	return masterProcs, true
}

// runWithSignals runs the cluster in the foreground with the master's signal
// handling (see master.RunWithSignals): SIGTERM or SIGINT stops it gracefully,
// a second SIGINT forces it, SIGHUP reloads every worker, SIGUSR1 rotates and
// reopens log files, SIGUSR2 re-executes the master in place (upgrade).
// Started by `start --daemon`, it reports readiness (or the start error) to
// the waiting `start`. A stop that was forced, or had to kill
// a process after StopTimeout, is an *cli.ExitError with its exit code.
func runWithSignals(ctx context.Context, cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	setProcessName(cfg.Name + " master")
	if n, ok := masterGOMAXPROCS(cfg.Single, os.LookupEnv); ok {
		runtime.GOMAXPROCS(n)
	}
	err = master.RunWithSignals(ctx, cfg.master())
	var se *master.StopError
	if errors.As(err, &se) {
		code := cli.ExitStopKilled
		if se.Forced {
			code = cli.ExitInterrupted
		}
		return &cli.ExitError{Code: code, Err: err}
	}
	return err
}

// setProcessName sets the process's name as `ps -e`, top and pgrep show it
// (the thread-group leader's comm, at most 15 bytes). The command line of
// children is set too (argv[0] "<name> worker 2"); a master run from a shell
// keeps the command line it was given, one started by `start --daemon` gets
// "<name> master". (Re-executing the master to change its command line would
// cost a second runtime start on the path to the first request.)
func setProcessName(name string) {
	if len(name) > 15 {
		name = name[:15]
	}
	_ = os.WriteFile("/proc/self/comm", []byte(name), 0)
}

// runCluster runs a master (with cfg.Single, over goroutine children).
func runCluster(ctx context.Context, cfg Config, force <-chan struct{}) error {
	m, err := master.New(cfg.master())
	if err != nil {
		return err
	}
	return m.Run(ctx, force)
}

// runInMemory runs cfg.Workers workers and the agent as goroutines over
// in-memory pipes (single-process mode without the one-worker limit). Tests use
// it to run the same conformance suite over both transports.
func runInMemory(ctx context.Context, cfg Config, force <-chan struct{}) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	workers := cfg.Workers
	cfg.Single = true
	mc := cfg.master()
	mc.Workers = workers
	m, err := master.New(mc)
	if err != nil {
		return err
	}
	return m.Run(ctx, force)
}
