// Package listener opens the master's listening sockets, describes them, and hands
// them to children as inherited file descriptors.
//
// The master keeps each socket as a bare file descriptor: it never accepts, so the
// socket is not registered in its poller (a registered socket would wake the master
// on every incoming connection). Children receive a duplicate whose open file
// description is shared, so all workers accept from one kernel queue.
//
// Pitfall avoided here: (*net.TCPListener).File and (*os.File).Fd on a file from
// net switch the shared description to blocking mode, which makes every worker's
// accept4 a blocking syscall and lets http.Server.Shutdown hang in Close. Dup only
// with F_DUPFD_CLOEXEC inside SyscallConn().Control and wrap with os.NewFile, which
// leaves the flags alone.
package listener

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// Address is a parsed listen address.
type Address struct {
	Network string // "tcp" or "unix"
	Addr    string // host:port, or a socket path
}

// String renders the address in URL form: tcp://host:port, unix:///path or
// fd://NAME.
func (a Address) String() string {
	switch a.Network {
	case "unix":
		return "unix://" + a.Addr
	case "fd":
		return FDPrefix + a.Addr
	}
	return a.Network + "://" + a.Addr
}

// Parse accepts "tcp://host:port", "tcp4://…", "tcp6://…", "host:port", ":port",
// "unix:///path/to.sock", "unix:path", absolute socket paths "/path/to.sock",
// and "fd://NAME" for a socket passed by the service manager (see Activated).
func Parse(s string) (Address, error) {
	switch {
	case s == "":
		return Address{}, errors.New("empty listen address")
	case strings.HasPrefix(s, "unix://"):
		p := strings.TrimPrefix(s, "unix://")
		if p == "" {
			return Address{}, fmt.Errorf("listen address %q: no socket path", s)
		}
		return Address{Network: "unix", Addr: p}, nil
	case strings.HasPrefix(s, "unix:"):
		return Parse("unix://" + strings.TrimPrefix(s, "unix:"))
	case strings.HasPrefix(s, "/"):
		return Address{Network: "unix", Addr: s}, nil
	case strings.HasPrefix(s, FDPrefix):
		name := strings.TrimPrefix(s, FDPrefix)
		if name == "" || strings.ContainsAny(name, ":/") {
			return Address{}, fmt.Errorf("listen address %q: want fd://NAME, NAME as in LISTEN_FDNAMES (a socket unit's FileDescriptorName=)", s)
		}
		return Address{Network: "fd", Addr: name}, nil
	}
	network, hostport := "tcp", s
	if i := strings.Index(s, "://"); i >= 0 {
		network, hostport = s[:i], s[i+3:]
	}
	switch network {
	case "tcp", "tcp4", "tcp6":
	default:
		return Address{}, fmt.Errorf("listen address %q: unsupported network %q (want tcp or unix)", s, network)
	}
	if _, _, err := net.SplitHostPort(hostport); err != nil {
		return Address{}, fmt.Errorf("listen address %q: %w", s, err)
	}
	return Address{Network: network, Addr: hostport}, nil
}

// Socket is one listening socket held by the master.
type Socket struct {
	Requested Address // as configured
	Bound     Address // as bound: the real port for ":0"
	// Passed is set for a socket the service manager passed (socket
	// activation or the fd store), with the name it was passed under.
	Passed bool
	Name   string
	fd     int  // nonblocking, close-on-exec; owned by the Socket
	unlink bool // remove the socket file on Close
}

// Open binds every address, in order. On any failure it closes what it opened and
// returns an error naming the address. reusePort sets SO_REUSEPORT on TCP sockets.
func Open(ctx context.Context, addrs []string, reusePort bool) ([]*Socket, error) {
	socks, _, err := OpenWith(ctx, addrs, reusePort, nil)
	return socks, err
}

