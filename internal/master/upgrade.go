package master

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/brood-go/brood/internal/listener"
	"github.com/brood-go/brood/internal/relay"
	"github.com/brood-go/brood/internal/upgrade"
	"github.com/brood-go/brood/internal/wire"
	"golang.org/x/sys/unix"
)

// The in-place upgrade of the master (DESIGN §12), the old image's side:
// preflight the binary on disk, freeze the cluster, hand every descriptor
// and the state over, and execve the new binary under the same pid. The new
// image's side is restore.go.
//
// What is guaranteed:
//   - A binary that fails preflight (missing, not executable, for another
//     architecture, exits non-zero, hangs past preflightTimeout, cannot read
//     this state version) changes nothing: the upgrade is refused with its
//     error, before anything is frozen.
//   - From the freeze on, the master always re-executes: the new binary, or,
//     if that exec fails or the new image cannot restore the state, the
//     binary it ran before (kept open with O_PATH, so replacing the file on
//     disk does not matter) with the same state. The children keep running
//     and serving throughout; the listeners never close; control requests
//     wait in the socket's backlog; held and unacknowledged messages,
//     restart counts and reasons and the agent's schedule clock carry over.
//   - A new image that dies outright while restoring (a fatal runtime error,
//     os.Exit in an init function) takes the master with it: the children
//     see EOF and stop gracefully. Preflight runs the same code path first.

// restoreFault, set with -ldflags -X, makes the new image fail ("error") or
// panic ("panic") while restoring: the tests' binary that crashes during a
// restore.
var restoreFault string

const (
	preflightTimeout = 10 * time.Second
	handoffGrace     = 2 * time.Second // for control requests in flight
	flushTimeout     = 2 * time.Second // for what the master still writes to a child
)

// upgradePrep is an upgrade that passed its preflight and holds the op.
type upgradePrep struct {
	end      func()
	began    time.Time
	to       upgrade.Build
	keep     bool
	rollback int // O_PATH descriptor of the running executable
}

// EnvUpgradeFailure tells the image a rollback re-executed why the new one
// failed, for its answer to the client.
const envUpgradeFailure = "BROOD_UPGRADE_FAILURE"

// PrepareUpgrade checks that an upgrade can start now and preflights the
// binary on disk. On success the upgrade holds the cluster's op: call
// ExecUpgrade next (or the returned cancel).
func (m *Master) prepareUpgrade(ctx context.Context, req wire.UpgradeRequest) (*upgradePrep, error) {
	refuse := func(cause string) error { return &StateError{Op: "upgrade", Cause: cause} }
	switch {
	case m.cfg.Single:
		return nil, refuse("single-process mode has no separate master to re-execute")
	case m.cfg.Fleet.URLs != "":
		return nil, refuse("the cluster is in a fleet, whose connection and leadership cannot be handed over yet; restart it instead")
	}
	end, err := m.beginOp("upgrade")
	if err != nil {
		return nil, err
	}
	m.mu.Lock()
	cause := m.unsteadyLocked()
	m.mu.Unlock()
	if cause != "" {
		end()
		return nil, refuse(cause)
	}
	began := time.Now()
	timeout := preflightTimeout
	if req.PreflightTimeout > 0 {
		timeout = time.Duration(req.PreflightTimeout * float64(time.Second))
	}
	// A stop meanwhile ends the preflight, and so the upgrade.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer context.AfterFunc(m.life, cancel)()
	to, err := upgrade.Preflight(ctx, m.exe, os.Args[1:], upgrade.PreflightEnv(os.Environ(), upgrade.StateVersion), timeout)
	if err != nil {
		end()
		err = fmt.Errorf("brood: upgrade refused, nothing changed: %w", err)
		m.events.publish(wire.Event{Type: wire.EventUpgradeEnded, Result: "failed", Detail: err.Error()})
		return nil, err
	}
	rb, err := unix.Open("/proc/self/exe", unix.O_PATH|unix.O_CLOEXEC, 0)
	if err != nil {
		end()
		return nil, fmt.Errorf("brood: upgrade refused, nothing changed: keep the running executable for a rollback: %w", err)
	}
	return &upgradePrep{end: end, began: began, to: to, keep: req.KeepWorkers, rollback: rb}, nil
}

