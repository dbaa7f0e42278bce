package listener

import (
	"golang.org/x/sys/unix"
	"net"
	"os"
	"sync"
	"syscall"
	"time"
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

// acceptable is what FairListener needs from the listeners it wraps.
type acceptable interface {
	net.Listener
	SetDeadline(time.Time) error
	SyscallConn() (syscall.RawConn, error)
}

// FairListener wraps an inherited listener; see the comment above. It accepts
// with non-blocking accept4 calls of its own and waits for readiness on a second
// registration of the same socket (a listener's RawConn cannot wait), which it
// renews after losing a race. The cost over net's Accept is a few cheap syscalls
// per connection (net.FileConn's duplicate); the benchmark measures it.
type FairListener struct {
	l    acceptable
	ctrl syscall.RawConn

	mu     sync.Mutex
	waiter *os.File
	raw    syscall.RawConn
	closed bool
}

// NewFair wraps l. Listeners of other types are returned as they are.
func NewFair(l net.Listener) net.Listener {
	a, ok := l.(acceptable)
	if !ok {
		return l
	}
	ctrl, err := a.SyscallConn()
	if err != nil {
		return l
	}
	f := &FairListener{l: a, ctrl: ctrl}
	if err := f.renewWaiter(); err != nil {
		return l
	}
	return f
}

// Accept takes a waiting connection, or waits for one and takes it unless a
// sibling worker was faster.
func (f *FairListener) Accept() (net.Conn, error) {
	woke := false
	for {
		c, err := f.tryAccept()
		if c != nil {
			return c, nil
		}
		if err != nil {
			return nil, f.closedErr(err)
		}
		if woke {
			// Woken for a connection a sibling took: move to the front.
			if err := f.renewWaiter(); err != nil {
				return nil, f.closedErr(err)
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

// tryAccept accepts one connection without blocking; (nil, nil) means none was
// waiting. The descriptor is accepted in blocking mode so that os.NewFile does
// not register it with the poller; net.FileConn's duplicate is set nonblocking.
func (f *FairListener) tryAccept() (net.Conn, error) {
	nfd := -1
	var aerr error
	err := f.ctrl.Control(func(fd uintptr) {
		for {
			nfd, _, aerr = unix.Accept4(int(fd), unix.SOCK_CLOEXEC)
			if aerr != unix.EINTR {
				return
			}
		}
	})
	if err != nil {
		return nil, err
	}
	switch aerr {
	case nil:
	case unix.EAGAIN, unix.ECONNABORTED:
		return nil, nil
	default:
		return nil, &net.OpError{Op: "accept", Net: f.l.Addr().Network(), Addr: f.l.Addr(), Err: os.NewSyscallError("accept4", aerr)}
	}
	file := os.NewFile(uintptr(nfd), "accepted")
	c, err := net.FileConn(file)
	file.Close()
	if err != nil {
		return nil, &net.OpError{Op: "accept", Net: f.l.Addr().Network(), Addr: f.l.Addr(), Err: err}
	}
	return c, nil
}

func (f *FairListener) closedErr(err error) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return net.ErrClosed
	}
	return err
}

// renewWaiter registers a fresh duplicate of the socket for waiting and drops
// the old one: the new registration is the first the kernel wakes.
func (f *FairListener) renewWaiter() error {
	fd, err := dupListener(f.l)
	if err != nil {
		return err
	}
	w := os.NewFile(uintptr(fd), "listener-waiter")
	raw, err := w.SyscallConn()
	if err != nil {
		w.Close()
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		w.Close()
		return net.ErrClosed
	}
	old := f.waiter
	f.waiter, f.raw = w, raw
	if old != nil {
		old.Close()
	}
	return nil
}

// Close closes this process's descriptors; the socket stays open elsewhere.
func (f *FairListener) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return net.ErrClosed
	}
	f.closed = true
	f.waiter.Close()
	return f.l.Close()
}

// Addr returns the listener's address.
func (f *FairListener) Addr() net.Addr { return f.l.Addr() }
