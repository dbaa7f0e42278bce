package brood_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/brood-go/brood"
	"github.com/brood-go/brood/internal/helperproc"
	"golang.org/x/sys/unix"
)

// Path switches (DESIGN §3a): the Messenger's guarantees across a change
// between the relay and a direct agent-worker channel. Every test runs twice,
// relay-only (--relay-only) and direct (the default), with the same checks:
// the guarantees are the same on both paths. In the direct runs the sender
// waits until it has a channel to every peer before it sends, so that the
// stream starts on the channels and the kill, scale or reload forces the
// switch.
//
// Receivers record every number they handle ("got SLOT PID SEQ", to the
// events file only) and log events the test waits for: "first SLOT PID SEQ"
// at a process's first, "count SLOT PID K" every 200, "fence SLOT PID" at the
// sender's fence. Streams run until the test creates DIRECT_STOP, then the
// sender fences and logs "stream-end last=N direct=D peers=[...]".

// waitDirectPeers waits until p has a direct channel to every ready member of
// the other role, and there are at least want of them.
func waitDirectPeers(p *brood.Process, want int, timeout time.Duration) error {
	other := brood.Agent
	if p.Role() == brood.Agent {
		other = brood.Worker
	}
	deadline := time.Now().Add(timeout)
	for {
		peers := brood.DirectPeers(p.Messenger())
		n, missing := 0, []int(nil)
		for _, mb := range p.Messenger().Members() {
			if mb.Role != other || !mb.Ready {
				continue
			}
			n++
			if !slices.Contains(peers, mb.PID) {
				missing = append(missing, mb.PID)
			}
		}
		if n >= want && len(missing) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %v: %d ready peers of %d wanted, no channel to %v (channels: %v)", timeout, n, want, missing, peers)
		}
		time.Sleep(5 * time.Millisecond) // the channels arrive on their own socket, with no event
	}
}

func stopRequested() bool {
	_, err := os.Stat(os.Getenv("DIRECT_STOP"))
	return err == nil
}

// streamUntilStopped sends numbered messages with send, paced (1 ms every
// two), until the test asks it to stop (then it fences) or this process
// stops, and logs its last number either way.
func streamUntilStopped(ctx context.Context, p *brood.Process, send func(i int) error, fence func() error) {
	last, why := -1, "ctx"
	defer func() {
		helperproc.Event("stream-end pid=%d last=%d why=%s direct=%d peers=%v", os.Getpid(), last, why, p.Messenger().Stats().Direct, brood.DirectPeers(p.Messenger()))
	}()
	for i := 0; ; i++ {
		if i%50 == 0 && stopRequested() {
			why = "stop-file"
			if err := fence(); err != nil {
				helperproc.Event("send-error fence %v", err)
			}
			return
		}
		if err := send(i); err != nil {
			helperproc.Event("send-error %d %v", i, err)
			return
		}
		last = i
		if i%2 == 1 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Millisecond): // pacing, so that the stream spans the kill
			}
		}
	}
}

// recordStream registers the receiving side: "seq" and "fence".
func recordStream(p *brood.Process, slot int) {
	n := 0
	pid := os.Getpid()
	p.Messenger().On("seq", func(msg brood.Message) {
		var i int
		msg.Decode(&i)
		helperproc.Record("got %d %d %d %d", slot, pid, msg.From, i)
		if n++; n == 1 {
			helperproc.Event("first %d %d %d", slot, pid, i)
		} else if n%200 == 0 {
			helperproc.Event("count %d %d %d", slot, pid, n)
		}
	})
	p.Messenger().On("fence", func(brood.Message) { helperproc.Event("fence %d %d", slot, pid) })
}

// onReadyOnce runs f once, on a goroutine, at the first brood:ready (which
// arrives again after a restart of another process).
func onReadyOnce(p *brood.Process, f func(ctx context.Context)) {
	var once sync.Once
	p.Messenger().On(brood.ActionReady, func(brood.Message) {
		once.Do(func() { p.Go(f) })
	})
}

