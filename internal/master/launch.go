package master

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"sync"
	"syscall"

	"github.com/brood-go/brood/internal/direct"
	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/proc"
	"github.com/brood-go/brood/internal/reaper"
	"github.com/brood-go/brood/internal/sdnotify"
	"github.com/brood-go/brood/internal/wire"
	"golang.org/x/sys/unix"
)

// childProc is how the master runs one child: an OS process, or in
// single-process mode a goroutine. The rest of the master cannot tell them apart.
type childProc interface {
	PID() int
	// Signal delivers SIGTERM (stop gracefully) or SIGKILL (stop now).
	Signal(sig syscall.Signal) error
	// Wait blocks until the child has ended and describes how: "exit status 1",
	// "signal: killed". exitCode is the status (-1 after a signal), signaled
	// whether a signal ended it.
	Wait() (how string, exitCode int, signaled bool)
}

// launched is a child as just started: its process, the master's end of its
// channel and of its channel socket, and (for OS processes) the read ends of
// its stdout and stderr.
type launched struct {
	proc           childProc
	conn           net.Conn
	direct         *net.UnixConn // the master's end of its channel socket (direct.go); nil: none
	stdout, stderr *os.File
}

// launch starts a child for slot s in a cluster of the given number of workers.
func (m *Master) launch(s *slot, workers int) (launched, error) {
	if m.cfg.Single {
		return m.launchGoroutine(s)
	}
	return m.launchProcess(s, workers)
}

// childEnv is the environment of a child: the master's, minus any brood child
// variables and the service manager's (NOTIFY_SOCKET, WATCHDOG_*, LISTEN_*,
// FDSTORE: they are the master's alone), plus the child's own (see doc.go of package brood for the contract).
//
// Workers get GOMAXPROCS = max(1, NumCPU/workers) unless GOMAXPROCS is set:
// like Egg's single-threaded workers, N workers share the CPUs instead of each
// scheduling on all of them (measured: with 2 workers on 2 cores, Connection:
// close throughput 0.83 -> 0.89 of one process; keep-alive unchanged).
func childEnv(cfg Config, s *slot, masterPID, listeners, workers int) []string {
	env := make([]string, 0, len(os.Environ())+9)
	for _, kv := range os.Environ() {
		if !wire.IsChildOnly(kv) && !sdnotify.IsServiceEnv(kv) {
			env = append(env, kv)
		}
	}
	if _, set := os.LookupEnv("GOMAXPROCS"); !set && s.role == ipc.RoleWorker && workers > 0 {
		env = append(env, "GOMAXPROCS="+strconv.Itoa(max(1, runtime.NumCPU()/workers)))
	}
	return append(env,
		wire.EnvRole+"="+wire.RoleName(s.role),
		wire.EnvID+"="+strconv.Itoa(s.id),
		wire.EnvIPCFD+"=3",
		wire.EnvListenFDs+"="+strconv.Itoa(listeners),
		wire.EnvMasterPID+"="+strconv.Itoa(masterPID),
		wire.EnvProtocol+"="+protocolEnv(false),
		wire.EnvProtocolMax+"="+protocolEnv(true),
		wire.EnvName+"="+cfg.Name,
		wire.EnvStopTimeout+"="+cfg.StopTimeout.String(),
		wire.EnvMetrics+"="+map[bool]string{true: "1", false: "0"}[cfg.Admin != ""],
		wire.EnvFleetNode+"="+fleetNode(cfg),
	)
}

// launchProcess re-executes the program with the role in the environment, the
// channel on fd 3, the listeners after it and, unless the cluster is relay
// only, the child's channel socket after them (direct.go).
func (m *Master) launchProcess(s *slot, workers int) (_ launched, err error) {
	conn, childEnd, err := proc.Socketpair()
	if err != nil {
		return launched{}, err
	}
	files := []*os.File{childEnd}
	var directConn *net.UnixConn
	var outR, errR *os.File
	defer func() {
		for _, f := range files {
			f.Close() // the child has its copies
		}
		if err != nil { // the master's ends too
			conn.Close()
			if directConn != nil {
				directConn.Close()
			}
			for _, f := range []*os.File{outR, errR} {
				if f != nil {
					f.Close()
				}
			}
		}
	}()
	if s.role == ipc.RoleWorker {
		for _, sock := range m.socks {
			f, err := sock.File()
			if err != nil {
				return launched{}, err
			}
			files = append(files, f)
		}
	}
	listeners := len(files) - 1
	env := childEnv(m.cfg, s, m.pid, listeners, workers)
	if !m.cfg.RelayOnly {
		// After the listeners, so that their numbering does not change.
		mc, cf, err := direct.ChannelSocket()
		if err != nil {
			return launched{}, err
		}
		directConn = mc
		env = append(env, wire.EnvDirectFD+"="+strconv.Itoa(3+len(files)))
		files = append(files, cf)
	}
	// Both output streams go through the master, which alone holds the log
	// files, so that rotation (a reopen in the master) covers every process.
	outR, outW, err := os.Pipe()
	if err != nil {
		return launched{}, err
	}
	defer outW.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		return launched{}, err
	}
	defer errW.Close()
	cmd := &exec.Cmd{
		Path:        m.exe,
		Args:        append([]string{s.title(m.cfg.Name)}, m.cfg.Args...),
		Env:         env,
		ExtraFiles:  files,
		Stdout:      outW,
		Stderr:      errW,
		SysProcAttr: &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM},
	}
	err = m.reaper.Own(func() (int, error) {
		if err := m.forker.start(cmd); err != nil {
			return 0, err
		}
		return cmd.Process.Pid, nil
	})
	if err != nil {
		return launched{}, fmt.Errorf("exec %s: %w", m.exe, err)
	}
	return launched{proc: &osProc{cmd: cmd, reaper: m.reaper}, conn: conn, direct: directConn, stdout: outR, stderr: errR}, nil
}

