package brood_test

import (
	"context"
	"encoding/json"
	"errors"
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
	"github.com/brood-go/brood/internal/helperproc"
	"github.com/brood-go/brood/internal/natstest"
	"github.com/brood-go/brood/internal/wire"
)

// fleetConfig is a cluster (agent + 2 workers) for the fleet tests. Every
// process records each fleet message it handles as the event
// "recv|<action>|<id>|<own node>|<role>|<slot>|<pid>|<Message.Node>". A worker
// serves the test's commands on its listener: /send?kind=&id=&n= (a fleet
// send), /request (a fleet request; answers with the reply). Workers answer
// the "ask" request with their node and pid. FLEET_ASK_EARLY=1: the agent
// makes a fleet request before its Ready (no worker exists yet) and records
// "agent-ask|<ErrNoResponders?>|<ms>".
func fleetConfig() brood.Config {
	record := func(p *brood.Process) {
		for _, a := range []string{"ping", "ping-app", "ping-agent", "work"} {
			p.Messenger().On(a, func(m brood.Message) {
				var id string
				_ = m.Decode(&id)
				helperproc.Event("recv|%s|%s|%s|%s|%d|%d|%s", a, id, p.Fleet().Node(), p.Role(), p.ID(), os.Getpid(), m.Node)
			})
		}
	}
	return brood.Config{
		Name:    "fleet-test",
		Workers: 2,
		Listen:  []string{"127.0.0.1:0"},
		Logger:  helperproc.Logger(),
		Agent: func(ctx context.Context, p *brood.Process) error {
			record(p)
			if os.Getenv("FLEET_ASK_EARLY") == "1" {
				ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				start := time.Now()
				_, err := p.Fleet().Request(ctx, "ask", nil)
				cancel()
				helperproc.Event("agent-ask|%v|%d|%v", errors.Is(err, brood.ErrNoResponders), time.Since(start).Milliseconds(), err)
			}
			p.Ready()
			<-ctx.Done()
			return nil
		},
		Worker: func(ctx context.Context, p *brood.Process) error {
			record(p)
			p.Messenger().On("ask", func(m brood.Message) {
				_ = m.Reply(map[string]any{"node": p.Fleet().Node(), "pid": os.Getpid(), "asker_node": m.Node})
			})
			mux := http.NewServeMux()
			mux.HandleFunc("/send", func(w http.ResponseWriter, r *http.Request) {
				q := r.URL.Query()
				n, _ := strconv.Atoi(q.Get("n"))
				f := p.Fleet()
				send, ok := map[string]func(any) error{
					"bcast":  func(d any) error { return f.Broadcast("ping", d) },
					"app":    func(d any) error { return f.SendToApp("ping-app", d) },
					"agent":  func(d any) error { return f.SendToAgent("ping-agent", d) },
					"random": func(d any) error { return f.SendRandom("work", d) },
				}[q.Get("kind")]
				if !ok {
					http.Error(w, "unknown kind", http.StatusBadRequest)
					return
				}
				for i := range max(n, 1) {
					if err := send(fmt.Sprintf("%s-%d", q.Get("id"), i)); err != nil {
						http.Error(w, err.Error(), http.StatusInternalServerError)
						return
					}
				}
				fmt.Fprintln(w, "sent")
			})
			mux.HandleFunc("/request", func(w http.ResponseWriter, r *http.Request) {
				ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
				defer cancel()
				reply, err := p.Fleet().Request(ctx, "ask", nil)
				if err != nil {
					http.Error(w, err.Error(), http.StatusBadGateway)
					return
				}
				var body map[string]any
				_ = reply.Decode(&body)
				_ = json.NewEncoder(w).Encode(map[string]any{"msg_node": reply.Node, "msg_from": reply.From, "msg_role": reply.Role.String(), "body": body})
			})
			return brood.ServeHTTP(ctx, p, &http.Server{Handler: mux})
		},
	}
}

func fleetMain() { brood.Main(fleetConfig()) }

// fleetMember starts one member of the fleet at url with node id node.
func fleetMember(t *testing.T, url, node string, env ...string) *helperproc.Cluster {
	t.Helper()
	return fleetMemberArgs(t, url, node, nil, env...)
}