func directMain() {
	direct := os.Getenv("DIRECT_MODE") == "1"
	cfg := brood.Config{Name: "direct", Workers: 3, Logger: helperproc.Logger(), StopTimeout: 5 * time.Second}
	idle := func(ctx context.Context, p *brood.Process) error {
		p.Ready()
		<-ctx.Done()
		return nil
	}
	peers := func(p *brood.Process, want int) bool {
		if !direct {
			return true
		}
		if err := waitDirectPeers(p, want, 15*time.Second); err != nil {
			helperproc.Event("direct-wait-error %v", err)
			return false
		}
		return true
	}
	slot := func(p *brood.Process) int {
		if p.Role() == brood.Agent {
			return 0
		}
		return p.ID()
	}
	switch os.Getenv("DIRECT_SCENARIO") {
	case "app-stream": // the agent streams SendToApp to every worker
		if os.Getenv("DIRECT_WORKERS") == "2" {
			cfg.Workers = 2
		}
		cfg.Agent = func(ctx context.Context, p *brood.Process) error {
			onReadyOnce(p, func(ctx context.Context) {
				if !peers(p, cfg.Workers) {
					return
				}
				m := p.Messenger()
				streamUntilStopped(ctx, p, func(i int) error { return m.SendToApp("seq", i) }, func() error { return m.SendToApp("fence", nil) })
			})
			return idle(ctx, p)
		}
		cfg.Worker = func(ctx context.Context, p *brood.Process) error {
			recordStream(p, slot(p))
			return idle(ctx, p)
		}
	case "agent-stream": // worker 1 streams SendToAgent
		cfg.Workers = 1
		cfg.Agent = func(ctx context.Context, p *brood.Process) error {
			recordStream(p, 0)
			return idle(ctx, p)
		}
		cfg.Worker = func(ctx context.Context, p *brood.Process) error {
			onReadyOnce(p, func(ctx context.Context) {
				if !peers(p, 1) {
					return
				}
				m := p.Messenger()
				streamUntilStopped(ctx, p, func(i int) error { return m.SendToAgent("seq", i) }, func() error { return m.SendToAgent("fence", nil) })
			})
			return idle(ctx, p)
		}
	case "request-eof": // the agent asks worker 1 to die
		cfg.Workers = 1
		cfg.Agent = func(ctx context.Context, p *brood.Process) error {
			onReadyOnce(p, func(ctx context.Context) {
				if !peers(p, 1) {
					return
				}
				m := p.Messenger()
				ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
				defer cancel()
				before := m.Stats().Direct
				start := time.Now()
				_, err := m.Request(ctx, m.WorkerPIDs()[0], "die", nil)
				helperproc.Event("request-result exited=%v took=%dms direct=%d err=%v",
					errors.Is(err, brood.ErrProcessExited), time.Since(start).Milliseconds(), m.Stats().Direct-before, err)
			})
			return idle(ctx, p)
		}
		cfg.Worker = func(ctx context.Context, p *brood.Process) error {
			p.Messenger().On("die", func(brood.Message) {
				helperproc.Event("dying %d", os.Getpid())
				syscall.Kill(os.Getpid(), syscall.SIGKILL)
				select {} // SIGKILL is on its way; never reply
			})
			return idle(ctx, p)
		}
	case "unacked": // role-addressed messages stuck behind a blocked handler
		const n = 200
		cfg.Workers = 1
		cfg.Agent = func(ctx context.Context, p *brood.Process) error {
			onReadyOnce(p, func(ctx context.Context) {
				if !peers(p, 1) {
					return
				}
				m := p.Messenger()
				for i := range n {
					if err := m.SendToApp("seq", i); err != nil {
						helperproc.Event("send-error %d %v", i, err)
						return
					}
				}
				helperproc.Event("sent-all direct=%d", m.Stats().Direct)
			})
			return idle(ctx, p)
		}
		cfg.Worker = func(ctx context.Context, p *brood.Process) error {
			pid := os.Getpid()
			p.Messenger().On("seq", func(msg brood.Message) {
				var i int
				msg.Decode(&i)
				helperproc.Record("got 1 %d %d %d", pid, msg.From, i)
				if i == 0 {
					// The first process to handle 0 blocks: everything after
					// it stays unacknowledged until the test kills it.
					if f, err := os.OpenFile(os.Getenv("DIRECT_MARK"), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600); err == nil {
						f.Close()
						helperproc.Event("blocked %d", pid)
						<-ctx.Done()
					}
				}
				if i == n-1 {
					helperproc.Event("last 1 %d", pid)
				}
			})
			return idle(ctx, p)
		}
	case "counters": // some traffic; the test reads the master's status
		cfg.Workers = 2
		cfg.HeartbeatInterval, cfg.HeartbeatTimeout = 200*time.Millisecond, 5*time.Second
		cfg.Agent = func(ctx context.Context, p *brood.Process) error {
			onReadyOnce(p, func(ctx context.Context) {
				if !peers(p, 2) {
					return
				}
				m := p.Messenger()
				for i := range 50 {
					if err := m.SendToApp("seq", i); err != nil {
						helperproc.Event("send-error %d %v", i, err)
						return
					}
				}
				helperproc.Event("sent direct=%d", m.Stats().Direct)
			})
			return idle(ctx, p)
		}
		cfg.Worker = func(ctx context.Context, p *brood.Process) error {
			p.Messenger().On("seq", func(brood.Message) {})
			return idle(ctx, p)
		}
	case "exec": // each process, once it has its channels, runs a program
		cfg.Workers = 2
		probe := func(p *brood.Process, want int) {
			if !peers(p, want) {
				return
			}
			out, err := exec.Command("ls", "-l", "/proc/self/fd").Output()
			if err != nil {
				helperproc.Event("exec-error %d %v", slot(p), err)
				return
			}
			helperproc.Event("inherited %d %d direct=%d %s", slot(p), os.Getpid(), len(brood.DirectPeers(p.Messenger())),
				inheritedFDs(string(out), strings.Split(os.Getenv("DIRECT_OUTSIDE_FDS"), ",")))
		}
		cfg.Agent = func(ctx context.Context, p *brood.Process) error {
			onReadyOnce(p, func(context.Context) { probe(p, cfg.Workers) })
			return idle(ctx, p)
		}
		cfg.Worker = func(ctx context.Context, p *brood.Process) error {
			onReadyOnce(p, func(context.Context) { probe(p, 1) })
			return idle(ctx, p)
		}
	default:
		fmt.Fprintf(os.Stderr, "no direct scenario %q\n", os.Getenv("DIRECT_SCENARIO"))
		os.Exit(2)
	}
	brood.Main(cfg)
}

