// Package master is brood's supervisor: it opens the listeners, starts the
// agent and the workers in Egg's order, watches them (exits, heartbeats,
// memory), restarts and replaces them, relays their messages through the
// router, runs the operations of the control socket (reload, scale, stop,
// rotate-logs) and publishes every lifecycle transition on one event stream.
//
// Files by concern: master.go (the type, start order and stop), slot.go (the
// one owner of every process transition and its typed reason), child.go (one
// process: its channel and exit), launch.go (the environment contract,
// spawning, single-process children, orphan reaping), health.go (heartbeats,
// resource samples, recycling), ops.go (reload, scale, stop requests, in
// every state), status.go, events.go, control.go (the control socket's
// handlers), logs.go, signals.go (signals and the daemon handshake),
// systemd.go (sd_notify, the watchdog, socket activation and the fd store),
// output.go.
package master

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/brood-go/brood/internal/control"
	"github.com/brood-go/brood/internal/fleet"
	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/listener"
	"github.com/brood-go/brood/internal/metrics"
	"github.com/brood-go/brood/internal/reaper"
	"github.com/brood-go/brood/internal/relay"
	"github.com/brood-go/brood/internal/wire"
)

// Config is what the supervisor needs of brood.Config, resolved: every
// duration and bound has its default applied by package brood.
type Config struct {
	Name      string
	Workers   int
	Listen    []string
	ReusePort bool
	Agent     bool     // the cluster has an agent
	Args      []string // argv after argv[0], passed to every child

	// Single runs children as goroutines of this process through RunInProcess.
	Single bool
	// RelayOnly: no direct agent-worker channels (see direct.go).
	RelayOnly    bool
	RunInProcess func(ctx context.Context, c InProcess) error

	ReadyTimeout      time.Duration
	StopTimeout       time.Duration
	HeartbeatInterval time.Duration
	HeartbeatTimeout  time.Duration
	MaxRSS            uint64
	Restart           Backoff
	MaxFrame          int
	MaxPending        int
	MaxPendingBytes   int

	// Admin is the admin listener's address ("" = off); Metrics how children's
	// gauges merge; ScrapeTimeout bounds gathering them (default 1s).
	Admin         string
	Metrics       metrics.Options
	ScrapeTimeout time.Duration

	// DrainDelay: on a graceful stop, workers keep serving this long after
	// /readyz has turned 503, before they drain. Subreaper: become the
	// parent of the orphans the children leave and reap them (always done
	// when the master is pid 1; never in single-process mode; see
	// startReaper).
	DrainDelay time.Duration
	Subreaper  bool

	Schedules   bool // the agent has a schedule table (status asks for it)
	LogRotation bool // the agent rotates log files (rotate-logs asks it)

	RunDir string
	// Logger receives the master's logs (nil: a text handler on Stderr). Its
	// handler is called from one goroutine of its own, in order, so a handler
	// that blocks never blocks the master: records that do not fit in the
	// queue meanwhile are dropped and counted.
	Logger *slog.Logger
	// Stdout and Stderr receive the children's output (default os.Stdout and
	// os.Stderr), through buffers that never block the master.
	Stdout, Stderr *os.File

	// Fleet joins the cluster to a fleet of clusters of the same Name over
	// NATS (URLs empty: no fleet).
	Fleet FleetConfig

	// OnReady is called once the first start has completed, with the status.
	OnReady func(wire.Status)
}

// Backoff is the crash-restart policy: the first crash of a slot is replaced
// at once; each further crash within ResetAfter of the previous start waits
// twice as long as the last, from MinDelay up to MaxDelay.
type Backoff struct {
	MinDelay, MaxDelay, ResetAfter time.Duration
}

// Delay returns the wait before restart number n (1-based) of a crash loop.
func (b Backoff) Delay(n int) time.Duration {
	if n <= 1 {
		return 0
	}
	d := b.MinDelay
	for i := 2; i < n && d < b.MaxDelay; i++ {
		d *= 2
	}
	return min(d, b.MaxDelay)
}

// phase is the cluster's.
type phase int

