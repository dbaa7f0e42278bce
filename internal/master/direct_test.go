package master

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/direct"
	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/proc"
	"github.com/brood-go/brood/internal/upgrade"
	"github.com/brood-go/brood/internal/wire"
)

// The tests of direct channels run a master with real processes: its
// children are this test binary again, which TestMain turns into
// realChildMain when envRealChild is set. Such a child speaks the child side
// of the IPC protocol (hello, pong, ready), reads offers from its channel
// socket, and says what it got on its stdout, which the master relays to
// the test: lines starting "direct-test ".

// envRealChild makes this test binary a child of a test's master; its value
// is the worker id that speaks protocol 2 instead ("-": none).
const envRealChild = "BROOD_MASTER_TEST_CHILD"

// directCount is what each real child reports in its pongs as sent over
// direct channels.
const directCount = 7

func realChildMain() {
	say := func(format string, args ...any) { fmt.Printf("direct-test "+format+"\n", args...) }
	role, id, pid := os.Getenv(wire.EnvRole), os.Getenv(wire.EnvID), os.Getpid()
	self := fmt.Sprintf("%s/%s/%d", role, id, pid)
	version := ipc.Version
	if role == "worker" && id == os.Getenv(envRealChild) {
		version = ipc.FleetVersion // a build before direct channels
	}
	conn, err := proc.ConnFromFD(3, "ipc")
	if err != nil {
		say("fail self=%s %v", self, err)
		os.Exit(2)
	}
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM)
	go func() {
		<-term
		os.Exit(0) // a graceful stop, with nothing to drain
	}()
	fdText := os.Getenv(wire.EnvDirectFD)
	say("start self=%s fd=%q", self, fdText)
	if fdText != "" {
		fd, err := strconv.Atoi(fdText)
		if err != nil {
			say("fail self=%s %v", self, err)
			os.Exit(2)
		}
		dc, err := direct.Conn(fd, "direct")
		if err != nil {
			say("fail self=%s %v", self, err)
			os.Exit(2)
		}
		if version >= ipc.DirectVersion {
			go readOffers(dc, self, say)
		}
	}
	w := ipc.NewWriter(conn, 0, 0)
	r := wire.RoleName(ipc.RoleWorker)
	wireRole := ipc.RoleWorker
	if role != r {
		wireRole = ipc.RoleAgent
	}
	header := func(k ipc.Kind) *ipc.Header { return &ipc.Header{Kind: k, Role: wireRole, From: uint32(pid)} }
	w.Append(header(ipc.KindHello), "", []byte(strconv.Itoa(version)))
	rd := ipc.NewReader(conn, 0)
	readied := false
	for {
		f, err := rd.Next()
		if err != nil {
			os.Exit(0) // the master is gone
		}
		switch f.Kind {
		case ipc.KindPing:
			h := header(ipc.KindPong)
			h.ID = f.ID
			w.Append(h, "", binary.AppendUvarint(nil, directCount))
		case ipc.KindMembers:
			if !readied {
				readied = true
				w.Append(header(ipc.KindReady), "", nil)
			}
		}
	}
}

// channels keeps a real child's channel ends from being collected (and closed).
var (
	channelsMu sync.Mutex
	channels   []*os.File
)

// readOffers takes every offer of the master, checks the channel by sending
// its pid over it and reading the peer's, and says what it got.
func readOffers(dc *net.UnixConn, self string, say func(string, ...any)) {
	for {
		o, end, err := direct.Receive(dc)
		if err != nil {
			return
		}
		channelsMu.Lock()
		channels = append(channels, end) // a channel lives as long as its two processes
		channelsMu.Unlock()
		say("offer self=%s peer=%s/%d/%d", self, wire.RoleName(o.PeerRole), o.PeerID, o.PeerPID)
		go func() {
			var b [4]byte
			binary.BigEndian.PutUint32(b[:], uint32(os.Getpid()))
			if _, err := end.Write(b[:]); err != nil {
				return
			}
			if _, err := io.ReadFull(end, b[:]); err != nil {
				return
			}
			say("channel self=%s peer=%d", self, binary.BigEndian.Uint32(b[:]))
		}()
	}
}

