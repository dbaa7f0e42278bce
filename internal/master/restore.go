package master

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/brood-go/brood/internal/direct"
	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/listener"
	"github.com/brood-go/brood/internal/proc"
	"github.com/brood-go/brood/internal/relay"
	"github.com/brood-go/brood/internal/upgrade"
	"github.com/brood-go/brood/internal/wire"
	"golang.org/x/sys/unix"
)

// The in-place upgrade, the new image's side: take the state the previous
// image handed over, check all of it before touching anything (so that a
// failure can still re-execute the previous binary with the same state),
// then adopt the run dir, the listeners and every child, answer the client,
// and roll the children onto this binary.

// restoreState is a state handed over by the previous image, checked.
type restoreState struct {
	st       *upgrade.State
	fd       int   // the state file
	rollback int   // O_PATH descriptor of the previous executable; -1 after a rollback
	pidfds   []int // per slot of st
	failure  string
}

func init() {
	// An image started by an upgrade keeps its main goroutine on the main
	// thread: its children's parent is that thread (the exec ran there),
	// and a rollback, or the next upgrade while they remain, must exec
	// from it too, or the thread's end would send them their Pdeathsig.
	if os.Getenv(upgrade.EnvStateFD) != "" {
		runtime.LockOSThread()
	}
}

// restoreOrRollBack reads and checks the state the previous image handed
// over, if this image was started by an upgrade. On any failure it
// re-executes the previous image with the same state and never returns.
func (m *Master) restoreOrRollBack() {
	stateFD := os.Getenv(upgrade.EnvStateFD)
	if stateFD == "" {
		return
	}
	onMain := unix.Gettid() == os.Getpid()
	rs, err := m.checkRestore(stateFD)
	if err == nil {
		m.restore = rs
		if onMain {
			// The main goroutine stays on the main thread, which the
			// adopted children have as their parent: the next upgrade's
			// exec runs there while they remain (Run serves mainExec).
			m.mainExec = make(chan forkRequest)
		}
		return
	}
	if rs == nil || rs.rollback < 0 {
		// A rollback that fails too, or no state to go back with.
		fmt.Fprintf(os.Stderr, "brood: upgrade: cannot restore the state handed over (%v), and cannot roll back; the master exits and the children stop\n", err)
		os.Exit(1)
	}
	if !onMain {
		fmt.Fprintf(os.Stderr, "brood: upgrade: rolling back from a goroutine other than main's: the children get their Pdeathsig and stop gracefully\n")
	}
	failure := fmt.Sprintf("the new image could not restore the state: %v", err)
	fmt.Fprintf(os.Stderr, "brood: upgrade: %s; rolling back to the previous executable\n", failure)
	env := upgradeEnv(rs.fd, -1, failure)
	if err := upgrade.Inherit([]int{rs.fd}); err != nil {
		fmt.Fprintf(os.Stderr, "brood: upgrade: roll back: %v; the master exits and the children stop\n", err)
		os.Exit(1)
	}
	err = unix.Exec("/proc/self/fd/"+strconv.Itoa(rs.rollback), os.Args, env)
	fmt.Fprintf(os.Stderr, "brood: upgrade: roll back: %v; the master exits and the children stop\n", err)
	os.Exit(1)
}

// checkRestore reads, decodes and checks the state: every descriptor it
// names is open, and every child is still a child of this process. It
// consumes nothing, so the previous image can still take it all back.
func (m *Master) checkRestore(stateFD string) (rs *restoreState, err error) {
	fd, err := strconv.Atoi(stateFD)
	if err != nil || fd < 3 {
		return nil, fmt.Errorf("%s=%q: not a descriptor", upgrade.EnvStateFD, stateFD)
	}
	rs = &restoreState{fd: fd, rollback: -1, failure: os.Getenv(envUpgradeFailure)}
	if rb, err := strconv.Atoi(os.Getenv(upgrade.EnvRollbackFD)); err == nil {
		rs.rollback = rb
	}
	for _, k := range []string{upgrade.EnvStateFD, upgrade.EnvRollbackFD, envUpgradeFailure} {
		os.Unsetenv(k) // not for the children, nor for the next upgrade
	}
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("panic: %v", r)
		}
		if err != nil {
			for _, pfd := range rs.pidfds {
				unix.Close(pfd)
			}
			rs.pidfds = nil
		}
	}()
	// Close-on-exec from now on, so that a process started before the
	// restore is done does not inherit them; a rollback clears it again.
	for _, d := range []int{fd, rs.rollback} {
		if d >= 0 {
			if err := upgrade.Adopt(d); err != nil {
				return rs, err
			}
		}
	}
	b, err := upgrade.ReadFD(fd)
	if err != nil {
		return rs, err
	}
	st, err := upgrade.Decode(b)
	if err != nil {
		return rs, err
	}
	switch restoreFault {
	case "panic":
		panic("restoreFault=panic (a test build)")
	case "error":
		return rs, fmt.Errorf("restoreFault=error (a test build)")
	}
	for _, d := range st.Descriptors() {
		var s unix.Stat_t
		if err := unix.Fstat(d, &s); err != nil {
			return rs, fmt.Errorf("descriptor %d: %w", d, err)
		}
	}
	for _, sl := range st.Slots {
		pfd, err := unix.PidfdOpen(sl.Child.PID, 0)
		if err != nil {
			return rs, fmt.Errorf("pid %d: %w", sl.Child.PID, err)
		}
		rs.pidfds = append(rs.pidfds, pfd)
		if ppid, err := proc.ParentPID(sl.Child.PID); err != nil || ppid != os.Getpid() {
			return rs, fmt.Errorf("pid %d is not a child of this process (parent %d, %v)", sl.Child.PID, ppid, err)
		}
	}
	rs.st = st
	return rs, nil
}