// OpenWith is Open with the sockets passed by the service manager: an
// address equal to a passed socket's bound address takes that socket instead
// of binding (see Passed.matches), "fd://NAME" takes the first passed socket
// named NAME, and with no addresses at all every passed socket is taken, in
// order, except the ones whose names begin with StorePrefix (this program's
// own, from the fd store). It returns the passed sockets nothing took, for
// the caller to refuse or close; on an error the sockets it opened are
// closed and the passed ones are left alone.
func OpenWith(ctx context.Context, addrs []string, reusePort bool, passed []Passed) (socks []*Socket, unused []Passed, err error) {
	taken := make([]bool, len(passed))
	take := func(i int, a Address) *Socket {
		taken[i] = true
		p := passed[i]
		return &Socket{Requested: a, Bound: p.Addr, Passed: true, Name: p.Name, fd: p.FD}
	}
	if len(addrs) == 0 {
		for i, p := range passed {
			if !strings.HasPrefix(p.Name, StorePrefix) {
				socks = append(socks, take(i, p.Addr))
			}
		}
	}
	for _, s := range addrs {
		a, err := Parse(s)
		if err != nil {
			closeOpened(socks)
			return nil, nil, err
		}
		var sock *Socket
		for i, p := range passed {
			if !taken[i] && (a.Network == "fd" && p.Name == a.Addr || a.Network != "fd" && p.matches(a)) {
				sock = take(i, a)
				break
			}
		}
		if sock == nil && a.Network == "fd" {
			closeOpened(socks)
			return nil, nil, fmt.Errorf("listen on %s: no socket named %q was passed (%s)", a, a.Addr, describePassed(passed))
		}
		if sock == nil {
			if sock, err = open(ctx, a, reusePort); err != nil {
				closeOpened(socks)
				return nil, nil, fmt.Errorf("listen on %s: %w", a, err)
			}
		}
		socks = append(socks, sock)
	}
	for i, p := range passed {
		if !taken[i] {
			unused = append(unused, p)
		}
	}
	return socks, unused, nil
}

// StorePrefix begins the names under which a master keeps the sockets it
// bound itself in systemd's fd store.
const StorePrefix = "brood-"

// closeOpened closes the sockets OpenWith bound, not the passed ones: those
// stay the caller's.
func closeOpened(socks []*Socket) {
	for _, s := range socks {
		if !s.Passed {
			s.Close()
		}
	}
}

// describePassed lists passed sockets for an error message.
func describePassed(passed []Passed) string {
	if len(passed) == 0 {
		return "none were passed: LISTEN_FDS is unset or for another process"
	}
	parts := make([]string, len(passed))
	for i, p := range passed {
		parts[i] = p.String()
	}
	return "passed: " + strings.Join(parts, ", ")
}

// FD is the master's descriptor of the socket, for handing it to the
// service manager's fd store. It stays owned by the Socket.
func (s *Socket) FD() int { return s.fd }

// KeepFile makes Close leave a unix socket's file in place: the socket lives
// on in the fd store, and the next master serves the same path from it.
func (s *Socket) KeepFile() { s.unlink = false }

func open(ctx context.Context, a Address, reusePort bool) (*Socket, error) {
	lc := net.ListenConfig{}
	if reusePort && a.Network != "unix" {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			})
			return errors.Join(err, serr)
		}
	}
	if a.Network == "unix" {
		// Serialise check, remove and bind with any other process starting
		// on the same path, so that neither removes the other's new socket.
		unlock, err := lockSocketPath(a.Addr)
		if err != nil {
			return nil, err
		}
		defer unlock()
		if err := removeStaleSocket(a.Addr); err != nil {
			return nil, err
		}
	}
	l, err := lc.Listen(ctx, a.Network, a.Addr)
	if err != nil {
		var se *os.SyscallError
		if errors.As(err, &se) && se.Err == syscall.EADDRINUSE {
			return nil, fmt.Errorf("address already in use (another process listens on %s)", a.Addr)
		}
		return nil, err
	}
	if ul, ok := l.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false) // the Socket removes the file itself, at the very end
	}
	fd, err := dupListener(l)
	bound := Address{Network: a.Network, Addr: l.Addr().String()}
	l.Close() // leaves the poller; our dup keeps the socket open
	if err != nil {
		return nil, err
	}
	return &Socket{Requested: a, Bound: bound, fd: fd, unlink: a.Network == "unix"}, nil
}

