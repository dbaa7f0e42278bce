package control

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// maxSocketPath is the longest path a unix socket can be bound to on Linux:
	// sizeof(sockaddr_un.sun_path) minus the terminating NUL.
	maxSocketPath = 107

	// refuseTimeout bounds the time spent answering one refused connection.
	refuseTimeout = 2 * time.Second

	// refuseDrain is how much of a refused peer's request is read and discarded
	// after the answer, so the peer sees the answer and EOF rather than a reset.
	refuseDrain = 64 << 10

	// maxRequestBody is the largest request body ReadJSON accepts.
	maxRequestBody = 1 << 20
)

// Listen creates the control socket, with mode 0600 set by chmod right after the
// bind (whatever the umask). It does not accept connections: Serve does. A master
// calls Listen before starting Serve in a goroutine so that a failure is
// reported at start and the socket exists as soon as Listen returns. Calling
// Listen again is a no-op; after Close it returns an error wrapping net.ErrClosed.
func (in *Instance) Listen() error {
	in.mu.Lock()
	defer in.mu.Unlock()
	sock := SocketPath(in.runDir)
	if in.closed {
		return fmt.Errorf("control: listen on %s: %w", sock, net.ErrClosed)
	}
	if in.ln != nil {
		return nil
	}
	if err := checkSocketPath(sock); err != nil {
		return err
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return fmt.Errorf("control: listen on %s: %w", sock, err)
	}
	ln.SetUnlinkOnClose(false) // Close removes the socket itself, in its order
	if err := os.Chmod(sock, 0o600); err != nil {
		ln.Close()
		os.Remove(sock)
		return fmt.Errorf("control: listen on %s: %w", sock, err)
	}
	in.ln = ln
	return nil
}

// Serve serves h on the control socket until Close is called, then returns nil.
// It calls Listen first if that has not been done. log receives refused
// connections and the HTTP server's own errors; nil discards them. The logger
// is expected to carry the master's own attributes (role, id, pid), so the
// peer's are logged as peer_pid and peer_uid.
//
// Each connection's peer credentials are read with SO_PEERCRED when it is
// accepted. A peer whose uid is not this process's effective uid (root
// included) is answered, before any of its request is read, with
//
//	HTTP/1.1 403 Forbidden
//	{"error":"control socket: uid 1001 is not allowed (owner uid 0)"}
//
// and the connection is closed; the refusal is logged with the peer's pid and
// uid. The answer is sent once the peer has sent something (it is then the
// answer to its request, for clients that insist) or after one second of
// silence. The handler sees only allowed connections, and PeerFrom gives it the
// peer's pid and uid. Serve may be called once.
func (in *Instance) Serve(h http.Handler, log *slog.Logger) error {
	if err := in.Listen(); err != nil {
		return err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	in.mu.Lock()
	if in.closed {
		in.mu.Unlock()
		return fmt.Errorf("control: serve on %s: %w", SocketPath(in.runDir), net.ErrClosed)
	}
	if in.srv != nil {
		in.mu.Unlock()
		return errors.New("control: Serve called twice")
	}
	pl := &peerListener{UnixListener: in.ln, uid: os.Geteuid(), log: log, refusals: &in.refusals}
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(*peerConn); ok {
				ctx = context.WithValue(ctx, peerKey{}, pc.peer)
			}
			return ctx
		},
	}
	in.srv = srv
	in.serveDone = make(chan struct{})
	defer close(in.serveDone)
	in.mu.Unlock()

	err := srv.Serve(pl)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return fmt.Errorf("control: serve on %s: %w", SocketPath(in.runDir), err)
}

func checkSocketPath(sock string) error {
	if len(sock) > maxSocketPath {
		return fmt.Errorf("control: socket path %s is %d bytes long, more than the %d a unix socket allows; use a shorter run dir", sock, len(sock), maxSocketPath)
	}
	return nil
}

// peer is what SO_PEERCRED says about the process at the other end.
type peer struct{ pid, uid int }

type peerKey struct{}

// PeerFrom returns the pid and uid of the process that opened the connection a
// control request came on, as read with SO_PEERCRED when it was accepted. ok is
// false if ctx is not (derived from) the context of a request served by Serve.
func PeerFrom(ctx context.Context) (pid, uid int, ok bool) {
	p, ok := ctx.Value(peerKey{}).(peer)
	return p.pid, p.uid, ok
}

