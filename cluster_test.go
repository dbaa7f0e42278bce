package brood_test

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/control"

	"github.com/brood-go/brood/internal/helperproc"
)

const startTimeout = 20 * time.Second

// get makes one request on a new connection and returns the body.
func get(t *testing.T, client *http.Client, url string) string {
	t.Helper()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %q %v", url, resp.StatusCode, b, err)
	}
	return string(b)
}

func newConnClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
}

// requireAllGone fails unless every pid has exited within d.
func requireAllGone(t *testing.T, pids []int, d time.Duration) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	if alive := helperproc.WaitGone(ctx, pids); len(alive) > 0 {
		t.Fatalf("processes still alive after %v: %v", d, alive)
	}
}

func TestStartOrder(t *testing.T) {
	c := helperproc.Start(t, "hello", []string{"--workers", "3"})
	c.WaitReady(startTimeout)
	// Each process appends to the events file when it gets brood:ready; wait for all 4.
	c.WaitEvents(startTimeout, "brood:ready in every process", 4, func(ev string) bool {
		return strings.HasSuffix(ev, ":brood-ready")
	})
	ev := c.ReadEvents()
	idx := func(e string) int {
		i := slices.Index(ev, e)
		if i < 0 {
			t.Fatalf("event %q missing from %v", e, ev)
		}
		return i
	}
	agentReady := idx("agent:ready")
	lastWorkerReady, firstBroodReady := 0, len(ev)
	for id := 1; id <= 3; id++ {
		if init := idx(fmt.Sprintf("worker:%d:init", id)); init < agentReady {
			t.Errorf("worker %d started before the agent was ready: %v", id, ev)
		}
		lastWorkerReady = max(lastWorkerReady, idx(fmt.Sprintf("worker:%d:ready", id)))
		firstBroodReady = min(firstBroodReady, idx(fmt.Sprintf("worker:%d:brood-ready", id)))
	}
	firstBroodReady = min(firstBroodReady, idx("agent:0:brood-ready"))
	if firstBroodReady < lastWorkerReady {
		t.Errorf("brood:ready arrived before every worker was ready: %v", ev)
	}
	if i := idx("agent:init"); i > agentReady {
		t.Errorf("agent ready before its init: %v", ev)
	}
	c.Signal(syscall.SIGTERM)
	if code := c.Wait(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
}

func TestWorkersShareOnePort(t *testing.T) {
	c := helperproc.Start(t, "hello", []string{"--workers", "2"})
	addr := c.WaitReady(startTimeout)
	client := newConnClient()
	seen := map[string]int{}
	for range 40 {
		body := get(t, client, "http://"+addr+"/")
		seen[strings.Fields(body)[3]]++
	}
	if len(seen) != 2 {
		t.Fatalf("40 connections reached %d worker pid(s) %v, want 2", len(seen), seen)
	}
	workers := c.ChildPIDs("worker")
	for pid := range seen {
		if !slices.Contains(workers, atoi(pid)) {
			t.Errorf("answer from pid %s, not a worker the master started (%v)", pid, workers)
		}
	}
	t.Logf("distribution over 40 connections: %v", seen)
	c.Signal(syscall.SIGTERM)
	c.Wait(10 * time.Second)
}

func atoi(s string) int {
	var n int
	fmt.Sscan(s, &n)
	return n
}

func TestUnixSocketListener(t *testing.T) {
	dir, err := os.MkdirTemp("", "brood-unix")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "app.sock")
	c := helperproc.Start(t, "hello", []string{"--workers", "2", "--listen", "unix://" + sock + ",127.0.0.1:0"})
	c.WaitReady(startTimeout)
	if got := c.Addr(0); got != sock {
		t.Fatalf("first listener %q, want %q", got, sock)
	}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
	}}
	if body := get(t, client, "http://unix/"); !strings.HasPrefix(body, "worker ") {
		t.Fatalf("over the unix socket: %q", body)
	}
	if body := get(t, newConnClient(), "http://"+c.Addr(1)+"/"); !strings.HasPrefix(body, "worker ") {
		t.Fatalf("over the second listener (tcp): %q", body)
	}
	c.Signal(syscall.SIGTERM)
	if code := c.Wait(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Fatalf("socket file left behind after stop: %v", err)
	}
}