// adoptSockets makes the listeners and the admin listener of the state.
func (m *Master) adoptSockets() (admin *listener.Socket, socks []*listener.Socket, err error) {
	one := func(s upgrade.Socket) (*listener.Socket, error) {
		req, err := listener.Parse(s.Requested)
		if err != nil {
			return nil, err
		}
		bound, err := listener.Parse(s.Bound)
		if err != nil {
			return nil, err
		}
		return listener.Adopt(s.FD, req, bound, s.Passed, s.Name, s.Unlink)
	}
	st := m.restore.st
	for _, s := range st.Sockets {
		sk, err := one(s)
		if err != nil {
			listener.CloseAll(socks)
			return nil, nil, fmt.Errorf("brood: upgrade: %w", err)
		}
		socks = append(socks, sk)
	}
	if st.Admin != nil {
		if admin, err = one(*st.Admin); err != nil {
			listener.CloseAll(socks)
			return nil, nil, fmt.Errorf("brood: upgrade: admin listener: %w", err)
		}
	}
	return admin, socks, nil
}

// restoreCluster adopts every child of the state, in its slot, as the ready
// process it is, with what the router kept for it. Then the cluster runs.
// Every slot exists, and every process is attached with its messages,
// before the first channel is read: the agent's backlog from the exec is
// routed at once, to every worker.
func (m *Master) restoreCluster() error {
	rs := m.restore
	st := rs.st
	m.startedAt = st.Started
	m.router.Carry(routerCounters(st.Router))
	m.directSent.Add(st.Router.Direct)
	m.setScheduleClock(st.ScheduleClock)
	slots := make([]*slot, len(st.Slots))
	for i, sl := range st.Slots {
		role := ipc.RoleWorker
		if sl.Role == "agent" {
			role = ipc.RoleAgent
		}
		slots[i] = m.addSlot(role, sl.ID)
	}
	var adopted []*child
	var err error
	for i, sl := range st.Slots {
		c, aerr := m.adopt(slots[i], sl, rs.pidfds[i])
		if aerr != nil {
			err = fmt.Errorf("brood: upgrade: adopt %s (pid %d): %w", slots[i], sl.Child.PID, aerr)
			break
		}
		adopted = append(adopted, c)
	}
	m.mu.Lock()
	m.op = "upgrade" // until finishUpgrade has rolled the processes and answered
	m.upgrades = st.Upgrades
	if rs.failure != "" {
		m.upgrades-- // the upgrade did not happen
	}
	if err == nil {
		m.phase = phaseRunning
		m.sendMembersLocked()
		m.sendPidsLocked()
	}
	m.mu.Unlock()
	// On an error too: what was adopted is watched, so that the stop that
	// follows can end it.
	for i, c := range adopted {
		go m.readFrames(c, ipc.NewReaderWith(c.conn, m.cfg.MaxFrame, st.Slots[i].Child.Unread))
		m.startPumps(c)
		go m.waitChild(c)
	}
	// A child whose protocol this build no longer speaks is replaced at
	// once (its slot restarts it from this binary), never kept wedged.
	for _, c := range adopted {
		if perr := m.checkProtocol(c.protocol); perr != nil && err == nil {
			m.log.Warn("upgrade: an adopted process speaks a protocol this build does not; replacing it", "child_pid", c.pid, "slot", c.slot.String(), "err", perr)
			m.setFatal(c, perr.Error())
			c.slot.kill(c, wire.ReasonUpgrade, perr.Error())
		}
	}
	return err
}

