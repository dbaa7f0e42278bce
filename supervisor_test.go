package brood_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/brood-go/brood"
	"github.com/brood-go/brood/internal/control"
	"github.com/brood-go/brood/internal/helperproc"
	"github.com/brood-go/brood/internal/wire"
)

// Regression tests for the supervisor: operations in every state, the fork
// thread, the first start's root cause, bad input. Each failed on the
// supervisor before it moved to internal/master.

// SIGHUP while a guarded-panic replacement is starting: the reload waits for
// it and completes. (It used to dereference the nil process replaceWith
// returned for a slot with a replacement in progress: the master died with
// exit 2 and every child got SIGTERM.)
func TestSIGHUPDuringGuardedPanicReplacement(t *testing.T) {
	slow := filepath.Join(t.TempDir(), "slow")
	c, addr := startFaults(t, "FAULTS_SLOW_START_FILE="+slow)
	if err := os.WriteFile(slow, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	client, pid := onWorker(t, addr)
	get(t, client, "http://"+addr+"/guarded-panic")
	c.WaitFor(10*time.Second, fmt.Sprintf("the replacement of pid %d to start", pid), helperproc.MasterMsg("replacing after a guarded panic"))
	c.Signal(syscall.SIGHUP)
	c.WaitFor(30*time.Second, "the reload to finish", helperproc.MasterMsg("reload done"))
	get(t, newConnClient(), "http://"+addr+"/")
	stopCluster(t, c)
}

// SIGHUP during the first start is refused with a message; the start goes on.
func TestSIGHUPDuringFirstStart(t *testing.T) {
	c := helperproc.Start(t, "hello", []string{"--workers", "2"}, helperproc.Options{Env: []string{"HELLO_WORKER_DELAY=1s"}})
	c.WaitFor(10*time.Second, "a worker to start", func(l helperproc.Line) bool {
		return helperproc.MasterMsg("started")(l) && l.Str("child_role") == "worker"
	})
	c.Signal(syscall.SIGHUP)
	l := c.WaitFor(10*time.Second, "the refusal", helperproc.MasterMsg("reload refused"))
	if !strings.Contains(l.Str("err"), "the cluster is starting") {
		t.Errorf("refusal %s: want it to say the cluster is starting", l.Raw)
	}
	addr := c.WaitReady(startTimeout)
	get(t, newConnClient(), "http://"+addr+"/")
	stopCluster(t, c)
}

// SIGTERM while a reload is replacing a worker, with idle keep-alive
// connections held: the reload ends with the stop, the master exits 0 and
// nothing is left.
func TestSIGTERMDuringReload(t *testing.T) {
	slow := filepath.Join(t.TempDir(), "slow")
	c, addr := startFaults(t, "FAULTS_SLOW_START_FILE="+slow)
	var idle []*http.Client
	for range 4 {
		client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1}}
		get(t, client, "http://"+addr+"/")
		idle = append(idle, client)
	}
	if err := os.WriteFile(slow, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	pids := c.AllPIDs()
	c.Signal(syscall.SIGHUP)
	c.WaitFor(10*time.Second, "a replacement to start", func(l helperproc.Line) bool {
		return helperproc.MasterMsg("started")(l) && l.Str("child_role") == "worker" && !slices.Contains(pids, l.Int("child_pid"))
	})
	c.Signal(syscall.SIGTERM)
	if code := c.Wait(20 * time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	if strings.Contains(c.Stderr(), "panic") {
		t.Fatalf("the master panicked:\n%s", c.Stderr())
	}
	c.WaitFor(time.Second, "the reload's end", func(l helperproc.Line) bool {
		return helperproc.MasterMsg("reload aborted; the remaining workers keep the old binary")(l) || helperproc.MasterMsg("reload done")(l)
	})
	requireAllGone(t, append(pids, c.AllPIDs()...), 5*time.Second)
	for _, cl := range idle {
		cl.CloseIdleConnections()
	}
}

// churnMain is hello with a master that keeps retiring OS threads: a
// goroutine that exits while locked to its thread ends that thread, and a
// child whose Pdeathsig was armed on it got SIGTERM. It records "churn N"
// every 100 threads.
func churnMain() {
	if os.Getenv("BROOD_ROLE") == "" { // the master
		go func() {
			var n atomic.Int64
			tick := time.NewTicker(time.Millisecond) // load, not synchronisation
			defer tick.Stop()
			for range tick.C {
				done := make(chan struct{})
				go func() {
					runtime.LockOSThread() // exits locked: the runtime ends this thread
					close(done)
				}()
				<-done
				if v := n.Add(1); v%100 == 0 {
					helperproc.Event("churn %d", v)
				}
			}
		}()
	}
	brood.Main(helloConfig())
}

// Children are forked from a thread that outlives them: a master whose other
// threads come and go never kills its own children.
func TestRetiredThreadsDoNotKillChildren(t *testing.T) {
	c := helperproc.Start(t, "churn", []string{"--workers", "2"})
	c.WaitReady(startTimeout)
	c.WaitEvents(30*time.Second, "500 threads retired", 1, hasPrefix("churn 500"))
	for _, l := range c.Lines() {
		if l.Str("role") == "master" && (l.Msg() == "crashed" || l.Msg() == "crashed during the start") {
			t.Errorf("a child died while the master retired threads: %s", l.Raw)
		}
	}
	stopCluster(t, c)
}

// When the first start fails, the error is the failing process's own, never
// that of a process stopped because of it: here worker 1 reports Ready only
// once it is told to stop, which is how a start abandoned in the same instant
// as that process's Ready looked.
func TestFirstStartReportsRootCause(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	err := brood.RunInMemory(ctx, brood.Config{
		Name: "rootcause", Workers: 2, RunDir: helperproc.ShortTempDir(t), Logger: slog.New(slog.DiscardHandler),
		Worker: func(ctx context.Context, p *brood.Process) error {
			if p.ID() == 2 {
				return errors.New("database at db.internal:5432 unreachable")
			}
			<-ctx.Done()
			p.Ready() // in the instant the start is abandoned
			return nil
		},
	})
	if err == nil || !strings.Contains(err.Error(), "start worker 2") || !strings.Contains(err.Error(), "database at db.internal:5432 unreachable") {
		t.Fatalf("start error %v, want worker 2's own", err)
	}
}

// Bad input prints one clear error and nothing else.
func TestBadInputPrintsOneError(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--listen", "foo://bar"}, `unsupported network "foo"`},
		{[]string{"--workers", "-1"}, "Config.Workers is -1"},
		{[]string{"--workers", "100000"}, "Config.Workers is 100000"},
		{[]string{"scale", "100000"}, "not a worker count"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			c := helperproc.Start(t, "hello", tc.args)
			if code := c.Wait(20 * time.Second); code == 0 {
				t.Fatalf("exit code 0, want an error")
			}
			out := strings.TrimSpace(c.Stderr())
			if lines := strings.Split(out, "\n"); len(lines) != 1 || !strings.HasPrefix(out, "Error: ") || !strings.Contains(out, tc.want) {
				t.Fatalf("stderr:\n%s\nwant one line: Error: ...%s...", out, tc.want)
			}
		})
	}
}

