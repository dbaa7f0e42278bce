package brood

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"

	"github.com/brood-go/brood/internal/proc"
)

// childProc is how the master runs one child: an OS process, or in
// single-process mode a goroutine. The rest of the master cannot tell them apart.
type childProc interface {
	PID() int
	// Signal delivers SIGTERM (stop gracefully) or SIGKILL (stop now).
	Signal(sig syscall.Signal) error
	// Wait blocks until the child has ended and describes how: "exit status 1",
	// "signal: killed".
	Wait() string
}

// launched is a child as just started: its process, the master's end of its
// channel, and (for OS processes) the read ends of its stdout and stderr.
type launched struct {
	proc           childProc
	conn           net.Conn
	stdout, stderr *os.File
}

// launch starts a child for slot s in a cluster of the given number of workers.
func (m *master) launch(s *slot, workers int) (launched, error) {
	if m.cfg.Single {
		return m.launchGoroutine(s)
	}
	return m.launchProcess(s, workers)
}

// launchProcess re-executes the program with the role in the environment, the
// channel on fd 3 and the listeners after it.
func (m *master) launchProcess(s *slot, workers int) (launched, error) {
	conn, childEnd, err := proc.Socketpair()
	if err != nil {
		return launched{}, err
	}
	files := []*os.File{childEnd}
	defer func() {
		for _, f := range files {
			f.Close() // the child has its copies
		}
	}()
	if s.role == Worker {
		for _, sock := range m.socks {
			f, err := sock.File()
			if err != nil {
				conn.Close()
				return launched{}, err
			}
			files = append(files, f)
		}
	}
	// Both output streams go through the master, which alone holds the log
	// files, so that rotation (a reopen in the master) covers every process.
	outR, outW, err := os.Pipe()
	if err != nil {
		conn.Close()
		return launched{}, err
	}
	defer outW.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		conn.Close()
		return launched{}, err
	}
	defer errW.Close()
	title := m.cfg.Name + " " + s.role.String()
	if s.role == Worker {
		title += " " + strconv.Itoa(s.id)
	}
	cmd := &exec.Cmd{
		Path:        m.exe,
		Args:        append([]string{title}, m.args...),
		Env:         childEnv(m.cfg, s, m.pid, len(files)-1, workers),
		ExtraFiles:  files,
		Stdout:      outW,
		Stderr:      errW,
		SysProcAttr: &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM},
	}
	if err := cmd.Start(); err != nil {
		outR.Close()
		errR.Close()
		conn.Close()
		return launched{}, fmt.Errorf("exec %s: %w", m.exe, err)
	}
	return launched{proc: &osProc{cmd: cmd}, conn: conn, stdout: outR, stderr: errR}, nil
}

type osProc struct{ cmd *exec.Cmd }

func (p *osProc) PID() int                        { return p.cmd.Process.Pid }
func (p *osProc) Signal(sig syscall.Signal) error { return p.cmd.Process.Signal(sig) }
func (p *osProc) Wait() string {
	err := p.cmd.Wait()
	if err != nil && !errors.As(err, new(*exec.ExitError)) {
		return "wait: " + err.Error()
	}
	return proc.DescribeExit(p.cmd.ProcessState)
}

// singlePIDBase is above any kernel's pid_max (2^22), so the virtual pids of
// single-process mode never look like real processes.
const singlePIDBase = 1 << 22

// launchGoroutine runs the child in this process, connected by an in-memory pipe.
func (m *master) launchGoroutine(s *slot) (launched, error) {
	var ls []net.Listener
	if s.role == Worker {
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
	g := &goroutineProc{pid: singlePIDBase + int(m.singleSeq.Add(1)), cancel: cancel, done: make(chan struct{}), killed: make(chan struct{})}
	spec := childSpec{role: s.role, id: s.id, pid: uint32(g.pid), conn: childEnd, listeners: ls, single: true}
	go func() {
		defer close(g.done)
		g.err = runChild(ctx, m.cfg, spec)
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

func (g *goroutineProc) Wait() string {
	select {
	case <-g.done:
	case <-g.killed:
		return "abandoned (single-process mode cannot kill a goroutine)"
	}
	if g.err != nil {
		return "returned: " + g.err.Error()
	}
	return "returned"
}
