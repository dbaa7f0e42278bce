package control

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
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
	l, srv, serveDone := in.ln, in.srv, in.serveDone
	in.mu.Unlock()

	if srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
		}
		cancel()
	}
	if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		lock.Close()
		ln.Close()
		return nil, nil, fmt.Errorf("control: hand off %s: %w", SocketPath(in.runDir), err)
	}
	if serveDone != nil {
		<-serveDone
	}
	if srv != nil {
		// A connection accepted in the instant the listener closed is
		// tracked only once Serve has seen it, maybe after the first
		// Shutdown found nothing active: now that Serve has returned, wait
		// for it too, so no request is cut by the exec that follows.
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close()
		}
		cancel()
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