// realCluster is a master with real processes, and the lines its children
// said.
type realCluster struct {
	t      *testing.T
	m      *Master
	sub    <-chan wire.Event
	lines  chan string
	seen   []string
	runErr chan error
	stop   func()
}

// startReal runs a master with an agent and workers real workers; worker
// old speaks protocol 2 (0: none).
func startReal(t *testing.T, workers, old int, relayOnly bool) *realCluster {
	t.Helper()
	oldText := "-"
	if old > 0 {
		oldText = strconv.Itoa(old)
	}
	t.Setenv(envRealChild, oldText)
	dir := t.TempDir()
	pr, pw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	rc := &realCluster{t: t, lines: make(chan string, 1000), runErr: make(chan error, 1)}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if line, ok := strings.CutPrefix(sc.Text(), "direct-test "); ok {
				rc.lines <- line
			}
		}
	}()
	cfg := Config{
		Name: "directtest", Workers: workers, Agent: true, RelayOnly: relayOnly, Listen: []string{"127.0.0.1:0"},
		ReadyTimeout: 20 * time.Second, StopTimeout: 5 * time.Second,
		HeartbeatInterval: 20 * time.Millisecond, HeartbeatTimeout: time.Hour,
		Restart:  Backoff{MinDelay: time.Millisecond, MaxDelay: time.Millisecond, ResetAfter: time.Hour},
		MaxFrame: ipc.DefaultMaxFrame, RunDir: dir + "/run", Stdout: pw,
		Logger: slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	rc.m, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	_, rc.sub, _ = rc.m.events.subscribe(0)
	ctx, cancel := context.WithCancel(context.Background())
	go func() { rc.runErr <- rc.m.Run(ctx, nil) }()
	var once sync.Once
	rc.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-rc.runErr:
				if err != nil {
					t.Errorf("Run: %v", err)
				}
			case <-time.After(30 * time.Second):
				t.Error("the master did not stop")
			}
			pw.Close()
			<-scanned
			pr.Close()
		})
	}
	t.Cleanup(rc.stop)
	return rc
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// event waits for the next event that matches.
func (rc *realCluster) event(what string, match func(wire.Event) bool) wire.Event {
	rc.t.Helper()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for {
		select {
		case ev := <-rc.sub:
			if match(ev) {
				return ev
			}
		case <-deadline.C:
			rc.t.Fatalf("no %s within 30s", what)
		}
	}
}

// line waits until a child has said want (or has said it already).
func (rc *realCluster) line(want string) {
	rc.t.Helper()
	for _, l := range rc.seen {
		if l == want {
			return
		}
	}
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for {
		select {
		case l := <-rc.lines:
			rc.seen = append(rc.seen, l)
			if strings.HasPrefix(l, "fail ") {
				rc.t.Fatalf("a child failed: %s", l)
			}
			if l == want {
				return
			}
		case <-deadline.C:
			rc.t.Fatalf("no child said %q within 30s; said: %q", want, rc.seen)
		}
	}
}

// drain takes the lines said so far.
func (rc *realCluster) drain() {
	for {
		select {
		case l := <-rc.lines:
			rc.seen = append(rc.seen, l)
		default:
			return
		}
	}
}