// lockSocketPath takes an exclusive flock on path+".lock" (created with mode
// 0600 if need be, and left in place: removing it would let two processes lock
// two different files of the same name) and returns the function that
// releases it. It blocks while another process holds it, which is only for
// the moment of its own check, remove and bind.
func lockSocketPath(path string) (unlock func(), err error) {
	lockPath := path + ".lock"
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", lockPath, err)
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if err != unix.EINTR {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", lockPath, err)
	}
	return func() { f.Close() }, nil // closing the only descriptor releases the flock
}

// removeStaleSocket deletes a socket file nobody listens on (left by a killed
// process): only a refused connection proves that. A live one is an "address
// in use" error; any other failure to connect (a full backlog gives EAGAIN,
// for one) is an error too, and the file stays. The caller holds the path's
// lock (lockSocketPath).
func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check socket %s: %w", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket", path)
	}
	c, err := net.Dial("unix", path)
	switch {
	case err == nil:
		c.Close()
		return fmt.Errorf("address already in use (another process listens on %s)", path)
	case errors.Is(err, syscall.ECONNREFUSED):
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("remove stale socket %s: %w", path, err)
		}
		return nil
	case errors.Is(err, syscall.ENOENT):
		return nil // removed since the Lstat
	default:
		return fmt.Errorf("cannot tell whether socket %s is in use, leaving it: %w", path, err)
	}
}

func dupListener(l net.Listener) (int, error) {
	sc, ok := l.(syscall.Conn)
	if !ok {
		return -1, fmt.Errorf("listener %T has no file descriptor", l)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return -1, err
	}
	fd := -1
	var derr error
	err = raw.Control(func(s uintptr) {
		fd, derr = unix.FcntlInt(s, unix.F_DUPFD_CLOEXEC, 0)
	})
	if err = errors.Join(err, derr); err != nil {
		return -1, fmt.Errorf("dup listener: %w", err)
	}
	return fd, nil
}

// File returns a new *os.File for a child's ExtraFiles: a close-on-exec duplicate
// sharing the socket's open file description and leaving it nonblocking. The caller
// closes it once the child has started.
func (s *Socket) File() (*os.File, error) {
	fd, err := unix.FcntlInt(uintptr(s.fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dup %s: %w", s.Bound, err)
	}
	return os.NewFile(uintptr(fd), s.Bound.String()), nil
}

// Listener returns a net.Listener on a duplicate of the socket, for single-process
// mode where the listeners stay in this process.
func (s *Socket) Listener() (net.Listener, error) {
	f, err := s.File()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return net.FileListener(f)
}

// Close closes the master's descriptor and, for a unix socket, removes its file.
func (s *Socket) Close() error {
	err := unix.Close(s.fd)
	if s.unlink {
		if rerr := os.Remove(s.Bound.Addr); rerr != nil && !os.IsNotExist(rerr) {
			err = errors.Join(err, rerr)
		}
	}
	return err
}

// CloseAll closes every socket.
func CloseAll(socks []*Socket) {
	for _, s := range socks {
		s.Close()
	}
}

// Inherit turns inherited listening descriptors into FairListeners, in order.
// They become close-on-exec, so programs the child starts do not inherit them.
func Inherit(fds []int) ([]net.Listener, error) {
	out := make([]net.Listener, 0, len(fds))
	for _, fd := range fds {
		l, err := NewFair(fd)
		if err != nil {
			for _, l := range out {
				l.Close()
			}
			return nil, fmt.Errorf("inherit listener (fd %d): %w", fd, err)
		}
		out = append(out, l)
	}
	return out, nil
}

// Adopt makes a Socket of a listening descriptor inherited from the previous
// image of this process (an in-place upgrade), with what that image knew of
// it. The descriptor becomes close-on-exec again.
func Adopt(fd int, requested, bound Address, passed bool, name string, unlink bool) (*Socket, error) {
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		return nil, fmt.Errorf("adopt listener %s (descriptor %d): %w", bound, fd, err)
	}
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v != 1 {
		return nil, fmt.Errorf("adopt listener %s: descriptor %d is not a listening socket (%v)", bound, fd, err)
	}
	return &Socket{Requested: requested, Bound: bound, Passed: passed, Name: name, fd: fd, unlink: unlink}, nil
}

// Unlinks reports whether Close removes the socket's file.
func (s *Socket) Unlinks() bool { return s.unlink }