// unsteadyLocked says why the cluster cannot be frozen now, or "".
func (m *Master) unsteadyLocked() string {
	inherited, total := 0, 0
	for _, s := range m.slotsLocked() {
		total++
		switch {
		case s.restarting || s.serving == nil:
			return s.String() + " is restarting; try again once it is ready"
		case s.starting != nil || s.serving.state != childReady || len(m.childrenOfLocked(s)) > 1:
			return s.String() + " is being replaced; try again once it is done"
		}
		if s.serving.inherited {
			inherited++
		}
	}
	if inherited > 0 && (inherited < total || m.mainExec == nil) {
		// The adopted ones have the thread that ran the previous exec as
		// their parent, the others the forker's: an exec from either thread
		// ends the other, and its children get their Pdeathsig.
		return fmt.Sprintf("%d of %d processes were adopted from the previous image and the others started since; reload them first", inherited, total)
	}
	return ""
}

// execThread is where the exec must run: the thread that is the parent of
// every child (see unsteadyLocked).
func (m *Master) execThreadLocked() func(path string, argv, env []string) error {
	for _, s := range m.slotsLocked() {
		if s.serving.inherited {
			return func(path string, argv, env []string) error {
				r := forkRequest{do: func() error { return syscall.Exec(path, argv, env) }, err: make(chan error, 1)}
				m.mainExec <- r
				return <-r.err
			}
		}
	}
	return m.forker.exec
}

// cancel gives up a prepared upgrade that was not executed.
func (p *upgradePrep) cancel() {
	unix.Close(p.rollback)
	p.end()
}

// execUpgrade freezes the cluster and re-executes the master. It returns
// only if the cluster changed before the freeze, with the error that says
// why (nothing was done); client, if not nil, is the connection of the
// request, which the image that restores answers.
func (m *Master) execUpgrade(p *upgradePrep, client net.Conn) error {
	m.freezeMu.Lock() // exits in progress are recorded first; later ones wait for the next image
	m.mu.Lock()
	cause := m.unsteadyLocked()
	if m.phase != phaseRunning {
		cause = "the cluster is stopping"
	}
	if cause != "" {
		m.mu.Unlock()
		m.freezeMu.Unlock()
		p.cancel()
		return &StateError{Op: "upgrade", Cause: cause}
	}
	m.frozen = true // stopAll waits for the exec from now on
	exec := m.execThreadLocked()
	from := upgrade.CurrentBuild()
	m.mu.Unlock()
	m.events.publish(wire.Event{Type: wire.EventUpgradeBegun, Detail: from.String() + " → " + p.to.String() + " (" + m.exe + ")"})

	// From here on there is no way back but an exec.
	st := m.handOver(p, client, from)
	select {
	case <-m.stopReq: // asked since the freeze: the next image stops
		st.StopRequested = m.stopWhy
	default:
	}
	b, err := upgrade.Encode(st)
	if err != nil {
		m.fatalUpgrade(err)
	}
	f, err := upgrade.WriteMemfd(b)
	if err != nil {
		m.fatalUpgrade(err)
	}
	fds := append(st.Descriptors(), int(f.Fd()), p.rollback)
	if err := upgrade.Inherit(fds); err != nil {
		m.fatalUpgrade(err)
	}
	env := upgradeEnv(int(f.Fd()), p.rollback, "")
	m.flushLogs()
	err = exec(m.exe, os.Args, env)
	// The exec failed: nothing changed in the process; run the old binary.
	failure := fmt.Sprintf("exec %s: %v", m.exe, err)
	fmt.Fprintf(os.Stderr, "brood: upgrade: %s; rolling back\n", failure)
	err = exec("/proc/self/fd/"+strconv.Itoa(p.rollback), os.Args, upgradeEnv(int(f.Fd()), -1, failure))
	m.fatalUpgrade(fmt.Errorf("roll back to the running executable: %w", err))
	panic("unreachable: fatalUpgrade exits")
}

