package master

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

	"github.com/brood-go/brood/internal/wire"
)

// RunWithSignals runs the cluster in the foreground: SIGTERM or SIGINT stops
// it gracefully, a second SIGINT forces it, SIGHUP reloads every worker,
// SIGUSR1 rotates and reopens log files, SIGUSR2 upgrades the master in
// place (see upgrade.go). Started by `start --daemon`, it
// reports readiness (or the start error) on the pipe named by
// wire.EnvNotifyFD. It returns Run's error if the start failed, a *StopError
// if the stop was forced or had to kill a process after StopTimeout, and nil
// after a clean stop.
func RunWithSignals(ctx context.Context, cfg Config) error {
	notify := notifyPipe()
	onReady := cfg.OnReady
	cfg.OnReady = func(st wire.Status) {
		notify.ready(st)
		if onReady != nil {
			onReady(st)
		}
	}
	m, err := New(cfg)
	if err != nil {
		notify.failed(err)
		return err
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGUSR1, syscall.SIGUSR2)
	defer signal.Stop(sigs)
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	force := make(chan struct{})
	var forceOnce sync.Once
	done := make(chan struct{})
	var watching sync.WaitGroup
	defer watching.Wait()
	defer close(done)
	watching.Go(func() {
		stopping := false
		for {
			select {
			case <-done:
				return
			case sig := <-sigs:
				switch {
				case sig == syscall.SIGHUP:
					m.ReloadInBackground("SIGHUP")
				case sig == syscall.SIGUSR2:
					m.goOwned("upgrade", func() {
						// Upgrade returns only if the upgrade was not done.
						m.log.Error("SIGUSR2: upgrade not done", "err", m.Upgrade(ctx, wire.UpgradeRequest{}, nil))
					})
				case sig == syscall.SIGUSR1:
					m.goOwned("log rotation", func() {
						if err := m.RotateLogs("SIGUSR1"); err != nil {
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
	})
	if err := m.Run(ctx, force); err != nil {
		notify.failed(err)
		return err
	}
	return m.stopResult()
}

// notifier is the write end of `start --daemon`'s readiness pipe, or nothing.
type notifier struct{ f *os.File }

func notifyPipe() notifier {
	v := os.Getenv(wire.EnvNotifyFD)
	os.Unsetenv(wire.EnvNotifyFD)
	fd, err := strconv.Atoi(v)
	if v == "" || err != nil {
		return notifier{}
	}
	return notifier{os.NewFile(uintptr(fd), "notify")}
}

func (n notifier) ready(st wire.Status) {
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
