// Package proc holds the operating-system pieces of supervision: socketpairs for
// the IPC channel, exit descriptions, and per-process resource samples.
package proc

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/procfs"
	"golang.org/x/sys/unix"
)

// Socketpair returns a connected pair: the parent's end as a net.Conn (in the
// poller, close-on-exec) and the child's end as an *os.File for ExtraFiles.
func Socketpair() (net.Conn, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	pf := os.NewFile(uintptr(fds[0]), "ipc-parent")
	conn, err := net.FileConn(pf)
	pf.Close()
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, fmt.Errorf("socketpair: %w", err)
	}
	return conn, os.NewFile(uintptr(fds[1]), "ipc-child"), nil
}

// ConnFromFD turns an inherited descriptor into a net.Conn and closes the
// original (net.FileConn keeps a close-on-exec duplicate, so programs this
// process starts do not inherit the channel).
func ConnFromFD(fd int, name string) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), name)
	if f == nil {
		return nil, fmt.Errorf("%s: bad descriptor %d", name, fd)
	}
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("%s (fd %d): %w", name, fd, err)
	}
	return c, nil
}

// DescribeExit renders how a process ended: "exit status 1", "signal: killed".
func DescribeExit(ps *os.ProcessState) string {
	if ps == nil {
		return "unknown exit"
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return DescribeStatus(ws)
	}
	return fmt.Sprintf("exit status %d", ps.ExitCode())
}

// DescribeStatus is DescribeExit for a status from wait4.
func DescribeStatus(ws syscall.WaitStatus) string {
	if ws.Signaled() {
		s := "signal: " + ws.Signal().String()
		if ws.CoreDump() {
			s += " (core dumped)"
		}
		return s
	}
	return fmt.Sprintf("exit status %d", ws.ExitStatus())
}

// Sample is a resource reading of one process.
type Sample struct {
	RSS     uint64        // resident set size, bytes
	CPUTime time.Duration // user + system time since start
	Threads int
}

// Read samples process pid from /proc.
func Read(pid int) (Sample, error) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return Sample{}, err
	}
	st, err := p.Stat()
	if err != nil {
		return Sample{}, err
	}
	return Sample{
		RSS:     uint64(st.ResidentMemory()),
		CPUTime: time.Duration(st.CPUTime() * float64(time.Second)),
		Threads: st.NumThreads,
	}, nil
}

// Alive reports whether a process with this pid exists (and is not a zombie we
// have already reaped).
func Alive(pid int) bool {
	return unix.Kill(pid, 0) == nil
}

// WaitGone waits until none of pids exists, or until timeout; it returns the
// pids still alive then. It waits on pidfds (poll), not by sleeping, so it
// returns as soon as the last process is gone. Zombies of our own children
// count as alive until reaped.
func WaitGone(pids []int, timeout time.Duration) []int {
	deadline := time.Now().Add(timeout)
	type waiting struct {
		pid int
		fd  int
	}
	var ws []waiting
	defer func() {
		for _, w := range ws {
			unix.Close(w.fd)
		}
	}()
	for _, pid := range pids {
		fd, err := unix.PidfdOpen(pid, 0)
		if err != nil {
			continue // ESRCH: already gone
		}
		ws = append(ws, waiting{pid, fd})
	}
	for {
		var fds []unix.PollFd
		var alive []int
		for _, w := range ws {
			fds = append(fds, unix.PollFd{Fd: int32(w.fd), Events: unix.POLLIN})
			alive = append(alive, w.pid)
		}
		left := time.Until(deadline)
		if len(fds) == 0 || left <= 0 {
			return alive
		}
		if _, err := unix.Poll(fds, int(left.Milliseconds())+1); err != nil && err != unix.EINTR {
			return alive
		}
		kept := ws[:0]
		for i, w := range ws {
			if fds[i].Revents == 0 {
				kept = append(kept, w)
			} else {
				unix.Close(w.fd)
			}
		}
		ws = kept
	}
}

// ErrNotChild is wrapped by the error of OpenChild for a process that is not
// (or can no longer be shown to be) a child of the given parent.
var ErrNotChild = errors.New("not a child of the given process")

// Pidfd is a process pinned by a pidfd: signals sent through it reach that
// process or none, never another that reused its pid, and waiting on it sees
// that process exit (a zombie counts as exited). Close it when done; a Pidfd
// is not safe for concurrent use.
type Pidfd struct {
	pid, fd int
}

// OpenPidfd opens a pidfd for pid. A pid that does not exist is an error
// wrapping unix.ESRCH.
func OpenPidfd(pid int) (*Pidfd, error) {
	if pid <= 0 {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, unix.ESRCH)
	}
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	return &Pidfd{pid: pid, fd: fd}, nil
}

