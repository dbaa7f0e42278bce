package brood_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/brood-go/brood"
	"github.com/brood-go/brood/internal/helperproc"
)

// Scenarios beyond the conformance table, selected by SCENARIO in the helper.

func me(p *brood.Process) string {
	if p.Role() == brood.Agent {
		return "agent"
	}
	return "worker" + strconv.Itoa(p.ID())
}

// scenarioConfig builds the cluster of one scenario; rec records an event.
func scenarioConfig(name string, rec func(string)) brood.Config {
	cfg := brood.Config{Name: "scenario", Workers: 3, Logger: helperproc.Logger(), StopTimeout: 5 * time.Second}
	idle := func(ctx context.Context, p *brood.Process) error {
		p.Ready()
		<-ctx.Done()
		return nil
	}
	switch name {
	case "order":
		// The agent sends 10,000 numbered messages to every worker; each worker
		// checks they arrive complete and in order.
		const n = 10000
		cfg.Agent = func(ctx context.Context, p *brood.Process) error {
			p.Messenger().On(brood.ActionReady, func(brood.Message) {
				for i := range n {
					if err := p.Messenger().SendToApp("seq", i); err != nil {
						rec("send-error " + err.Error())
						return
					}
				}
				p.Messenger().SendToApp("fence", nil)
			})
			return idle(ctx, p)
		}
		cfg.Worker = func(ctx context.Context, p *brood.Process) error {
			next, bad := 0, 0
			p.Messenger().On("seq", func(msg brood.Message) {
				var i int
				msg.Decode(&i)
				if i != next {
					bad++
				}
				next = i + 1
			})
			p.Messenger().On("fence", func(brood.Message) {
				rec(fmt.Sprintf("order %s last=%d bad=%d", me(p), next-1, bad))
			})
			return idle(ctx, p)
		}
	case "before-ready":
		// Messages sent during initialisation, before the sender (and, for the
		// agent, before any worker) is ready.
		counter := func(p *brood.Process) {
			var mu sync.Mutex
			got := map[string]int{}
			fences := 0
			for _, a := range []string{"early", "early-random", "early-w", "early-ww"} {
				p.Messenger().On(a, func(brood.Message) { mu.Lock(); got[a]++; mu.Unlock() })
			}
			p.Messenger().On("fence", func(brood.Message) {
				mu.Lock()
				defer mu.Unlock()
				if fences++; fences == 4 {
					rec(fmt.Sprintf("counts %s early=%d early-random=%d early-w=%d early-ww=%d", me(p), got["early"], got["early-random"], got["early-w"], got["early-ww"]))
				}
			})
			p.Messenger().On(brood.ActionReady, func(brood.Message) { p.Messenger().Broadcast("fence", nil) })
		}
		cfg.Agent = func(ctx context.Context, p *brood.Process) error {
			counter(p)
			for i := range 100 {
				p.Messenger().SendToApp("early", i)
			}
			for i := range 30 {
				p.Messenger().SendRandom("early-random", i)
			}
			return idle(ctx, p)
		}
		cfg.Worker = func(ctx context.Context, p *brood.Process) error {
			counter(p)
			p.Messenger().SendToAgent("early-w", p.ID())
			p.Messenger().SendToApp("early-ww", p.ID())
			return idle(ctx, p)
		}
	case "restart":
		// A paced stream to every worker while the test kills worker 2.
		cfg.Agent = func(ctx context.Context, p *brood.Process) error {
			p.Messenger().On(brood.ActionReady, func(brood.Message) {
				p.Go(func(ctx context.Context) {
					for i := range 1500 {
						p.Messenger().SendToApp("seq", i)
						select {
						case <-ctx.Done():
							return
						case <-time.After(time.Millisecond): // pacing, so the kill lands mid-stream
						}
					}
					p.Messenger().SendToApp("fence", nil)
				})
			})
			return idle(ctx, p)
		}
		cfg.Worker = func(ctx context.Context, p *brood.Process) error {
			p.Messenger().On("seq", func(msg brood.Message) {
				rec(fmt.Sprintf("got %d %d %s", p.ID(), os.Getpid(), msg.Data))
			})
			p.Messenger().On("fence", func(brood.Message) { rec(fmt.Sprintf("fence %d %d", p.ID(), os.Getpid())) })
			return idle(ctx, p)
		}
	case "request-dies":
		cfg.Agent = func(ctx context.Context, p *brood.Process) error {
			p.Messenger().On(brood.ActionReady, func(brood.Message) {
				p.Go(func(ctx context.Context) {
					ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
					defer cancel()
					start := time.Now()
					_, err := p.Messenger().Request(ctx, p.Messenger().WorkerPIDs()[1], "hang", nil)
					rec(fmt.Sprintf("request-result exited=%v took=%dms err=%v", errors.Is(err, brood.ErrProcessExited), time.Since(start).Milliseconds(), err))
				})
			})
			return idle(ctx, p)
		}
		cfg.Worker = func(ctx context.Context, p *brood.Process) error {
			p.Messenger().On("hang", func(brood.Message) {
				rec(fmt.Sprintf("hang-received %d", os.Getpid()))
				<-ctx.Done() // never replies; the test kills this process
			})
			return idle(ctx, p)
		}
	case "events":
		cfg.Agent = func(ctx context.Context, p *brood.Process) error {
			for _, a := range []string{brood.ActionPids, brood.ActionWorkerExit, brood.ActionWorkerStart} {
				p.Messenger().On(a, func(msg brood.Message) { rec(fmt.Sprintf("agent %d %s %s", os.Getpid(), a, msg.Data)) })
			}
			p.Messenger().On("while-down", func(msg brood.Message) { rec(fmt.Sprintf("agent %d got while-down %s", os.Getpid(), msg.Data)) })
			return idle(ctx, p)
		}
		cfg.Worker = func(ctx context.Context, p *brood.Process) error {
			p.Messenger().On(brood.ActionAgentExit, func(msg brood.Message) {
				rec(fmt.Sprintf("worker%d %s %s", p.ID(), brood.ActionAgentExit, msg.Data))
				p.Messenger().SendToAgent("while-down", p.ID())
			})
			p.Messenger().On(brood.ActionAgentStart, func(msg brood.Message) {
				rec(fmt.Sprintf("worker%d %s %s", p.ID(), brood.ActionAgentStart, msg.Data))
			})
			return idle(ctx, p)
		}
	case "flood":
		// A worker floods the agent's slow handler with pid-addressed messages,
		// then sends it a Request. The agent's handler queue is bounded at 64 KiB
		// (15 messages of 4 KiB): the rest, the request included, is dropped, and
		// the request fails at once. The agent's handler stays blocked until the
		// worker has its answer (asked by a Request, whose reply bypasses the
		// agent's handler queue), then drains, and reports at the worker's fence.
		const n, size = 300, 4096
		cfg.Workers = 1
		cfg.MaxFrame, cfg.MaxPendingBytes = 64<<10, 64<<10
		cfg.Agent = func(ctx context.Context, p *brood.Process) error {
			gate := make(chan struct{})
			handled := 0
			p.Messenger().On("flood", func(brood.Message) { <-gate; handled++ })
			p.Messenger().On("fence", func(brood.Message) {
				s := p.Messenger().Stats()
				rec(fmt.Sprintf("agent handled=%d dropped=%d received=%d", handled, s.Dropped, s.Received))
			})
			p.Go(func(ctx context.Context) {
				defer close(gate)
				ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				for ctx.Err() == nil {
					if pids := p.Messenger().WorkerPIDs(); len(pids) == 1 {
						if _, err := p.Messenger().Request(ctx, pids[0], "finished?", nil); err == nil {
							return
						}
					}
					select {
					case <-ctx.Done():
					case <-time.After(10 * time.Millisecond): // retry until the worker is in the table
					}
				}
				rec("agent gave up waiting for the worker")
			})
			return idle(ctx, p)
		}
		cfg.Worker = func(ctx context.Context, p *brood.Process) error {
			finished := make(chan struct{})
			p.Messenger().On("finished?", func(msg brood.Message) {
				// Answered off the dispatcher: brood:ready may still be queued behind it.
				p.Go(func(context.Context) { <-finished; msg.Reply(nil) })
			})
			p.Messenger().On(brood.ActionReady, func(brood.Message) {
				p.Go(func(ctx context.Context) {
					defer close(finished)
					agent := p.Messenger().AgentPID()
					for range n {
						if err := p.Messenger().SendTo(agent, "flood", make([]byte, size)); err != nil {
							rec("send-error " + err.Error())
							return
						}
					}
					rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
					defer cancel()
					start := time.Now()
					_, err := p.Messenger().Request(rctx, agent, "probe", make([]byte, size))
					rec(fmt.Sprintf("probe notdelivered=%v took=%dms refused=%d err=%v",
						errors.Is(err, brood.ErrNotDelivered), time.Since(start).Milliseconds(), p.Messenger().Stats().Refused, err))
					p.Messenger().SendToAgent("fence", nil)
				})
			})
			return idle(ctx, p)
		}
	default:
		panic("unknown scenario " + name)
	}
	return cfg
}

