package brood

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/listener"
	"github.com/brood-go/brood/internal/relay"
)

// clusterState is the master's phase.
type clusterState int

const (
	stateStarting clusterState = iota
	stateRunning
	stateStopping
	stateStopped
)

func (s clusterState) String() string {
	return [...]string{"starting", "running", "stopping", "stopped"}[s]
}

// childState is the phase of one child process.
type childState int

const (
	childStarting childState = iota
	childReady
	childStopping
	childExited
)

func (s childState) String() string {
	return [...]string{"starting", "ready", "stopping", "exited"}[s]
}

// master runs the cluster: it owns the sockets, the router and every child.
type master struct {
	cfg    Config
	log    *slog.Logger
	exe    string
	args   []string // argv after argv[0], passed to every child
	pid    int
	socks  []*listener.Socket
	router *relay.Router
	hooks  masterHooks

	outMu sync.Mutex
	out   io.Writer // children's stderr lines are copied here

	mu       sync.Mutex
	state    clusterState
	agent    *slot
	workers  map[int]*slot
	children map[int]*child // by pid
	opMu     sync.Mutex     // serialises reload, scale and replacement of one slot at a time

	life    context.Context // cancelled when stopping starts: restarts and timers end
	endLife context.CancelFunc
	wg      sync.WaitGroup // goroutines owned by the master (restarts, replacements, heartbeat)

	singleSeq atomic.Int32 // virtual pids handed out in single-process mode

	startedAt time.Time
	reqMu     sync.Mutex
	reqID     uint64
	requests  map[uint64]chan []byte // the master's requests awaiting a reply
	self      usage                  // the master's own resource sample
	stopReq   chan struct{}
	stopOnce  sync.Once
	stopWhy   string
	startErr  error // why the first start was aborted, if it was
}

// masterHooks lets the CLI observe the master (daemon start waits on onReady).
type masterHooks struct {
	onReady func(m *master) // the cluster is up
}

// slot is a place in the cluster (the agent, or worker N) across restarts.
type slot struct {
	role       Role
	id         int
	rs         *relay.Slot
	serving    *child // the process doing this slot's work
	starting   *child // its replacement, while it starts
	restarts   int
	lastReason string
	crashes    int  // consecutive crashes, for backoff
	restarting bool // a restart loop owns this slot
	removed    bool
}

func (s *slot) String() string {
	if s.role == Agent {
		return "agent"
	}
	return "worker " + strconv.Itoa(s.id)
}

// child is one process started by the master.
type child struct {
	slot      *slot
	pid       int
	proc      childProc
	conn      net.Conn
	ep        *relay.Endpoint
	startedAt time.Time
	reqMu     sync.Mutex
	reqID     uint64
	requests  map[uint64]chan []byte // the master's requests awaiting a reply
	readyAt   time.Time
	lastSeen  atomic.Int64 // unix nanos of the last frame received

	// Guarded by master.mu.
	state      childState
	held       bool   // started, but not yet sent the member table (see spawn)
	stopping   bool   // the master asked it to stop: its exit is expected
	replaced   bool   // a replacement took or is taking its slot: not a crash
	killReason string // why the master killed it (hang, start timeout)
	fatal      string // the error the child reported before exiting
	panicLine  string // the first "panic:" / "fatal error:" line on its stderr
	exitReason string
	usage      usage

	ready      chan struct{} // closed when it reports Ready
	exited     chan struct{} // closed once its exit is handled
	readDone   chan struct{}
	stderrDone chan struct{} // both output pumps are done
}

func (c *child) String() string { return fmt.Sprintf("%s (pid %d)", c.slot, c.pid) }

func (c *child) logAttrs() []any {
	return []any{"child_role", c.slot.role.String(), "child_id", c.slot.id, "child_pid", c.pid}
}