const (
	phaseStarting phase = iota
	phaseRunning
	phaseStopping
	phaseStopped
)

func (p phase) String() string {
	return [...]string{"starting", "running", "stopping", "stopped"}[p]
}

// Master runs one cluster: it owns the sockets, the router and every child.
type Master struct {
	cfg       Config
	log       *slog.Logger
	stdout    *output
	stderr    *output
	logs      *asyncHandler // the master's log records, written off its lock
	exe       string
	pid       int
	socks     []*listener.Socket
	router    *relay.Router
	forker    *forker
	reaper    *reaper.Reaper // reaps orphans (pid 1, Subreaper); nil: off. Set by Run before any child starts.
	events    *eventLog
	asks      ipc.Pending[[]byte] // the master's own requests to children, awaiting replies
	metrics   *supervisorMetrics
	merged    *metrics.Cluster // the children's metrics
	scrapeMu  sync.Mutex       // one gather of the children at a time
	lastBeat  atomic.Int64     // unix nanos of the heartbeat loop's last round
	runCtx    context.Context  // Run's context: done = a stop was asked for
	done      chan struct{}    // closed when Run returns
	adminAddr string           // the admin listener as bound
	svc       *service         // the service manager (systemd), if any
	askID     atomic.Uint64
	clock     schedClock // the agent slot's schedule clock (schedclock.go)

	fleet        atomic.Pointer[fleet.Conn]              // the fleet connection, if in a fleet
	fleetAsks    ipc.Pending[fleetAnswer]                // requests from the fleet awaiting a worker's reply
	fleetBatches [fleet.KindRequest + 1]relay.FleetBatch // per fleet subscription: deliveries queued until its burst ends
	leases       leases                                  // the fleet's leader lease and tick claims
	readyWorkers atomic.Int64                            // as last counted under m.mu
	directSent   atomic.Uint64                           // messages the children report sent over direct channels (metrics.go)

	mu    sync.Mutex
	phase phase
	op    string // the operation running: "", "reload", "scale", "upgrade"
	// frozen: an upgrade is handing the cluster to the next image. Nothing
	// is replaced or killed any more, and exits wait (exitGate) to be
	// reaped by the next image.
	frozen  bool
	restore *restoreState // the state handed over by the previous image, while this one restores it
	// mainExec runs an upgrade's exec on the main thread, the parent of the
	// children adopted from the previous image; nil unless this image was
	// started by an upgrade and Run runs on the main thread.
	mainExec chan forkRequest

	// freezeMu is read-held from a child's exit to its recording, and an
	// upgrade write-holds it from its freeze to its exec, so that an exit is
	// either recorded before the state is taken or left to the next image.
	freezeMu  sync.RWMutex
	ctl       *control.Instance // the run dir and control socket
	adminSock *listener.Socket  // the admin listener's socket, if any
	adminHalt func()            // stops serving the admin listener, leaving its socket open
	agent     *slot
	workers   map[int]*slot
	children  map[int]*child // by pid
	startErr  error          // why the first start was aborted, if it was
	self      usage          // the master's own resource sample

	life    context.Context // cancelled when stopping starts: restarts and timers end
	endLife context.CancelFunc
	wg      sync.WaitGroup // goroutines owned by the master (restarts, replacements, heartbeat)

	ownMu     sync.Mutex // guards ownClosed, for goOwned
	ownClosed bool       // stopAll began: goOwned starts nothing more

	singleSeq atomic.Int32 // virtual pids handed out in single-process mode
	startedAt time.Time
	stopReq   chan struct{}
	stopOnce  sync.Once
	stopWhy   string

	// How the final stop went (guarded by mu; see stopResult).
	stopForced bool // a forced stop killed what was left
	stopKilled int  // processes killed after StopTimeout while the cluster stopped

	upgrades int // in-place upgrades of this master process (guarded by mu; see setUpgrades)
}

// StopError is how a stop that brought the whole cluster down was not clean:
// a forced stop cut it short, or some process had to be killed after
// StopTimeout. RunWithSignals returns it; the command line maps it to an exit
// code (see internal/cli).
type StopError struct {
	Forced bool // a forced stop (a second SIGINT) killed what was left
	Killed int  // processes killed because they did not stop within StopTimeout
}