// pids returns the pid serving each slot: "agent/0", "worker/1", ...
func (rc *realCluster) pids() map[string]int {
	rc.m.mu.Lock()
	defer rc.m.mu.Unlock()
	out := map[string]int{}
	for _, s := range rc.m.slotsLocked() {
		if s.serving != nil {
			out[wire.RoleName(s.role)+"/"+strconv.Itoa(s.id)] = s.serving.pid
		}
	}
	return out
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// The agent and each worker that speaks protocol 3 get an offer naming the
// other over their channel sockets, and the two ends are one channel; a
// worker speaking protocol 2 gets a channel socket but no offer, and the
// agent none for it. A replacement worker gets a new offer, and the agent
// one naming the replacement. The children's pongs reach status and
// metrics. The master keeps no descriptor of a channel, nor of an exited
// child's channel socket.
func TestDirectChannelsOffered(t *testing.T) {
	warm, _ := net.Pipe() // the runtime's poller, and what else a first use opens
	warm.Close()
	before := openFDs(t)
	rc := startReal(t, 3, 3, false)
	rc.event("the cluster", is(wire.EventClusterReady))
	p := rc.pids()
	self := func(k string) string { return fmt.Sprintf("%s/%d", k, p[k]) }
	for _, k := range []string{"agent/0", "worker/1", "worker/2", "worker/3"} {
		// fd 3 the IPC channel, then the workers' listener, then the channel socket
		fd := "5"
		if k == "agent/0" {
			fd = "4"
		}
		rc.line(fmt.Sprintf("start self=%s fd=%q", self(k), fd))
	}
	for _, w := range []string{"worker/1", "worker/2"} {
		rc.line(fmt.Sprintf("offer self=%s peer=%s", self("agent/0"), self(w)))
		rc.line(fmt.Sprintf("offer self=%s peer=%s", self(w), self("agent/0")))
		rc.line(fmt.Sprintf("channel self=%s peer=%d", self("agent/0"), p[w]))
		rc.line(fmt.Sprintf("channel self=%s peer=%d", self(w), p["agent/0"]))
	}
	// Each child reports directCount; worker 3's pongs say it too (a test
	// child), so every process counts.
	waitFor(t, "the direct count in status", func() bool { return rc.m.Status().Messages.Direct == 4*directCount })
	if got := metricValue(t, rc.m, "brood_messages_direct_total"); got != 4*directCount {
		t.Fatalf("brood_messages_direct_total = %v, want %d", got, 4*directCount)
	}

	steady := openFDs(t)
	old := p["worker/1"]
	if err := syscall.Kill(old, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	rc.event("worker 1's restart", ofSlot(wire.EventRestarted, "worker", 1))
	p = rc.pids()
	if p["worker/1"] == old || p["worker/1"] == 0 {
		t.Fatalf("worker 1 is pid %d after its restart (was %d)", p["worker/1"], old)
	}
	rc.line(fmt.Sprintf("offer self=%s peer=%s", self("worker/1"), self("agent/0")))
	rc.line(fmt.Sprintf("offer self=%s peer=%s", self("agent/0"), self("worker/1")))
	rc.line(fmt.Sprintf("channel self=%s peer=%d", self("agent/0"), p["worker/1"]))
	// The replacement's count is new: its first pong adds directCount again.
	waitFor(t, "the replacement's count", func() bool { return rc.m.Status().Messages.Direct == 5*directCount })
	waitFDs(t, steady, "after a worker's restart")
	rc.drain()
	for _, l := range rc.seen {
		if strings.Contains(l, "worker/3/") && strings.HasPrefix(l, "offer") || strings.Contains(l, "peer="+self("worker/3")) {
			t.Errorf("worker 3 speaks protocol 2, but: %s", l)
		}
	}
	rc.stop()
	waitFDs(t, before, "after it stopped (before it started)")
}

// A relay-only master passes its children no channel socket.
func TestRelayOnlyPassesNoChannelSocket(t *testing.T) {
	rc := startReal(t, 1, 0, true)
	rc.event("the cluster", is(wire.EventClusterReady))
	p := rc.pids()
	for _, k := range []string{"agent/0", "worker/1"} {
		rc.line(fmt.Sprintf("start self=%s/%d fd=%q", k, p[k], ""))
	}
	rc.drain()
	for _, l := range rc.seen {
		if strings.HasPrefix(l, "offer") {
			t.Errorf("relay only, but: %s", l)
		}
	}
}

// waitFDs waits until this process has want descriptors open: what it had
// at a point before, once the transient ones (a /proc file of a resource
// sample) are closed again.
func waitFDs(t *testing.T, want int, when string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := openFDs(t)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Errorf("the master has %d descriptors %s, want %d", got, when, want)
			return
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, not waiting for time
	}
}

// waitFor polls cond until it holds, failing after 30 seconds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("no %s within 30s", what)
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, not waiting for time
	}
}