// directRun is one cluster of a path-switch test.
type directRun struct {
	*helperproc.Cluster
	t      *testing.T
	direct bool
	stop   string // the stop file
	mark   string // the unacked scenario's marker
}

// bothPaths runs f as subtests relay-only and direct, in parallel.
func bothPaths(t *testing.T, f func(t *testing.T, direct bool)) {
	t.Parallel()
	for _, direct := range []bool{false, true} {
		name := "relay-only"
		if direct {
			name = "direct"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			f(t, direct)
		})
	}
}

func startDirect(t *testing.T, scenario string, direct bool, env ...string) *directRun {
	t.Helper()
	dir := t.TempDir()
	r := &directRun{t: t, direct: direct, stop: dir + "/stop", mark: dir + "/mark"}
	args, mode := []string{"--listen", "", "--relay-only"}, "DIRECT_MODE=0"
	if direct {
		args, mode = []string{"--listen", ""}, "DIRECT_MODE=1"
	}
	env = append(env, "DIRECT_SCENARIO="+scenario, mode, "DIRECT_STOP="+r.stop, "DIRECT_MARK="+r.mark)
	r.Cluster = helperproc.Start(t, "direct", args, helperproc.Options{Env: env})
	r.WaitReady(startTimeout)
	return r
}

// failOnReported fails the test at once on an error a child reported.
func (r *directRun) failOnReported() {
	r.t.Helper()
	for _, ev := range r.ReadEvents() {
		if strings.HasPrefix(ev, "send-error") || strings.HasPrefix(ev, "direct-wait-error") {
			r.t.Fatal(ev)
		}
	}
}

