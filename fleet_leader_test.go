package brood_test

import (
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/brood-go/brood"
	"github.com/brood-go/brood/internal/helperproc"
	"github.com/brood-go/brood/internal/natstest"
)

// leaderConfig is a fleet member whose agent records each leadership
// (lead|start|node|token|unixnano, lead|stop|...) and, with LEADER_TICKS=1,
// a OneInFleet task every 200ms whose runs record tick|nanos|node.
func leaderConfig() brood.Config {
	cfg := brood.Config{
		Name:    "leader-test",
		Workers: 1,
		Logger:  helperproc.Logger(),
		Agent: func(ctx context.Context, p *brood.Process) error {
			node := p.Fleet().Node()
			p.Fleet().OnLeader(func(ctx context.Context) {
				token, _ := brood.LeaderToken(ctx)
				helperproc.Event("lead|start|%s|%d|%d", node, token, time.Now().UnixNano())
				<-ctx.Done()
				helperproc.Event("lead|stop|%s|%d|%d", node, token, time.Now().UnixNano())
			})
			// Local messaging, recorded: a round trip to a worker every 100ms.
			p.Go(func(ctx context.Context) {
				for {
					select {
					case <-ctx.Done():
						return
					case <-time.After(100 * time.Millisecond): // the pace of the probe
					}
					pids := p.Messenger().WorkerPIDs()
					if len(pids) == 0 {
						continue
					}
					rctx, cancel := context.WithTimeout(ctx, time.Second)
					_, err := p.Messenger().Request(rctx, pids[0], "local-echo", nil)
					cancel()
					if err == nil {
						helperproc.Event("local|%d", time.Now().UnixNano())
					}
				}
			})
			p.Ready()
			<-ctx.Done()
			return nil
		},
		Worker: func(ctx context.Context, p *brood.Process) error {
			p.Messenger().On("local-echo", func(m brood.Message) { _ = m.Reply("echo") })
			p.Ready()
			<-ctx.Done()
			return nil
		},
	}
	if os.Getenv("LEADER_TICKS") == "1" {
		cfg.Schedules = []brood.Schedule{{
			Name: "tick", Every: 200 * time.Millisecond, Type: brood.OneInFleet,
			Task: func(ctx context.Context, p *brood.Process) error {
				at, ok := brood.TickTime(ctx)
				if !ok {
					helperproc.Event("tick|none|%s", p.Fleet().Node())
					return nil
				}
				helperproc.Event("tick|%d|%s", at.UnixNano(), p.Fleet().Node())
				return nil
			},
		}}
	}
	return cfg
}

func leaderMain() { brood.Main(leaderConfig()) }

func leaderMember(t *testing.T, url, node string, env ...string) *helperproc.Cluster {
	t.Helper()
	return helperproc.Start(t, "leader", []string{"run", "--fleet", url, "--node", node, "--fleet-lease-ttl", "2s"}, helperproc.Options{Env: env})
}

// leadership is one OnLeader run as its agent recorded it.
type leadership struct {
	node        string
	token       uint64
	start, stop time.Time // stop zero: still running
}