func newMaster(cfg Config) (*master, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("brood: find own executable: %w", err)
	}
	pid := os.Getpid()
	m := &master{
		cfg:      cfg,
		log:      cfg.Logger.With("role", Master.String(), "id", 0, "pid", pid),
		exe:      exe,
		args:     os.Args[1:],
		pid:      pid,
		out:      os.Stderr,
		workers:  make(map[int]*slot),
		children: make(map[int]*child),
		stopReq:  make(chan struct{}),
	}
	m.router = relay.New(relay.Options{
		MasterPID: uint32(pid), MaxPending: cfg.MaxPending, MaxPendingBytes: cfg.MaxPendingBytes, Logger: m.log,
		MasterReply: m.onMasterReply, MasterMessage: m.onMasterMessage,
	})
	m.requests = make(map[uint64]chan []byte)
	m.life, m.endLife = context.WithCancel(context.Background())
	return m, nil
}

// run is the master's life: take the run dir, open the listeners, start the
// cluster, serve until ctx is done or a stop is requested, then stop.
func (m *master) run(ctx context.Context, force <-chan struct{}) error {
	m.startedAt = time.Now()
	release, err := m.acquireRunDir()
	if err != nil {
		return err
	}
	defer release()
	socks, err := listener.Open(ctx, m.cfg.Listen, m.cfg.ReusePort)
	if err != nil {
		return fmt.Errorf("brood: %w", err)
	}
	m.socks = socks
	for _, s := range socks {
		m.log.Info("listening", "addr", s.Bound.String(), "requested", s.Requested.String())
	}
	defer m.closeSockets()

	m.wg.Add(1)
	go m.heartbeatLoop()

	started := time.Now()
	// A stop requested during the start aborts it.
	startDone := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			m.abortStart(fmt.Errorf("brood: start interrupted: %w", context.Cause(ctx)))
		case <-m.stopReq:
			m.abortStart(fmt.Errorf("brood: start interrupted: %s", m.stopWhy))
		case <-force:
			m.abortStart(errors.New("brood: start interrupted: forced stop"))
		case <-startDone:
		}
	}()
	err = m.startCluster()
	close(startDone)
	if err != nil {
		m.stopAll(force)
		return err
	}
	m.log.Info("cluster ready", "workers", m.cfg.Workers, "agent", m.cfg.Agent != nil,
		"listen", m.boundAddrs(), "took", time.Since(started).Round(time.Millisecond))
	if m.hooks.onReady != nil {
		m.hooks.onReady(m)
	}
	select {
	case <-ctx.Done():
		m.log.Info("stopping", "cause", context.Cause(ctx))
	case <-m.stopReq:
		m.log.Info("stopping", "cause", m.stopWhy)
	case <-force:
		m.log.Warn("forced stop")
	}
	m.stopAll(force)
	m.log.Info("stopped")
	return nil
}

func (m *master) boundAddrs() []string {
	out := make([]string, len(m.socks))
	for i, s := range m.socks {
		out[i] = s.Bound.String()
	}
	return out
}

func (m *master) closeSockets() {
	listener.CloseAll(m.socks)
}