func scenarioMain() {
	brood.Main(scenarioConfig(os.Getenv("SCENARIO"), func(ev string) { helperproc.Event("%s", ev) }))
}

func startScenario(t *testing.T, name string) *helperproc.Cluster {
	c := helperproc.Start(t, "scenario", []string{"--listen", ""}, helperproc.Options{Env: []string{"SCENARIO=" + name}})
	c.WaitReady(startTimeout)
	return c
}

func stopCluster(t *testing.T, c *helperproc.Cluster) {
	t.Helper()
	c.Signal(syscall.SIGTERM)
	if code := c.Wait(10 * time.Second); code != 0 {
		t.Fatalf("exit code %d, want 0", code)
	}
}

func hasPrefix(p string) func(string) bool {
	return func(ev string) bool { return strings.HasPrefix(ev, p) }
}

func checkOrder(t *testing.T, events []string) {
	t.Helper()
	for _, ev := range events {
		if strings.HasPrefix(ev, "send-error") {
			t.Fatal(ev)
		}
		if strings.HasPrefix(ev, "order ") && !strings.HasSuffix(ev, "last=9999 bad=0") {
			t.Errorf("%s: want all 10000 in order (last=9999 bad=0)", ev)
		}
	}
}

func TestOrderPerSender10000(t *testing.T) {
	onBothTransports(t, "order", 60*time.Second, "every worker's report", 3, hasPrefix("order "), checkOrder)
}