// upgradeEnv is the environment of the next image: this one's, less what
// was for this image alone (the daemon handshake is done), plus the state.
func upgradeEnv(stateFD, rollbackFD int, failure string) []string {
	var env []string
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case wire.EnvNotifyFD, upgrade.EnvStateFD, upgrade.EnvRollbackFD, upgrade.EnvPreflight, envUpgradeFailure:
			continue
		}
		env = append(env, kv)
	}
	env = append(env, upgrade.EnvStateFD+"="+strconv.Itoa(stateFD))
	if rollbackFD >= 0 {
		env = append(env, upgrade.EnvRollbackFD+"="+strconv.Itoa(rollbackFD))
	}
	if failure != "" {
		env = append(env, envUpgradeFailure+"="+failure)
	}
	return env
}

// fatalUpgrade ends a master that froze its cluster and can neither exec
// nor go back: its children see EOF and stop gracefully.
func (m *Master) fatalUpgrade(err error) {
	fmt.Fprintf(os.Stderr, "brood: upgrade failed past the point of no return; the master exits and the children stop: %v\n", err)
	os.Exit(1)
}

// flushLogs writes out the master's log and output queues before an exec.
func (m *Master) flushLogs() {
	m.logs.q.close()
	m.stdout.close()
	m.stderr.close()
}

// handOver stops everything that reads or writes a descriptor the next
// image takes, and describes the cluster. Called frozen.
func (m *Master) handOver(p *upgradePrep, client net.Conn, from upgrade.Build) *upgrade.State {
	m.mu.Lock()
	var children []*child
	for _, s := range m.slotsLocked() {
		children = append(children, s.serving)
	}
	m.mu.Unlock()

	// First the control socket and the admin listener: the requests in
	// flight finish while the channels still work (a status asks the agent),
	// and new ones wait in the backlogs for the next image.
	m.events.closeAll() // followers of the event stream end here; they reconnect to the next image
	lock, ctl, err := m.ctl.Handoff(handoffGrace)
	if err != nil {
		m.fatalUpgrade(err)
	}
	if m.adminSock != nil {
		m.adminHalt()
	}

	// Then stop the readers and output pumps between two reads, and write
	// out what is queued for each child.
	past := time.Unix(1, 0)
	for _, c := range children {
		c.pausing.Store(true)
		_ = c.conn.SetReadDeadline(past)
		for _, f := range []*os.File{c.stdout, c.stderr} {
			if f != nil {
				_ = f.SetReadDeadline(past)
			}
		}
	}
	for _, c := range children {
		<-c.readDone
		<-c.outDone
		if err := c.ep.Writer().Close(time.Now().Add(flushTimeout)); err != nil {
			// Its stream may end inside a frame now: it cannot go on.
			m.log.Error("upgrade: could not write out what was queued for a child; killing it, its slot restarts", "child_pid", c.pid, "slot", c.slot.String(), "err", err)
			_ = c.proc.Signal(syscall.SIGKILL)
		}
	}

	st := &upgrade.State{
		Started: m.startedAt, Upgrades: m.upgradeCount() + 1, From: from, To: p.to,
		Client: -1, Began: p.began, KeepWorkers: p.keep,
		ScheduleClock: m.scheduleClock(),
	}
	if client != nil {
		st.Client = mustDup(client)
	}
	st.RunDirLock, st.Control = int(lock.Fd()), int(ctl.Fd())
	keepFile(lock, ctl)
	for _, s := range m.socks {
		st.Sockets = append(st.Sockets, socketState(s))
	}
	if m.adminSock != nil {
		a := socketState(m.adminSock)
		st.Admin = &a
	}
	rs := m.router.Stats()
	st.Router = upgrade.Counters{Relayed: rs.Relayed, Held: rs.Held, Redelivered: rs.Redelivered, Dropped: rs.Dropped, LostReplies: rs.LostReplies, Unreachable: rs.Unreachable,
		Direct: m.directSent.Load()}

	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range children {
		s := c.slot
		sent, retained, queued := m.router.Export(c.ep)
		cs := upgrade.Child{
			PID: c.pid, Protocol: c.protocol, StartedAt: c.startedAt, ReadyAt: c.readyAt,
			IPC: mustDup(c.conn), Stdout: -1, Stderr: -1, Unread: c.unread, Sent: sent, Queued: queued,
			DirectSent: c.directSent, // its reader has stopped
		}
		if c.direct != nil {
			cs.Direct = mustDup(c.direct) // its channels live on in the children; its channel socket pairs it with processes the next image starts
		}
		for _, k := range retained {
			cs.Retained = append(cs.Retained, upgrade.Frame{Seq: k.Seq, Raw: k.Raw})
		}
		if c.stdout != nil {
			cs.Stdout = mustDup(c.stdout)
		}
		if c.stderr != nil {
			cs.Stderr = mustDup(c.stderr)
		}
		st.Slots = append(st.Slots, upgrade.Slot{
			Role: wire.RoleName(s.role), ID: s.id, Restarts: s.restarts, LastReason: int(s.lastReason), LastDetail: s.lastDetail,
			Crashes: s.crashes, CPURetired: s.cpuRetired + c.usage.cpu.Seconds(), Child: cs,
		})
	}
	return st
}

