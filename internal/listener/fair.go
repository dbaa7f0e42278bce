package listener

import (
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Fair spreading of connections over workers that share one listening socket.
//
// Every idle worker has the socket in its epoll set, so a new connection wakes
// them all and the first to run accept4 wins. The kernel wakes a socket's waiters
// newest-registration first, so the same worker tends to win every time the
// cluster is idle (measured: 35-39 of 40 sequential connections to one of two
// workers). FairListener corrects that without putting anything on the winner's
// path: a worker that was woken and lost the race registers its descriptor again,
// which puts it at the front of the wake-up queue for the next connection. Under
// load workers are rarely idle and the accept queue spreads the work by itself.

// FairListener accepts from an inherited listening socket. It keeps the socket
// as a bare descriptor, out of the poller, and accepts with non-blocking
// accept4 calls of its own; it waits for readiness on a second descriptor of
// the same socket, the only one registered with the poller, which it renews
// after losing a race. So each incoming connection wakes each idle worker once.
// The cost over net's Accept is a few cheap syscalls per connection
// (net.FileConn's duplicate); the bench measures it.
type FairListener struct {
	addr net.Addr

	fdMu   sync.RWMutex // read-held around accept4 so that Close cannot reuse the fd under it
	fd     int
	closed bool

	mu     sync.Mutex
	waiter *os.File
	raw    syscall.RawConn

	lastAccept time.Time // used by the Accept goroutine only
}

// renewQuiet is how long a worker must have gone without accepting before a
// lost race makes it renew its place: fairness matters for a quiet cluster;
// under load every worker accepts all the time and the renewal (a dup and two
// epoll_ctl calls) would only cost.
const renewQuiet = time.Millisecond

// NewFair takes ownership of the listening socket fd (made close-on-exec).
func NewFair(fd int) (*FairListener, error) {
	unix.CloseOnExec(fd)
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return nil, fmt.Errorf("getsockname: %w", err)
	}
	f := &FairListener{fd: fd, addr: sockaddrToAddr(sa)}
	if err := f.renewWaiter(); err != nil {
		return nil, err
	}
	return f, nil
}

func sockaddrToAddr(sa unix.Sockaddr) net.Addr {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return &net.TCPAddr{IP: net.IP(sa.Addr[:]).To16(), Port: sa.Port}
	case *unix.SockaddrInet6:
		var zone string
		if ifi, err := net.InterfaceByIndex(int(sa.ZoneId)); err == nil {
			zone = ifi.Name
		}
		return &net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port, Zone: zone}
	case *unix.SockaddrUnix:
		return &net.UnixAddr{Name: sa.Name, Net: "unix"}
	}
	return &net.TCPAddr{}
}

// Accept takes a waiting connection, or waits for one and takes it unless a
// sibling worker was faster.
func (f *FairListener) Accept() (net.Conn, error) {
	woke := false
	for {
		c, err := f.tryAccept()
		if c != nil {
			f.lastAccept = time.Now()
			return c, nil
		}
		if err != nil {
			return nil, err
		}
		if woke && time.Since(f.lastAccept) > renewQuiet {
			// Woken for a connection a sibling took: move to the front.
			if err := f.renewWaiter(); err != nil {
				return nil, err
			}
		}
		f.mu.Lock()
		raw := f.raw
		f.mu.Unlock()
		// The callback runs once at once (false: wait) and again on readiness.
		calls := 0
		if err := raw.Read(func(uintptr) bool { calls++; return calls > 1 }); err != nil {
			return nil, f.closedErr(err)
		}
		woke = true
	}
}

func (f *FairListener) closedErr(err error) error {
	f.fdMu.RLock()
	defer f.fdMu.RUnlock()
	if f.closed {
		return net.ErrClosed
	}
	return err
}

// tryAccept accepts one connection without blocking; (nil, nil) means none was
// waiting. The descriptor is accepted in blocking mode so that os.NewFile does
// not register it with the poller; net.FileConn's duplicate is set nonblocking.
func (f *FairListener) tryAccept() (net.Conn, error) {
	f.fdMu.RLock()
	if f.closed {
		f.fdMu.RUnlock()
		return nil, net.ErrClosed
	}
	var nfd int
	var err error
	for {
		nfd, _, err = unix.Accept4(f.fd, unix.SOCK_CLOEXEC)
		if err != unix.EINTR {
			break
		}
	}
	f.fdMu.RUnlock()
	switch err {
	case nil:
	case unix.EAGAIN, unix.ECONNABORTED:
		return nil, nil
	default:
		return nil, &net.OpError{Op: "accept", Net: f.addr.Network(), Addr: f.addr, Err: os.NewSyscallError("accept4", err)}
	}
	file := os.NewFile(uintptr(nfd), "accepted")
	c, err := net.FileConn(file)
	file.Close()
	if err != nil {
		return nil, &net.OpError{Op: "accept", Net: f.addr.Network(), Addr: f.addr, Err: err}
	}
	return c, nil
}

// renewWaiter registers a fresh duplicate of the socket for waiting and drops
// the old one: the new registration is the first the kernel wakes.
func (f *FairListener) renewWaiter() error {
	f.fdMu.RLock()
	if f.closed {
		f.fdMu.RUnlock()
		return net.ErrClosed
	}
	fd, err := unix.FcntlInt(uintptr(f.fd), unix.F_DUPFD_CLOEXEC, 0)
	f.fdMu.RUnlock()
	if err != nil {
		return fmt.Errorf("dup listener: %w", err)
	}
	w := os.NewFile(uintptr(fd), "listener-waiter")
	raw, err := w.SyscallConn()
	if err != nil {
		w.Close()
		return err
	}
	f.mu.Lock()
	old := f.waiter
	f.waiter, f.raw = w, raw
	f.mu.Unlock()
	if old != nil {
		old.Close()
	}
	if f.closedErr(nil) != nil { // closed meanwhile
		w.Close()
		return net.ErrClosed
	}
	return nil
}

// Close closes this process's descriptors; the socket stays open elsewhere.
func (f *FairListener) Close() error {
	f.fdMu.Lock()
	if f.closed {
		f.fdMu.Unlock()
		return net.ErrClosed
	}
	f.closed = true
	err := unix.Close(f.fd)
	f.fdMu.Unlock()
	f.mu.Lock()
	w := f.waiter
	f.mu.Unlock()
	w.Close() // wakes a waiting Accept
	return err
}

// Addr returns the listener's address.
func (f *FairListener) Addr() net.Addr { return f.addr }
