package direct

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// ChannelSocket returns a child's channel socket: the master's end as a
// connection and the child's as a file to pass at spawn. Both are
// close-on-exec (the child's copy is dup'ed without it by exec.Cmd).
func ChannelSocket() (master *net.UnixConn, child *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("direct: channel socket: %w", err)
	}
	mf := os.NewFile(uintptr(fds[0]), "brood-direct-master")
	defer mf.Close()
	c, err := net.FileConn(mf)
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, fmt.Errorf("direct: channel socket: %w", err)
	}
	return c.(*net.UnixConn), os.NewFile(uintptr(fds[1]), "brood-direct-child"), nil
}

// Conn turns an inherited channel socket descriptor into a connection, for
// the child (or an upgraded master) to use. It takes ownership of fd.
func Conn(fd int, name string) (*net.UnixConn, error) {
	f := os.NewFile(uintptr(fd), name)
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("direct: channel socket fd %d: %w", fd, err)
	}
	uc, ok := c.(*net.UnixConn)
	if !ok {
		c.Close()
		return nil, fmt.Errorf("direct: channel socket fd %d is not a unix socket", fd)
	}
	return uc, nil
}

// NewPair returns the two ends of a direct channel: a close-on-exec
// SOCK_STREAM socketpair.
func NewPair() (a, b *os.File, err error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("direct: channel pair: %w", err)
	}
	return os.NewFile(uintptr(fds[0]), "brood-direct"), os.NewFile(uintptr(fds[1]), "brood-direct"), nil
}

// ErrFull is wrapped by Send when the child's channel socket holds as many
// packets as it can: the child is not reading it.
var ErrFull = errors.New("the channel socket is full")

// Send hands end, with offer o, to the child at the other end of c. It never
// blocks: a child that is not reading its channel socket gets no channel
// (ErrFull). The caller still owns end and closes it.
func Send(c *net.UnixConn, o Offer, end *os.File) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return fmt.Errorf("direct: send offer: %w", err)
	}
	var serr error
	err = raw.Write(func(fd uintptr) bool {
		serr = unix.Sendmsg(int(fd), o.Encode(), unix.UnixRights(int(end.Fd())), nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		return true
	})
	if err == nil {
		err = serr
	}
	switch {
	case err == nil:
		return nil
	case errors.Is(err, unix.EAGAIN):
		return fmt.Errorf("direct: send offer of pid %d: %w", o.PeerPID, ErrFull)
	default:
		return fmt.Errorf("direct: send offer of pid %d: %w", o.PeerPID, err)
	}
}

// Receive waits for the next offer on c and returns it with its end of the
// channel (close-on-exec). A malformed packet is an error wrapping
// ErrMalformed, and any descriptor it carried is closed; the caller may go on
// reading. Other errors (EOF: the master is gone) end the socket.
func Receive(c *net.UnixConn) (Offer, *os.File, error) {
	var buf [OfferSize + 1]byte
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, flags, _, err := c.ReadMsgUnix(buf[:], oob) // MSG_CMSG_CLOEXEC on Linux
	if err != nil {
		return Offer{}, nil, err
	}
	if n == 0 && oobn == 0 {
		return Offer{}, nil, fmt.Errorf("direct: channel socket: %w", net.ErrClosed)
	}
	var fds []int
	if oobn > 0 {
		msgs, perr := unix.ParseSocketControlMessage(oob[:oobn])
		if perr == nil {
			for _, m := range msgs {
				if got, rerr := unix.ParseUnixRights(&m); rerr == nil {
					fds = append(fds, got...)
				}
			}
		}
	}
	o, err := DecodeOffer(buf[:n])
	switch {
	case err == nil && flags&(unix.MSG_TRUNC|unix.MSG_CTRUNC) != 0:
		err = fmt.Errorf("direct: truncated offer: %w", ErrMalformed)
	case err == nil && len(fds) != 1:
		err = fmt.Errorf("direct: offer with %d descriptors, want 1: %w", len(fds), ErrMalformed)
	}
	if err != nil {
		for _, fd := range fds {
			unix.Close(fd)
		}
		return Offer{}, nil, err
	}
	return o, os.NewFile(uintptr(fds[0]), fmt.Sprintf("brood-direct-%d", o.PeerPID)), nil
}
