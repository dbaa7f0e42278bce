package brood_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/brood-go/brood"
	"github.com/brood-go/brood/internal/control"
	"github.com/brood-go/brood/internal/helperproc"
	"github.com/brood-go/brood/internal/wire"
)

var ballast [][]byte // memory a worker holds on purpose (/alloc)

// faultsConfig is an HTTP cluster with a trigger for every kind of fault.
// FAULTS_HEARTBEAT, FAULTS_MAXRSS_MB, FAULTS_CRASH_SLOT and
// FAULTS_SLOW_START_FILE (workers started while it exists take 1.5 s to
// initialise) adjust it.
func faultsConfig() brood.Config {
	cfg := brood.Config{
		Name:        "faults",
		Workers:     2,
		Listen:      []string{"127.0.0.1:0"},
		Logger:      helperproc.Logger(),
		StopTimeout: 5 * time.Second,
		Restart:     brood.RestartPolicy{MinDelay: 100 * time.Millisecond, MaxDelay: 2 * time.Second, ResetAfter: 5 * time.Second},
	}
	if d, err := time.ParseDuration(os.Getenv("FAULTS_HEARTBEAT")); err == nil {
		cfg.HeartbeatTimeout, cfg.HeartbeatInterval = d, d/4
	}
	if mb, err := strconv.Atoi(os.Getenv("FAULTS_MAXRSS_MB")); err == nil {
		cfg.MaxRSS = uint64(mb) << 20
	}
	crashSlot, _ := strconv.Atoi(os.Getenv("FAULTS_CRASH_SLOT"))
	cfg.Agent = func(ctx context.Context, p *brood.Process) error {
		p.Messenger().On("agent-panic", func(brood.Message) { panic("agent handler boom") })
		p.Messenger().On("ping", func(msg brood.Message) { msg.Reply(os.Getpid()) })
		p.Ready()
		<-ctx.Done()
		return nil
	}
	slowFile := os.Getenv("FAULTS_SLOW_START_FILE")
	cfg.Worker = func(ctx context.Context, p *brood.Process) error {
		if _, err := os.Stat(slowFile); slowFile != "" && err == nil {
			select { // workers started once the file exists take their time
			case <-time.After(1500 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if p.ID() == crashSlot {
			// Crash 20 ms after the cluster is up (brood:ready also reaches a
			// process started later, once it is ready), never during the first
			// start: that would abort it, however slow the machine.
			up := make(chan struct{})
			p.Messenger().Once(brood.ActionReady, func(brood.Message) { close(up) })
			p.Go(func(ctx context.Context) {
				select {
				case <-up:
				case <-ctx.Done():
					return
				}
				select {
				case <-time.After(20 * time.Millisecond):
					os.Exit(1)
				case <-ctx.Done():
				}
			})
		}
		p.Messenger().On("guarded-panic", func(brood.Message) { panic("guarded boom in a message handler") })
		mux := http.NewServeMux()
		mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "worker %d pid %d\n", p.ID(), os.Getpid())
		})
		mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
			ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
			helperproc.Event("slow-start %d", os.Getpid())
			time.Sleep(time.Duration(ms) * time.Millisecond) // the slow request's work
			fmt.Fprintf(w, "slow done by pid %d\n", os.Getpid())
		})
		mux.HandleFunc("/crash-panic", func(w http.ResponseWriter, r *http.Request) {
			go func() { panic("unguarded boom") }()
			select {}
		})
		mux.HandleFunc("/exit", func(w http.ResponseWriter, r *http.Request) {
			code, _ := strconv.Atoi(r.URL.Query().Get("code"))
			os.Exit(code)
		})
		mux.HandleFunc("/guarded-panic", func(w http.ResponseWriter, r *http.Request) {
			p.Go(func(context.Context) { panic("guarded boom in p.Go") })
			fmt.Fprintln(w, "ok")
		})
		mux.HandleFunc("/handler-panic", func(w http.ResponseWriter, r *http.Request) {
			panic("handler boom")
		})
		mux.HandleFunc("/spin", func(w http.ResponseWriter, r *http.Request) {
			ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
			end := time.Now().Add(time.Duration(ms) * time.Millisecond)
			n := 0
			for time.Now().Before(end) {
				n++
			}
			fmt.Fprintf(w, "spun %d by pid %d\n", n, os.Getpid())
		})
		mux.HandleFunc("/alloc", func(w http.ResponseWriter, r *http.Request) {
			mb, _ := strconv.Atoi(r.URL.Query().Get("mb"))
			b := make([]byte, mb<<20)
			for i := 0; i < len(b); i += 4096 { // one write a page makes it resident
				b[i] = 1
			}
			ballast = append(ballast, b)
			fmt.Fprintf(w, "holding %d MiB in pid %d\n", mb, os.Getpid())
		})
		mux.HandleFunc("/tell", func(w http.ResponseWriter, r *http.Request) {
			pid, _ := strconv.Atoi(r.URL.Query().Get("pid"))
			if err := p.Messenger().SendTo(pid, r.URL.Query().Get("action"), nil); err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			fmt.Fprintln(w, "sent")
		})
		mux.HandleFunc("/agent-panic", func(w http.ResponseWriter, r *http.Request) {
			p.Messenger().SendToAgent("agent-panic", nil)
			fmt.Fprintln(w, "sent")
		})
		mux.HandleFunc("/agent-ping", func(w http.ResponseWriter, r *http.Request) {
			ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
			defer cancel()
			reply, err := p.Messenger().Request(ctx, p.Messenger().AgentPID(), "ping", nil)
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			fmt.Fprintf(w, "agent pid %s\n", reply.Data)
		})
		return brood.ServeHTTP(ctx, p, &http.Server{Handler: mux})
	}
	return cfg
}