// forker starts every child process from one OS thread that lives as long as
// the master. Pdeathsig fires when the *thread* that forked a child ends, not
// the process: a child forked from an ordinary thread of the Go runtime dies
// the moment that thread is retired (any goroutine that exits while locked to
// its thread, in the master or in code run before Main, retires one). The
// forker's goroutine is locked to its thread and unlocks only after the last
// child is gone, so the thread is never retired under a child; kill -9 of the
// master still ends every thread, and so every child.
type forker struct {
	reqs chan forkRequest
	done chan struct{}
	once sync.Once
}

type forkRequest struct {
	do  func() error // cmd.Start, or an upgrade's exec
	err chan error
}

func newForker() *forker {
	f := &forker{reqs: make(chan forkRequest), done: make(chan struct{})}
	started := make(chan struct{})
	go f.run(started)
	<-started
	return f
}

func (f *forker) run(started chan<- struct{}) {
	defer close(f.done)
	runtime.LockOSThread()
	// Unlocking before returning keeps the thread alive in the runtime's pool
	// (a goroutine that exits locked would retire its thread).
	defer runtime.UnlockOSThread()
	close(started)
	for r := range f.reqs {
		r.err <- r.do()
	}
}

var errForkerClosed = errors.New("the master is shutting down")

// start runs cmd.Start on the forker's thread.
func (f *forker) start(cmd *exec.Cmd) error { return f.run1(cmd.Start) }

// exec replaces the master's image (an upgrade) from the forker's thread:
// the children it forked keep it as their parent thread, which the exec
// keeps (every other thread ends, and Pdeathsig would fire for the children
// of any of them). It returns only if the exec failed.
func (f *forker) exec(path string, argv, env []string) error {
	return f.run1(func() error { return syscall.Exec(path, argv, env) })
}

func (f *forker) run1(do func() error) (err error) {
	defer func() {
		if recover() != nil { // reqs closed: the master is done
			err = errForkerClosed
		}
	}()
	r := forkRequest{do: do, err: make(chan error, 1)}
	f.reqs <- r
	return <-r.err
}

// close stops the forker once no child is left to start.
func (f *forker) close() {
	f.once.Do(func() { close(f.reqs) })
	<-f.done
}

// startReaper starts reaping orphans when the master is pid 1, the parent
// of every orphan in its pid namespace, or when Config.Subreaper makes it
// the parent of its descendants' orphans (PR_SET_CHILD_SUBREAPER). Every
// child goes through m.reaper.Own and Forget (launchProcess, osProc.Wait),
// so the reaper never takes a child's exit status from its slot. Not in
// single-process mode: the user's code runs in the master then, and a
// process it starts could not be told from an orphan. A reaper that cannot
// start (a /proc of another pid namespace, prctl refused) is a warning, not
// a failed start: the cluster serves without it.
func (m *Master) startReaper() (stop func()) {
	pid1 := m.pid == 1
	if !pid1 && !m.cfg.Subreaper {
		return func() {}
	}
	if m.cfg.Single {
		m.log.Warn("orphans are not reaped in single-process mode (the program's own code runs in the master); use an init such as tini as pid 1", "pid1", pid1, "subreaper", m.cfg.Subreaper)
		return func() {}
	}
	r, err := reaper.Start(reaper.Options{Subreaper: !pid1, Logger: m.log})
	if err != nil {
		m.log.Warn("orphans will not be reaped", "err", err)
		return func() {}
	}
	m.log.Info("reaping orphans", "as", map[bool]string{true: "pid 1", false: "subreaper"}[pid1])
	m.reaper = r
	return r.Stop
}

type osProc struct {
	cmd    *exec.Cmd
	reaper *reaper.Reaper // owns the pid until Wait has returned (nil: reaping off)
}

