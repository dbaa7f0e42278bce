// Package proc holds the operating-system pieces of supervision: socketpairs for
// the IPC channel, exit descriptions, and per-process resource samples.
package proc

import (
	"fmt"
	"net"
	"os"
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
		s := "signal: " + ws.Signal().String()
		if ws.CoreDump() {
			s += " (core dumped)"
		}
		return s
	}
	return fmt.Sprintf("exit status %d", ps.ExitCode())
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