func TestPortInUse(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	c := helperproc.Start(t, "hello", []string{"--workers", "2", "--listen", l.Addr().String()})
	if code := c.Wait(10 * time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	out := c.Stderr()
	if !strings.Contains(out, "address already in use") || !strings.Contains(out, l.Addr().String()) {
		t.Fatalf("error does not name the address %s:\n%s", l.Addr(), out)
	}
	if pids := c.AllPIDs(); len(pids) != 0 {
		t.Fatalf("children were started: %v", pids)
	}
}

func TestBadListenAddress(t *testing.T) {
	c := helperproc.Start(t, "hello", []string{"--listen", "udp://127.0.0.1:9"})
	if code := c.Wait(10 * time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	if out := c.Stderr(); !strings.Contains(out, `"udp://127.0.0.1:9"`) || !strings.Contains(out, "unsupported network") {
		t.Fatalf("error does not explain the address:\n%s", out)
	}
}

func TestUnknownFlag(t *testing.T) {
	c := helperproc.Start(t, "hello", []string{"--wrokers", "2"})
	if code := c.Wait(10 * time.Second); code != 2 {
		t.Fatalf("exit code %d, want 2 (usage)", code)
	}
	if out := c.Stderr(); !strings.Contains(out, "unknown flag: --wrokers") {
		t.Fatalf("stderr does not name the flag:\n%s", out)
	}
}

func TestWorkerFailsBeforeReady(t *testing.T) {
	c := helperproc.Start(t, "fail-before-ready", []string{"--workers", "2"})
	if code := c.Wait(20 * time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	out := c.Stderr()
	if !strings.Contains(out, "start worker 2") || !strings.Contains(out, "database at db.internal:5432 unreachable") {
		t.Fatalf("the start error does not carry the worker's message:\n%s", out)
	}
	if c.Count(helperproc.MasterMsg("cluster ready")) != 0 {
		t.Fatal("the cluster reported ready")
	}
	requireAllGone(t, c.AllPIDs(), time.Second)
}

func TestSIGTERMDrainsInFlightRequest(t *testing.T) {
	c := helperproc.Start(t, "hello", []string{"--workers", "2"})
	addr := c.WaitReady(startTimeout)
	type result struct {
		body string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		resp, err := newConnClient().Get("http://" + addr + "/slow?ms=500")
		if err != nil {
			done <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		done <- result{string(b), err}
	}()
	c.WaitEvents(5*time.Second, "the slow request to start", 1, func(ev string) bool {
		return strings.HasPrefix(ev, "slow:start:")
	})
	pids := c.AllPIDs()
	c.Signal(syscall.SIGTERM)
	r := <-done
	if r.err != nil || !strings.HasPrefix(r.body, "slow done") {
		t.Fatalf("in-flight request: %q, %v; want it to complete", r.body, r.err)
	}
	if code := c.Wait(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	requireAllGone(t, pids, time.Second)
}

func TestIdleStopIsFast(t *testing.T) {
	c := helperproc.Start(t, "hello", []string{"--workers", "2"})
	c.WaitReady(startTimeout)
	pids := append(c.AllPIDs(), c.Cmd.Process.Pid)
	c.Signal(syscall.SIGTERM)
	if code := c.Wait(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	requireAllGone(t, pids, time.Second)
}

func TestMasterSIGKILLLeavesNoChild(t *testing.T) {
	c := helperproc.Start(t, "hello", []string{"--workers", "2", "--stop-timeout", "3s"})
	c.WaitReady(startTimeout)
	pids := c.AllPIDs()
	if len(pids) != 3 {
		t.Fatalf("children %v, want agent and 2 workers", pids)
	}
	c.Signal(syscall.SIGKILL)
	c.Wait(5 * time.Second)
	requireAllGone(t, pids, 3*time.Second)
}

// A worker is killed and replaced; afterwards a graceful stop still completes in
// time (regression: forking used to switch the shared socket to blocking mode,
// which hung http.Server.Shutdown in the surviving worker). A hung Shutdown
// lasts the stop timeout, 30s, far above the bound, so a loaded machine's slow
// stop is not mistaken for it.
func TestStopAfterRefork(t *testing.T) {
	c := helperproc.Start(t, "hello", []string{"--workers", "2", "--stop-timeout", "30s"})
	addr := c.WaitReady(startTimeout)
	victim := c.ChildPIDs("worker")[0]
	syscall.Kill(victim, syscall.SIGKILL)
	c.WaitFor(10*time.Second, "the replacement", func(l helperproc.Line) bool {
		return helperproc.MasterMsg("restarted")(l)
	})
	var wg sync.WaitGroup
	client := newConnClient()
	for range 10 {
		wg.Go(func() { get(t, client, "http://"+addr+"/") })
	}
	wg.Wait()
	pids := append(c.AllPIDs(), c.Cmd.Process.Pid)
	start := time.Now()
	c.Signal(syscall.SIGTERM)
	if code := c.Wait(60 * time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("graceful stop took %v after a refork", took)
	}
	requireAllGone(t, pids, time.Second)
}

// A second SIGINT forces the stop: a request that would hold the drain for 60s
// (far above the bound, so a loaded machine's slow stop is not mistaken for a
// drain) does not hold the master, which exits 130.
func TestSecondSIGINTForces(t *testing.T) {
	c := helperproc.Start(t, "hello", []string{"--workers", "1", "--stop-timeout", "120s"})
	addr := c.WaitReady(startTimeout)
	go newConnClient().Get("http://" + addr + "/slow?ms=60000") // fails when forced; that is the point
	c.WaitEvents(5*time.Second, "the slow request", 1, hasPrefix("slow:start:"))
	pids := append(c.AllPIDs(), c.Cmd.Process.Pid)
	c.Signal(syscall.SIGINT)
	c.WaitFor(5*time.Second, "the graceful stop to begin", helperproc.MasterMsg("stopping"))
	start := time.Now()
	c.Signal(syscall.SIGINT)
	code := c.Wait(30 * time.Second)
	if took := time.Since(start); took > 15*time.Second {
		t.Fatalf("forced stop took %v", took)
	}
	if code != 130 {
		t.Errorf("exit code %d after a forced stop, want 130", code)
	}
	requireAllGone(t, pids, 2*time.Second)
}

// A worker that does not stop is killed after StopTimeout, and the master's
// exit code says the stop was not clean: 4, not 0.
func TestStopTimeoutKillExitCode(t *testing.T) {
	c := helperproc.Start(t, "hello", []string{"--workers", "1", "--stop-timeout", "1s"})
	addr := c.WaitReady(startTimeout)
	get(t, newConnClient(), "http://"+addr+"/ignore-sigterm")
	pids := append(c.AllPIDs(), c.Cmd.Process.Pid)
	c.Signal(syscall.SIGTERM)
	if code := c.Wait(20 * time.Second); code != 4 {
		t.Fatalf("exit code %d, want 4 (a process was killed after StopTimeout)", code)
	}
	c.WaitFor(time.Second, "the kill", helperproc.MasterMsg("did not stop in time; killing"))
	if out := c.Stderr(); !strings.Contains(out, "Error: brood: stopped, but 1 process(es) did not stop within StopTimeout and were killed") {
		t.Errorf("no line saying why the exit code is 4:\n%s", out)
	}
	requireAllGone(t, pids, 2*time.Second)
}

func TestRunSingle(t *testing.T) {
	c := helperproc.Start(t, "hello", []string{"run", "--single"})
	addr := c.WaitReady(startTimeout)
	if n := len(c.AllPIDs()); n != 2 {
		t.Fatalf("%d children in single-process mode, want the agent and one worker", n)
	}
	for _, pid := range c.AllPIDs() {
		if pid < 1<<22 {
			t.Errorf("pid %d: single-process mode should give virtual pids above pid_max", pid)
		}
	}
	if body := get(t, newConnClient(), "http://"+addr+"/"); body != fmt.Sprintf("worker 1 pid %d\n", c.Cmd.Process.Pid) {
		t.Fatalf("answer %q, want worker 1 in the master's own process %d", body, c.Cmd.Process.Pid)
	}
	c.WaitEvents(5*time.Second, "brood:ready in the agent and the worker", 2, func(ev string) bool { return strings.HasSuffix(ev, ":brood-ready") })
	stopCluster(t, c)
}

// A master killed with SIGKILL leaves its pid file and socket; the next start
// cleans them up and runs.
func TestStaleRunDirAfterKill(t *testing.T) {
	c := helperproc.Start(t, "hello", []string{"--workers", "1"})
	c.WaitReady(startTimeout)
	pids := c.AllPIDs()
	c.Signal(syscall.SIGKILL)
	c.Wait(5 * time.Second)
	requireAllGone(t, pids, 5*time.Second)
	if _, err := os.Stat(control.SocketPath(c.RunDir)); err != nil {
		t.Fatalf("expected a stale socket after SIGKILL: %v", err)
	}
	if code, _, _ := cli(t, c.RunDir, "status"); code != 3 {
		t.Errorf("status against a stale run dir: exit %d, want 3", code)
	}
	again := helperproc.Start(t, "hello", []string{"--workers", "1"}, helperproc.Options{RunDir: c.RunDir})
	again.WaitReady(startTimeout)
	stopCluster(t, again)
}

// SIGTERM while workers are still starting ends the start at once, not after
// their 25s initialisation (just under the 30s ReadyTimeout; far above the
// bound, so a loaded machine's slow stop is not mistaken for waiting).
func TestStopDuringStart(t *testing.T) {
	c := helperproc.Start(t, "hello", []string{"--workers", "2"}, helperproc.Options{Env: []string{"HELLO_WORKER_DELAY=25s"}})
	c.WaitEvents(10*time.Second, "the workers' init", 2, func(ev string) bool { return strings.HasSuffix(ev, ":init") && strings.HasPrefix(ev, "worker") })
	pids := c.AllPIDs()
	start := time.Now()
	c.Signal(syscall.SIGTERM)
	if code := c.Wait(40 * time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1 (the start did not complete)", code)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("stopping during the start took %v", took)
	}
	if !strings.Contains(c.Stderr(), "start interrupted: received terminated") {
		t.Fatalf("no interruption reason:\n%s", c.Stderr())
	}
	requireAllGone(t, pids, time.Second)
}

// A child that dies after its Ready while the others still start aborts the
// start: no cluster reports ready without its agent.
func TestCrashDuringStartAborts(t *testing.T) {
	c := helperproc.Start(t, "hello", []string{"--workers", "2"}, helperproc.Options{Env: []string{"HELLO_WORKER_DELAY=1s", "HELLO_AGENT_EXIT_AFTER=100ms"}})
	if code := c.Wait(20 * time.Second); code != 1 {
		t.Fatalf("exit code %d, want 1", code)
	}
	if out := c.Stderr(); !strings.Contains(out, "agent (pid") || !strings.Contains(out, "exited after it was ready: exit status 3") {
		t.Fatalf("the start error does not name the agent's exit:\n%s", out)
	}
	if c.Count(helperproc.MasterMsg("cluster ready")) != 0 {
		t.Fatal("the cluster reported ready")
	}
	requireAllGone(t, c.AllPIDs(), time.Second)
}