func fleetMemberArgs(t *testing.T, url, node string, args []string, env ...string) *helperproc.Cluster {
	t.Helper()
	return helperproc.Start(t, "fleet", append([]string{"run", "--fleet", url, "--node", node}, args...), helperproc.Options{Env: env})
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// fleetRecv is one "recv|..." event.
type fleetRecv struct{ action, id, node, role, slot, pid, from string }

func fleetRecvs(cs []*helperproc.Cluster, action, idPrefix string) []fleetRecv {
	var out []fleetRecv
	for _, c := range cs {
		for _, ev := range c.ReadEvents() {
			f := strings.Split(ev, "|")
			if len(f) == 8 && f[0] == "recv" && f[1] == action && strings.HasPrefix(f[2], idPrefix) {
				out = append(out, fleetRecv{f[1], f[2], f[3], f[4], f[5], f[6], f[7]})
			}
		}
	}
	return out
}

// waitRecvs waits until at least n events for action and idPrefix were
// recorded across the clusters (polling the event files, which have no
// notification; each cluster's stderr has the same lines).
func waitRecvs(t *testing.T, cs []*helperproc.Cluster, action, idPrefix string, n int, timeout time.Duration) []fleetRecv {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := fleetRecvs(cs, action, idPrefix)
		if len(got) >= n {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s %s*: %d deliveries within %v, want %d: %v", action, idPrefix, len(got), timeout, n, got)
		}
		// Wait for any cluster's next line rather than sleeping blind.
		cs[0].WaitForNext(50 * time.Millisecond)
	}
}

func fleetStatus(t *testing.T, c *helperproc.Cluster) wire.Status {
	t.Helper()
	s := helperproc.Start(t, c.Helper, []string{"status", "--json"}, helperproc.Options{RunDir: c.RunDir})
	if code := s.Wait(30 * time.Second); code != 0 {
		t.Fatalf("status --json: exit %d\n%s", code, s.Stderr())
	}
	var st wire.Status
	if err := json.Unmarshal([]byte(s.Stdout()), &st); err != nil {
		t.Fatalf("status --json: %v\n%s", err, s.Stdout())
	}
	return st
}

// waitMembers waits until c's status shows n fleet members.
func waitMembers(t *testing.T, c *helperproc.Cluster, n int) wire.Status {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := fleetStatus(t, c)
		if st.Fleet == nil {
			t.Fatalf("status has no fleet: %+v", st)
		}
		if len(st.Fleet.Members) == n && st.Fleet.State == "connected" {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("fleet status: %+v, want %d members", *st.Fleet, n)
		}
		c.WaitForNext(200 * time.Millisecond)
	}
}

// startFleet starts three members (m1, m2, m3) at url, m1 with an admin
// listener, and waits until each is ready and knows the other two.
func startFleet(t *testing.T, url string) (cs []*helperproc.Cluster, addrs []string) {
	t.Helper()
	for i := 1; i <= 3; i++ {
		var args []string
		if i == 1 {
			args = []string{"--admin", "127.0.0.1:0"}
		}
		cs = append(cs, fleetMemberArgs(t, url, "m"+strconv.Itoa(i), args))
	}
	for _, c := range cs {
		addrs = append(addrs, c.WaitReady(60*time.Second))
	}
	for _, c := range cs {
		waitMembers(t, c, 3)
	}
	return cs, addrs
}

// checkBroadcastOnce checks that the fleet broadcast id reached each of the
// nine processes of the three members exactly once, with Message.Node = from.
func checkBroadcastOnce(t *testing.T, cs []*helperproc.Cluster, id, from string) {
	t.Helper()
	got := waitRecvs(t, cs, "ping", id, 9, 20*time.Second)
	seen := map[string]int{}
	for _, r := range got {
		seen[r.node+"/"+r.role+"/"+r.slot]++
		if r.from != from {
			t.Errorf("broadcast %s received by %s %s %s with Message.Node %q, want %q", id, r.node, r.role, r.slot, r.from, from)
		}
	}
	for _, node := range []string{"m1", "m2", "m3"} {
		for _, p := range []string{"agent/0", "worker/1", "worker/2"} {
			if n := seen[node+"/"+p]; n != 1 {
				t.Errorf("broadcast %s: %s %s got it %d times, want 1 (all: %v)", id, node, p, n, got)
			}
		}
	}
}

