package helperproc

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// NotifySocket is a stand-in for systemd's notification socket: a unixgram
// socket in a test's temporary directory that records every datagram, with
// the descriptors passed on it (SCM_RIGHTS), as systemd's fd store receives
// them. Set NOTIFY_SOCKET to Path in the environment of the process under test.
type NotifySocket struct {
	Path string
	fd   int
	t    testing.TB
}

// Notification is one datagram: its assignments in order, and the
// descriptors that came with it (owned by the test; closed at cleanup unless
// taken with Take).
type Notification struct {
	Lines []string
	FDs   []int
	At    time.Time // when the kernel received it (SO_TIMESTAMPNS), not when it was read
}

// Has reports whether the datagram carries the assignment kv ("READY=1").
func (n Notification) Has(kv string) bool {
	for _, l := range n.Lines {
		if l == kv {
			return true
		}
	}
	return false
}

// Value returns the value of key in the datagram ("" if absent).
func (n Notification) Value(key string) string {
	for _, l := range n.Lines {
		if k, v, ok := strings.Cut(l, "="); ok && k == key {
			return v
		}
	}
	return ""
}

// NewNotifySocket binds a notification socket for t; it is closed at cleanup.
func NewNotifySocket(t testing.TB) *NotifySocket {
	t.Helper()
	path := filepath.Join(ShortTempDir(t), "notify")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		unix.Close(fd)
		t.Fatalf("bind %s: %v", path, err)
	}
	// systemd checks the sender's credentials; so do we, to check MAINPID.
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); err != nil {
		t.Fatal(err)
	}
	s := &NotifySocket{Path: path, fd: fd, t: t}
	t.Cleanup(func() { unix.Close(fd) })
	return s
}

// Next returns the next datagram, waiting up to timeout for it.
func (s *NotifySocket) Next(timeout time.Duration) (Notification, error) {
	n, _, err := s.next(timeout)
	return n, err
}

// NextFrom is Next, also returning the sender's pid.
func (s *NotifySocket) NextFrom(timeout time.Duration) (Notification, int, error) {
	return s.next(timeout)
}

func (s *NotifySocket) next(timeout time.Duration) (Notification, int, error) {
	deadline := time.Now().Add(timeout)
	for {
		left := time.Until(deadline)
		if left <= 0 {
			return Notification{}, 0, fmt.Errorf("no notification on %s within %v", s.Path, timeout)
		}
		pfd := []unix.PollFd{{Fd: int32(s.fd), Events: unix.POLLIN}}
		n, err := unix.Poll(pfd, int(left.Milliseconds())+1)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return Notification{}, 0, err
		}
		if n == 0 {
			continue
		}
		buf := make([]byte, 64<<10)
		oob := make([]byte, unix.CmsgSpace(253*4)+unix.CmsgSpace(unix.SizeofUcred)+unix.CmsgSpace(16))
		nb, noob, _, _, err := unix.Recvmsg(s.fd, buf, oob, unix.MSG_CMSG_CLOEXEC|unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return Notification{}, 0, err
		}
		var note Notification
		pid := 0
		msgs, err := unix.ParseSocketControlMessage(oob[:noob])
		if err != nil {
			return Notification{}, 0, err
		}
		for _, m := range msgs {
			if m.Header.Level == unix.SOL_SOCKET && m.Header.Type == unix.SCM_TIMESTAMPNS && len(m.Data) >= 16 {
				ts := (*unix.Timespec)(unsafe.Pointer(&m.Data[0]))
				note.At = time.Unix(ts.Unix())
				continue
			}
			if fds, err := unix.ParseUnixRights(&m); err == nil {
				note.FDs = append(note.FDs, fds...)
				continue
			}
			if cred, err := unix.ParseUnixCredentials(&m); err == nil {
				pid = int(cred.Pid)
			}
		}
		for _, fd := range note.FDs {
			s.t.Cleanup(func() { unix.Close(fd) })
		}
		note.Lines = strings.Split(string(buf[:nb]), "\n")
		return note, pid, nil
	}
}

// WaitFor reads datagrams until one satisfies ok, and returns it with the
// ones read before it, or fails the test after timeout.
func (s *NotifySocket) WaitFor(timeout time.Duration, what string, ok func(Notification) bool) (Notification, []Notification) {
	s.t.Helper()
	deadline := time.Now().Add(timeout)
	var before []Notification
	for {
		n, err := s.Next(time.Until(deadline))
		if err != nil {
			s.t.Fatalf("waiting for %s: %v (got before: %v)", what, err, before)
		}
		if ok(n) {
			return n, before
		}
		before = append(before, n)
	}
}
