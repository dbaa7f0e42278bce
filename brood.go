package brood

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"sync"
	"syscall"

	"github.com/brood-go/brood/internal/cli"
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
func Run(ctx context.Context, cfg Config) error {
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
// exits. In a child process it runs the child and exits with 0 after a clean
// stop, 1 after an error and 2 after a panic.
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
		Defaults: cli.Options{Name: cfg.Name, Workers: cfg.Workers, Listen: cfg.Listen, RunDir: cfg.RunDir, StopTimeout: cfg.StopTimeout, Single: cfg.Single},
		Run: func(ctx context.Context, opts cli.Options) error {
			return runWithSignals(ctx, cfg.withOptions(opts))
		},
	}
	if app.Defaults.Name == "" {
		app.Defaults.Name = defaultName()
	}
	return cli.Execute(ctx, app, args)
}

func (c Config) withOptions(o cli.Options) Config {
	c.Name, c.Workers, c.Listen, c.RunDir, c.StopTimeout, c.Single = o.Name, o.Workers, o.Listen, o.RunDir, o.StopTimeout, o.Single
	return c
}

// runWithSignals runs the cluster in the foreground: SIGTERM or SIGINT stops it
// gracefully, a second SIGINT forces it.
func runWithSignals(ctx context.Context, cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	force := make(chan struct{})
	var forceOnce sync.Once
	done := make(chan struct{})
	defer close(done)
	go func() {
		stopping := false
		for {
			select {
			case <-done:
				return
			case sig := <-sigs:
				switch {
				case !stopping:
					stopping = true
					cancel(fmt.Errorf("received %v", sig))
				case sig == syscall.SIGINT:
					forceOnce.Do(func() { close(force) })
				}
			}
		}
	}()
	return runCluster(ctx, cfg, force)
}

// runCluster runs a master (or, with cfg.Single, the single-process cluster).
func runCluster(ctx context.Context, cfg Config, force <-chan struct{}) error {
	if cfg.Single {
		return runSingle(ctx, cfg, force)
	}
	m, err := newMaster(cfg)
	if err != nil {
		return err
	}
	return m.run(ctx, force)
}