func (e *StopError) Error() string {
	if e.Forced {
		return "brood: forced stop: the processes still draining were killed"
	}
	return fmt.Sprintf("brood: stopped, but %d process(es) did not stop within StopTimeout and were killed", e.Killed)
}

// stopResult is the outcome of the stop once Run has returned nil: nil if
// every process stopped in time, a *StopError otherwise.
func (m *Master) stopResult() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.stopForced && m.stopKilled == 0 {
		return nil
	}
	return &StopError{Forced: m.stopForced, Killed: m.stopKilled}
}

// New prepares a master for cfg. It validates the listen addresses, so a bad
// one is reported before anything is created.
func New(cfg Config) (*Master, error) {
	if err := Check(cfg); err != nil {
		return nil, err
	}
	// Every check comes before the first goroutine (the outputs') starts, so
	// that a refused configuration leaves nothing behind.
	svc, err := newService()
	if err != nil {
		return nil, err
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("brood: find own executable: %w", err)
	}
	if cfg.Stdout == nil {
		cfg.Stdout = os.Stdout
	}
	if cfg.Stderr == nil {
		cfg.Stderr = os.Stderr
	}
	pid := os.Getpid()
	m := &Master{
		cfg:      cfg,
		stdout:   newOutput(cfg.Stdout),
		stderr:   newOutput(cfg.Stderr),
		exe:      exe,
		pid:      pid,
		workers:  make(map[int]*slot),
		children: make(map[int]*child),
		stopReq:  make(chan struct{}),
		done:     make(chan struct{}),
		runCtx:   context.Background(),
		svc:      svc,
	}
	if cfg.ScrapeTimeout <= 0 {
		m.cfg.ScrapeTimeout = time.Second
	}
	m.metrics = newSupervisorMetrics(m)
	m.merged = metrics.New(cfg.Metrics)
	var inner slog.Handler
	if cfg.Logger != nil {
		inner = cfg.Logger.Handler()
	} else {
		inner = slog.NewTextHandler(cfg.Stderr, nil)
	}
	m.logs = newAsyncHandler(inner)
	m.log = slog.New(m.logs).With("role", "master", "id", 0, "pid", pid)
	if cfg.Fleet.URLs != "" {
		m.log = m.log.With("node", cfg.Fleet.Node)
	}
	m.events = newEventLog(func(ev wire.Event) { logEvent(m.log, ev) })
	ro := relay.Options{
		MasterPID: uint32(pid), MaxPending: cfg.MaxPending, MaxPendingBytes: cfg.MaxPendingBytes, Logger: m.log,
		MasterReply: m.onMasterReply, MasterMessage: m.onMasterMessage, MaxFrame: cfg.MaxFrame,
	}
	if cfg.Fleet.URLs != "" {
		// Until the connection exists (Run), fleet messages are refused.
		ro.FleetMessage = m.onFleetMessage
	}
	m.router = relay.New(ro)
	m.life, m.endLife = context.WithCancel(context.Background())
	if !cfg.Single {
		m.forker = newForker()
	}
	return m, nil
}

// Logger returns the master's logger (role master, id 0, its pid).
func (m *Master) Logger() *slog.Logger { return m.log }

