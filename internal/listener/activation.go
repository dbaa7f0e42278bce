package listener

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Socket activation (sd_listen_fds(3)): the service manager (systemd, or
// systemd-socket-activate) opens the listening sockets and passes them from
// descriptor 3 on, with LISTEN_PID (the process they are for), LISTEN_FDS
// (how many) and LISTEN_FDNAMES (their names, colon-separated).

// The variables of socket activation.
const (
	EnvListenPID     = "LISTEN_PID"
	EnvListenFDs     = "LISTEN_FDS"
	EnvListenFDNames = "LISTEN_FDNAMES"
)

// firstPassedFD is SD_LISTEN_FDS_START.
const firstPassedFD = 3

// Passed is a listening socket handed to this process by the service manager.
type Passed struct {
	FD   int     // close-on-exec and nonblocking once taken by Activated
	Name string  // from LISTEN_FDNAMES ("unknown" if unnamed, as systemd says)
	Addr Address // its bound address (getsockname)
}

func (p Passed) String() string { return fmt.Sprintf("fd %d %q (%s)", p.FD, p.Name, p.Addr) }

// Activated returns the sockets passed to this process, and removes the
// variables from its environment so that nothing started later takes them for
// its own. With no LISTEN_FDS, or a LISTEN_PID that is another process's, it
// returns none. A passed descriptor that is not a listening stream socket is
// an error naming it.
func Activated() ([]Passed, error) {
	pidStr, nStr, names := os.Getenv(EnvListenPID), os.Getenv(EnvListenFDs), os.Getenv(EnvListenFDNames)
	os.Unsetenv(EnvListenPID)
	os.Unsetenv(EnvListenFDs)
	os.Unsetenv(EnvListenFDNames)
	return activated(pidStr, nStr, names, os.Getpid(), firstPassedFD)
}

func activated(pidStr, nStr, names string, self, first int) ([]Passed, error) {
	if nStr == "" {
		return nil, nil
	}
	if pidStr == "" {
		return nil, fmt.Errorf("%s=%s without %s: cannot tell whom the sockets are for", EnvListenFDs, nStr, EnvListenPID)
	}
	pid, err := strconv.Atoi(pidStr)
	if err != nil {
		return nil, fmt.Errorf("%s=%q: not a pid", EnvListenPID, pidStr)
	}
	if pid != self {
		return nil, nil // for another process (our parent's, passed down by mistake)
	}
	n, err := strconv.Atoi(nStr)
	if err != nil || n < 0 || n > 1<<16 {
		return nil, fmt.Errorf("%s=%q: want a number of descriptors", EnvListenFDs, nStr)
	}
	var nameList []string
	if names != "" {
		nameList = strings.Split(names, ":")
	}
	out := make([]Passed, 0, n)
	for i := range n {
		p := Passed{FD: first + i, Name: "unknown"}
		if i < len(nameList) && nameList[i] != "" {
			p.Name = nameList[i]
		}
		if err := takePassed(&p); err != nil {
			return nil, fmt.Errorf("socket activation: descriptor %d (%q): %w", p.FD, p.Name, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// takePassed checks that p.FD is a listening stream socket, makes it
// close-on-exec and nonblocking (the master's sockets all are) and reads its
// address.
func takePassed(p *Passed) error {
	typ, err := unix.GetsockoptInt(p.FD, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return fmt.Errorf("not a socket: %w", err)
	}
	if typ != unix.SOCK_STREAM {
		return fmt.Errorf("not a stream socket (type %d): brood serves TCP and unix stream sockets", typ)
	}
	if acc, err := unix.GetsockoptInt(p.FD, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || acc == 0 {
		return errors.New("not a listening socket")
	}
	unix.CloseOnExec(p.FD)
	if err := unix.SetNonblock(p.FD, true); err != nil {
		return fmt.Errorf("set nonblocking: %w", err)
	}
	sa, err := unix.Getsockname(p.FD)
	if err != nil {
		return fmt.Errorf("getsockname: %w", err)
	}
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		p.Addr = Address{Network: "tcp", Addr: netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()}
	case *unix.SockaddrInet6:
		p.Addr = Address{Network: "tcp", Addr: netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)).String()}
	case *unix.SockaddrUnix:
		p.Addr = Address{Network: "unix", Addr: sa.Name}
	default:
		return fmt.Errorf("unsupported socket address %T", sa)
	}
	return nil
}

// FDPrefix is the scheme of a listen address that names a passed socket:
// "fd://http" takes the socket passed with the name "http".
const FDPrefix = "fd://"

// matches reports whether the passed socket p is what the configured address
// a asks for: the same unix path, or the same TCP port on the same IP (an
// empty or unspecified host matches a socket bound to any unspecified
// address, IPv4 or IPv6; a host name is resolved).
func (p Passed) matches(a Address) bool {
	if a.Network == "unix" {
		return p.Addr.Network == "unix" && filepath.Clean(a.Addr) == filepath.Clean(p.Addr.Addr)
	}
	if p.Addr.Network != "tcp" {
		return false
	}
	bound, err := netip.ParseAddrPort(p.Addr.Addr)
	if err != nil {
		return false
	}
	host, port, err := net.SplitHostPort(a.Addr)
	if err != nil || port != strconv.Itoa(int(bound.Port())) {
		return false
	}
	ip := bound.Addr().Unmap()
	if host == "" {
		return ip.IsUnspecified()
	}
	want, err := netip.ParseAddr(host)
	if err != nil {
		ips, lerr := net.LookupIP(host)
		if lerr != nil {
			return false
		}
		for _, c := range ips {
			if w, ok := netip.AddrFromSlice(c); ok && w.Unmap() == ip {
				return a.Network == "tcp" || (a.Network == "tcp4") == ip.Is4()
			}
		}
		return false
	}
	want = want.Unmap()
	if want.IsUnspecified() && ip.IsUnspecified() {
		return true
	}
	return want == ip && (a.Network == "tcp" || (a.Network == "tcp4") == ip.Is4())
}

// PreferStored returns "fd://"+name if a socket passed under name (one this
// program stored itself) serves addr: its bound address matches addr, or
// addr asks for any port (":0", "127.0.0.1:0") on the same host. Otherwise
// it returns addr unchanged. So a listener on an ephemeral port keeps its
// port across a restart through the fd store.
func PreferStored(addr, name string, passed []Passed) string {
	a, err := Parse(addr)
	if err != nil || a.Network == "fd" {
		return addr
	}
	for _, p := range passed {
		if p.Name != name {
			continue
		}
		if p.matches(a) {
			return FDPrefix + name
		}
		host, port, err := net.SplitHostPort(a.Addr)
		if a.Network != "unix" && err == nil && port == "0" {
			_, bport, _ := net.SplitHostPort(p.Addr.Addr)
			if p.matches(Address{Network: a.Network, Addr: net.JoinHostPort(host, bport)}) {
				return FDPrefix + name
			}
		}
	}
	return addr
}