// waitEvent waits for an event with the prefix and returns its fields.
func (r *directRun) waitEvent(timeout time.Duration, what string, match func([]string) bool) []string {
	r.t.Helper()
	l := r.WaitFor(timeout, what, helperproc.IsEvent(func(ev string) bool {
		return strings.HasPrefix(ev, "send-error") || strings.HasPrefix(ev, "direct-wait-error") || match(strings.Fields(ev))
	}))
	r.failOnReported()
	return strings.Fields(l.Str("event"))
}

func evIs(kind string, slot int) func([]string) bool {
	return func(f []string) bool { return len(f) >= 3 && f[0] == kind && atoi(f[1]) == slot }
}

// streamEnd is a sender's "stream-end" event.
type streamEnd struct {
	pid, last, direct int
	why, peers        string
}

func parseStreamEnd(f []string) (e streamEnd) {
	fmt.Sscanf(strings.Join(f[1:5], " "), "pid=%d last=%d why=%s direct=%d", &e.pid, &e.last, &e.why, &e.direct)
	e.peers = strings.Join(f[5:], " ")
	return e
}

// streamEnds returns every sender's stream-end so far, by pid.
func (r *directRun) streamEnds() map[int]streamEnd {
	out := map[int]streamEnd{}
	for _, ev := range r.ReadEvents() {
		if f := strings.Fields(ev); len(f) >= 5 && f[0] == "stream-end" {
			e := parseStreamEnd(f)
			out[e.pid] = e
		}
	}
	return out
}

// endStream asks the sender to stop, waits for its end and for the fence at
// each of the slots, and returns its stream-end.
func (r *directRun) endStream(slots ...int) streamEnd {
	r.t.Helper()
	if err := os.WriteFile(r.stop, nil, 0o600); err != nil {
		r.t.Fatal(err)
	}
	e := parseStreamEnd(r.waitEvent(30*time.Second, "the end of the stream", func(f []string) bool {
		return len(f) >= 5 && f[0] == "stream-end" && f[3] == "why=stop-file"
	}))
	for _, s := range slots {
		r.waitEvent(30*time.Second, fmt.Sprintf("the fence at slot %d", s), evIs("fence", s))
	}
	if r.direct && e.direct == 0 {
		r.t.Errorf("direct: the sender sent nothing over direct channels")
	}
	if !r.direct && e.direct != 0 {
		r.t.Errorf("relay-only: the sender sent %d frames over direct channels", e.direct)
	}
	return e
}

type handled struct{ slot, pid, from, seq int }

func (r *directRun) handled() []handled {
	var out []handled
	for _, ev := range r.ReadEvents() {
		var h handled
		if n, _ := fmt.Sscanf(ev, "got %d %d %d %d", &h.slot, &h.pid, &h.from, &h.seq); n == 4 {
			out = append(out, h)
		}
	}
	return out
}

