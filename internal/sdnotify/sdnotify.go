// Package sdnotify speaks systemd's service notification protocol
// (sd_notify(3)) in pure Go: datagrams of newline-separated KEY=VALUE
// assignments sent to the unix socket named by $NOTIFY_SOCKET, with file
// descriptors attached (SCM_RIGHTS) for the fd store. It also reads the
// watchdog settings ($WATCHDOG_USEC, $WATCHDOG_PID) and the fd store's size
// ($FDSTORE).
//
// The environment names the socket as an absolute path or, with a leading
// '@', as an abstract socket. Other forms systemd knows (vsock:) are an
// error, so that a misconfiguration is reported rather than ignored.
package sdnotify

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// The environment systemd hands a service for this protocol. A brood master
// never passes these on to its children.
const (
	EnvSocket       = "NOTIFY_SOCKET"
	EnvWatchdogUsec = "WATCHDOG_USEC"
	EnvWatchdogPID  = "WATCHDOG_PID"
	EnvFDStore      = "FDSTORE"
)

// Notifier sends notifications to the service manager. The zero of *Notifier
// (nil) is a valid notifier that sends nothing, for a process not run by
// systemd.
type Notifier struct {
	addr string // path, or "@name" for an abstract socket
}

// FromEnv returns the notifier for $NOTIFY_SOCKET, nil if it is unset or
// empty, or an error naming a value that cannot be a notification socket.
func FromEnv() (*Notifier, error) {
	v := os.Getenv(EnvSocket)
	switch {
	case v == "":
		return nil, nil
	case strings.HasPrefix(v, "@") && len(v) > 1, strings.HasPrefix(v, "/"):
		return &Notifier{addr: v}, nil
	default:
		return nil, fmt.Errorf("%s=%q: want an absolute socket path or @abstract-name", EnvSocket, v)
	}
}

// Addr is the socket the notifier sends to ("" for a nil notifier).
func (n *Notifier) Addr() string {
	if n == nil {
		return ""
	}
	return n.addr
}

// Notify sends one datagram of assignments (for example "READY=1",
// "STATUS=2/2 workers ready"), joined by newlines. A nil notifier sends
// nothing and reports no error.
func (n *Notifier) Notify(assignments ...string) error {
	return n.NotifyWithFDs(nil, assignments...)
}

// NotifyWithFDs sends the assignments with the descriptors fds attached, as
// FDSTORE=1 needs. The descriptors stay open here: the receiver gets copies.
func (n *Notifier) NotifyWithFDs(fds []int, assignments ...string) error {
	if n == nil {
		return nil
	}
	for _, a := range assignments {
		if !strings.Contains(a, "=") {
			return fmt.Errorf("sd_notify: %q is not an assignment (KEY=VALUE)", a)
		}
	}
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("sd_notify: socket: %w", err)
	}
	defer unix.Close(s)
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	msg := []byte(strings.Join(assignments, "\n"))
	// x/sys/unix turns a leading '@' into the abstract namespace's NUL.
	if err := unix.Sendmsg(s, msg, oob, &unix.SockaddrUnix{Name: n.addr}, unix.MSG_NOSIGNAL); err != nil {
		return fmt.Errorf("sd_notify to %s: %w", n.addr, err)
	}
	return nil
}

// Watchdog returns half the watchdog timeout systemd expects WATCHDOG=1
// within (the interval sd_watchdog_enabled(3) recommends), if the watchdog is
// on for this process: $WATCHDOG_USEC is set and $WATCHDOG_PID, when set,
// names this process. A malformed value is an error naming it.
func Watchdog() (interval time.Duration, ok bool, err error) {
	v := os.Getenv(EnvWatchdogUsec)
	if v == "" {
		return 0, false, nil
	}
	usec, err := strconv.ParseUint(v, 10, 63)
	if err != nil || usec == 0 {
		return 0, false, fmt.Errorf("%s=%q: want a positive number of microseconds", EnvWatchdogUsec, v)
	}
	if p := os.Getenv(EnvWatchdogPID); p != "" {
		pid, err := strconv.Atoi(p)
		if err != nil || pid <= 0 {
			return 0, false, fmt.Errorf("%s=%q: want a pid", EnvWatchdogPID, p)
		}
		if pid != os.Getpid() {
			return 0, false, nil // the watchdog is another process's
		}
	}
	return time.Duration(usec) * time.Microsecond / 2, true, nil
}

// FDStoreSize is $FDSTORE, the number of descriptors the service manager
// keeps for this service (systemd 254 and later set it from
// FileDescriptorStoreMax=); 0 when unset or malformed.
func FDStoreSize() int {
	n, err := strconv.Atoi(os.Getenv(EnvFDStore))
	if err != nil || n < 0 {
		return 0
	}
	return n
}

// MonotonicUsec is CLOCK_MONOTONIC in microseconds, for the MONOTONIC_USEC=
// that must accompany RELOADING=1.
func MonotonicUsec() uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic(err) // cannot fail on Linux
	}
	return uint64(ts.Sec)*1e6 + uint64(ts.Nsec)/1e3
}

// IsServiceEnv reports whether kv ("KEY=value") is one of the variables the
// service manager gives this process alone: the notification socket, the
// watchdog, the fd store and socket activation's LISTEN_*. A supervisor must
// not pass them on to its children, which would otherwise speak for it.
func IsServiceEnv(kv string) bool {
	k, _, _ := strings.Cut(kv, "=")
	switch k {
	case EnvSocket, EnvWatchdogUsec, EnvWatchdogPID, EnvFDStore, "LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES":
		return true
	}
	return false
}