func metricValue(t *testing.T, m *Master, name string) float64 {
	t.Helper()
	fams, err := m.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() == name {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// observePong counts the growth of each child's cumulative count, and
// ignores what is malformed or goes down.
func TestObservePongCountsDirect(t *testing.T) {
	m := &Master{}
	a, b := &child{}, &child{}
	for _, step := range []struct {
		c       *child
		payload []byte
		want    uint64
	}{
		{a, nil, 0},
		{a, binary.AppendUvarint(nil, 5), 5},
		{b, binary.AppendUvarint(nil, 3), 8},
		{a, binary.AppendUvarint(nil, 9), 12},
		{a, []byte{0x80}, 12},                             // truncated uvarint
		{a, append(binary.AppendUvarint(nil, 50), 1), 12}, // trailing bytes
		{a, binary.AppendUvarint(nil, 2), 12},             // went down
		{b, binary.AppendUvarint(nil, 3), 12},             // unchanged
		{b, nil, 12},                                      // empty: nothing to add
		{a, binary.AppendUvarint(nil, 10), 13},
	} {
		m.observePong(step.c, 0, step.payload)
		if got := m.directSent.Load(); got != step.want {
			t.Fatalf("after pong %x: direct %d, want %d", step.payload, got, step.want)
		}
	}
}

// A child adopted across an upgrade keeps its channel socket and protocol
// from the state, and so pairs with a worker this image starts: each gets an
// offer naming the other.
func TestAdoptedChildPairsWithNewWorker(t *testing.T) {
	m, err := New(Config{Name: "adopt", Workers: 1, Agent: true, Single: true, MaxFrame: ipc.DefaultMaxFrame,
		Logger: slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	defer m.closeOutputs()
	as, ws := m.addSlot(ipc.RoleAgent, 0), m.addSlot(ipc.RoleWorker, 1)

	// The state's descriptors, as the previous image handed them over.
	ipcConn, ipcChild, err := proc.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	defer ipcChild.Close()
	ipcFD := mustDup(ipcConn)
	ipcConn.Close()
	agentSock, agentEnd := channelSocket(t)
	directFD := mustDup(agentSock)
	agentSock.Close()

	const agentPID, workerPID = 4000000, 4000001
	c, err := m.adopt(as, upgrade.Slot{Role: "agent", Child: upgrade.Child{PID: agentPID, Protocol: ipc.DirectVersion,
		IPC: ipcFD, Stdout: -1, Stderr: -1, Direct: directFD, DirectSent: 3}}, -1)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		c.ep.Writer().Close(time.Now())
		c.conn.Close()
	}()
	m.mu.Lock()
	qualifies := directQualifiesLocked(c)
	m.mu.Unlock()
	if !qualifies || c.directSent != 3 {
		t.Fatalf("adopted agent: direct %v, protocol %d, count %d; want it to qualify with its count", c.direct, c.protocol, c.directSent)
	}

	// A worker this image started says hello.
	workerSock, workerEnd := channelSocket(t)
	w := &child{slot: ws, pid: workerPID, direct: workerSock, state: childStarting}
	m.mu.Lock()
	m.children[w.pid] = w
	w.protocol = ipc.Version
	m.pairLocked(w)
	m.closeDirectLocked(w)
	m.closeDirectLocked(c)
	m.mu.Unlock()
	for _, tc := range []struct {
		end  *net.UnixConn
		want direct.Offer
	}{
		{agentEnd, direct.Offer{PeerPID: workerPID, PeerRole: ipc.RoleWorker, PeerID: 1}},
		{workerEnd, direct.Offer{PeerPID: agentPID, PeerRole: ipc.RoleAgent}},
	} {
		o, end, err := direct.Receive(tc.end)
		if err != nil || o != tc.want {
			t.Fatalf("offer %+v, %v; want %+v", o, err, tc.want)
		}
		end.Close()
		// One offer each, and the master's end is closed.
		if o, _, err := direct.Receive(tc.end); err == nil {
			t.Fatalf("a second offer: %+v", o)
		}
		tc.end.Close()
	}
}

// channelSocket returns the two ends of a channel socket as connections.
func channelSocket(t *testing.T) (master, child *net.UnixConn) {
	t.Helper()
	mc, cf, err := direct.ChannelSocket()
	if err != nil {
		t.Fatal(err)
	}
	cc, err := direct.Conn(mustDup(cf), "child")
	cf.Close()
	if err != nil {
		t.Fatal(err)
	}
	return mc, cc
}