// checkStream checks what the receivers handled of sender's stream 0..last:
// each process's numbers strictly increase; each slot's processes together
// handle every number from from[slot] (0 if absent) to last, each once, but
// that a number handled by a killed process (victims) may be handled again
// by the next process of its slot. It returns the numbers handled per pid.
func checkStream(t *testing.T, hs []handled, sender int, slots []int, from map[int]int, last int, victims []int) map[int][]int {
	t.Helper()
	errs := 0
	errorf := func(format string, args ...any) {
		t.Helper()
		if errs++; errs <= 20 {
			t.Errorf(format, args...)
		}
	}
	byPid := map[int][]int{}
	bySlot := map[int]map[int][]int{} // slot -> seq -> pids
	for _, h := range hs {
		if h.from != sender {
			continue
		}
		if s := byPid[h.pid]; len(s) > 0 && h.seq <= s[len(s)-1] {
			errorf("sender %d: pid %d (slot %d) handled %d after %d", sender, h.pid, h.slot, h.seq, s[len(s)-1])
		}
		byPid[h.pid] = append(byPid[h.pid], h.seq)
		if bySlot[h.slot] == nil {
			bySlot[h.slot] = map[int][]int{}
		}
		bySlot[h.slot][h.seq] = append(bySlot[h.slot][h.seq], h.pid)
	}
	dups := 0
	for _, s := range slots {
		for seq := from[s]; seq <= last; seq++ {
			pids := bySlot[s][seq]
			switch {
			case len(pids) == 0:
				errorf("sender %d: slot %d: no process handled %d", sender, s, seq)
			case len(pids) == 2 && slices.Contains(victims, pids[0]) && pids[1] != pids[0]:
				dups++ // the killed process handled it, its replacement again
			case len(pids) > 1:
				errorf("sender %d: slot %d: %d handled by %v, not attributable to a kill (victims %v)", sender, s, seq, pids, victims)
			}
		}
	}
	if errs > 20 {
		t.Errorf("... %d errors in all", errs)
	}
	t.Logf("sender %d: stream 0..%d over slots %v: handled again after a kill: %d", sender, last, slots, dups)
	return byPid
}

// killMidStream SIGKILLs the process of slot (0: the agent) once it has
// handled 400 messages of the stream, and waits until its replacement has
// handled 400 too; it returns both pids.
func (r *directRun) killMidStream(slot int, who, replacement string) (victim, repl int) {
	victim = atoi(r.waitEvent(20*time.Second, who+"'s 400th message", func(f []string) bool {
		return evIs("count", slot)(f) && atoi(f[3]) >= 400
	})[2])
	syscall.Kill(victim, syscall.SIGKILL)
	r.waitEvent(30*time.Second, replacement+"'s 400th message", func(f []string) bool {
		if evIs("count", slot)(f) && atoi(f[2]) != victim && atoi(f[3]) >= 400 {
			repl = atoi(f[2])
			return true
		}
		return false
	})
	return victim, repl
}

// TestDirectReceiverRestartMidStream: the agent streams SendToApp to three
// workers and worker 1 is SIGKILLed mid-stream. Its replacement handles its
// messages in send order across the switch from the master's hold (and, on
// the direct path, the old channel's unacknowledged messages handed back) to
// its own direct channel; nothing is lost, the other workers see every number
// once, in order.
func TestDirectReceiverRestartMidStream(t *testing.T) {
	bothPaths(t, func(t *testing.T, direct bool) {
		r := startDirect(t, "app-stream", direct)
		victim, repl := r.killMidStream(1, "worker 1", "the replacement")
		e := r.endStream(1, 2, 3)
		byPid := checkStream(t, r.handled(), e.pid, []int{1, 2, 3}, nil, e.last, []int{victim})
		if len(byPid[repl]) == 0 || len(byPid[victim]) == 0 {
			t.Errorf("victim %d handled %d, replacement %d handled %d", victim, len(byPid[victim]), repl, len(byPid[repl]))
		}
		if direct && !strings.Contains(e.peers, fmt.Sprint(repl)) {
			t.Errorf("the agent ended with channels %s, none to the replacement %d", e.peers, repl)
		}
		stopCluster(t, r.Cluster)
	})
}

// TestDirectAgentRestartMidStream: worker 1 streams SendToAgent and the agent
// is SIGKILLed mid-stream; the new agent's numbers increase, and the two
// agents together handle every number.
func TestDirectAgentRestartMidStream(t *testing.T) {
	bothPaths(t, func(t *testing.T, direct bool) {
		r := startDirect(t, "agent-stream", direct)
		victim, repl := r.killMidStream(0, "the agent", "the new agent")
		e := r.endStream(0)
		byPid := checkStream(t, r.handled(), e.pid, []int{0}, nil, e.last, []int{victim})
		if len(byPid[repl]) == 0 || len(byPid[victim]) == 0 {
			t.Errorf("victim %d handled %d, new agent %d handled %d", victim, len(byPid[victim]), repl, len(byPid[repl]))
		}
		if direct && !strings.Contains(e.peers, fmt.Sprint(repl)) {
			t.Errorf("worker 1 ended with channels %s, none to the new agent %d", e.peers, repl)
		}
		stopCluster(t, r.Cluster)
	})
}