// A master whose stderr nobody reads (a full pipe, a stopped pager) keeps
// supervising: its log lines and its children's output are dropped and
// counted, never waited for while it holds its lock. It used to write them
// under that lock, so one stalled reader stopped restarts, heartbeats and the
// control socket.
func TestStalledStderrDoesNotStallTheMaster(t *testing.T) {
	c := helperproc.Start(t, "faults", nil, helperproc.Options{SmallStderr: true})
	c.WaitReady(startTimeout)
	resume := c.StallStderr()
	defer resume()
	client, err := control.Dial(c.RunDir, "faults")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	events := make(chan wire.Event, 64)
	streamErr := make(chan error, 1)
	go func() {
		streamErr <- client.Stream(ctx, "/events?follow=1", func(line []byte) error {
			var ev wire.Event
			if err := json.Unmarshal(line, &ev); err != nil {
				return err
			}
			events <- ev
			return nil
		})
	}()
	waitEvent := func(what string, match func(wire.Event) bool) wire.Event {
		t.Helper()
		for {
			select {
			case ev := <-events:
				if match(ev) {
					return ev
				}
			case err := <-streamErr:
				t.Fatalf("waiting for %s: the event stream ended: %v", what, err)
			case <-ctx.Done():
				t.Fatalf("no %s: %v", what, ctx.Err())
			}
		}
	}
	waitEvent("cluster-ready", func(ev wire.Event) bool { return ev.Type == wire.EventClusterReady })
	for i := range 4 { // each kill and restart logs several lines into the full pipe
		var st wire.Status
		if err := client.Do(ctx, "GET", "/status", nil, &st); err != nil {
			t.Fatalf("status with stderr stalled: %v", err)
		}
		var victim int
		for _, p := range st.Processes {
			if p.Role == "worker" && p.ID == 1+i%2 {
				victim = p.PID
			}
		}
		syscall.Kill(victim, syscall.SIGKILL)
		waitEvent(fmt.Sprintf("the restart after killing %d", victim), func(ev wire.Event) bool {
			return ev.Type == wire.EventRestarted && ev.OldPID == victim
		})
	}
	// Within the bounds nothing is lost: once stderr is read again, every
	// line the master queued meanwhile arrives, in order.
	resume()
	n := 0
	c.WaitFor(20*time.Second, "the 4 restarts' log lines", func(l helperproc.Line) bool {
		if helperproc.MasterMsg("restarted")(l) {
			n++
		}
		return n == 4
	})
	stopCluster(t, c)
}