// startCluster starts the agent, waits for it, starts every worker in parallel and
// waits for them, then tells everyone the cluster is ready (Egg's start order).
// Any failure aborts: the caller stops what was started.
func (m *master) startCluster() error {
	// Every slot exists before anything starts, so that what the agent sends to
	// the workers during its initialisation waits for them instead of vanishing.
	slots := make([]*slot, m.cfg.Workers)
	for i := range slots {
		slots[i] = m.addSlot(Worker, i+1)
	}
	// The workers' processes start now, held, so that their exec and runtime
	// start overlap with the agent's initialisation; their user code runs only
	// once the agent is ready (Egg's order).
	var agent *child
	var agentErr error
	if m.cfg.Agent != nil {
		agent, agentErr = m.spawn(m.addSlot(Agent, 0), false)
	}
	held := make([]*child, len(slots))
	heldErrs := make([]error, len(slots))
	var spawning sync.WaitGroup
	for i, s := range slots {
		spawning.Go(func() { held[i], heldErrs[i] = m.spawn(s, true) })
	}
	if agentErr == nil && agent != nil {
		agentErr = m.awaitReady(agent)
	}
	spawning.Wait()
	if agentErr != nil {
		m.endLife()
		m.mu.Lock()
		defer m.mu.Unlock()
		if m.startErr != nil {
			return m.startErr
		}
		return fmt.Errorf("brood: start agent: %w", agentErr)
	}
	var started []*child
	for _, c := range held {
		if c != nil {
			started = append(started, c)
		}
	}
	m.release(started)
	errs := make(chan error, len(slots))
	for i, s := range slots {
		go func() {
			err := heldErrs[i]
			if err == nil {
				err = m.awaitReady(held[i])
			}
			if err != nil {
				err = fmt.Errorf("brood: start %s: %w", s, err)
				m.endLife() // no point waiting for the others
			}
			errs <- err
		}()
	}
	// Report the failure that aborted the start, not the starts it cut short.
	var first error
	for range slots {
		if err := <-errs; err != nil && (first == nil || errors.Is(first, errStopping)) {
			first = err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.startErr != nil {
		return m.startErr // an interruption, or a child that died after its Ready
	}
	if first != nil {
		return first
	}
	m.state = stateRunning
	for _, c := range m.children {
		if c.state == childReady {
			m.router.Event(c.ep, ActionReady, nil)
		}
	}
	return nil
}

func (m *master) addSlot(role Role, id int) *slot {
	s := &slot{role: role, id: id, rs: m.router.AddSlot(ipc.Role(role), id)}
	m.mu.Lock()
	defer m.mu.Unlock()
	if role == Agent {
		m.agent = s
	} else {
		m.workers[id] = s
	}
	return s
}

var errStopping = errors.New("the cluster is stopping")

// abortStart ends the first start with err (the first reason wins).
func (m *master) abortStart(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.abortStartLocked(err)
}

func (m *master) abortStartLocked(err error) {
	if m.state != stateStarting {
		return
	}
	if m.startErr == nil {
		m.startErr = err
	}
	m.endLife()
}

// startChild starts a process for slot s and waits until it is ready. On failure
// the process is gone when startChild returns.
func (m *master) startChild(s *slot) (*child, error) {
	c, err := m.spawn(s, false)
	if err != nil {
		return nil, err
	}
	return c, m.awaitReady(c)
}

// awaitReady waits up to ReadyTimeout for c's Ready. On failure c is gone when
// it returns.
func (m *master) awaitReady(c *child) error {
	timer := time.NewTimer(m.cfg.ReadyTimeout)
	defer timer.Stop()
	select {
	case <-c.ready:
		return nil
	case <-c.exited:
	case <-timer.C:
		m.kill(c, fmt.Sprintf("not ready within %v (ReadyTimeout)", m.cfg.ReadyTimeout))
		<-c.exited
	case <-m.life.Done():
		m.kill(c, "start abandoned: "+errStopping.Error())
		<-c.exited
		return errStopping
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return fmt.Errorf("pid %d exited before it was ready: %s", c.pid, c.exitReason)
}

// spawn starts a process for slot s and registers it as the slot's starting
// one. A held child is not sent the member table, which it waits for before
// running the user's code: its exec and runtime start overlap with the agent's
// initialisation, and release lets it go on.
func (m *master) spawn(s *slot, held bool) (*child, error) {
	m.mu.Lock()
	stopping := m.state >= stateStopping || m.life.Err() != nil || s.removed
	workers := len(m.workers)
	m.mu.Unlock()
	if stopping {
		return nil, errStopping
	}
	// Launch outside m.mu: its descriptors are close-on-exec (the child gets
	// its own through ExtraFiles) and Go serialises forks itself, so workers
	// started together fork in parallel with the rest of the master's work.
	l, err := m.launch(s, workers)
	if err != nil {
		return nil, err
	}
	abandon := func() {
		l.proc.Signal(syscall.SIGKILL)
		l.proc.Wait()
		l.conn.Close()
		for _, f := range []*os.File{l.stdout, l.stderr} {
			if f != nil {
				f.Close()
			}
		}
	}
	m.mu.Lock()
	if m.state >= stateStopping || m.life.Err() != nil || s.removed {
		m.mu.Unlock()
		abandon() // the cluster began stopping meanwhile
		return nil, errStopping
	}
	c := &child{
		slot: s, pid: l.proc.PID(), proc: l.proc, conn: l.conn, startedAt: time.Now(), held: held,
		ready: make(chan struct{}), exited: make(chan struct{}), readDone: make(chan struct{}), stderrDone: make(chan struct{}),
	}
	c.lastSeen.Store(time.Now().UnixNano())
	w := ipc.NewWriter(l.conn, 0, m.cfg.MaxFrame)
	ep, err := m.router.Attach(s.rs, uint32(c.pid), w)
	if err != nil { // a bug: the slot already has a starting process
		m.mu.Unlock()
		w.Close(time.Now())
		abandon()
		return nil, err
	}
	c.ep = ep
	s.starting = c
	m.children[c.pid] = c
	m.sendMembersLocked()
	m.mu.Unlock()

	m.log.Info("started", c.logAttrs()...)
	go m.readLoop(c)
	var pumps sync.WaitGroup
	if l.stdout != nil {
		pumps.Go(func() { m.pumpOutput(c, l.stdout, os.Stdout, false) })
	}
	if l.stderr != nil {
		pumps.Go(func() { m.pumpOutput(c, l.stderr, m.out, true) })
	}
	go func() {
		pumps.Wait()
		close(c.stderrDone)
	}()
	go m.waitChild(c)
	return c, nil
}

// release lets held children run the user's code: they get the member table.
func (m *master) release(cs []*child) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range cs {
		c.held = false
	}
	m.sendMembersLocked()
}

// childEnv is the environment of a child: the master's, minus any brood child
// variables, plus the child's own (see doc.go for the contract).
//
// Workers get GOMAXPROCS = max(1, NumCPU/workers) unless GOMAXPROCS is set:
// like Egg's single-threaded workers, N workers share the CPUs instead of each
// scheduling on all of them (measured: with 2 workers on 2 cores, Connection:
// close throughput 0.83 -> 0.89 of one process; keep-alive unchanged).
func childEnv(cfg Config, s *slot, masterPID, listeners, workers int) []string {
	env := make([]string, 0, len(os.Environ())+9)
	for _, kv := range os.Environ() {
		if !isChildEnv(kv) {
			env = append(env, kv)
		}
	}
	if _, set := os.LookupEnv("GOMAXPROCS"); !set && s.role == Worker && workers > 0 {
		env = append(env, "GOMAXPROCS="+strconv.Itoa(max(1, runtime.NumCPU()/workers)))
	}
	return append(env,
		envRole+"="+s.role.String(),
		envID+"="+strconv.Itoa(s.id),
		envIPCFD+"=3",
		envListenFDs+"="+strconv.Itoa(listeners),
		envMasterPID+"="+strconv.Itoa(masterPID),
		envProtocol+"="+strconv.Itoa(ipc.Version),
		envName+"="+cfg.Name,
		envStopTimeout+"="+cfg.StopTimeout.String(),
	)
}

// readLoop reads one child's frames until its channel closes.
func (m *master) readLoop(c *child) {
	defer close(c.readDone)
	rd := ipc.NewReader(c.conn, m.cfg.MaxFrame)
	for {
		fresh := !rd.HasFrame() // Next will read: a new batch from the child
		f, err := rd.Next()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, syscall.ECONNRESET) {
				m.log.Error("bad frame from child; killing it", append(c.logAttrs(), "err", err)...)
				m.kill(c, "protocol error: "+err.Error())
			}
			return
		}
		if fresh {
			c.lastSeen.Store(time.Now().UnixNano())
		}
		switch f.Kind {
		case ipc.KindMessage, ipc.KindReply, ipc.KindAck:
			m.router.Handle(c.ep, f)
		case ipc.KindPong:
		case ipc.KindHello:
			if v := string(f.Payload); v != strconv.Itoa(ipc.Version) {
				m.setFatal(c, fmt.Sprintf("child speaks IPC protocol %s, master speaks %d", v, ipc.Version))
				m.kill(c, "protocol version mismatch")
				return
			}
		case ipc.KindReady:
			m.onReady(c)
		case ipc.KindFatal:
			m.setFatal(c, string(f.Payload))
		case ipc.KindReplaceMe:
			m.onReplaceMe(c, string(f.Payload))
		default:
			m.log.Warn("unexpected frame from child", append(c.logAttrs(), "kind", f.Kind.String())...)
		}
		if !rd.HasFrame() { // end of this read's batch: one write per destination
			m.router.Flush(c.ep)
		}
	}
}