// TestDirectScaleMidStream: the agent streams SendToApp to two workers and
// `scale 3` adds a slot. Each process's numbers increase; slots 1 and 2 get
// every number; the worker started by scale gets every number from its first
// (the first held for its slot while it started) to the end, once each.
func TestDirectScaleMidStream(t *testing.T) {
	bothPaths(t, func(t *testing.T, direct bool) {
		r := startDirect(t, "app-stream", direct, "DIRECT_WORKERS=2")
		r.waitEvent(20*time.Second, "worker 1's 200th message", evIs("count", 1))
		if code, out, c := cli(t, r.RunDir, "scale", "3"); code != 0 {
			t.Fatalf("scale 3: exit %d %s\n%s", code, out, c.Stderr())
		}
		scaled := atoi(r.waitEvent(20*time.Second, "slot 3's 400th message", func(f []string) bool {
			return evIs("count", 3)(f) && atoi(f[3]) >= 400
		})[2])
		e := r.endStream(1, 2, 3)
		hs := r.handled()
		from := map[int]int{3: e.last + 1}
		for _, h := range hs {
			if h.slot == 3 && h.seq < from[3] {
				from[3] = h.seq
			}
		}
		byPid := checkStream(t, hs, e.pid, []int{1, 2, 3}, from, e.last, nil)
		if len(byPid[scaled]) != e.last-from[3]+1 {
			t.Errorf("the worker started by scale (%d) handled %d messages, want %d..%d", scaled, len(byPid[scaled]), from[3], e.last)
		}
		t.Logf("slot 3 (pid %d) from %d to %d", scaled, from[3], e.last)
		stopCluster(t, r.Cluster)
	})
}

// TestDirectReloadMidStream: the agent streams SendToApp to three workers;
// `reload` replaces every worker (each new one is ready before the old one
// stops) and then the agent, whose replacement streams in turn. For each
// agent's stream: each process's numbers increase; each slot's processes
// together handle every number from 0 to the agent's last; and nobody was
// killed, so none twice.
func TestDirectReloadMidStream(t *testing.T) {
	bothPaths(t, func(t *testing.T, direct bool) {
		r := startDirect(t, "app-stream", direct)
		r.waitEvent(20*time.Second, "worker 1's 200th message", evIs("count", 1))
		firstAgent := r.ChildPIDs("agent")[0]
		before := r.ChildPIDs("worker")
		if code, out, c := cli(t, r.RunDir, "reload"); code != 0 {
			t.Fatalf("reload: exit %d %s\n%s", code, out, c.Stderr())
		}
		r.WaitFor(30*time.Second, "the reload", helperproc.MasterMsg("reload done"))
		for s := 1; s <= 3; s++ {
			r.waitEvent(20*time.Second, fmt.Sprintf("slot %d's new process's 200th message", s), func(f []string) bool {
				return evIs("count", s)(f) && !slices.Contains(before, atoi(f[2]))
			})
		}
		e := r.endStream(1, 2, 3)
		if e.pid == firstAgent {
			t.Fatalf("the stream that ended at the stop file is the first agent's (%d): the reload did not replace it", firstAgent)
		}
		old, ok := r.streamEnds()[firstAgent]
		if !ok || old.why != "ctx" {
			t.Fatalf("the first agent's stream end %+v: want one at its stop", old)
		}
		hs := r.handled()
		checkStream(t, hs, firstAgent, []int{1, 2, 3}, nil, old.last, nil)
		checkStream(t, hs, e.pid, []int{1, 2, 3}, nil, e.last, nil)
		t.Logf("first agent %d: 0..%d; workers before the reload %v; new agent %d: 0..%d", firstAgent, old.last, before, e.pid, e.last)
		stopCluster(t, r.Cluster)
	})
}