func TestFleetMessaging(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three clusters")
	}
	srv := natstest.Start(t)
	cs, addrs := startFleet(t, srv.URL())

	t.Run("broadcast", func(t *testing.T) {
		if code, body := httpGet(t, "http://"+addrs[1]+"/send?kind=bcast&id=b1"); code != 200 {
			t.Fatalf("send: %d %s", code, body)
		}
		checkBroadcastOnce(t, cs, "b1-", "m2")
	})

	t.Run("app-and-agent", func(t *testing.T) {
		httpGet(t, "http://"+addrs[0]+"/send?kind=app&id=a1")
		httpGet(t, "http://"+addrs[0]+"/send?kind=agent&id=g1")
		apps := waitRecvs(t, cs, "ping-app", "a1-", 6, 20*time.Second)
		agents := waitRecvs(t, cs, "ping-agent", "g1-", 3, 20*time.Second)
		for _, r := range apps {
			if r.role != "worker" {
				t.Errorf("SendToApp reached %+v", r)
			}
		}
		nodes := map[string]bool{}
		for _, r := range agents {
			if r.role != "agent" {
				t.Errorf("SendToAgent reached %+v", r)
			}
			nodes[r.node] = true
		}
		if len(nodes) != 3 {
			t.Errorf("SendToAgent reached %v, want every member's agent", agents)
		}
	})

	t.Run("random-spreads", func(t *testing.T) {
		const n = 90
		if code, body := httpGet(t, "http://"+addrs[2]+"/send?kind=random&id=r1&n="+strconv.Itoa(n)); code != 200 {
			t.Fatalf("send: %d %s", code, body)
		}
		got := waitRecvs(t, cs, "work", "r1-", n, 30*time.Second)
		perNode, perWorker, ids := map[string]int{}, map[string]int{}, map[string]int{}
		for _, r := range got {
			if r.role != "worker" {
				t.Errorf("SendRandom reached %+v", r)
			}
			perNode[r.node]++
			perWorker[r.node+"/"+r.slot]++
			ids[r.id]++
		}
		for id, k := range ids {
			if k != 1 {
				t.Errorf("random message %s delivered %d times", id, k)
			}
		}
		if len(ids) != n {
			t.Errorf("%d distinct random messages delivered, want %d", len(ids), n)
		}
		// NATS picks a queue member at random: with 90 messages over three
		// members, each gets some (P(a member gets none) ~ 3 * (2/3)^90).
		if len(perNode) != 3 || len(perWorker) < 5 {
			t.Errorf("SendRandom spread: per member %v, per worker %v; want all 3 members and (nearly) all 6 workers", perNode, perWorker)
		}
		t.Logf("SendRandom spread: %v", perWorker)
	})

	t.Run("request", func(t *testing.T) {
		answered := map[string]bool{}
		for i := 0; i < 12; i++ {
			code, body := httpGet(t, "http://"+addrs[0]+"/request")
			if code != 200 {
				t.Fatalf("request: %d %s", code, body)
			}
			var r struct {
				MsgNode string         `json:"msg_node"`
				MsgFrom int            `json:"msg_from"`
				MsgRole string         `json:"msg_role"`
				Body    map[string]any `json:"body"`
			}
			if err := json.Unmarshal([]byte(body), &r); err != nil {
				t.Fatal(err)
			}
			if r.MsgNode != r.Body["node"] || float64(r.MsgFrom) != r.Body["pid"] || r.MsgRole != "worker" {
				t.Errorf("reply's Message.Node/From/Role = %s/%d/%s, answered by %v", r.MsgNode, r.MsgFrom, r.MsgRole, r.Body)
			}
			if r.Body["asker_node"] != "m1" {
				t.Errorf("the worker saw the request from node %v, want m1", r.Body["asker_node"])
			}
			answered[r.MsgNode] = true
		}
		t.Logf("requests answered by %v", answered)
	})

	t.Run("status-and-metrics", func(t *testing.T) {
		st := fleetStatus(t, cs[0])
		f := st.Fleet
		if f.Node != "m1" || f.State != "connected" || f.Server == "" || !f.InQueueGroups || f.LeaseTTL != 10 {
			t.Errorf("fleet status: %+v", *f)
		}
		if f.Counters.SentOK == 0 || f.Counters.ReceivedOK == 0 || f.Counters.RequestsOut == 0 {
			t.Errorf("fleet counters: %+v", f.Counters)
		}
		if len(f.Members) != 3 || !f.Members[0].Self || f.Members[0].ReadyWorkers != 2 {
			t.Errorf("fleet members: %+v", f.Members)
		}
		admin := strings.TrimPrefix(cs[0].WaitFor(5*time.Second, "the admin listener", helperproc.MasterMsg("admin listener")).Str("addr"), "tcp://")
		_, text := httpGet(t, "http://"+admin+"/metrics")
		for _, want := range []string{`brood_fleet_messages_total{direction="out",result="ok"}`, `brood_fleet_messages_total{direction="in",result="error"} 0`,
			"brood_fleet_connected 1", "brood_fleet_reconnects_total 0", "brood_fleet_members 3", `brood_fleet_requests_total{direction="out"} 12`} {
			if !strings.Contains(text, want) {
				t.Errorf("/metrics has no %s", want)
			}
		}
		// Every log line of a member names it.
		for _, role := range []string{"master", "agent", "worker"} {
			if cs[0].Count(func(l helperproc.Line) bool { return l.Str("role") == role && l.Str("node") == "m1" }) == 0 {
				t.Errorf("no %s log line names node m1", role)
			}
		}
		// The human table says it too.
		s := helperproc.Start(t, "fleet", []string{"status"}, helperproc.Options{RunDir: cs[0].RunDir})
		if code := s.Wait(30 * time.Second); code != 0 || !strings.Contains(s.Stdout(), "fleet: node m1, connected to nats://127.0.0.1") {
			t.Errorf("status: exit %d\n%s", code, s.Stdout())
		}
	})

	// Restart the server on the same port: every member reconnects, and a
	// broadcast reaches everyone once again.
	t.Run("server-restart", func(t *testing.T) {
		srv.Restart()
		for _, c := range cs {
			c.WaitFor(30*time.Second, "reconnected", MasterFleetMsg("fleet: reconnected to NATS"))
		}
		// A broadcast sent before every member's subscriptions are back on
		// the server could miss one (at most once); retry until one round
		// reaches all nine, then check that one was delivered exactly once.
		var id string
		for try := 0; ; try++ {
			id = fmt.Sprintf("after-%d-", try)
			httpGet(t, "http://"+addrs[0]+"/send?kind=bcast&id="+strings.TrimSuffix(id, "-"))
			deadline := time.Now().Add(3 * time.Second)
			for len(fleetRecvs(cs, "ping", id)) < 9 && time.Now().Before(deadline) {
				cs[0].WaitForNext(50 * time.Millisecond)
			}
			if len(fleetRecvs(cs, "ping", id)) >= 9 || try == 5 {
				break
			}
		}
		checkBroadcastOnce(t, cs, id, "m1")
		if st := fleetStatus(t, cs[1]); st.Fleet.Counters.Reconnects < 1 || st.Fleet.Counters.Disconnects < 1 {
			t.Errorf("after a restart: counters %+v", st.Fleet.Counters)
		}
	})

	for _, c := range cs {
		pids := c.AllPIDs()
		c.Signal(syscall.SIGTERM)
		if code := c.Wait(30 * time.Second); code != 0 {
			t.Errorf("member exited %d", code)
		}
		if left := helperproc.WaitGone(t.Context(), pids); len(left) > 0 {
			t.Errorf("processes left: %v", left)
		}
	}
}

