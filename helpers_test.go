package brood_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/brood-go/brood"
	"github.com/brood-go/brood/internal/helperproc"
)

// registerHelpers declares the programs the tests run as real clusters. Each is a
// main function: the test binary re-enters it as master, agent and workers.
func registerHelpers() {
	helperproc.Register("hello", helloMain)
	helperproc.Register("fail-before-ready", failBeforeReadyMain)
	helperproc.Register("conformance", conformanceMain)
	helperproc.Register("scenario", scenarioMain)
	helperproc.Register("faults", faultsMain)
	helperproc.Register("chaos", chaosMain)
	helperproc.Register("sched", schedMain)
	helperproc.Register("logs", logsMain)
	helperproc.Register("churn", churnMain)
	helperproc.Register("metrics", metricsMain)
	helperproc.Register("orphans", orphansMain)
	helperproc.Register("fleet", fleetMain)
	helperproc.Register("leader", leaderMain)
	helperproc.Register("schedclock", schedClockMain)
	helperproc.Register("direct", directMain)
}

// helloConfig is a small HTTP cluster that records what it does in the events
// file: agent:init, agent:ready, worker:N:init, worker:N:ready, and
// <role>:<id>:brood-ready when the brood:ready event arrives.
func helloConfig() brood.Config {
	cfg := helloConfigBase()
	if d, err := time.ParseDuration(os.Getenv("HELLO_HEARTBEAT")); err == nil {
		// A hang is noticed at the second round after the child fell silent.
		cfg.HeartbeatInterval, cfg.HeartbeatTimeout = d, d*3/2
	}
	return cfg
}

func helloConfigBase() brood.Config {
	return brood.Config{
		Name:   "hello-test",
		Listen: []string{"127.0.0.1:0"},
		Logger: helperproc.Logger(),
		Agent: func(ctx context.Context, p *brood.Process) error {
			helperproc.Event("agent:init")
			if d, err := time.ParseDuration(os.Getenv("HELLO_AGENT_EXIT_AFTER")); err == nil {
				p.Go(func(context.Context) {
					time.Sleep(d) // the agent dies this long after its Ready
					os.Exit(3)
				})
			}
			p.Messenger().On(brood.ActionReady, func(brood.Message) { helperproc.Event("agent:0:brood-ready") })
			helperproc.Event("agent:ready")
			p.Ready()
			<-ctx.Done()
			return nil
		},
		Worker: func(ctx context.Context, p *brood.Process) error {
			helperproc.Event("worker:%d:init", p.ID())
			if f := os.Getenv("HELLO_FAIL_IF_EXISTS"); f != "" {
				if _, err := os.Stat(f); err == nil {
					return fmt.Errorf("worker %d refuses to start: %s exists", p.ID(), f)
				}
			}
			if d, err := time.ParseDuration(os.Getenv("HELLO_WORKER_DELAY")); err == nil {
				select { // a slow initialisation
				case <-time.After(d):
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			p.Messenger().On(brood.ActionReady, func(brood.Message) { helperproc.Event("worker:%d:brood-ready", p.ID()) })
			mux := http.NewServeMux()
			mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, "worker %d pid %d\n", p.ID(), os.Getpid())
			})
			mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
				ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
				helperproc.Event("slow:start:%d", os.Getpid())
				time.Sleep(time.Duration(ms) * time.Millisecond) // the work a slow request does
				fmt.Fprintf(w, "slow done by pid %d\n", os.Getpid())
			})
			mux.HandleFunc("/ignore-sigterm", func(w http.ResponseWriter, r *http.Request) {
				signal.Ignore(syscall.SIGTERM) // a worker that will not stop
				fmt.Fprintf(w, "pid %d ignores SIGTERM\n", os.Getpid())
			})
			helperproc.Event("worker:%d:ready", p.ID())
			return brood.ServeHTTP(ctx, p, &http.Server{Handler: mux})
		},
	}
}

func helloMain() { brood.Main(helloConfig()) }

// failBeforeReadyMain: worker 2 cannot initialise.
func failBeforeReadyMain() {
	cfg := helloConfig()
	serve := cfg.Worker
	cfg.Worker = func(ctx context.Context, p *brood.Process) error {
		if p.ID() == 2 {
			return errors.New("database at db.internal:5432 unreachable")
		}
		return serve(ctx, p)
	}
	brood.Main(cfg)
}