// onBothTransports runs a scenario of scenarioConfig as a cluster of real
// processes and in memory, waits in each for n events that match, and checks
// what each recorded.
func onBothTransports(t *testing.T, scenario string, timeout time.Duration, what string, n int, match func(string) bool, check func(*testing.T, []string)) {
	t.Run("processes", func(t *testing.T) {
		c := startScenario(t, scenario)
		c.WaitEvents(timeout, what, n, match)
		check(t, c.ReadEvents())
		stopCluster(t, c)
	})
	t.Run("in-memory", func(t *testing.T) {
		r := newMemRecorder()
		cfg := scenarioConfig(scenario, r.rec)
		cfg.Logger = quietLogger()
		runMem(t, cfg)
		check(t, r.wait(t, timeout, n, match))
	})
}

func checkBeforeReady(t *testing.T, events []string) {
	t.Helper()
	random := 0
	for _, ev := range events {
		if !strings.HasPrefix(ev, "counts ") {
			continue
		}
		var who string
		var early, rnd, w, ww int
		fmt.Sscanf(ev, "counts %s early=%d early-random=%d early-w=%d early-ww=%d", &who, &early, &rnd, &w, &ww)
		if who == "agent" {
			if early != 0 || rnd != 0 || w != 3 || ww != 0 {
				t.Errorf("%s: want only early-w=3", ev)
			}
			continue
		}
		random += rnd
		if early != 100 || w != 0 || ww != 3 {
			t.Errorf("%s: want early=100 early-ww=3", ev)
		}
	}
	if random != 30 {
		t.Errorf("workers received %d of the agent's 30 early SendRandom messages", random)
	}
}