// adopt makes the child of a slot of the state this image's: attached,
// ready, with what the router kept for it. The caller starts its reader,
// output pumps and wait.
func (m *Master) adopt(s *slot, sl upgrade.Slot, pidfd int) (*child, error) {
	cs := sl.Child
	for _, fd := range []int{cs.IPC, cs.Stdout, cs.Stderr, cs.Direct} {
		if fd > 0 {
			if err := upgrade.Adopt(fd); err != nil {
				return nil, err
			}
		}
	}
	conn, err := proc.ConnFromFD(cs.IPC, "ipc")
	if err != nil {
		return nil, err
	}
	// Its channel socket: it qualifies for direct channels with the
	// processes this image starts, as its protocol (from the state) says.
	var dc *net.UnixConn
	if cs.Direct > 0 {
		if dc, err = direct.Conn(cs.Direct, "brood-direct-master"); err != nil {
			conn.Close()
			return nil, err
		}
	}
	c := &child{
		slot: s, pid: cs.PID, proc: &adoptedProc{pid: cs.PID, pidfd: pidfd, reaper: m.reaper}, conn: conn, direct: dc, directSent: cs.DirectSent,
		startedAt: cs.StartedAt, readyAt: cs.ReadyAt, state: childReady, protocol: cs.Protocol, inherited: true,
		ready: make(chan struct{}), exited: make(chan struct{}), readDone: make(chan struct{}), outDone: make(chan struct{}),
	}
	close(c.ready)
	if cs.Stdout >= 0 {
		c.stdout = os.NewFile(uintptr(cs.Stdout), "stdout")
	}
	if cs.Stderr >= 0 {
		c.stderr = os.NewFile(uintptr(cs.Stderr), "stderr")
	}
	c.lastSeen.Store(time.Now().UnixNano())
	_ = m.reaper.Own(func() (int, error) { return cs.PID, nil })
	w := ipc.NewWriter(conn, 0, m.cfg.MaxFrame)
	m.mu.Lock()
	s.restarts, s.lastReason, s.lastDetail, s.crashes, s.cpuRetired = sl.Restarts, wire.Reason(sl.LastReason), sl.LastDetail, sl.Crashes, sl.CPURetired
	ep, err := m.router.Attach(s.rs, uint32(c.pid), w)
	if err == nil {
		kept := make([]relay.Kept, len(cs.Retained))
		for i, f := range cs.Retained {
			kept[i] = relay.Kept{Seq: f.Seq, Raw: f.Raw}
		}
		err = m.router.Import(ep, cs.Sent, kept, cs.Queued)
	}
	if err != nil {
		m.mu.Unlock()
		w.Close(time.Now())
		conn.Close()
		if dc != nil {
			dc.Close()
		}
		return nil, err
	}
	c.ep = ep
	m.router.MarkReady(ep) // writes what was queued, after what the previous image wrote
	s.serving = c
	m.children[c.pid] = c
	m.mu.Unlock()
	return c, nil
}

// finishUpgrade runs once the cluster is restored: it rolls the children
// onto this binary (unless the upgrade keeps them, or this is a rollback)
// and answers the client that asked for the upgrade.
func (m *Master) finishUpgrade() {
	rs := m.restore
	st := rs.st
	defer func() {
		m.mu.Lock()
		m.op = ""
		m.mu.Unlock()
	}()
	if rs.rollback >= 0 {
		unix.Close(rs.rollback)
	}
	unix.Close(rs.fd)
	m.restore = nil
	var client net.Conn
	if st.Client >= 0 {
		if err := upgrade.Adopt(st.Client); err == nil {
			client, _ = proc.ConnFromFD(st.Client, "upgrade client")
		}
	}
	if rs.failure != "" {
		err := fmt.Errorf("brood: upgrade to %s failed, rolled back to %s (pid %d, its processes untouched): %s", st.To, st.From, m.pid, rs.failure)
		m.events.publish(wire.Event{Type: wire.EventUpgradeEnded, Result: "rolled-back", Detail: err.Error()})
		answerRaw(client, http.StatusInternalServerError, map[string]string{"error": err.Error()})
		return
	}
	res := wire.UpgradeResult{PID: m.pid, From: wire.Build(st.From), To: wire.Build(st.To), Upgrades: st.Upgrades}
	var err error
	if !st.KeepWorkers {
		var rr wire.ReloadResult
		rr, err = m.reloadSlots(time.Now(), wire.ReasonUpgrade)
		res.Replaced = rr.Replaced
	}
	res.Took = time.Since(st.Began).Seconds()
	ev := wire.Event{Type: wire.EventUpgradeEnded, Result: "ok", Took: res.Took, To: len(res.Replaced), Detail: st.From.String() + " → " + st.To.String()}
	if err != nil {
		ev.Result, ev.Detail = "failed", "the master was upgraded; rolling the children failed: "+err.Error()
		m.events.publish(ev)
		answerRaw(client, http.StatusInternalServerError, map[string]string{"error": ev.Detail})
		return
	}
	m.events.publish(ev)
	answerRaw(client, http.StatusOK, res)
}

// answerRaw writes one HTTP response on a connection handed over by the
// previous image (its request was read there) and closes it.
func answerRaw(c net.Conn, status int, body any) {
	if c == nil {
		return
	}
	defer c.Close()
	b, _ := json.Marshal(body)
	w := bufio.NewWriter(c)
	fmt.Fprintf(w, "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", status, http.StatusText(status), len(b)+1)
	w.Write(b)
	w.WriteByte('\n')
	_ = c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	w.Flush()
}