func (m *master) setFatal(c *child, msg string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c.fatal == "" {
		c.fatal = msg
	}
}

// pumpOutput copies a child's stdout or stderr to the master's, whole lines at
// a time, until the child and its descendants close it. On stderr it remembers
// the first panic line for the exit reason.
func (m *master) pumpOutput(c *child, r *os.File, dst io.Writer, stderr bool) {
	defer r.Close()
	br := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) > 0 {
			if stderr && (bytes.HasPrefix(line, []byte("panic: ")) || bytes.HasPrefix(line, []byte("fatal error: "))) {
				m.mu.Lock()
				if c.panicLine == "" {
					c.panicLine = string(bytes.TrimSpace(line))
				}
				m.mu.Unlock()
			}
			m.outMu.Lock()
			dst.Write(line)
			m.outMu.Unlock()
		}
		if err != nil && err != bufio.ErrBufferFull {
			return
		}
	}
}

// waitChild reaps a child and handles its exit.
func (m *master) waitChild(c *child) {
	how := c.proc.Wait()
	// Relay what it sent before dying, and collect its last words, within bounds:
	// a grandchild holding its stderr must not hold up the restart.
	bound := time.NewTimer(time.Second)
	select {
	case <-c.readDone:
	case <-bound.C:
	}
	c.conn.Close()
	<-c.readDone
	select {
	case <-c.stderrDone:
	case <-bound.C:
	}
	bound.Stop()
	m.onExit(c, how)
}

