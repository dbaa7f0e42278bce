package logrotate

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// File is an append-only log file that the goroutines of one process write to
// and that can be reopened after its path has been renamed. It is an io.Writer.
//
// Writes share a read lock on the descriptor; Reopen and Close take the write
// lock only to swap it. So a Write racing a Reopen lands, whole, in either the
// old or the new file, and a descriptor is closed only after every Write using
// it has returned: no Write is lost or fails because of a Reopen.
type File struct {
	path string
	perm os.FileMode

	reopen sync.Mutex   // orders Reopens, so the last one called wins
	mu     sync.RWMutex // held shared by Writes, exclusively to swap fd
	fd     *os.File     // nil once closed
}

// Open opens path for appending (O_WRONLY|O_APPEND|O_CREATE), creating the file
// with perm (less the umask) and its parent directories with 0755 if needed.
// Like OpenAppend, which Reopen uses too, it refuses a symbolic link at path and
// a file that is not a regular file owned by the effective uid.
func Open(path string, perm os.FileMode) (*File, error) {
	fd, err := openAppend(path, perm)
	if err != nil {
		return nil, err
	}
	return &File{path: path, perm: perm, fd: fd}, nil
}

func openAppend(path string, perm os.FileMode) (*os.File, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("logrotate: %w", err)
	}
	return OpenAppend(path, perm)
}

// Path returns the path the File was opened with, which Reopen opens again.
func (f *File) Path() string { return f.path }

// Write appends p to the file with one write(2) call, so p is never split or
// interleaved with other writers' data, in this process or another (see the
// package doc for the O_APPEND guarantee and its limits). It is safe for
// concurrent use, including with Reopen. After Close it returns an error
// wrapping os.ErrClosed.
func (f *File) Write(p []byte) (int, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.fd == nil {
		return 0, f.closedError("write")
	}
	n, err := f.fd.Write(p)
	if err != nil {
		return n, fmt.Errorf("logrotate: %w", err)
	}
	return n, nil
}

// Reopen opens the path again and makes later Writes go there. Call it after
// the file was renamed (by a Rotator or logrotate(8)); the path is created if
// it does not exist. The old descriptor is closed once no Write is using it.
// Concurrent Reopens take effect in turn, so Writes never go back to an older
// file. If the path cannot be opened, the File keeps writing to the old descriptor
// and Reopen returns the error. After Close it returns an error wrapping
// os.ErrClosed.
func (f *File) Reopen() error {
	f.reopen.Lock()
	defer f.reopen.Unlock()
	fd, err := openAppend(f.path, f.perm)
	if err != nil {
		return err
	}
	f.mu.Lock()
	old := f.fd
	if old != nil {
		f.fd = fd
	}
	f.mu.Unlock()
	if old == nil {
		fd.Close()
		return f.closedError("reopen")
	}
	if err := old.Close(); err != nil {
		return fmt.Errorf("logrotate: %w", err)
	}
	return nil
}

// Close waits for the Writes in progress and closes the file. Later calls of
// Write, Reopen and Close return an error wrapping os.ErrClosed.
func (f *File) Close() error {
	f.mu.Lock()
	fd := f.fd
	f.fd = nil
	f.mu.Unlock()
	if fd == nil {
		return f.closedError("close")
	}
	if err := fd.Close(); err != nil {
		return fmt.Errorf("logrotate: %w", err)
	}
	return nil
}

func (f *File) closedError(op string) error {
	return fmt.Errorf("logrotate: %s %s: %w", op, f.path, os.ErrClosed)
}