// TestDirectRequestEOF: the agent Requests worker 1, whose handler SIGKILLs
// its own process: the Request fails with ErrProcessExited at once (on the
// direct path, from the channel's EOF), long before its 30 s context.
func TestDirectRequestEOF(t *testing.T) {
	bothPaths(t, func(t *testing.T, direct bool) {
		r := startDirect(t, "request-eof", direct)
		f := r.waitEvent(20*time.Second, "the request's result", func(f []string) bool { return f[0] == "request-result" })
		var exited bool
		var took, sentDirect int
		fmt.Sscanf(strings.Join(f[1:], " "), "exited=%t took=%dms direct=%d", &exited, &took, &sentDirect)
		if !exited || took > 5000 {
			t.Errorf("%v: want ErrProcessExited within 5 s", f)
		}
		if direct != (sentDirect == 1) {
			t.Errorf("%v: the request went over a direct channel %d times, want %d", f, sentDirect, map[bool]int{true: 1}[direct])
		}
		t.Logf("%v", f)
		stopCluster(t, r.Cluster)
	})
}

// TestDirectUnackedToReplacement: the agent sends 200 SendToApp to the one
// worker, whose handler blocks on the first, so none is acknowledged; the
// worker is SIGKILLed, and its replacement handles all 200, in order.
func TestDirectUnackedToReplacement(t *testing.T) {
	bothPaths(t, func(t *testing.T, direct bool) {
		r := startDirect(t, "unacked", direct)
		victim := atoi(r.waitEvent(20*time.Second, "the worker to block", func(f []string) bool { return f[0] == "blocked" })[1])
		f := r.waitEvent(20*time.Second, "the agent to have sent all", func(f []string) bool { return f[0] == "sent-all" })
		var sentDirect int
		fmt.Sscanf(f[1], "direct=%d", &sentDirect)
		if direct && sentDirect < 200 || !direct && sentDirect != 0 {
			t.Errorf("%v: want all 200 over the channel in direct mode, none in relay-only", f)
		}
		syscall.Kill(victim, syscall.SIGKILL)
		repl := atoi(r.waitEvent(30*time.Second, "the replacement's last", func(f []string) bool {
			return f[0] == "last" && atoi(f[2]) != victim
		})[2])
		var got []int
		for _, h := range r.handled() {
			switch h.pid {
			case victim:
				if h.seq != 0 {
					t.Errorf("the blocked worker handled %d", h.seq)
				}
			case repl:
				got = append(got, h.seq)
			}
		}
		want := make([]int, 200)
		for i := range want {
			want[i] = i
		}
		if !slices.Equal(got, want) {
			t.Errorf("the replacement handled %d messages %v, want 0..199 in order", len(got), got)
		}
		stopCluster(t, r.Cluster)
	})
}

// TestDirectCounters: the master's status counts what the processes sent
// directly (messages.direct, from their pongs): more than 0 after direct
// traffic, 0 in a relay-only cluster.
func TestDirectCounters(t *testing.T) {
	bothPaths(t, func(t *testing.T, direct bool) {
		r := startDirect(t, "counters", direct)
		f := r.waitEvent(20*time.Second, "the agent's sends", func(f []string) bool { return f[0] == "sent" })
		var sentDirect uint64
		fmt.Sscanf(f[1], "direct=%d", &sentDirect)
		st := statusJSON(t, r.RunDir)
		if direct {
			// The count reaches the master with the next pongs (every 200 ms).
			deadline := time.Now().Add(10 * time.Second)
			for st.Messages.Direct < sentDirect && time.Now().Before(deadline) {
				r.WaitForNext(200 * time.Millisecond)
				st = statusJSON(t, r.RunDir)
			}
			if st.Messages.Direct < sentDirect || sentDirect == 0 {
				t.Errorf("status messages %+v: want direct >= the agent's %d (> 0)", st.Messages, sentDirect)
			}
		} else if st.Messages.Direct != 0 || sentDirect != 0 || st.Messages.Relayed < 50 {
			t.Errorf("relay-only: status messages %+v, agent's direct count %d: want direct 0 and the traffic relayed", st.Messages, sentDirect)
		}
		t.Logf("status messages %+v", st.Messages)
		stopCluster(t, r.Cluster)
	})
}

