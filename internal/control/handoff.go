package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Handoff ends this Instance's serving for an in-place upgrade of the master
// and keeps the run dir held: it returns close-on-exec duplicates of the lock
// file and of the control socket's listener, and leaves the socket file, the
// pid file and the lock in place. Connections that arrive from now on wait in
// the listener's backlog for the next image (Adopt), so clients never see
// "connection refused"; requests in flight get grace to finish, then their
// connections are dropped. Hijacked connections (an upgrade's own request)
// are not touched. After Handoff the Instance is closed: Close does nothing.
func (in *Instance) Handoff(grace time.Duration) (lock, ln *os.File, err error) {
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		return nil, nil, fmt.Errorf("control: hand off %s: %w", in.runDir, net.ErrClosed)
	}
	if in.ln == nil {
		in.mu.Unlock()
		return nil, nil, fmt.Errorf("control: hand off %s: not listening", in.runDir)
	}
	lfd, err := unix.FcntlInt(in.lock.Fd(), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		in.mu.Unlock()
		return nil, nil, fmt.Errorf("control: hand off the lock of %s: %w", in.runDir, err)
	}
	lock = os.NewFile(uintptr(lfd), LockPath(in.runDir))
	ln, err = in.ln.File() // a duplicate: the socket outlives the listener's Close
	if err != nil {
		in.mu.Unlock()
		lock.Close()
		return nil, nil, fmt.Errorf("control: hand off %s: %w", SocketPath(in.runDir), err)
	}
	in.closed = true
	l, srv, serveDone, open := in.ln, in.srv, in.serveDone, in.open
	in.mu.Unlock()

	if err := Quiesce(srv, l, serveDone, open, grace); err != nil {
		lock.Close()
		ln.Close()
		return nil, nil, fmt.Errorf("control: hand off %s: %w", SocketPath(in.runDir), err)
	}
	in.refusals.Wait()
	in.lock.Close() // the duplicate holds the flock: it belongs to the open file description
	return lock, ln, nil
}

// Adopt makes an Instance of runDir from the descriptors that the previous
// image of this process returned from Handoff and passed through its exec:
// the lock file and the control socket's listener. The pid file already
// names this process (an exec keeps the pid). Serve it as usual; Close
// releases the run dir as usual.
func Adopt(runDir string, lockFD, lnFD int) (*Instance, error) {
	var st unix.Stat_t
	if err := unix.Fstat(lockFD, &st); err != nil {
		return nil, fmt.Errorf("control: adopt the lock of %s (descriptor %d): %w", runDir, lockFD, err)
	}
	lf := os.NewFile(uintptr(lnFD), SocketPath(runDir))
	defer lf.Close()
	l, err := net.FileListener(lf)
	if err != nil {
		return nil, fmt.Errorf("control: adopt %s (descriptor %d): %w", SocketPath(runDir), lnFD, err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("control: adopt %s: descriptor %d is a %T, not a unix socket", SocketPath(runDir), lnFD, l)
	}
	ul.SetUnlinkOnClose(false)
	lock := os.NewFile(uintptr(lockFD), LockPath(runDir))
	if _, err := unix.FcntlInt(lock.Fd(), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		l.Close()
		return nil, fmt.Errorf("control: adopt the lock of %s: %w", runDir, err)
	}
	return &Instance{runDir: runDir, lock: lock, ln: ul}, nil
}

// ConnCount counts a server's open connections: set Track as the
// http.Server's ConnState hook.
type ConnCount struct {
	mu      sync.Mutex
	open    int
	changed chan struct{}
}

// Track is an http.Server ConnState hook.
func (n *ConnCount) Track(_ net.Conn, s http.ConnState) {
	n.mu.Lock()
	defer n.mu.Unlock()
	switch s {
	case http.StateNew:
		n.open++
	case http.StateClosed, http.StateHijacked:
		n.open--
	default:
		return
	}
	if n.changed != nil {
		close(n.changed)
		n.changed = nil
	}
}

// waitZero waits until no connection is open, or ctx is done.
func (n *ConnCount) waitZero(ctx context.Context) error {
	for {
		n.mu.Lock()
		if n.open <= 0 {
			n.mu.Unlock()
			return nil
		}
		if n.changed == nil {
			n.changed = make(chan struct{})
		}
		ch := n.changed
		n.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Quiesce stops srv serving on ln so that another process can take the
// listening socket over (an upgrade): ln is closed (the socket lives on in
// a duplicate), keep-alives end, and every connection srv accepted gets
// its request answered and is closed, within grace; after grace the rest
// are dropped. Unlike Shutdown, a connection accepted just before ln closed
// whose request arrives later is still answered (Shutdown closes it
// unanswered). served is closed when srv's Serve has returned; open counts
// srv's connections (its ConnState hook).
func Quiesce(srv *http.Server, ln net.Listener, served <-chan struct{}, open *ConnCount, grace time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if srv == nil {
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			return err
		}
		return nil
	}
	srv.SetKeepAlivesEnabled(false) // closes idle connections; the others close after their answer
	if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return err
	}
	<-served // Serve's Accept failed: it returns, nothing is shut down
	if open.waitZero(ctx) != nil {
		srv.Close()
	}
	return nil
}