// MasterFleetMsg matches a master's log line.
func MasterFleetMsg(msg string) func(helperproc.Line) bool { return helperproc.MasterMsg(msg) }

// With no ready worker anywhere in the fleet, a fleet request fails with
// ErrNoResponders at once: the NATS server answers "no responders" in one
// round trip. "Promptly" is under 500 ms here (measured: a few ms), against
// the request's 10 s deadline.
func TestFleetRequestNoResponders(t *testing.T) {
	srv := natstest.Start(t)
	c := fleetMember(t, srv.URL(), "lonely", "FLEET_ASK_EARLY=1")
	c.WaitReady(60 * time.Second)
	var ev string
	for _, e := range c.ReadEvents() {
		if strings.HasPrefix(e, "agent-ask|") {
			ev = e
		}
	}
	f := strings.Split(ev, "|")
	if len(f) < 3 || f[1] != "true" {
		t.Fatalf("agent's early request: %q, want ErrNoResponders", ev)
	}
	if ms, _ := strconv.Atoi(f[2]); ms >= 500 {
		t.Errorf("ErrNoResponders after %d ms, want well under a second", ms)
	}
	t.Logf("no responders after %s ms", f[2])
}

// A fleet URL that cannot be reached fails the start with an error naming
// it; with --fleet-optional the cluster starts anyway and keeps trying.
func TestFleetUnreachable(t *testing.T) {
	url := "nats://127.0.0.1:" + strconv.Itoa(natstest.FreePort(t))
	c := helperproc.Start(t, "fleet", []string{"run", "--fleet", url, "--node", "x"})
	if code := c.Wait(60 * time.Second); code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	if !strings.Contains(c.Stderr(), "fleet: connect to "+url) {
		t.Errorf("stderr does not name %s:\n%s", url, c.Stderr())
	}

	c = helperproc.Start(t, "fleet", []string{"run", "--fleet", url, "--node", "x", "--fleet-optional"})
	addr := c.WaitReady(60 * time.Second)
	st := fleetStatus(t, c)
	if st.Fleet == nil || st.Fleet.State == "connected" {
		t.Fatalf("fleet status: %+v", st.Fleet)
	}
	// Local messaging works without the fleet; fleet sends are buffered.
	if code, body := httpGet(t, "http://"+addr+"/send?kind=bcast&id=early"); code != 200 {
		t.Errorf("send while unreachable: %d %s", code, body)
	}
	c.Signal(syscall.SIGTERM)
	if code := c.Wait(30 * time.Second); code != 0 {
		t.Errorf("exit %d after SIGTERM", code)
	}
}