// OpenChild opens a pidfd for pid and checks that the process is a child of
// parent: its parent pid, read from /proc after the pidfd was opened, is
// parent's, and both processes were still running after it was read (so the
// pids named them then). If pid no longer runs, the error wraps unix.ESRCH;
// if it is not shown to be parent's child, the error wraps ErrNotChild.
func OpenChild(pid int, parent *Pidfd) (*Pidfd, error) {
	p, err := OpenPidfd(pid)
	if err != nil {
		return nil, err
	}
	ppid, err := ParentPID(pid)
	switch {
	case p.Exited():
		p.Close()
		return nil, fmt.Errorf("pid %d: %w", pid, unix.ESRCH)
	case err != nil:
		p.Close()
		return nil, err
	case ppid != parent.pid:
		p.Close()
		return nil, fmt.Errorf("pid %d: its parent is pid %d, not %d: %w", pid, ppid, parent.pid, ErrNotChild)
	case parent.Exited():
		p.Close()
		return nil, fmt.Errorf("pid %d: its parent pid %d exited before it could be checked: %w", pid, parent.pid, ErrNotChild)
	}
	return p, nil
}

// ParentPID returns the parent pid of process pid, from /proc/<pid>/stat.
func ParentPID(pid int) (int, error) {
	st, err := ReadStat(pid)
	if err != nil {
		return 0, fmt.Errorf("parent of pid %d: %w", pid, err)
	}
	return st.PPID, nil
}

// Stat is what the supervisor needs of /proc/<pid>/stat.
type Stat struct {
	State byte // 'R', 'S', 'D', 'Z' (a zombie: exited, not yet waited for), ...
	PPID  int
}

// ReadStat reads /proc/<pid>/stat.
func ReadStat(pid int) (Stat, error) {
	path := "/proc/" + strconv.Itoa(pid) + "/stat"
	b, err := os.ReadFile(path)
	if err != nil {
		return Stat{}, err
	}
	st, err := ParseStat(string(b))
	if err != nil {
		return Stat{}, fmt.Errorf("%s: %w", path, err)
	}
	return st, nil
}

// ParseStat parses the text of a /proc/<pid>/stat file: "pid (comm) state
// ppid ...". comm is whatever the process named itself, spaces and
// parentheses included, so the fields are read after the last ')'.
func ParseStat(s string) (Stat, error) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return Stat{}, fmt.Errorf("cannot parse stat %q", s)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 || len(f[0]) != 1 {
		return Stat{}, fmt.Errorf("cannot parse stat %q", s)
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return Stat{}, fmt.Errorf("cannot parse stat %q: %w", s, err)
	}
	return Stat{State: f[0][0], PPID: ppid}, nil
}

// PID returns the pid the pidfd was opened for.
func (p *Pidfd) PID() int { return p.pid }

// Exited reports whether the process has exited (zombies included).
func (p *Pidfd) Exited() bool {
	fds := []unix.PollFd{{Fd: int32(p.fd), Events: unix.POLLIN}}
	for {
		n, err := unix.Poll(fds, 0)
		if err == unix.EINTR {
			continue
		}
		return err == nil && n > 0
	}
}

// Signal sends sig to the process with pidfd_send_signal. A process that has
// exited gives an error wrapping unix.ESRCH.
func (p *Pidfd) Signal(sig unix.Signal) error {
	if err := unix.PidfdSendSignal(p.fd, sig, nil, 0); err != nil {
		return fmt.Errorf("signal pid %d (%v): %w", p.pid, sig, err)
	}
	return nil
}

// Close closes the pidfd.
func (p *Pidfd) Close() error {
	if err := unix.Close(p.fd); err != nil {
		return fmt.Errorf("close pidfd of pid %d: %w", p.pid, err)
	}
	return nil
}

// WaitExit waits until every process of ps has exited, or until timeout; it
// returns those still running then, in order. It polls the pidfds, so it
// returns as soon as the last one exits; a timeout of 0 checks once without
// waiting.
func WaitExit(ps []*Pidfd, timeout time.Duration) []*Pidfd {
	deadline := time.Now().Add(timeout)
	alive := slices.Clone(ps)
	for len(alive) > 0 {
		fds := make([]unix.PollFd, len(alive))
		for i, p := range alive {
			fds[i] = unix.PollFd{Fd: int32(p.fd), Events: unix.POLLIN}
		}
		ms := 0
		if left := time.Until(deadline); left > 0 {
			ms = int(left.Milliseconds()) + 1
		}
		if _, err := unix.Poll(fds, ms); err != nil && err != unix.EINTR {
			break
		}
		kept := alive[:0]
		for i, p := range alive {
			if fds[i].Revents == 0 {
				kept = append(kept, p)
			}
		}
		alive = kept
		if ms == 0 {
			break
		}
	}
	return alive
}