func (m *master) onReady(c *child) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c.state != childStarting {
		return
	}
	c.state = childReady
	c.readyAt = time.Now()
	s := c.slot
	m.router.MarkReady(c.ep)
	if s.starting == c {
		s.starting = nil
		s.serving = c
	}
	close(c.ready)
	m.log.Info("ready", append(c.logAttrs(), "took", c.readyAt.Sub(c.startedAt).Round(time.Millisecond))...)
	m.sendMembersLocked()
	ev := m.processEvent(c, "")
	if s.role == Worker {
		if m.agent != nil {
			m.router.EventToSlot(m.agent.rs, ActionWorkerStart, ev)
		}
		m.sendPidsLocked()
	} else {
		m.sendPidsLocked()
		if m.state == stateRunning {
			for _, w := range m.workers {
				m.router.EventToSlot(w.rs, ActionAgentStart, ev)
			}
		}
	}
	if m.state == stateRunning {
		m.router.Event(c.ep, ActionReady, nil)
	}
}

func (m *master) processEvent(c *child, reason string) []byte {
	b, _ := json.Marshal(ProcessEvent{Role: c.slot.role.String(), ID: c.slot.id, PID: c.pid, Reason: reason})
	return b
}

// sendPidsLocked tells the agent the pids of the ready workers (Egg's egg-pids).
func (m *master) sendPidsLocked() {
	if m.agent == nil {
		return
	}
	pids := []int{}
	for _, id := range m.workerIDsLocked() {
		if w := m.workers[id]; w.serving != nil && w.serving.state == childReady {
			pids = append(pids, w.serving.pid)
		}
	}
	b, _ := json.Marshal(pids)
	m.router.EventToSlot(m.agent.rs, ActionPids, b)
}

