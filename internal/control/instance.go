package control

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// closeGrace is how long Close lets requests in flight finish before it drops
// their connections.
const closeGrace = 5 * time.Second

// SocketPath returns the path of the control socket in runDir: runDir/control.sock.
func SocketPath(runDir string) string { return filepath.Join(runDir, "control.sock") }

// PIDPath returns the path of the pid file in runDir: runDir/master.pid.
func PIDPath(runDir string) string { return filepath.Join(runDir, "master.pid") }

// LockPath returns the path of the lock file in runDir: runDir/master.lock.
func LockPath(runDir string) string { return filepath.Join(runDir, "master.lock") }

// AlreadyRunningError is returned by Acquire when another live process holds the
// lock of the run dir.
type AlreadyRunningError struct {
	Name   string // the name passed to Acquire
	PID    int    // pid read from the pid file; 0 if it could not be read
	RunDir string
}

// Error says who is running and how to get around it, for example:
//
//	hello is already running (pid 1234, run dir /tmp/brood-0/hello); stop it first or use another --run-dir
func (e *AlreadyRunningError) Error() string {
	pid := "pid unknown"
	if e.PID > 0 {
		pid = "pid " + strconv.Itoa(e.PID)
	}
	return fmt.Sprintf("%s is already running (%s, run dir %s); stop it first or use another --run-dir", e.Name, pid, e.RunDir)
}

// Instance is the run dir of a running master, held for the master's whole life.
// Create it with Acquire; serve the control API with Listen and Serve; release
// everything with Close. Its methods are safe for concurrent use.
type Instance struct {
	runDir string
	lock   *os.File // holds the flock; closing it releases the lock

	mu        sync.Mutex
	closed    bool
	ln        *net.UnixListener // set by Listen
	srv       *http.Server      // set by Serve
	open      *ConnCount        // srv's open connections
	serveDone chan struct{}     // closed when Serve returns
	refusals  sync.WaitGroup    // goroutines answering refused connections
}

// Acquire makes runDir the run dir of this process. It creates the missing
// components of runDir one at a time (mode 0700, never following a symbolic
// link) and checks every component the way OpenSSH's safe_path does: each
// ancestor must be a directory owned by root or this process's effective uid
// and not writable by group or others unless it is sticky (like /tmp); the run
// dir itself, and its parent when runDir is DefaultRunDir(name), must be
// directories (not symbolic links) owned by the effective uid and not writable
// by group or others. An unsafe component is an *UnsafePathError naming it,
// its owner and its mode. Acquire then takes an exclusive non-blocking flock on
// the lock file. On success it writes the pid file atomically (temp file +
// rename) and removes a stale control socket left by a killed master.
//
// If another live process holds the lock, Acquire returns an
// *AlreadyRunningError naming the pid in the pid file. flock locks belong to open
// file descriptions, so a second Acquire of the same run dir fails even within
// one process.
func Acquire(runDir, name string) (*Instance, error) {
	if err := prepareRunDir(runDir, name); err != nil {
		return nil, err
	}
	lockPath := LockPath(runDir)
	lock, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600) // O_CLOEXEC is implied: children do not inherit the lock
	if err != nil {
		return nil, fmt.Errorf("control: open lock file: %w", err)
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			pid, _ := ReadPID(runDir) // 0 if the holder has not written it yet
			return nil, &AlreadyRunningError{Name: name, PID: pid, RunDir: runDir}
		}
		return nil, fmt.Errorf("control: lock %s: %w", lockPath, err)
	}
	// From here on the run dir is ours: whatever else is in it was left by a
	// master that no longer holds the lock.
	if err := cleanStale(runDir); err != nil {
		lock.Close()
		return nil, err
	}
	if err := writePIDFile(runDir, os.Getpid()); err != nil {
		lock.Close()
		return nil, err
	}
	return &Instance{runDir: runDir, lock: lock}, nil
}

// cleanStale removes the control socket and pid temp files left by a master that
// was killed. The caller holds the lock.
func cleanStale(runDir string) error {
	sock := SocketPath(runDir)
	fi, err := os.Lstat(sock)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return fmt.Errorf("control: stale socket: %w", err)
	case fi.Mode().Type() != fs.ModeSocket:
		return fmt.Errorf("control: %s exists and is not a socket", sock)
	default:
		if err := os.Remove(sock); err != nil {
			return fmt.Errorf("control: remove stale socket: %w", err)
		}
	}
	temps, _ := filepath.Glob(filepath.Join(runDir, ".master.pid.*")) // the pattern is valid
	for _, t := range temps {
		if err := os.Remove(t); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("control: remove stale pid temp file: %w", err)
		}
	}
	return nil
}

// writePIDFile writes pid to the pid file of runDir with a temp file and a
// rename, so a reader sees the old content or the new, never a part.
func writePIDFile(runDir string, pid int) error {
	tmp, err := os.CreateTemp(runDir, ".master.pid.*")
	if err != nil {
		return fmt.Errorf("control: write pid file: %w", err)
	}
	_, err = tmp.WriteString(strconv.Itoa(pid) + "\n")
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), PIDPath(runDir))
	}
	if err != nil {
		os.Remove(tmp.Name())
		return fmt.Errorf("control: write pid file: %w", err)
	}
	return nil
}

// ReadPID returns the pid in the pid file of runDir. It returns 0 and an error if
// the file is absent or does not hold a positive decimal number. The pid file
// says which process last held the run dir; only the lock says whether it still
// does.
func ReadPID(runDir string) (int, error) {
	path := PIDPath(runDir)
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("control: read pid file: %w", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("control: pid file %s: not a pid: %q", path, b)
	}
	return pid, nil
}

// Close stops serving and releases the run dir: it stops accepting connections,
// lets requests in flight finish for up to 5 seconds (then drops their
// connections, which cancels their contexts), waits for Serve to return, removes
// the control socket and the pid file, and releases the lock, in that order, so
// that the next master never sees files of ours after it got the lock. Close is
// idempotent; calls after the first return nil.
//
// Do not call Close from a control handler: it would wait for that handler's own
// request for the whole grace period. Signal the master's main goroutine instead.
func (in *Instance) Close() error {
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		return nil
	}
	in.closed = true
	ln, srv, serveDone := in.ln, in.srv, in.serveDone
	in.mu.Unlock()

	var errs []error
	if srv != nil {
		ctx, cancel := context.WithTimeout(context.Background(), closeGrace)
		if err := srv.Shutdown(ctx); err != nil {
			srv.Close() // grace period over: drop the connections still busy
		}
		cancel()
	}
	if ln != nil {
		// Shutdown closes the listener once Serve has started using it; close it
		// here too for an Instance that listened but never served, or whose Serve
		// is just starting.
		if err := ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, fmt.Errorf("control: close listener: %w", err))
		}
	}
	if serveDone != nil {
		<-serveDone
	}
	in.refusals.Wait() // after Serve returned: no refusal can start any more
	for _, path := range []string{SocketPath(in.runDir), PIDPath(in.runDir)} {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("control: %w", err))
		}
	}
	if err := in.lock.Close(); err != nil {
		errs = append(errs, fmt.Errorf("control: release lock: %w", err))
	}
	return errors.Join(errs...)
}