func leaderships(cs []*helperproc.Cluster) []leadership {
	var out []leadership
	for _, c := range cs {
		for _, ev := range c.ReadEvents() {
			f := strings.Split(ev, "|")
			if len(f) != 5 || f[0] != "lead" {
				continue
			}
			token, _ := strconv.ParseUint(f[3], 10, 64)
			ns, _ := strconv.ParseInt(f[4], 10, 64)
			at := time.Unix(0, ns)
			switch f[1] {
			case "start":
				out = append(out, leadership{node: f[2], token: token, start: at})
			case "stop":
				for i := len(out) - 1; i >= 0; i-- {
					if out[i].node == f[2] && out[i].token == token && out[i].stop.IsZero() {
						out[i].stop = at
						break
					}
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b leadership) int { return a.start.Compare(b.start) })
	return out
}

// checkOneLeaderAtATime checks that no two leaderships overlap and that the
// tokens grow.
func checkOneLeaderAtATime(t *testing.T, ls []leadership) {
	t.Helper()
	for i := 1; i < len(ls); i++ {
		prev, cur := ls[i-1], ls[i]
		if prev.stop.IsZero() || cur.start.Before(prev.stop) {
			t.Errorf("%s (token %d) started at %v while %s (token %d) led until %v", cur.node, cur.token, cur.start.Format(time.StampMicro), prev.node, prev.token, prev.stop.Format(time.StampMicro))
		}
		if cur.token <= prev.token {
			t.Errorf("token %d of %s after token %d of %s", cur.token, cur.node, prev.token, prev.node)
		}
	}
}

// waitLeaderships waits until ok holds for the recorded leaderships.
func waitLeaderships(t *testing.T, cs []*helperproc.Cluster, timeout time.Duration, what string, ok func([]leadership) bool) []leadership {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ls := leaderships(cs)
		if ok(ls) {
			return ls
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: leaderships %+v", what, ls)
		}
		cs[0].WaitForNext(50 * time.Millisecond) // a log line or the timeout: polling the events files
	}
}

// localAfter counts the agent's local round trips recorded after t.
func localAfter(c *helperproc.Cluster, t time.Time) int {
	n := 0
	for _, ev := range c.ReadEvents() {
		if ns, ok := strings.CutPrefix(ev, "local|"); ok {
			if v, err := strconv.ParseInt(ns, 10, 64); err == nil && time.Unix(0, v).After(t) {
				n++
			}
		}
	}
	return n
}

func current(ls []leadership) (leadership, bool) {
	for i := len(ls) - 1; i >= 0; i-- {
		if ls[i].stop.IsZero() {
			return ls[i], true
		}
	}
	return leadership{}, false
}

func TestFleetLeaderFailover(t *testing.T) {
	srv := natstest.Start(t)
	var cs []*helperproc.Cluster
	for i := 1; i <= 3; i++ {
		cs = append(cs, leaderMember(t, srv.URL(), "n"+strconv.Itoa(i)))
	}
	for _, c := range cs {
		c.WaitReady(60 * time.Second)
	}
	ls := waitLeaderships(t, cs, 20*time.Second, "a leader", func(ls []leadership) bool { _, ok := current(ls); return ok })
	leader, _ := current(ls)
	byNode := map[string]*helperproc.Cluster{"n1": cs[0], "n2": cs[1], "n3": cs[2]}
	// The leader's master publishes it on its event stream (and logs it).
	l := byNode[leader.node].WaitFor(10*time.Second, "the leader event", helperproc.MasterMsg("this member leads the fleet"))
	if l.Str("detail") != "token "+strconv.FormatUint(leader.token, 10) {
		t.Errorf("leader event detail %q, want token %d", l.Str("detail"), leader.token)
	}
	if st := fleetStatus(t, byNode[leader.node]); st.Fleet == nil || st.Fleet.Leader != leader.node || st.Fleet.LeaderToken != leader.token {
		t.Errorf("status of the leader: %+v, want leader %s token %d", st.Fleet, leader.node, leader.token)
	}

	// SIGKILL the leader's master: its agent stops leading (it gets SIGTERM),
	// and another member leads within TTL + 1s.
	killed := time.Now()
	if err := byNode[leader.node].Cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	ls = waitLeaderships(t, cs, 20*time.Second, "a new leader", func(ls []leadership) bool {
		l, ok := current(ls)
		return ok && l.node != leader.node
	})
	next, _ := current(ls)
	took := next.start.Sub(killed)
	t.Logf("leader %s killed; %s leads %v later (TTL 2s)", leader.node, next.node, took.Round(time.Millisecond))
	if took > 3*time.Second {
		t.Errorf("a new leader took %v, want within TTL + 1s = 3s", took)
	}
	checkOneLeaderAtATime(t, ls)
	for _, l := range ls {
		if l.node == leader.node && l.stop.IsZero() {
			t.Errorf("the killed member's agent never recorded the end of its leadership")
		}
	}

	// A graceful stop of the new leader hands over at once (the lease is released).
	stopped := time.Now()
	byNode[next.node].Signal(syscall.SIGTERM)
	ls = waitLeaderships(t, cs, 20*time.Second, "a third leader", func(ls []leadership) bool {
		l, ok := current(ls)
		return ok && l.node != leader.node && l.node != next.node
	})
	third, _ := current(ls)
	t.Logf("leader %s stopped; %s leads %v later", next.node, third.node, third.start.Sub(stopped).Round(time.Millisecond))
	checkOneLeaderAtATime(t, ls)
}

func TestFleetLeaderPartition(t *testing.T) {
	srv := natstest.Start(t)
	addr := strings.TrimPrefix(srv.URL(), "nats://")
	proxies := map[string]*natstest.Proxy{}
	byNode := map[string]*helperproc.Cluster{}
	var cs []*helperproc.Cluster
	for i := 1; i <= 3; i++ {
		node := "p" + strconv.Itoa(i)
		proxies[node] = natstest.NewProxy(t, addr)
		c := leaderMember(t, proxies[node].URL(), node)
		byNode[node] = c
		cs = append(cs, c)
	}
	for _, c := range cs {
		c.WaitReady(60 * time.Second)
	}
	ls := waitLeaderships(t, cs, 20*time.Second, "a leader", func(ls []leadership) bool { _, ok := current(ls); return ok })
	leader, _ := current(ls)

	// Cut the leader from the server: its leadership ends before another's begins.
	cut := time.Now()
	proxies[leader.node].Cut()
	ls = waitLeaderships(t, cs, 20*time.Second, "a leader on the other side", func(ls []leadership) bool {
		l, ok := current(ls)
		return ok && l.node != leader.node
	})
	checkOneLeaderAtATime(t, ls)
	next, _ := current(ls)
	for _, l := range ls {
		if l.node == leader.node && l.token == leader.token {
			t.Logf("cut at %v: %s stopped leading %v after, %s led %v after that",
				cut.Format(time.StampMilli), leader.node, l.stop.Sub(cut).Round(time.Millisecond), next.node, next.start.Sub(l.stop).Round(time.Millisecond))
		}
	}

	// Its local messenger keeps working while it is cut off: the agent's
	// round trips to its worker go on after its leadership ended.
	c := byNode[leader.node]
	var ended time.Time
	for _, l := range ls {
		if l.node == leader.node && l.token == leader.token {
			ended = l.stop
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for localAfter(c, ended) < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("the cut member's local round trips stopped (%d after its leadership ended)", localAfter(c, ended))
		}
		c.WaitForNext(100 * time.Millisecond)
	}
	st := fleetStatus(t, c)
	if st.Fleet == nil || st.Fleet.State == "connected" {
		t.Errorf("the cut member's fleet state: %+v", st.Fleet)
	}
	if st.State != "running" {
		t.Errorf("the cut member's cluster is %s", st.State)
	}

	// Restored, it rejoins as a candidate: stop the current leader and make
	// sure leadership can come back to it.
	proxies[leader.node].Restore()
	waitMembers(t, c, 3)
	for _, node := range []string{"p1", "p2", "p3"} {
		if node != leader.node {
			byNode[node].Signal(syscall.SIGTERM)
		}
	}
	ls = waitLeaderships(t, cs, 30*time.Second, "the rejoined member leading again", func(ls []leadership) bool {
		l, ok := current(ls)
		return ok && l.node == leader.node && l.token != leader.token
	})
	checkOneLeaderAtATime(t, ls)
}

func TestOneInFleetTicksOncePerTick(t *testing.T) {
	srv := natstest.Start(t)
	var cs []*helperproc.Cluster
	for i := 1; i <= 3; i++ {
		cs = append(cs, leaderMember(t, srv.URL(), "t"+strconv.Itoa(i), "LEADER_TICKS=1"))
	}
	for _, c := range cs {
		c.WaitReady(60 * time.Second)
	}
	for _, c := range cs {
		waitMembers(t, c, 3)
	}
	const every = 200 * time.Millisecond
	// From the first tick after all three are up, for 10s.
	from := time.Unix(0, (time.Now().UnixNano()/int64(every)+2)*int64(every))
	to := from.Add(10 * time.Second)
	ticks := func() map[int64][]string {
		runs := map[int64][]string{}
		for _, c := range cs {
			for _, ev := range c.ReadEvents() {
				f := strings.Split(ev, "|")
				if len(f) != 3 || f[0] != "tick" {
					continue
				}
				ns, err := strconv.ParseInt(f[1], 10, 64)
				if err != nil {
					t.Fatalf("a tick without its time: %q", ev)
				}
				runs[ns] = append(runs[ns], f[2])
			}
		}
		return runs
	}
	deadline := to.Add(20 * time.Second)
	for {
		runs := ticks()
		if len(runs[to.UnixNano()]) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the tick of %v never ran", to)
		}
		cs[0].WaitForNext(100 * time.Millisecond)
	}
	runs := ticks()
	byNode := map[string]int{}
	for at, nodes := range runs {
		if at%int64(every) != 0 {
			t.Errorf("tick at %v is not a multiple of %v since the epoch", time.Unix(0, at), every)
		}
		if len(nodes) > 1 {
			t.Errorf("tick %v ran %d times: on %v", time.Unix(0, at).Format(time.StampMilli), len(nodes), nodes)
		}
	}
	lost := 0
	for at := from; !at.After(to); at = at.Add(every) {
		nodes := runs[at.UnixNano()]
		if len(nodes) == 0 {
			lost++
			t.Errorf("tick %v ran nowhere", at.Format(time.StampMilli))
			continue
		}
		byNode[nodes[0]]++
	}
	t.Logf("%d ticks in 10s, run by %v, %d lost", int(to.Sub(from)/every)+1, byNode, lost)
	for _, c := range cs {
		c.Signal(syscall.SIGTERM)
	}
	for _, c := range cs {
		if code := c.Wait(30 * time.Second); code != 0 {
			t.Errorf("exit status %d", code)
		}
	}
}