// sendMembersLocked sends the process table to every child.
func (m *master) sendMembersLocked() {
	list := make([]Member, 0, len(m.children))
	for _, c := range m.children {
		if c.state != childExited {
			list = append(list, Member{PID: c.pid, Role: c.slot.role, ID: c.slot.id, Ready: c.state == childReady || c.state == childStopping})
		}
	}
	sortMembers(list)
	b, _ := json.Marshal(list)
	h := ipc.Header{Kind: ipc.KindMembers, Role: ipc.RoleMaster, From: uint32(m.pid)}
	for _, c := range m.children {
		if !c.held {
			_ = c.ep.Writer().Append(&h, "", b)
		}
	}
}

// onExit handles a reaped child: routing, events, and a restart if it crashed.
func (m *master) onExit(c *child, how string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	reason := how
	switch {
	case c.killReason != "":
		reason += " (" + c.killReason + ")"
	case c.panicLine != "":
		reason += " (" + c.panicLine + ")"
	case c.fatal != "":
		reason += " (" + c.fatal + ")"
	}
	c.exitReason = reason
	wasReady := c.state == childReady || c.state == childStopping
	c.state = childExited
	m.router.Detach(c.ep)
	c.ep.Writer().Close(time.Now())
	delete(m.children, c.pid)
	s := c.slot
	if s.serving == c {
		s.serving = nil
	}
	if s.starting == c {
		s.starting = nil
	}
	uptime := time.Since(c.startedAt)
	expected := c.stopping || c.replaced
	attrs := append(c.logAttrs(), "reason", reason, "uptime", uptime.Round(time.Millisecond))
	switch {
	case expected:
		m.log.Info("exited", attrs...)
	case !wasReady:
		// A start that failed: whoever started it reports and decides.
		m.log.Warn("exited before it was ready", attrs...)
	case m.state == stateStarting:
		// Ready, then dead while the others start: no half-up cluster.
		m.log.Warn("crashed during the start", attrs...)
		m.abortStartLocked(fmt.Errorf("brood: start: %s exited after it was ready: %s", c, reason))
	default:
		s.restarts++
		s.lastReason = reason
		if uptime >= m.cfg.Restart.ResetAfter {
			s.crashes = 1
		} else {
			s.crashes++
		}
		m.log.Warn("crashed", append(attrs, "restarts", s.restarts)...)
	}
	close(c.exited)
	m.sendMembersLocked()
	if wasReady {
		ev := m.processEvent(c, reason)
		if s.role == Worker {
			if m.agent != nil {
				m.router.EventToSlot(m.agent.rs, ActionWorkerExit, ev)
			}
			m.sendPidsLocked()
		} else {
			for _, w := range m.workers {
				m.router.EventToSlot(w.rs, ActionAgentExit, ev)
			}
		}
	}
	if !expected && wasReady && m.state == stateRunning && s.serving == nil && s.starting == nil && !s.removed {
		m.ensureRestartLocked(s)
	}
}

// ensureRestartLocked starts a restart loop for s unless one runs already.
func (m *master) ensureRestartLocked(s *slot) {
	if s.restarting || m.state >= stateStopping {
		return
	}
	s.restarting = true
	m.wg.Add(1)
	go m.restartLoop(s)
}

// goOwned runs f on a goroutine the master waits for when it stops, unless it
// is stopping already (then f does not run and goOwned reports false). The
// check and the Add happen under m.mu, and stopAll marks the state stopping
// under m.mu before it waits, so no Add can race with that Wait.
func (m *master) goOwned(f func()) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.state >= stateStopping {
		return false
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		f()
	}()
	return true
}