// peerConn is an accepted, allowed connection and its peer. It embeds
// *net.UnixConn so that net/http still finds CloseWrite.
type peerConn struct {
	*net.UnixConn
	peer peer
}

// peerListener accepts only connections from processes running as uid and
// answers the others with a 403 in a goroutine counted by refusals.
type peerListener struct {
	*net.UnixListener
	uid      int
	log      *slog.Logger
	refusals *sync.WaitGroup
}

// Accept returns the next allowed connection.
func (l *peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		cred, err := peerCred(c)
		var msg string
		switch {
		case err != nil:
			msg = "control socket: cannot read peer credentials: " + err.Error()
			l.log.Warn("control socket: refused connection", "error", err)
		case int(cred.Uid) != l.uid:
			msg = fmt.Sprintf("control socket: uid %d is not allowed (owner uid %d)", cred.Uid, l.uid)
			l.log.Warn("control socket: refused connection", "peer_pid", cred.Pid, "peer_uid", cred.Uid, "owner_uid", l.uid)
		default:
			return &peerConn{UnixConn: c, peer: peer{pid: int(cred.Pid), uid: int(cred.Uid)}}, nil
		}
		l.refusals.Go(func() { refuse(c, msg) })
	}
}

func peerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if credErr != nil {
		return nil, fmt.Errorf("SO_PEERCRED: %w", credErr)
	}
	return cred, nil
}

// refuse answers a refused connection with a 403 and closes it. None of the
// request is read before the answer; but the answer waits, for up to half of
// refuseTimeout, until the peer has sent something, because an HTTP client may
// take a response that arrives before its request for garbage (Go's Transport
// does: "readLoopPeekFailLocked"). After the answer, what the peer sent is
// discarded up to refuseDrain bytes, so that closing does not reset the
// connection under the peer before it has read the answer.
func refuse(c *net.UnixConn, msg string) {
	defer c.Close()
	deadline := time.Now().Add(refuseTimeout)
	c.SetReadDeadline(time.Now().Add(refuseTimeout / 2))
	waitReadable(c)
	c.SetDeadline(deadline)
	body := errorJSON(msg)
	resp := "HTTP/1.1 403 Forbidden\r\n" +
		"Content-Type: application/json\r\n" +
		"Content-Length: " + strconv.Itoa(len(body)) + "\r\n" +
		"Connection: close\r\n\r\n" + string(body)
	if _, err := io.WriteString(c, resp); err != nil {
		return
	}
	c.CloseWrite()
	io.Copy(io.Discard, io.LimitReader(c, refuseDrain))
}

// waitReadable waits until c has data to read (or EOF, an error, or its read
// deadline) without consuming anything.
func waitReadable(c *net.UnixConn) {
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	var b [1]byte
	raw.Read(func(fd uintptr) bool {
		_, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return err != unix.EAGAIN
	})
}

// errorBody is the JSON body of an error response.
type errorBody struct {
	Error string `json:"error"`
}

// errorJSON returns {"error": msg} and a newline.
func errorJSON(msg string) []byte {
	b, _ := json.Marshal(errorBody{Error: msg}) // a struct of one string always marshals
	return append(b, '\n')
}

// WriteJSON writes v as a JSON response with the given status and Content-Type
// application/json. If v cannot be marshalled, it writes a 500 error response
// (see WriteError) instead.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	body, err := json.Marshal(v)
	if err != nil {
		WriteError(w, http.StatusInternalServerError, fmt.Errorf("control: encode response: %w", err))
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(append(body, '\n'))
}

// WriteError writes an error response with the given status and the body
// {"error": err.Error()}, which Client.Do turns into a *StatusError. A nil err
// is written as the status text.
func WriteError(w http.ResponseWriter, status int, err error) {
	msg := http.StatusText(status)
	if err != nil {
		msg = err.Error()
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	w.Write(errorJSON(msg))
}

// ReadJSON decodes the JSON body of r, at most 1 MiB, into v. Unknown fields are
// an error, so that a client and a master of different versions disagree loudly.
func ReadJSON(r *http.Request, v any) error {
	dec := json.NewDecoder(io.LimitReader(r.Body, maxRequestBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("control: decode request body: %w", err)
	}
	return nil
}
