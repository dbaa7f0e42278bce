package logrotate

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// OpenAppend opens path for appending (O_WRONLY|O_APPEND|O_CREATE), creating the
// file with perm (less the umask), and refuses what a log file of this process
// must not be, so that a process running as root never appends to a file that
// another user pointed it at:
//
//   - a symbolic link at path (O_NOFOLLOW; links in the directories above it
//     are followed);
//   - a file not owned by the effective uid (checked with fstat on the opened
//     descriptor, so the check and the writes are about the same file);
//   - anything but a regular file (a FIFO would block or swallow the logs; the
//     open does not block on one).
//
// It does not create directories. Every log file brood opens goes through it:
// File.Open and Reopen, the Rotator's fresh files, the daemon's master-*.log.
func OpenAppend(path string, perm os.FileMode) (*os.File, error) {
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_APPEND|unix.O_CREAT|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, uint32(perm.Perm()))
	if errors.Is(err, unix.ELOOP) {
		return nil, fmt.Errorf("logrotate: open %s: it is a symbolic link, which a log file must not be: %w", path, err)
	}
	if err != nil {
		return nil, fmt.Errorf("logrotate: %w", &os.PathError{Op: "open", Path: path, Err: err})
	}
	if err := checkLogFD(fd, path); err != nil {
		unix.Close(fd)
		return nil, err
	}
	// O_NONBLOCK only kept the open from blocking on a FIFO; clear it so that
	// the descriptor behaves like any other file's.
	if err := setBlocking(fd); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("logrotate: open %s: clear O_NONBLOCK: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}

// checkLogFD refuses an open log descriptor that is not a regular file owned by
// the effective uid.
func checkLogFD(fd int, path string) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("logrotate: open %s: fstat: %w", path, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("logrotate: open %s: not a regular file (mode %#o); refusing to log to it", path, st.Mode)
	}
	if euid := os.Geteuid(); int(st.Uid) != euid {
		return fmt.Errorf("logrotate: open %s: owned by uid %d, not by this process's effective uid %d; refusing to log to another user's file", path, st.Uid, euid)
	}
	return nil
}

func setBlocking(fd int) error {
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return err
	}
	_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFL, flags&^unix.O_NONBLOCK)
	return err
}