func TestMessagesSentBeforeReady(t *testing.T) {
	onBothTransports(t, "before-ready", 20*time.Second, "every process's counts", 4, hasPrefix("counts "), checkBeforeReady)
}

// Messages to a worker that is SIGKILLed mid-stream reach its replacement: the
// ones it had not finished handling are delivered again, the ones sent while its
// slot was empty are held. A message can be handled twice only if the killed
// process handled it and died before acknowledging it.
func TestNoLossAcrossWorkerRestart(t *testing.T) {
	c := startScenario(t, "restart")
	c.WaitEvents(20*time.Second, "worker 2 to handle 200 messages", 200, hasPrefix("got 2 "))
	victim := 0
	for _, ev := range c.ReadEvents() {
		if strings.HasPrefix(ev, "got 2 ") {
			victim = atoi(strings.Fields(ev)[2])
			break
		}
	}
	syscall.Kill(victim, syscall.SIGKILL)
	c.WaitEvents(30*time.Second, "the fence at every worker", 3, hasPrefix("fence "))
	got := map[int]map[int][]int{} // slot -> seq -> pids that handled it, in order
	lastByPid := map[int]int{}
	for _, ev := range c.ReadEvents() {
		var slot, pid, seq int
		if n, _ := fmt.Sscanf(ev, "got %d %d %d", &slot, &pid, &seq); n != 3 {
			continue
		}
		if got[slot] == nil {
			got[slot] = map[int][]int{}
		}
		got[slot][seq] = append(got[slot][seq], pid)
		if last, ok := lastByPid[pid]; ok && seq <= last && pid != victim {
			t.Errorf("pid %d handled %d after %d", pid, seq, last)
		}
		lastByPid[pid] = seq
	}
	dups := 0
	for slot := 1; slot <= 3; slot++ {
		for seq := range 1500 {
			pids := got[slot][seq]
			switch {
			case len(pids) == 0:
				t.Errorf("worker %d never handled message %d", slot, seq)
			case len(pids) > 1:
				dups++
				if slot != 2 || len(pids) != 2 || pids[0] != victim || pids[1] == victim {
					t.Errorf("worker %d handled message %d more than once (pids %v), not attributable to the kill of %d", slot, seq, pids, victim)
				}
			}
		}
	}
	t.Logf("victim %d; messages handled twice (by the victim, then again by its replacement): %d", victim, dups)
	stopCluster(t, c)
}

func TestRequestToDyingProcessFailsPromptly(t *testing.T) {
	c := startScenario(t, "request-dies")
	l := c.WaitFor(10*time.Second, "the request to arrive", helperproc.IsEvent(hasPrefix("hang-received ")))
	syscall.Kill(atoi(strings.Fields(l.Str("event"))[1]), syscall.SIGKILL)
	r := c.WaitFor(10*time.Second, "the request's result", helperproc.IsEvent(hasPrefix("request-result "))).Str("event")
	var exited bool
	var took int
	fmt.Sscanf(r, "request-result exited=%t took=%dms", &exited, &took)
	if !exited {
		t.Fatalf("%s: want ErrProcessExited", r)
	}
	t.Logf("%s", r)
	stopCluster(t, c)
}