// One e2e against a real nats-server process, built from the module: two
// members exchange a broadcast and a request, then the server stops and the
// members report it.
func TestFleetExternalServer(t *testing.T) {
	if testing.Short() {
		t.Skip("builds nats-server")
	}
	bin := natstest.Binary(t)
	ns := natstest.StartProcess(t, bin)
	a := fleetMember(t, ns.URL(), "m1")
	b := fleetMember(t, ns.URL(), "m2")
	addrA := a.WaitReady(60 * time.Second)
	b.WaitReady(60 * time.Second)
	waitMembers(t, a, 2)
	waitMembers(t, b, 2)
	httpGet(t, "http://"+addrA+"/send?kind=bcast&id=ext")
	got := waitRecvs(t, []*helperproc.Cluster{a, b}, "ping", "ext-", 6, 20*time.Second)
	if len(got) != 6 {
		t.Errorf("broadcast over an external server: %v", got)
	}
	if code, body := httpGet(t, "http://"+addrA+"/request"); code != 200 || !strings.Contains(body, `"msg_role":"worker"`) {
		t.Errorf("request over an external server: %d %s", code, body)
	}
	ns.Stop(t)
	a.WaitFor(30*time.Second, "disconnect logged", MasterFleetMsg("fleet: disconnected from NATS; reconnecting"))
	for _, c := range []*helperproc.Cluster{a, b} {
		c.Signal(syscall.SIGTERM)
		if code := c.Wait(30 * time.Second); code != 0 {
			t.Errorf("exit %d after SIGTERM", code)
		}
	}
}

// A member in single-process mode (agent and worker as goroutines) is a
// member like any other.
func TestFleetSingleMember(t *testing.T) {
	srv := natstest.Start(t)
	a := fleetMember(t, srv.URL(), "m1")
	b := fleetMemberArgs(t, srv.URL(), "s1", []string{"--single"})
	addr := a.WaitReady(60 * time.Second)
	b.WaitReady(60 * time.Second)
	waitMembers(t, a, 2)
	if code, body := httpGet(t, "http://"+addr+"/send?kind=bcast&id=single"); code != 200 {
		t.Fatalf("send: %d %s", code, body)
	}
	got := waitRecvs(t, []*helperproc.Cluster{a, b}, "ping", "single-", 5, 20*time.Second)
	perNode := map[string]int{}
	for _, r := range got {
		perNode[r.node]++
	}
	if perNode["m1"] != 3 || perNode["s1"] != 2 {
		t.Errorf("broadcast to a normal and a single-process member: %v", got)
	}
}
