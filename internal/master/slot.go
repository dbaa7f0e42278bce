package master

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/relay"
	"github.com/brood-go/brood/internal/wire"
)

// slot is a place in the cluster (the agent, or worker N) across restarts.
//
// A slot is the one owner of its processes' lifecycle: its methods are the
// only code that spawns a process, marks it ready, records its exit, restarts,
// replaces or stops it, and the only callers of the router's Attach,
// MarkReady, Detach, Restore and RemoveSlot. Every restart is recorded by
// noteRestartLocked with its typed reason. Everything else asks the slot.
type slot struct {
	m    *Master
	role ipc.Role
	id   int
	rs   *relay.Slot

	// Guarded by Master.mu.
	serving    *child // the process doing this slot's work
	starting   *child // its replacement, while it starts
	restarts   int
	lastReason wire.Reason
	lastDetail string
	crashes    int  // consecutive crashes, for backoff
	restarting bool // a restart loop owns this slot
	removed    bool
	cpuRetired float64 // CPU seconds of the slot's processes that exited
}

// Errors of slot operations that callers branch on.
var (
	errStopping = errors.New("the cluster is stopping")
	errBusy     = errors.New("the process is already being replaced or stopped")
	errGone     = errors.New("the process has exited")
)

func (s *slot) String() string {
	if s.role == ipc.RoleAgent {
		return "agent"
	}
	return "worker " + strconv.Itoa(s.id)
}

// title is argv[0] of the slot's processes: "<name> worker 2".
func (s *slot) title(name string) string {
	t := name + " " + wire.RoleName(s.role)
	if s.role == ipc.RoleWorker {
		t += " " + strconv.Itoa(s.id)
	}
	return t
}

// addSlot creates the agent's slot or worker id's, in the master and the router.
func (m *Master) addSlot(role ipc.Role, id int) *slot {
	s := &slot{m: m, role: role, id: id, rs: m.router.AddSlot(role, id)}
	m.mu.Lock()
	defer m.mu.Unlock()
	if role == ipc.RoleAgent {
		m.agent = s
	} else {
		m.workers[id] = s
	}
	return s
}

// noteRestartLocked is the one place a restart of the slot is recorded: the
// count, the typed reason and its detail, and (for a crash) the crash-loop
// count that sets the backoff, which a process that stayed up ResetAfter resets.
func (s *slot) noteRestartLocked(reason wire.Reason, detail string, crash bool, uptime time.Duration) {
	s.m.metrics.restarts.WithLabelValues(wire.RoleName(s.role), strconv.Itoa(s.id), reason.String()).Inc()
	s.restarts++
	s.lastReason, s.lastDetail = reason, detail
	if !crash {
		return
	}
	if uptime >= s.m.cfg.Restart.ResetAfter {
		s.crashes = 1
	} else {
		s.crashes++
	}
}