// restartLoop brings slot s back, backing off while it keeps failing.
func (m *master) restartLoop(s *slot) {
	defer m.wg.Done()
	defer func() {
		m.mu.Lock()
		s.restarting = false
		m.mu.Unlock()
	}()
	for {
		m.mu.Lock()
		delay := m.cfg.Restart.delay(s.crashes)
		m.mu.Unlock()
		if delay > 0 {
			m.log.Info("restart delayed (crash loop)", "slot", s.String(), "delay", delay)
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-m.life.Done():
				t.Stop()
				return
			}
		}
		c, err := m.startChild(s)
		if err == nil {
			m.log.Info("restarted", c.logAttrs()...)
			return
		}
		if errors.Is(err, errStopping) {
			return
		}
		m.mu.Lock()
		s.crashes++
		s.restarts++
		s.lastReason = err.Error()
		m.mu.Unlock()
		m.log.Warn("restart failed", "slot", s.String(), "err", err)
	}
}

// onReplaceMe handles a worker that had a guarded panic: it is already draining;
// start its replacement at once.
func (m *master) onReplaceMe(c *child, reason string) {
	m.log.Warn("replacing after a guarded panic", append(c.logAttrs(), "reason", reason)...)
	m.goOwned(func() { _ = m.replace(c, "guarded "+reason) })
}

// replace starts a new process for old's slot, waits until it is ready, then
// stops old gracefully. If the new one fails, old keeps the slot (or, if old is
// gone meanwhile, the slot is restarted).
func (m *master) replace(old *child, reason string) error {
	_, err := m.replaceWith(old, reason)
	return err
}

// replaceWith is replace, returning the new process (nil if nothing was done).
func (m *master) replaceWith(old *child, reason string) (*child, error) {
	m.mu.Lock()
	s := old.slot
	if old.replaced || old.state == childExited || s.starting != nil || m.state != stateRunning {
		m.mu.Unlock()
		return nil, nil
	}
	old.replaced = true
	s.restarts++
	s.lastReason = reason
	m.mu.Unlock()

	nc, err := m.startChild(s)
	if err != nil {
		m.mu.Lock()
		defer m.mu.Unlock()
		if old.state == childExited {
			if m.state == stateRunning && !s.removed && s.serving == nil {
				s.crashes++
				m.ensureRestartLocked(s)
			}
		} else {
			old.replaced = false
			m.router.Restore(s.rs, old.ep)
		}
		m.log.Error("replacement failed; keeping the old process", append(old.logAttrs(), "err", err)...)
		return nil, fmt.Errorf("replace %s: %w", old, err)
	}
	m.log.Info("replaced", append(nc.logAttrs(), "old_pid", old.pid, "reason", reason)...)
	m.stopChild(old)
	return nc, nil
}

// stopChild asks a child to stop (SIGTERM) and waits until it has exited, killing
// it after StopTimeout.
func (m *master) stopChild(c *child) {
	m.mu.Lock()
	if c.state == childExited {
		m.mu.Unlock()
		return
	}
	c.stopping = true
	if c.state == childReady {
		c.state = childStopping
	}
	m.mu.Unlock()
	_ = c.proc.Signal(syscall.SIGTERM)
	t := time.NewTimer(m.cfg.StopTimeout)
	defer t.Stop()
	select {
	case <-c.exited:
	case <-t.C:
		m.log.Warn("did not stop in time; killing", append(c.logAttrs(), "stop_timeout", m.cfg.StopTimeout)...)
		m.kill(c, fmt.Sprintf("did not stop within %v (StopTimeout)", m.cfg.StopTimeout))
		<-c.exited
	}
}

// kill sends SIGKILL, recording why.
func (m *master) kill(c *child, why string) {
	m.mu.Lock()
	if c.killReason == "" {
		c.killReason = why
	}
	m.mu.Unlock()
	_ = c.proc.Signal(syscall.SIGKILL)
}