func faultsMain() { brood.Main(faultsConfig()) }

func startFaults(t *testing.T, env ...string) (*helperproc.Cluster, string) {
	c := helperproc.Start(t, "faults", nil, helperproc.Options{Env: env})
	return c, c.WaitReady(startTimeout)
}

// slotStatus asks the cluster's master for its status over the control socket
// and returns the row of the slot's newest process.
func slotStatus(t *testing.T, c *helperproc.Cluster, role string, id int) wire.Process {
	t.Helper()
	client, err := control.Dial(c.RunDir, "faults")
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	var st wire.Status
	if err := client.Do(ctx, "GET", "/status", nil, &st); err != nil {
		t.Fatal(err)
	}
	var row wire.Process
	for _, p := range st.Processes {
		if p.Role == role && p.ID == id {
			row = p
		}
	}
	return row
}

// onWorker returns a keep-alive client and the pid of the worker its connection
// reached.
func onWorker(t *testing.T, addr string) (*http.Client, int) {
	t.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{MaxConnsPerHost: 1}}
	body := get(t, client, "http://"+addr+"/")
	return client, atoi(strings.Fields(body)[3])
}

func waitMaster(t *testing.T, c *helperproc.Cluster, msg string, pid int) helperproc.Line {
	t.Helper()
	return c.WaitFor(15*time.Second, fmt.Sprintf("%q for pid %d", msg, pid), func(l helperproc.Line) bool {
		return helperproc.MasterMsg(msg)(l) && l.Int("child_pid") == pid
	})
}

func TestCrashIsReplacedWithReason(t *testing.T) {
	for _, tc := range []struct{ path, reason, detail string }{
		{"/crash-panic", "panic", "exit status 2 (panic: unguarded boom"},
		{"/exit?code=3", "exit", "exit status 3"},
		{"", "signal", "signal: killed"},
	} {
		t.Run(strings.Trim(tc.path, "/?="), func(t *testing.T) {
			c, addr := startFaults(t)
			client, pid := onWorker(t, addr)
			if tc.path == "" {
				syscall.Kill(pid, syscall.SIGKILL)
			} else {
				// POST: net/http would retry an idempotent GET on another worker.
				client.Post("http://"+addr+tc.path, "text/plain", nil) // the worker dies under it
			}
			l := waitMaster(t, c, "crashed", pid)
			if l.Str("reason") != tc.reason || !strings.HasPrefix(l.Str("detail"), tc.detail) {
				t.Errorf("reason %q detail %q, want %q and a detail starting with %q", l.Str("reason"), l.Str("detail"), tc.reason, tc.detail)
			}
			if p := slotStatus(t, c, "worker", l.Int("child_id")); p.LastKind.String() != tc.reason || !strings.Contains(p.LastReason, tc.detail) {
				t.Errorf("status: last restart %q (%q), want kind %q and the detail", p.LastKind, p.LastReason, tc.reason)
			}
			if l.Str("child_id") == "" || l.Int("restarts") != 1 {
				t.Errorf("crash line %s: want the slot and restarts=1", l.Raw)
			}
			r := c.WaitFor(10*time.Second, "the restart", helperproc.MasterMsg("restarted"))
			if r.Str("child_id") != l.Str("child_id") {
				t.Errorf("restarted slot %s, crashed slot %s", r.Str("child_id"), l.Str("child_id"))
			}
			get(t, newConnClient(), "http://"+addr+"/")
			stopCluster(t, c)
		})
	}
}