// Run is the master's life: take the run dir, open the listeners, start the
// cluster, serve until ctx is done or a stop is requested, then stop. A value
// on force (a second Ctrl-C) kills what is left of a stop. It returns the
// error that aborted the start, or nil after a clean stop.
func (m *Master) Run(ctx context.Context, force <-chan struct{}) (err error) {
	m.runCtx = ctx
	defer close(m.done)
	defer m.closeOutputs()
	if m.forker != nil {
		defer m.forker.close() // after every child is gone
	}
	defer m.startReaper()() // before any child starts; stopped after the last, before the logs close
	m.startedAt = time.Now()
	m.restoreOrRollBack() // an image started by an upgrade: check what it takes over, or go back
	release, err := m.acquireRunDir()
	if err != nil {
		return err
	}
	defer release()
	if m.cfg.Fleet.URLs != "" {
		fc, err := m.connectFleet()
		if err != nil {
			m.events.publish(wire.Event{Type: wire.EventStartFailed, Detail: err.Error()})
			return fmt.Errorf("brood: %w", err)
		}
		m.fleet.Store(fc)
		defer fc.Close() // after every child is gone
		m.events.publish(wire.Event{Type: wire.EventFleet, Result: "connected", Detail: fc.Server()})
	}
	m.startService()
	var adminSock *listener.Socket
	var socks []*listener.Socket
	if m.restore != nil {
		adminSock, socks, err = m.adoptSockets()
	} else {
		adminSock, socks, err = m.openSockets(ctx)
	}
	if err != nil {
		m.events.publish(wire.Event{Type: wire.EventStartFailed, Detail: err.Error()})
		return err
	}
	m.socks = socks
	for _, s := range socks {
		m.log.Info("listening", "addr", s.Bound.String(), "requested", s.Requested.String(), "passed", s.Passed)
	}
	defer listener.CloseAll(m.socks)
	if adminSock != nil {
		stopAdmin, err := m.serveAdmin(adminSock)
		if err != nil {
			return err
		}
		defer stopAdmin()
	}

	m.wg.Add(1)
	go m.heartbeatLoop()

	started := time.Now()
	// A stop requested during the start aborts it.
	startDone := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			m.failStart(fmt.Errorf("brood: start interrupted: %w", context.Cause(ctx)))
		case <-m.stopReq:
			m.failStart(fmt.Errorf("brood: start interrupted: %s", m.stopWhy))
		case <-force:
			m.failStart(errors.New("brood: start interrupted: forced stop"))
		case <-startDone:
		}
	}()
	restored := m.restore != nil
	if restored {
		err = m.restoreCluster()
	} else {
		err = m.startCluster()
	}
	close(startDone)
	if err != nil {
		m.events.publish(wire.Event{Type: wire.EventStartFailed, Detail: err.Error()})
		m.stopAll(force, "the start failed")
		return err
	}
	if restored {
		if why := m.restore.st.StopRequested; why != "" {
			m.RequestStop(why + " (asked during the upgrade)")
		}
		m.events.publish(wire.Event{Type: wire.EventClusterReady, To: len(m.workers), Took: time.Since(started).Seconds(),
			Detail: fmt.Sprintf("restored by an upgrade, listening on %v", m.boundAddrs())})
		m.goOwned("upgrade", m.finishUpgrade)
	} else {
		m.events.publish(wire.Event{Type: wire.EventClusterReady, To: m.cfg.Workers, Took: time.Since(started).Seconds(),
			Detail: fmt.Sprintf("agent %v, listening on %v", m.cfg.Agent, m.boundAddrs())})
		if m.cfg.OnReady != nil {
			m.cfg.OnReady(m.Status())
		}
	}
	var why string
	for why == "" {
		select {
		case <-ctx.Done():
			why = fmt.Sprint(context.Cause(ctx))
		case <-m.stopReq:
			why = m.stopWhy
		case <-force:
			why = "forced stop"
		case r := <-m.mainExec: // an upgrade's exec, on the main thread (see restore.go)
			r.err <- r.do()
		}
	}
	m.stopAll(force, why)
	return nil
}

func (m *Master) closeOutputs() {
	m.events.closeAll()
	m.stopService() // after the event stream has ended: the last datagrams are sent
	m.logs.q.close()
	m.stdout.close()
	m.stderr.close()
}

func (m *Master) boundAddrs() []string {
	out := make([]string, len(m.socks))
	for i, s := range m.socks {
		out[i] = s.Bound.String()
	}
	return out
}