// inheritedFDs renders the sockets and anonymous inodes (channels,
// listeners, pidfds: what brood's descriptors are) that `ls -l /proc/self/fd`
// run by a child lists, but for outside (the test's own inheritable
// descriptors, as "FD=TARGET"): "fds" followed by ",FD=TARGET" for each,
// which the program inherited. Files are left out: Go's time package opens
// a zoneinfo file without O_CLOEXEC while it loads the local zone (seen in
// CI, a program started meanwhile inherited /usr/share/zoneinfo/Etc/UTC),
// which is neither brood's nor lasting.
func inheritedFDs(ls string, outside []string) string {
	out := "fds"
	for _, line := range strings.Split(ls, "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[len(f)-2] != "->" {
			continue
		}
		fd, target := f[len(f)-3], f[len(f)-1]
		brood := strings.HasPrefix(target, "socket:") || strings.HasPrefix(target, "anon_inode:")
		if fd == "0" || fd == "1" || fd == "2" || !brood || slices.Contains(outside, fd+"="+target) {
			continue
		}
		out += "," + fd + "=" + target
	}
	return out
}

// A program that the agent or a worker runs inherits none of brood's
// descriptors: not the IPC channel, not a direct channel (received at spawn
// or over SCM_RIGHTS), not a listener. They are close-on-exec in every
// process, not only in the master.
func TestDirectChannelsNotInheritedByExec(t *testing.T) {
	bothPaths(t, func(t *testing.T, direct bool) {
		args, mode := []string{"--listen", "127.0.0.1:0", "--relay-only"}, "DIRECT_MODE=0"
		if direct {
			args, mode = []string{"--listen", "127.0.0.1:0"}, "DIRECT_MODE=1"
		}
		c := helperproc.Start(t, "direct", args, helperproc.Options{Env: []string{"DIRECT_SCENARIO=exec", mode, "DIRECT_OUTSIDE_FDS=" + inheritableFDs(t)}})
		c.WaitReady(startTimeout)
		for _, slot := range []int{0, 1, 2} {
			l := c.WaitFor(20*time.Second, fmt.Sprintf("slot %d's probe", slot), helperproc.IsEvent(func(ev string) bool {
				f := strings.Fields(ev)
				return len(f) >= 2 && (f[0] == "inherited" || f[0] == "exec-error" || f[0] == "direct-wait-error") && atoi(f[1]) == slot
			}))
			f := strings.Fields(l.Str("event"))
			if f[0] != "inherited" || len(f) != 5 {
				t.Fatalf("slot %d: %s", slot, l.Str("event"))
			}
			if f[4] != "fds" {
				t.Errorf("slot %d (pid %s): a program it ran inherited %s", slot, f[2], strings.TrimPrefix(f[4], "fds,"))
			}
			var channels int
			fmt.Sscanf(f[3], "direct=%d", &channels)
			want := 0 // relay-only
			switch {
			case direct && slot == 0:
				want = 2 // the agent, to each worker
			case direct:
				want = 1 // a worker, to the agent
			}
			if channels != want {
				t.Errorf("slot %d: %d direct channels when it ran the program, want %d", slot, channels, want)
			}
		}
		stopCluster(t, c)
	})
}

// inheritableFDs lists the descriptors this test process holds without
// close-on-exec ("FD=TARGET", comma-separated): whatever started the test
// left them to it, and os/exec passes them on to every process of the
// cluster; they are not brood's.
func inheritableFDs(t *testing.T) string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err != nil || flags&unix.FD_CLOEXEC != 0 {
			continue // the directory's own descriptor is gone by now
		}
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil {
			out = append(out, e.Name()+"="+target)
		}
	}
	return strings.Join(out, ",")
}