// keepFile leaves the descriptors of fs open for the exec: an *os.File
// that is garbage collected closes its descriptor.
func keepFile(fs ...*os.File) { kept = append(kept, fs...) }

// kept holds the files whose descriptors an upgrade hands over.
var kept []*os.File

// mustDup duplicates the descriptor of a connection or file (close-on-exec,
// until Inherit clears it) without making it blocking, as Fd would.
func mustDup(v any) int {
	c, ok := v.(syscall.Conn)
	if !ok {
		panic(fmt.Sprintf("brood: upgrade: a %T has no descriptor", v))
	}
	raw, err := c.SyscallConn()
	fd := -1
	if err == nil {
		cerr := raw.Control(func(s uintptr) { fd, err = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 3) })
		err = errors.Join(err, cerr)
	}
	if err != nil {
		panic(fmt.Sprintf("brood: upgrade: duplicate a descriptor: %v", err))
	}
	return fd
}

func socketState(s *listener.Socket) upgrade.Socket {
	return upgrade.Socket{FD: s.FD(), Network: s.Bound.Network, Requested: s.Requested.String(), Bound: s.Bound.String(),
		Passed: s.Passed, Name: s.Name, Unlink: s.Unlinks()}
}

// routerCounters turns carried counters back into the router's.
func routerCounters(c upgrade.Counters) relay.Stats {
	return relay.Stats{Relayed: c.Relayed, Held: c.Held, Redelivered: c.Redelivered, Dropped: c.Dropped, LostReplies: c.LostReplies, Unreachable: c.Unreachable}
}

// Upgrade re-executes the master in place (DESIGN §12). It returns only if
// the upgrade is refused or fails its preflight, with the error (nothing
// changed); otherwise it does not return (the process runs the next image,
// which answers client). client may be nil (SIGUSR2).
func (m *Master) Upgrade(ctx context.Context, req wire.UpgradeRequest, client net.Conn) error {
	p, err := m.prepareUpgrade(ctx, req)
	if err != nil {
		return err
	}
	return m.execUpgrade(p, client)
}