// startCluster starts the agent, waits for it, starts every worker in parallel
// and waits for them, then tells everyone the cluster is ready (Egg's start
// order). Any failure aborts: the caller stops what was started. The error is
// the first failure's, never that of a process stopped because of it.
func (m *Master) startCluster() error {
	// Every slot exists before anything starts, so that what the agent sends to
	// the workers during its initialisation waits for them instead of vanishing.
	slots := make([]*slot, m.cfg.Workers)
	for i := range slots {
		slots[i] = m.addSlot(ipc.RoleWorker, i+1)
	}
	// The workers' processes start now, held, so that their exec and runtime
	// start overlap with the agent's initialisation; their user code runs only
	// once the agent is ready (Egg's order).
	var agent *slot
	var agentChild *child
	var agentErr error
	if m.cfg.Agent {
		agent = m.addSlot(ipc.RoleAgent, 0)
		agentChild, agentErr = agent.spawn(false)
	}
	held := make([]*child, len(slots))
	heldErrs := make([]error, len(slots))
	var spawning sync.WaitGroup
	for i, s := range slots {
		spawning.Go(func() { held[i], heldErrs[i] = s.spawn(true) })
	}
	if agentErr == nil && agent != nil {
		agentErr = agent.awaitReady(agentChild)
	}
	if agentErr != nil && !errors.Is(agentErr, errStopping) {
		m.failStart(fmt.Errorf("brood: start agent: %w", agentErr))
	}
	spawning.Wait()
	if agentErr != nil {
		return m.startError(agentErr)
	}
	m.release(held)
	var waiting sync.WaitGroup
	for i, s := range slots {
		waiting.Go(func() {
			err := heldErrs[i]
			if err == nil {
				err = s.awaitReady(held[i])
			}
			if err != nil && !errors.Is(err, errStopping) {
				m.failStart(fmt.Errorf("brood: start %s: %w", s, err))
			}
		})
	}
	waiting.Wait()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.startErr != nil {
		return m.startErr
	}
	m.phase = phaseRunning
	for _, c := range m.children {
		if c.state == childReady {
			m.router.Event(c.ep, wire.ActionReady, nil)
		}
	}
	return nil
}

// startError is the error the first start ends with: the first failure
// recorded, or err.
func (m *Master) startError(err error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.startErr != nil {
		return m.startErr
	}
	return err
}

// failStart ends the first start with err; the first failure wins, and the
// processes stopped because of it are abandoned, so they never replace it.
func (m *Master) failStart(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.failStartLocked(err)
}

func (m *Master) failStartLocked(err error) {
	if m.phase != phaseStarting {
		return
	}
	if m.startErr == nil {
		m.startErr = err
	}
	m.endLife()
}

// release lets held children run the user's code: they get the member table.
func (m *Master) release(cs []*child) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range cs {
		if c != nil {
			c.held = false
		}
	}
	m.sendMembersLocked()
}

// sendPidsLocked tells the agent the pids of the ready workers (Egg's egg-pids).
func (m *Master) sendPidsLocked() {
	if m.agent == nil {
		return
	}
	pids := []int{}
	for _, s := range m.workerSlotsLocked() {
		if s.serving != nil && s.serving.state == childReady {
			pids = append(pids, s.serving.pid)
		}
	}
	b, _ := json.Marshal(pids)
	m.router.EventToSlot(m.agent.rs, wire.ActionPids, b)
}

// sendMembersLocked sends the process table to every child that is not held.
func (m *Master) sendMembersLocked() {
	list := make([]wire.Member, 0, len(m.children))
	for _, c := range m.children {
		if c.state != childExited {
			// A process being replaced is stopping from the moment its
			// replacement serves the slot (the router sends it the slot's
			// messages from then on), not only once it is told to stop:
			// a direct-channel sender must not serve both.
			replaced := c.state == childReady && c.stopWhy != wire.ReasonNone && c.slot.serving != nil && c.slot.serving != c
			list = append(list, wire.Member{PID: c.pid, Role: c.slot.role, ID: c.slot.id, Ready: c.state == childReady || c.state == childStopping, Stopping: c.state == childStopping || replaced})
		}
	}
	slices.SortFunc(list, func(a, b wire.Member) int {
		if a.Role != b.Role {
			return int(a.Role) - int(b.Role)
		}
		if a.ID != b.ID {
			return a.ID - b.ID
		}
		return a.PID - b.PID
	})
	m.setReadyWorkersLocked()
	b, _ := json.Marshal(list)
	h := ipc.Header{Kind: ipc.KindMembers, Role: ipc.RoleMaster, From: uint32(m.pid)}
	for _, c := range m.children {
		if !c.held {
			_ = c.ep.Writer().Append(&h, "", b)
		}
	}
}