// exitAwaiter is a childProc that can wait for the end of its process
// without reaping it (waitChild; see Master.freezeMu).
type exitAwaiter interface{ awaitExit() }

// awaitExitOf blocks until pid has ended, leaving it a zombie.
func awaitExitOf(pid int) {
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			return // ended, or not a child at all: Wait will say
		}
	}
}

func (p *osProc) awaitExit()                      { awaitExitOf(p.cmd.Process.Pid) }
func (p *osProc) PID() int                        { return p.cmd.Process.Pid }
func (p *osProc) Signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }
func (p *osProc) Wait() (string, int, bool) {
	err := p.cmd.Wait()
	p.reaper.Forget(p.cmd.Process.Pid)
	if err != nil && !errors.As(err, new(*exec.ExitError)) {
		return "wait: " + err.Error(), -1, false
	}
	ps := p.cmd.ProcessState
	ws, _ := ps.Sys().(syscall.WaitStatus)
	return proc.DescribeExit(ps), ps.ExitCode(), ws.Signaled()
}

// SinglePIDBase is above any kernel's pid_max (2^22), so the virtual pids of
// single-process mode never look like real processes.
const SinglePIDBase = 1 << 22

// InProcess is a child of single-process mode: what Config.RunInProcess needs
// to run the user's function as a goroutine of the master.
type InProcess struct {
	Role      ipc.Role
	ID        int
	PID       uint32 // virtual pid, above SinglePIDBase
	Conn      net.Conn
	Listeners []net.Listener
	FleetNode string // this member's node id, if the cluster is in a fleet
}

// launchGoroutine runs the child in this process, connected by an in-memory pipe.
func (m *Master) launchGoroutine(s *slot) (launched, error) {
	var ls []net.Listener
	if s.role == ipc.RoleWorker {
		for _, sock := range m.socks {
			l, err := sock.Listener()
			if err != nil {
				for _, l := range ls {
					l.Close()
				}
				return launched{}, err
			}
			ls = append(ls, l)
		}
	}
	masterEnd, childEnd := net.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	g := &goroutineProc{pid: SinglePIDBase + int(m.singleSeq.Add(1)), cancel: cancel, done: make(chan struct{}), killed: make(chan struct{})}
	spec := InProcess{Role: s.role, ID: s.id, PID: uint32(g.pid), Conn: childEnd, Listeners: ls, FleetNode: fleetNode(m.cfg)}
	go func() {
		defer close(g.done)
		g.err = m.cfg.RunInProcess(ctx, spec)
	}()
	return launched{proc: g, conn: masterEnd}, nil
}

// goroutineProc is a child of single-process mode. SIGKILL cannot stop a
// goroutine: it cancels it like SIGTERM and stops waiting for it.
type goroutineProc struct {
	pid      int
	cancel   context.CancelFunc
	done     chan struct{}
	err      error
	killed   chan struct{}
	killOnce sync.Once
}

func (g *goroutineProc) PID() int { return g.pid }

func (g *goroutineProc) Signal(sig syscall.Signal) error {
	g.cancel()
	if sig == syscall.SIGKILL {
		g.killOnce.Do(func() { close(g.killed) })
	}
	return nil
}

func (g *goroutineProc) Wait() (string, int, bool) {
	select {
	case <-g.done:
	case <-g.killed:
		return "abandoned (single-process mode cannot kill a goroutine)", -1, true
	}
	if g.err != nil {
		return "returned: " + g.err.Error(), 1, false
	}
	return "returned", 0, false
}

// adoptedProc is a child the previous image of the master started and an
// upgrade handed over: still this process's child (the exec kept the pid),
// but without an exec.Cmd. It is signalled through a pidfd, so a signal can
// never reach another process that reused the pid.
type adoptedProc struct {
	pid    int
	pidfd  int
	reaper *reaper.Reaper
}

func (p *adoptedProc) PID() int { return p.pid }

func (p *adoptedProc) Signal(sig syscall.Signal) error {
	return unix.PidfdSendSignal(p.pidfd, sig, nil, 0)
}

func (p *adoptedProc) awaitExit() {
	var info unix.Siginfo
	for {
		if err := unix.Waitid(unix.P_PIDFD, p.pidfd, &info, unix.WEXITED|unix.WNOWAIT, nil); err != unix.EINTR {
			return
		}
	}
}

func (p *adoptedProc) Wait() (string, int, bool) {
	defer p.reaper.Forget(p.pid)
	defer unix.Close(p.pidfd)
	var ws unix.WaitStatus
	for {
		_, err := unix.Wait4(p.pid, &ws, 0, nil)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return "wait: " + err.Error(), -1, false
		}
		break
	}
	sws := syscall.WaitStatus(ws)
	return proc.DescribeStatus(sws), sws.ExitStatus(), sws.Signaled()
}