func TestCrashLoopBacksOffAndSparesOtherSlots(t *testing.T) {
	c, addr := startFaultsCrashLoop(t)
	// Crash restarts of slot 2 back off 0, 100ms, 200ms, 400ms, ...
	var delays []string
	c.WaitFor(20*time.Second, "backoff to reach 800ms", func(l helperproc.Line) bool {
		if helperproc.MasterMsg("restart delayed (crash loop)")(l) {
			delays = append(delays, l.Str("delay"))
		}
		return len(delays) >= 4
	})
	want := []string{"100000000", "200000000", "400000000", "800000000"}
	for i := range want {
		if delays[i] != want[i] {
			t.Fatalf("delays %v ns, want %v", delays, want)
		}
	}
	crashes := c.Count(helperproc.MasterMsg("crashed")) + c.Count(helperproc.MasterMsg("restart failed"))
	if crashes > 8 {
		t.Errorf("%d crashes while backing off to 800ms: the loop spins", crashes)
	}
	// Worker 1 was never touched.
	w1 := 0
	for _, l := range c.Lines() {
		if helperproc.MasterMsg("started")(l) && l.Str("child_id") == "1" {
			w1++
		}
	}
	if w1 != 1 {
		t.Errorf("worker 1 started %d times, want once", w1)
	}
	get(t, newConnClient(), "http://"+addr+"/")
	stopCluster(t, c)
}

func startFaultsCrashLoop(t *testing.T) (*helperproc.Cluster, string) {
	c := helperproc.Start(t, "faults", nil, helperproc.Options{Env: []string{"FAULTS_CRASH_SLOT=2"}})
	// The first start succeeds (Ready comes before the exit 20ms later).
	return c, c.WaitReady(startTimeout)
}

// A guarded panic replaces the worker gracefully: the replacement starts at
// once, and a request in flight on the old worker completes.
func TestGuardedPanicReplacesGracefully(t *testing.T) {
	c, addr := startFaults(t)
	client, pid := onWorker(t, addr)
	type result struct {
		body string
		err  error
	}
	slow := make(chan result, 1)
	go func() {
		resp, err := client.Get("http://" + addr + "/slow?ms=700")
		if err != nil {
			slow <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		slow <- result{string(b), err}
	}()
	c.WaitEvents(5*time.Second, "the slow request", 1, hasPrefix(fmt.Sprintf("slow-start %d", pid)))
	// The panic comes through the messenger: whichever worker gets this request
	// sends it to the one serving the slow request.
	get(t, newConnClient(), fmt.Sprintf("http://%s/tell?pid=%d&action=guarded-panic", addr, pid))
	l := c.WaitFor(10*time.Second, "the replacement to be started", helperproc.MasterMsg("replaced"))
	if l.Int("old_pid") != pid || l.Str("reason") != "panic" || !strings.Contains(l.Str("detail"), "guarded panic") {
		t.Fatalf("replaced line %s: want old_pid %d and a guarded panic reason", l.Raw, pid)
	}
	r := <-slow
	if r.err != nil || !strings.HasPrefix(r.body, "slow done by pid "+strconv.Itoa(pid)) {
		t.Fatalf("in-flight request on the panicking worker: %q %v", r.body, r.err)
	}
	exit := waitMaster(t, c, "exited", pid)
	if exit.Str("detail") != "exit status 0" {
		t.Errorf("old worker ended with %q, want a clean exit after draining", exit.Str("reason"))
	}
	if c.Count(helperproc.MasterMsg("crashed")) != 0 {
		t.Error("a guarded panic was treated as a crash")
	}
	stack := false
	for _, l := range c.Lines() {
		if l.Msg() == "guarded panic" && strings.Contains(l.Str("stack"), "faults_test.go") {
			stack = true
		}
	}
	if !stack {
		t.Error("the guarded panic was not logged with its stack")
	}
	stopCluster(t, c)
}

func TestGuardedPanicInGoroutine(t *testing.T) {
	c, addr := startFaults(t)
	client, pid := onWorker(t, addr)
	get(t, client, "http://"+addr+"/guarded-panic")
	l := c.WaitFor(10*time.Second, "the replacement", helperproc.MasterMsg("replaced"))
	if l.Int("old_pid") != pid || l.Str("reason") != "panic" || !strings.Contains(l.Str("detail"), "guarded panic in goroutine started by Process.Go: guarded boom in p.Go") {
		t.Fatalf("replaced line %s: want old_pid %d and the panic value", l.Raw, pid)
	}
	waitMaster(t, c, "exited", pid)
	get(t, newConnClient(), "http://"+addr+"/")
	stopCluster(t, c)
}

func TestHandlerPanicAnswers500AndKeepsTheWorker(t *testing.T) {
	c, addr := startFaults(t)
	client, pid := onWorker(t, addr)
	resp, err := client.Get("http://" + addr + "/handler-panic")
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body) // so the connection is kept and reused
	resp.Body.Close()
	if resp.StatusCode != 500 {
		t.Fatalf("status %d, want 500", resp.StatusCode)
	}
	c.WaitFor(5*time.Second, "the panic log with its stack", func(l helperproc.Line) bool {
		return l.Msg() == "panic in HTTP handler" && strings.Contains(l.Str("stack"), "faults_test.go")
	})
	if body := get(t, client, "http://"+addr+"/"); !strings.Contains(body, "pid "+strconv.Itoa(pid)) {
		t.Fatalf("after the panic the connection reached %q, want the same worker %d", body, pid)
	}
	if n := c.Count(helperproc.MasterMsg("started")); n != 3 {
		t.Fatalf("%d processes started, want 3: the worker must not be replaced", n)
	}
	stopCluster(t, c)
}