// spawn starts a process for the slot and registers it as the slot's starting
// one. A held child is not sent the member table, which it waits for before
// running the user's code: its exec and runtime start overlap with the agent's
// initialisation, and Master.release lets it go on.
func (s *slot) spawn(held bool) (*child, error) {
	m := s.m
	m.mu.Lock()
	stopping := m.phase >= phaseStopping || m.life.Err() != nil || s.removed
	workers := len(m.workers)
	m.mu.Unlock()
	if stopping {
		return nil, errStopping
	}
	// Launch outside m.mu: its descriptors are close-on-exec (the child gets
	// its own through ExtraFiles) and workers started together fork in
	// parallel with the rest of the master's work.
	l, err := m.launch(s, workers)
	if err != nil {
		return nil, err
	}
	abandon := func() {
		l.proc.Signal(syscall.SIGKILL)
		l.proc.Wait()
		l.conn.Close()
		if l.direct != nil {
			l.direct.Close()
		}
		for _, f := range []*os.File{l.stdout, l.stderr} {
			if f != nil {
				f.Close()
			}
		}
	}
	m.mu.Lock()
	if m.phase >= phaseStopping || m.life.Err() != nil || s.removed {
		m.mu.Unlock()
		abandon() // the cluster began stopping meanwhile
		return nil, errStopping
	}
	c := &child{
		slot: s, pid: l.proc.PID(), proc: l.proc, conn: l.conn, direct: l.direct, startedAt: time.Now(), held: held, stdout: l.stdout, stderr: l.stderr,
		ready: make(chan struct{}), exited: make(chan struct{}), readDone: make(chan struct{}), outDone: make(chan struct{}),
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
	m.handScheduleClockLocked(c)
	m.sendMembersLocked()
	m.events.publish(c.event(wire.EventStarted))
	m.mu.Unlock()

	go m.readLoop(c)
	m.startPumps(c)
	go m.waitChild(c)
	return c, nil
}

// startPumps copies c's output to the master's until it ends.
func (m *Master) startPumps(c *child) {
	var pumps sync.WaitGroup
	if c.stdout != nil {
		pumps.Go(func() { m.pumpOutput(c, c.stdout, m.stdout, false) })
	}
	if c.stderr != nil {
		pumps.Go(func() { m.pumpOutput(c, c.stderr, m.stderr, true) })
	}
	go func() {
		pumps.Wait()
		close(c.outDone)
	}()
}

// startChild starts a process for the slot and waits until it is ready. On
// failure the process is gone when startChild returns.
func (s *slot) startChild() (*child, error) {
	c, err := s.spawn(false)
	if err != nil {
		return nil, err
	}
	return c, s.awaitReady(c)
}

// awaitReady waits up to ReadyTimeout for c's Ready. On failure c is gone when
// it returns, and the error is a *startError saying why (or errStopping).
func (s *slot) awaitReady(c *child) error {
	m := s.m
	timer := time.NewTimer(m.cfg.ReadyTimeout)
	defer timer.Stop()
	select {
	case <-c.ready:
		return nil
	case <-c.exited:
	case <-timer.C:
		s.kill(c, wire.ReasonHang, fmt.Sprintf("not ready within %v (ReadyTimeout)", m.cfg.ReadyTimeout))
		<-c.exited
	case <-m.life.Done():
		s.abandon(c)
		<-c.exited
		return errStopping
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return &startError{pid: c.pid, reason: c.exitReason, detail: c.exitDetail}
}

// markReady records c's Ready: it becomes the process serving the slot, gets
// what was held for it, and the others hear of it.
func (s *slot) markReady(c *child) {
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if c.state != childStarting {
		return
	}
	c.state = childReady
	c.readyAt = time.Now()
	m.router.MarkReady(c.ep)
	if s.starting == c {
		s.starting = nil
		s.serving = c
	}
	close(c.ready)
	ev := c.event(wire.EventReady)
	ev.Took = c.readyAt.Sub(c.startedAt).Seconds()
	m.events.publish(ev)
	m.sendMembersLocked()
	pe := processEvent(c, "")
	if s.role == ipc.RoleWorker {
		if m.agent != nil {
			m.router.EventToSlot(m.agent.rs, wire.ActionWorkerStart, pe)
		}
		m.sendPidsLocked()
	} else {
		m.sendPidsLocked()
		if m.phase == phaseRunning {
			for _, w := range m.workers {
				m.router.EventToSlot(w.rs, wire.ActionAgentStart, pe)
			}
		}
	}
	if m.phase == phaseRunning {
		m.router.Event(c.ep, wire.ActionReady, nil)
	}
}

func processEvent(c *child, reason string) []byte {
	b, _ := json.Marshal(wire.ProcessEvent{Role: wire.RoleName(c.slot.role), ID: c.slot.id, PID: c.pid, Reason: reason})
	return b
}

// recordExit handles a reaped child: routing, events, the slot's restart
// bookkeeping, and a restart if it crashed while the cluster runs.
func (s *slot) recordExit(c *child, how string, code int, signaled bool) {
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	reason, detail := c.classifyLocked(how, code, signaled)
	expected := c.stopWhy != wire.ReasonNone
	if expected {
		reason = c.stopWhy // the exit is the one the master asked for
	}
	c.exitReason, c.exitDetail = reason, detail
	wasReady := c.state == childReady || c.state == childStopping
	c.state = childExited
	m.closeDirectLocked(c) // direct.go
	m.router.Detach(c.ep)
	c.ep.Writer().Close(time.Now())
	delete(m.children, c.pid)
	if s.serving == c {
		s.serving = nil
	}
	if s.starting == c {
		s.starting = nil
	}
	uptime := time.Since(c.startedAt)
	ev := c.event(wire.EventExited)
	ev.Reason, ev.Detail, ev.Uptime = reason, detail, uptime.Seconds()
	switch {
	case expected:
	case c.abandoned:
		ev.Result = "abandoned"
	case !wasReady:
		// A start that failed: whoever started it reports and decides; during
		// the first start this is the failure that aborts it.
		ev.Result = "not-ready"
		if m.phase == phaseStarting {
			m.failStartLocked(fmt.Errorf("brood: start %s: %w", s, &startError{pid: c.pid, reason: reason, detail: detail}))
		}
	case m.phase == phaseStarting:
		// Ready, then dead while the others start: no half-up cluster.
		ev.Result = "crashed-during-start"
		m.failStartLocked(fmt.Errorf("brood: start: %s exited after it was ready: %s", c, detail))
	default:
		s.noteRestartLocked(reason, detail, true, uptime)
		ev.Result, ev.Restarts = "crashed", s.restarts
	}
	close(c.exited)
	m.merged.Retire(metricsKey(c)) // what it counted stays in the cluster's totals
	s.cpuRetired += c.usage.cpu.Seconds()
	m.events.publish(ev)
	m.sendMembersLocked()
	if wasReady {
		pe := processEvent(c, wire.ReasonText(reason, detail))
		if s.role == ipc.RoleWorker {
			if m.agent != nil {
				m.router.EventToSlot(m.agent.rs, wire.ActionWorkerExit, pe)
			}
			m.sendPidsLocked()
		} else {
			for _, w := range m.workers {
				m.router.EventToSlot(w.rs, wire.ActionAgentExit, pe)
			}
		}
	}
	if !expected && !c.abandoned && wasReady && m.phase == phaseRunning && s.serving == nil && s.starting == nil && !s.removed {
		s.ensureRestartLocked(c.pid)
	}
}

// ensureRestartLocked starts a restart loop for the slot unless one runs.
func (s *slot) ensureRestartLocked(prevPID int) {
	m := s.m
	if s.restarting || m.phase != phaseRunning {
		return
	}
	s.restarting = true
	m.wg.Add(1)
	go s.restartLoop(prevPID)
}

// restartLoop brings the slot back, backing off while it keeps failing.
func (s *slot) restartLoop(prevPID int) {
	m := s.m
	defer m.wg.Done()
	defer func() {
		m.mu.Lock()
		s.restarting = false
		m.mu.Unlock()
	}()
	for {
		m.mu.Lock()
		delay := m.cfg.Restart.Delay(s.crashes)
		ev := wire.Event{Type: wire.EventRestarting, Role: wire.RoleName(s.role), ID: s.id, PID: prevPID,
			Reason: s.lastReason, Detail: s.lastDetail, Restarts: s.restarts, Backoff: delay.Seconds()}
		m.mu.Unlock()
		m.events.publish(ev)
		if delay > 0 {
			t := time.NewTimer(delay)
			select {
			case <-t.C:
			case <-m.life.Done():
				t.Stop()
				return
			}
		}
		c, err := s.startChild()
		if err == nil {
			ev := c.event(wire.EventRestarted)
			ev.OldPID = prevPID
			m.mu.Lock()
			ev.Reason, ev.Detail, ev.Restarts = s.lastReason, s.lastDetail, s.restarts
			m.mu.Unlock()
			m.events.publish(ev)
			return
		}
		if errors.Is(err, errStopping) {
			return
		}
		reason, detail := wire.ReasonExit, err.Error()
		var se *startError
		if errors.As(err, &se) {
			reason, detail, prevPID = se.reason, se.detail, se.pid
		}
		m.mu.Lock()
		s.noteRestartLocked(reason, detail, true, 0)
		m.mu.Unlock()
		m.events.publish(wire.Event{Type: wire.EventRestarting, Role: wire.RoleName(s.role), ID: s.id, PID: prevPID,
			Reason: reason, Detail: detail, Result: "failed"})
	}
}

// replace starts a new process for the slot and, once it is ready, stops old
// gracefully (a rolling replacement: the two overlap). If the new one fails,
// old keeps the slot; if old is gone meanwhile, the slot is restarted. It
// returns errStopping, errBusy or errGone (wrapped) without doing anything
// when the cluster is not running, a replacement or stop of old is already
// under way, or old has exited.
func (s *slot) replace(old *child, reason wire.Reason, detail string) (*child, error) {
	if err := s.beginReplace(old, reason, detail); err != nil {
		return nil, err
	}
	nc, err := s.startChild()
	if err != nil {
		s.replacementFailed(old, reason, err)
		return nil, fmt.Errorf("replace %s: %w", old, err)
	}
	s.m.publishReplaced(nc, old, reason, detail)
	s.stopChild(old, reason)
	return nc, nil
}

// replaceStopFirst is replace for a singleton (the agent): old stops first,
// then the new process starts, so the two never run at once. Messages for the
// slot are held meanwhile.
func (s *slot) replaceStopFirst(old *child, reason wire.Reason, detail string) (*child, error) {
	if err := s.beginReplace(old, reason, detail); err != nil {
		return nil, err
	}
	s.stopChild(old, reason)
	nc, err := s.startChild()
	if err != nil {
		s.replacementFailed(old, reason, err)
		return nil, fmt.Errorf("replace %s: %w", old, err)
	}
	s.m.publishReplaced(nc, old, reason, detail)
	return nc, nil
}

// beginReplace marks old as being replaced, or says why it cannot be.
func (s *slot) beginReplace(old *child, reason wire.Reason, detail string) error {
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.phase != phaseRunning:
		return fmt.Errorf("replace %s: %w", old, errStopping)
	case old.state == childExited:
		return fmt.Errorf("replace %s: %w", old, errGone)
	case old.stopWhy != wire.ReasonNone || s.starting != nil || s.removed || m.frozen:
		return fmt.Errorf("replace %s: %w", old, errBusy)
	}
	old.stopWhy = reason
	s.noteRestartLocked(reason, detail, false, 0)
	return nil
}

// replacementFailed restores old as the slot's process after its replacement
// failed to start, or, if old is gone too, restarts the slot.
func (s *slot) replacementFailed(old *child, reason wire.Reason, err error) {
	m := s.m
	m.mu.Lock()
	defer m.mu.Unlock()
	if old.state == childExited {
		if m.phase == phaseRunning && !s.removed && s.serving == nil && s.starting == nil {
			s.noteRestartLocked(reason, "replacement failed: "+err.Error(), true, 0)
			s.ensureRestartLocked(old.pid)
		}
		return
	}
	old.stopWhy = wire.ReasonNone
	m.router.Restore(s.rs, old.ep)
	m.log.Error("replacement failed; keeping the old process", "child_pid", old.pid, "slot", s.String(), "err", err)
}

func (m *Master) publishReplaced(nc, old *child, reason wire.Reason, detail string) {
	ev := nc.event(wire.EventReplaced)
	ev.OldPID, ev.Reason, ev.Detail = old.pid, reason, detail
	m.events.publish(ev)
}

// stopChild asks c to stop (SIGTERM) and waits until it has exited, killing it
// after StopTimeout. why is recorded as the reason of its (expected) exit
// unless one was recorded already.
func (s *slot) stopChild(c *child, why wire.Reason) {
	m := s.m
	m.mu.Lock()
	if c.state == childExited {
		m.mu.Unlock()
		return
	}
	if c.stopWhy == wire.ReasonNone {
		c.stopWhy = why
	}
	if c.state == childReady {
		c.state = childStopping
		m.sendMembersLocked() // the others stop giving it new work (a schedule's tick)
	}
	m.mu.Unlock()
	_ = c.proc.Signal(syscall.SIGTERM)
	t := time.NewTimer(m.cfg.StopTimeout)
	defer t.Stop()
	select {
	case <-c.exited:
	case <-t.C:
		m.mu.Lock()
		if m.phase >= phaseStopping {
			m.stopKilled++ // the cluster's stop was not clean: its exit code says so
		}
		m.mu.Unlock()
		m.log.Warn("did not stop in time; killing", "child_pid", c.pid, "slot", s.String(), "stop_timeout", m.cfg.StopTimeout)
		s.kill(c, wire.ReasonNone, fmt.Sprintf("did not stop within %v (StopTimeout)", m.cfg.StopTimeout))
		<-c.exited
	}
}

// kill sends SIGKILL, recording why (the first reason given wins).
func (s *slot) kill(c *child, reason wire.Reason, detail string) {
	m := s.m
	m.mu.Lock()
	if c.killDetail == "" {
		c.killReason, c.killDetail = reason, detail
	}
	m.mu.Unlock()
	_ = c.proc.Signal(syscall.SIGKILL)
}

// abandon kills a child whose start was given up (the cluster is stopping, or
// the first start failed elsewhere): its exit is a consequence, never a cause.
func (s *slot) abandon(c *child) {
	m := s.m
	m.mu.Lock()
	c.abandoned = true
	if c.stopWhy == wire.ReasonNone {
		c.stopWhy = wire.ReasonStop
	}
	m.mu.Unlock()
	s.kill(c, wire.ReasonStop, "start abandoned: "+errStopping.Error())
}

// remove takes a worker slot out of the cluster (scale down) and stops its
// processes.
func (s *slot) remove() {
	m := s.m
	m.mu.Lock()
	s.removed = true
	delete(m.workers, s.id)
	procs := m.childrenOfLocked(s)
	m.mu.Unlock()
	m.router.RemoveSlot(s.rs)
	var wg sync.WaitGroup
	for _, c := range procs {
		wg.Go(func() { s.stopChild(c, wire.ReasonScale) })
	}
	wg.Wait()
}