func TestLifecycleEvents(t *testing.T) {
	c := startScenario(t, "events")
	victim := c.ChildPIDs("worker")[0]
	syscall.Kill(victim, syscall.SIGKILL)
	replacement := c.WaitFor(10*time.Second, "the replacement", helperproc.MasterMsg("restarted")).Int("child_pid")
	c.WaitFor(10*time.Second, "brood:worker-start of the replacement", helperproc.IsEvent(func(e string) bool {
		return strings.HasPrefix(e, "agent ") && strings.Contains(e, brood.ActionWorkerStart+" ") && strings.Contains(e, fmt.Sprintf(`"pid":%d`, replacement))
	}))
	exitEv := ""
	for _, e := range c.ReadEvents() {
		if strings.Contains(e, brood.ActionWorkerExit+" ") {
			exitEv = e
		}
	}
	if !strings.Contains(exitEv, fmt.Sprintf(`"pid":%d`, victim)) || !strings.Contains(exitEv, "signal: killed") {
		t.Errorf("worker-exit event %q: want the victim's pid and the signal", exitEv)
	}
	c.WaitFor(10*time.Second, "brood:pids with 3 workers, without the victim", helperproc.IsEvent(func(e string) bool {
		return strings.Contains(e, brood.ActionPids+" ") && strings.Count(e, ",") == 2 && !strings.Contains(e, strconv.Itoa(victim))
	}))

	agent := c.ChildPIDs("agent")[0]
	syscall.Kill(agent, syscall.SIGKILL)
	c.WaitEvents(10*time.Second, "brood:agent-start at every worker", 3, func(e string) bool { return strings.Contains(e, brood.ActionAgentStart+" ") })
	// Each worker sent "while-down" when it heard of the exit; the new agent gets all three.
	c.WaitEvents(10*time.Second, "the held messages at the new agent", 3, func(e string) bool { return strings.Contains(e, " got while-down ") })
	for _, e := range c.ReadEvents() {
		if strings.Contains(e, " got while-down ") && strings.HasPrefix(e, fmt.Sprintf("agent %d ", agent)) {
			t.Errorf("%s: handled by the agent that was killed", e)
		}
		if strings.Contains(e, brood.ActionAgentExit+" ") && !strings.Contains(e, fmt.Sprintf(`"pid":%d`, agent)) {
			t.Errorf("agent-exit event %q does not name the dead agent %d", e, agent)
		}
	}
	stopCluster(t, c)
}

// checkFlood checks the reports of the flood scenario: every message was
// handled or counted as dropped, the queue held at most its 15 messages, and
// the dropped request failed well before its 10 s context.
func checkFlood(t *testing.T, events []string) {
	t.Helper()
	var probe, agent string
	for _, ev := range events {
		switch {
		case strings.HasPrefix(ev, "send-error"), strings.HasPrefix(ev, "agent gave up"):
			t.Fatal(ev)
		case strings.HasPrefix(ev, "probe "):
			probe = ev
		case strings.HasPrefix(ev, "agent handled="):
			agent = ev
		}
	}
	var notDelivered bool
	var took, refused int
	fmt.Sscanf(probe, "probe notdelivered=%t took=%dms refused=%d", &notDelivered, &took, &refused)
	if !notDelivered || took > 2000 || refused != 1 {
		t.Errorf("%s: want the dropped request to fail at once with ErrNotDelivered, counted as refused", probe)
	}
	var handled, dropped, received int
	fmt.Sscanf(agent, "agent handled=%d dropped=%d received=%d", &handled, &dropped, &received)
	if handled+dropped != 301 || handled < 8 || handled > 15 {
		t.Errorf("%s: want 301 (300 + the request) handled or dropped, at most 15 handled (64 KiB of 4 KiB messages)", agent)
	}
	t.Logf("%s; %s", probe, agent)
}

func TestHandlerQueueBound(t *testing.T) {
	onBothTransports(t, "flood", 30*time.Second, "the agent's report", 1, hasPrefix("agent handled="), checkFlood)
}