func TestAgentSurvivesGuardedPanic(t *testing.T) {
	c, addr := startFaults(t)
	agent := c.ChildPIDs("agent")[0]
	get(t, newConnClient(), "http://"+addr+"/agent-panic")
	c.WaitFor(5*time.Second, "the agent's guarded panic", func(l helperproc.Line) bool {
		return l.Msg() == "guarded panic" && l.Str("role") == "agent"
	})
	if body := get(t, newConnClient(), "http://"+addr+"/agent-ping"); body != fmt.Sprintf("agent pid %d\n", agent) {
		t.Fatalf("agent answered %q, want the same agent %d", body, agent)
	}
	if n := c.Count(helperproc.MasterMsg("started")); n != 3 {
		t.Fatalf("%d processes started, want 3: the agent keeps running", n)
	}
	stopCluster(t, c)
}

func TestHungWorkerIsKilledAndReplaced(t *testing.T) {
	c, addr := startFaults(t, "FAULTS_HEARTBEAT=1s")
	_, pid := onWorker(t, addr)
	syscall.Kill(pid, syscall.SIGSTOP)
	l := waitMaster(t, c, "crashed", pid)
	if l.Str("reason") != "hang" || !strings.Contains(l.Str("detail"), "no heartbeat answer for 1s") {
		t.Fatalf("reason %q detail %q, want a hang", l.Str("reason"), l.Str("detail"))
	}
	c.WaitFor(10*time.Second, "the restart", helperproc.MasterMsg("restarted"))
	stopCluster(t, c)
}

func TestBusyWorkerIsNotHung(t *testing.T) {
	c, addr := startFaults(t, "FAULTS_HEARTBEAT=1s")
	client, pid := onWorker(t, addr)
	body := get(t, client, "http://"+addr+"/spin?ms=3000")
	if !strings.Contains(body, "pid "+strconv.Itoa(pid)) {
		t.Fatalf("spin answered by %q", body)
	}
	if n := c.Count(helperproc.MasterMsg("hung: no heartbeat answer; killing")); n != 0 {
		t.Fatal("a CPU-bound worker was flagged as hung")
	}
	stopCluster(t, c)
}

func TestMemoryRecyclingReplacesGracefully(t *testing.T) {
	c, addr := startFaults(t, "FAULTS_MAXRSS_MB=80")
	client, pid := onWorker(t, addr)
	get(t, client, "http://"+addr+"/alloc?mb=120")
	l := c.WaitFor(15*time.Second, "the replacement", helperproc.MasterMsg("replaced"))
	if l.Int("old_pid") != pid || l.Str("reason") != "memory" || !strings.HasPrefix(l.Str("detail"), "rss ") {
		t.Fatalf("replaced line %s: want old_pid %d and a memory reason", l.Raw, pid)
	}
	rec := c.WaitFor(time.Second, "the recycling log", helperproc.MasterMsg("recycling"))
	if rec.Int("rss_bytes") < 100<<20 {
		t.Errorf("recycling logged rss %d, want over 100 MiB", rec.Int("rss_bytes"))
	}
	exit := waitMaster(t, c, "exited", pid)
	if exit.Str("detail") != "exit status 0" {
		t.Errorf("old worker ended with %q, want a clean exit", exit.Str("reason"))
	}
	stopCluster(t, c)
}
