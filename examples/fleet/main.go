// Command fleet shows a brood fleet: clusters of the same name joined over
// NATS. Each member's agent broadcasts to every process of every member and
// asks one worker somewhere in the fleet who it is; the workers answer. One
// agent at a time leads the fleet (Fleet.OnLeader: stop its member and
// another takes over), and a OneInFleet schedule runs every 5 s on one worker
// of one member.
//
// Without --fleet it is the whole demo on this machine: it starts an embedded
// NATS server (JetStream on, a temporary store) and three members, each a
// copy of this program with its own run dir and node id, and stops them all
// on Ctrl-C:
//
//	go run ./examples/fleet
//
// With --fleet it is one member, for a NATS server you run yourself (several
// terminals, or several machines):
//
//	nats-server -js &
//	go run ./examples/fleet --fleet nats://127.0.0.1:4222 --node a --run-dir /tmp/fleet-a
//	go run ./examples/fleet --fleet nats://127.0.0.1:4222 --node b --run-dir /tmp/fleet-b
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/brood-go/brood"
	"github.com/nats-io/nats-server/v2/server"
)

func config() brood.Config {
	return brood.Config{
		Name:    "fleet-demo",
		Workers: 2,
		Agent: func(ctx context.Context, p *brood.Process) error {
			f := p.Fleet()
			p.Messenger().On("hello", func(m brood.Message) {
				var text string
				_ = m.Decode(&text)
				p.Logger().Info("fleet broadcast", "from_node", m.Node, "from_pid", m.From, "text", text)
			})
			p.Go(func(ctx context.Context) {
				t := time.NewTicker(3 * time.Second)
				defer t.Stop()
				for n := 1; ; n++ {
					select {
					case <-ctx.Done():
						return
					case <-t.C:
					}
					if err := f.Broadcast("hello", fmt.Sprintf("hello #%d from %s", n, f.Node())); err != nil {
						p.Logger().Warn("fleet broadcast", "err", err)
					}
					rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
					reply, err := f.Request(rctx, "whoami", nil)
					cancel()
					switch {
					case errors.Is(err, brood.ErrNoResponders):
						p.Logger().Info("fleet request: no worker anywhere in the fleet yet")
					case err != nil:
						p.Logger().Warn("fleet request", "err", err)
					default:
						var who string
						_ = reply.Decode(&who)
						p.Logger().Info("fleet request answered", "by_node", reply.Node, "by_pid", reply.From, "answer", who)
					}
				}
			})
			// One member's agent at a time leads the fleet.
			f.OnLeader(func(ctx context.Context) {
				token, _ := brood.LeaderToken(ctx)
				p.Logger().Info("this member leads the fleet", "token", token)
				<-ctx.Done()
				p.Logger().Info("this member no longer leads the fleet", "token", token)
			})
			p.Ready()
			<-ctx.Done()
			return nil
		},
		// Each tick of this schedule runs once in the whole fleet.
		Schedules: []brood.Schedule{{
			Name: "fleet-report", Every: 5 * time.Second, Type: brood.OneInFleet,
			Task: func(ctx context.Context, p *brood.Process) error {
				at, _ := brood.TickTime(ctx)
				p.Logger().Info("one-in-fleet tick: only this worker in the fleet runs it", "tick", at.Format(time.TimeOnly))
				return nil
			},
		}},
		Worker: func(ctx context.Context, p *brood.Process) error {
			p.Messenger().On("hello", func(m brood.Message) {
				p.Logger().Debug("fleet broadcast", "from_node", m.Node)
			})
			p.Messenger().On("whoami", func(m brood.Message) {
				_ = m.Reply(fmt.Sprintf("worker %d (pid %d) of %s, asked by %s", p.ID(), p.PID(), p.Fleet().Node(), m.Node))
			})
			p.Ready()
			<-ctx.Done()
			return nil
		},
	}
}

func main() {
	// A brood child (BROOD_ROLE set), or a member given its server or any
	// command: one member.
	if os.Getenv("BROOD_ROLE") != "" || os.Getenv("BROOD_FLEET") != "" || len(os.Args) > 1 {
		brood.Main(config())
		return
	}
	if err := demo(); err != nil {
		fmt.Fprintln(os.Stderr, "fleet demo:", err)
		os.Exit(1)
	}
}

// demo runs an embedded NATS server and three members until Ctrl-C.
func demo() error {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	store, err := os.MkdirTemp("", "brood-fleet-demo")
	if err != nil {
		return err
	}
	defer os.RemoveAll(store)
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: filepath.Join(store, "nats"), NoSigs: true, NoLog: true})
	if err != nil {
		return err
	}
	ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(10 * time.Second) {
		return errors.New("the embedded NATS server did not start")
	}
	url := ns.ClientURL()
	log.Info("embedded NATS server", "url", url)

	exe, err := os.Executable()
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var wg sync.WaitGroup
	for _, node := range []string{"a", "b", "c"} {
		runDir := filepath.Join(store, node)
		if err := os.Mkdir(runDir, 0o700); err != nil {
			return err
		}
		cmd := exec.Command(exe, "run", "--fleet", url, "--node", node, "--run-dir", runDir)
		cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
		// Ctrl-C reaches the whole process group, members included: each
		// stops gracefully on its own.
		if err := cmd.Start(); err != nil {
			return err
		}
		log.Info("member started", "node", node, "pid", cmd.Process.Pid, "run_dir", runDir)
		wg.Go(func() {
			<-ctx.Done()
			_ = cmd.Process.Signal(syscall.SIGTERM)
		})
		wg.Go(func() { _ = cmd.Wait() })
	}
	<-ctx.Done()
	log.Info("stopping the members")
	wg.Wait()
	return nil
}