// stopAll stops the cluster: workers drain in parallel, then the agent stops,
// then the master's own goroutines end. A value on force kills what is left.
func (m *master) stopAll(force <-chan struct{}) {
	m.mu.Lock()
	if m.state >= stateStopping {
		m.mu.Unlock()
		return
	}
	m.state = stateStopping
	m.mu.Unlock()
	m.endLife()

	stopGroup := func(match func(*child) bool) {
		m.mu.Lock()
		var group []*child
		for _, c := range m.children {
			if match(c) {
				group = append(group, c)
			}
		}
		m.mu.Unlock()
		done := make(chan struct{})
		go func() {
			var wg sync.WaitGroup
			for _, c := range group {
				wg.Go(func() { m.stopChild(c) })
			}
			wg.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-force:
			for _, c := range group {
				m.kill(c, "forced stop")
			}
			<-done
		}
	}
	stopGroup(func(c *child) bool { return c.slot.role == Worker })
	stopGroup(func(c *child) bool { return true })
	m.wg.Wait()
	m.mu.Lock()
	m.state = stateStopped
	m.mu.Unlock()
}

// heartbeatLoop pings every child and kills the ones that stopped answering; it
// also samples memory for MaxRSS recycling.
func (m *master) heartbeatLoop() {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.HeartbeatInterval)
	defer t.Stop()
	var seq uint64
	for {
		select {
		case <-m.life.Done():
			return
		case <-t.C:
		}
		seq++
		now := time.Now()
		m.mu.Lock()
		var hung, heavy []*child
		for _, c := range m.children {
			if c.state == childExited {
				continue
			}
			h := ipc.Header{Kind: ipc.KindPing, Role: ipc.RoleMaster, From: uint32(m.pid), ID: seq}
			_ = c.ep.Writer().Append(&h, "", nil)
			if silent := now.Sub(time.Unix(0, c.lastSeen.Load())); silent > m.cfg.HeartbeatTimeout && c.killReason == "" {
				hung = append(hung, c)
			}
			if m.cfg.MaxRSS > 0 && c.slot.role == Worker && c.state == childReady && !c.replaced && m.state == stateRunning {
				heavy = append(heavy, c)
			}
		}
		m.mu.Unlock()
		m.sampleUsage(now)
		for _, c := range hung {
			m.log.Error("hung: no heartbeat answer; killing", append(c.logAttrs(), "timeout", m.cfg.HeartbeatTimeout)...)
			m.kill(c, fmt.Sprintf("hang: no heartbeat answer for %v", m.cfg.HeartbeatTimeout))
		}
		for _, c := range heavy {
			m.mu.Lock()
			rss := c.usage.rss
			m.mu.Unlock()
			if rss <= m.cfg.MaxRSS {
				continue
			}
			reason := fmt.Sprintf("memory: rss %d MiB over MaxRSS %d MiB", rss>>20, m.cfg.MaxRSS>>20)
			m.log.Warn("recycling", append(c.logAttrs(), "rss_bytes", rss, "max_rss", m.cfg.MaxRSS)...)
			m.goOwned(func() { _ = m.replace(c, reason) })
		}
	}
}

// sampleUsage reads RSS and CPU time of the master and every child (for
// status and MaxRSS). Virtual pids of single-process mode are skipped.
func (m *master) sampleUsage(now time.Time) {
	m.mu.Lock()
	targets := make([]*child, 0, len(m.children))
	for _, c := range m.children {
		if c.pid < singlePIDBase {
			targets = append(targets, c)
		}
	}
	m.mu.Unlock()
	samples := make([]usage, len(targets))
	m.mu.Lock()
	for i, c := range targets {
		samples[i] = c.usage
	}
	self := m.self
	m.mu.Unlock()
	for i, c := range targets {
		samples[i].sample(c.pid, now)
	}
	self.sample(m.pid, now)
	m.mu.Lock()
	for i, c := range targets {
		c.usage = samples[i]
	}
	m.self = self
	m.mu.Unlock()
}
