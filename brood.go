package brood

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/brood-go/brood/internal/control"

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
		DefaultRunDir: DefaultRunDir,
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
// gracefully, a second SIGINT forces it, SIGHUP reloads every worker, SIGUSR1
// rotates and reopens log files. Started
// by `start --daemon`, it reports readiness (or the start error) on the pipe
// named by BROOD_NOTIFY_FD.
func runWithSignals(ctx context.Context, cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	setProcessName(cfg.Name + " master")
	notify := notifyPipe()
	m, err := newMaster(cfg)
	if err != nil {
		notify.failed(err)
		return err
	}
	m.hooks.onReady = func(m *master) { notify.ready(m.status()) }

	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGUSR1)
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
				case sig == syscall.SIGHUP:
					m.reloadInBackground("SIGHUP")
				case sig == syscall.SIGUSR1:
					m.goOwned(func() {
						if err := m.rotateLogs("SIGUSR1"); err != nil {
							m.log.Error("log rotation", "err", err)
						}
					})
				case !stopping:
					stopping = true
					cancel(fmt.Errorf("received %v", sig))
				case sig == syscall.SIGINT:
					forceOnce.Do(func() { close(force) })
				}
			}
		}
	}()
	err = m.run(ctx, force)
	if err != nil {
		notify.failed(err)
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

// notifier is the write end of `start --daemon`'s readiness pipe, or nothing.
type notifier struct{ f *os.File }

func notifyPipe() notifier {
	v := os.Getenv(cli.EnvNotifyFD)
	os.Unsetenv(cli.EnvNotifyFD)
	fd, err := strconv.Atoi(v)
	if v == "" || err != nil {
		return notifier{}
	}
	return notifier{os.NewFile(uintptr(fd), "notify")}
}

func (n notifier) ready(st control.Status) {
	if n.f == nil {
		return
	}
	b, _ := json.Marshal(st)
	n.f.Write(append(append([]byte("ready "), b...), '\n'))
	n.f.Close()
}

func (n notifier) failed(err error) {
	if n.f == nil {
		return
	}
	n.f.Write([]byte("error " + strings.ReplaceAll(err.Error(), "\n", " ") + "\n"))
	n.f.Close()
}

// runCluster runs a master (with cfg.Single, over goroutine children).
func runCluster(ctx context.Context, cfg Config, force <-chan struct{}) error {
	m, err := newMaster(cfg)
	if err != nil {
		return err
	}
	return m.run(ctx, force)
}