// workerSlotsLocked returns the worker slots in id order.
func (m *Master) workerSlotsLocked() []*slot {
	ids := make([]int, 0, len(m.workers))
	for id := range m.workers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	out := make([]*slot, len(ids))
	for i, id := range ids {
		out[i] = m.workers[id]
	}
	return out
}

// slotsLocked returns the agent's slot and the workers' in id order.
func (m *Master) slotsLocked() []*slot {
	var out []*slot
	if m.agent != nil {
		out = append(out, m.agent)
	}
	return append(out, m.workerSlotsLocked()...)
}

// childrenOfLocked returns the live processes of slot s, oldest first.
func (m *Master) childrenOfLocked(s *slot) []*child {
	var out []*child
	for _, c := range m.children {
		if c.slot == s {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b *child) int { return a.startedAt.Compare(b.startedAt) })
	return out
}

// goOwned runs f on a goroutine the master waits for when it stops, unless it
// is stopping already (then f does not run and goOwned reports false). The
// check and the Add happen under ownMu, and stopAll sets ownClosed under
// ownMu before it waits, so no Add can race with that Wait. goOwned takes no
// other lock, so it may be called from anywhere, a router callback included
// (the router calls back with its own lock held, and m.mu is taken before the
// router's elsewhere). A panic in f is logged with its stack instead of ending
// the master: whatever a child, a client or a signal does, the master keeps
// supervising.
func (m *Master) goOwned(what string, f func()) bool {
	m.ownMu.Lock()
	defer m.ownMu.Unlock()
	if m.ownClosed {
		return false
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		defer func() {
			if r := recover(); r != nil {
				m.log.Error("bug: panic in the master (recovered)", "in", what, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			}
		}()
		f()
	}()
	return true
}

// stopAll stops the cluster: workers drain in parallel, then the agent stops,
// then the master's own goroutines end. A value on force kills what is left.
func (m *Master) stopAll(force <-chan struct{}, why string) {
	m.mu.Lock()
	if m.frozen {
		// An upgrade is handing the cluster over: the exec comes next, and
		// the next image stops (the state says a stop was asked).
		m.mu.Unlock()
		for r := range m.mainExec { // nil unless the exec runs on this goroutine's thread
			r.err <- r.do()
		}
		select {}
	}
	if m.phase >= phaseStopping {
		m.mu.Unlock()
		return
	}
	wasRunning := m.phase == phaseRunning
	m.phase = phaseStopping
	m.setReadyWorkersLocked() // out of the fleet's queue groups before the drain
	m.mu.Unlock()
	m.events.publish(wire.Event{Type: wire.EventStopping, Detail: why})
	if d := m.cfg.DrainDelay; d > 0 && wasRunning {
		// /readyz has answered 503 since the stop was asked for; the workers
		// keep serving while load balancers take this instance out. The
		// heartbeats go on (a hung worker is still killed), but the stopping
		// phase already refuses restarts and operations.
		m.log.Info("drain delay: the workers keep serving before they drain", "for", d)
		t := time.NewTimer(d)
		select {
		case <-t.C:
		case <-force:
			t.Stop()
		}
	}
	m.ownMu.Lock()
	m.ownClosed = true
	m.ownMu.Unlock()
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
				wg.Go(func() { c.slot.stopChild(c, wire.ReasonStop) })
			}
			wg.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-force:
			m.mu.Lock()
			m.stopForced = true
			m.mu.Unlock()
			for _, c := range group {
				c.slot.kill(c, wire.ReasonStop, "forced stop")
			}
			<-done
		}
	}
	stopGroup(func(c *child) bool { return c.slot.role == ipc.RoleWorker })
	stopGroup(func(c *child) bool { return true })
	m.wg.Wait()
	m.mu.Lock()
	m.phase = phaseStopped
	m.mu.Unlock()
	m.events.publish(wire.Event{Type: wire.EventStopped})
}
