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

	// maxRefusals bounds the goroutines answering refused connections at once;
	// beyond it a refused connection is closed without an answer.
	maxRefusals = 64
)

// Bounds of the control server; variables so that tests can shorten them.
var (
	// requestReadTimeout bounds reading a request, headers and body, from the
	// moment the server starts waiting for it. There is no write timeout: a
	// reload can legitimately take minutes.
	requestReadTimeout = 10 * time.Second

	// maxConns is how many allowed connections Serve holds open at once,
	// idle keep-alive connections included. The next one is answered 503.
	maxConns = 32
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
// peer's pid and uid.
//
// Serve holds at most 32 allowed connections open at once; the next one is
// answered 503 the same way, with {"error":"control socket: too many
// connections (32 open); try again"}. A request, headers and body, must
// arrive within 10 seconds: a client that sends nothing is dropped then, and a
// body still arriving makes ReadJSON fail with a timeout. Nothing bounds how
// long h takes to answer. Serve may be called once.
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
	pl := &peerListener{UnixListener: in.ln, uid: os.Geteuid(), log: log, refusals: &in.refusals, maxConns: maxConns}
	open := new(ConnCount)
	srv := &http.Server{
		Handler:           h,
		ConnState:         open.Track,
		ReadHeaderTimeout: requestReadTimeout,
		// ReadTimeout bounds headers and body together. It does not bound
		// the handler: net/http clears the read deadline when it starts
		// watching for the client going away, once the body is read. No
		// WriteTimeout: a reload's answer can take minutes.
		ReadTimeout: requestReadTimeout,
		IdleTimeout: time.Minute,
		ErrorLog:    slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(*peerConn); ok {
				ctx = context.WithValue(ctx, peerKey{}, pc)
			}
			return ctx
		},
	}
	in.srv, in.open = srv, open
	in.serveDone = make(chan struct{})
	defer close(in.serveDone)
	in.mu.Unlock()

	err := srv.Serve(pl)
	in.mu.Lock()
	handedOff := in.closed && errors.Is(err, net.ErrClosed) // Handoff closed the listener
	in.mu.Unlock()
	if errors.Is(err, http.ErrServerClosed) || handedOff {
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

type peerKey struct{}

// PeerFrom returns the pid and uid of the process that opened the connection a
// control request came on, as read with SO_PEERCRED when it was accepted. ok is
// false if ctx is not (derived from) the context of a request served by Serve.
func PeerFrom(ctx context.Context) (pid, uid int, ok bool) {
	pc, ok := ctx.Value(peerKey{}).(*peerConn)
	if !ok {
		return 0, 0, false
	}
	return pc.peer.PID, pc.peer.UID, true
}

// peerConn is an accepted, allowed connection and its peer. It embeds
// *net.UnixConn so that net/http still finds CloseWrite. Closing it gives its
// place back to the listener's connection cap.
type peerConn struct {
	*net.UnixConn
	peer    Peer
	release func() // called once, by the first Close
	once    sync.Once
}

// Close closes the connection and releases its place under the cap.
func (c *peerConn) Close() error {
	err := c.UnixConn.Close()
	c.once.Do(c.release)
	return err
}

// peerListener accepts only connections from processes running as uid, at
// most maxConns at once, and answers the others with a 403 or a 503 in a
// goroutine counted by refusals.
type peerListener struct {
	*net.UnixListener
	uid      int
	log      *slog.Logger
	refusals *sync.WaitGroup
	maxConns int

	mu       sync.Mutex
	open     int // allowed connections not yet closed
	refusing int // refusal goroutines running
}

// Accept returns the next allowed connection.
func (l *peerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		cred, err := peerCred(c)
		var status int
		var msg string
		switch {
		case err != nil:
			status, msg = http.StatusForbidden, "control socket: cannot read peer credentials: "+err.Error()
			l.log.Warn("control socket: refused connection", "error", err)
		case int(cred.Uid) != l.uid:
			status, msg = http.StatusForbidden, fmt.Sprintf("control socket: uid %d is not allowed (owner uid %d)", cred.Uid, l.uid)
			l.log.Warn("control socket: refused connection", "peer_pid", cred.Pid, "peer_uid", cred.Uid, "owner_uid", l.uid)
		default:
			l.mu.Lock()
			full := l.open >= l.maxConns
			if !full {
				l.open++
			}
			l.mu.Unlock()
			if !full {
				return &peerConn{UnixConn: c, peer: Peer{PID: int(cred.Pid), UID: int(cred.Uid)}, release: l.closed}, nil
			}
			status, msg = http.StatusServiceUnavailable, fmt.Sprintf("control socket: too many connections (%d open); try again", l.maxConns)
			l.log.Warn("control socket: too many connections", "peer_pid", cred.Pid, "peer_uid", cred.Uid, "max", l.maxConns)
		}
		l.mu.Lock()
		busy := l.refusing >= maxRefusals
		if !busy {
			l.refusing++
		}
		l.mu.Unlock()
		if busy {
			c.Close() // a flood: no answer, and no goroutine
			continue
		}
		l.refusals.Go(func() {
			refuse(c, status, msg)
			l.mu.Lock()
			l.refusing--
			l.mu.Unlock()
		})
	}
}

// closed gives back the place of a closed allowed connection.
func (l *peerListener) closed() {
	l.mu.Lock()
	l.open--
	l.mu.Unlock()
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

// refuse answers a refused connection with status and msg and closes it. None of the
// request is read before the answer; but the answer waits, for up to half of
// refuseTimeout, until the peer has sent something, because an HTTP client may
// take a response that arrives before its request for garbage (Go's Transport
// does: "readLoopPeekFailLocked"). After the answer, what the peer sent is
// discarded up to refuseDrain bytes, so that closing does not reset the
// connection under the peer before it has read the answer.
func refuse(c *net.UnixConn, status int, msg string) {
	defer c.Close()
	deadline := time.Now().Add(refuseTimeout)
	c.SetReadDeadline(time.Now().Add(refuseTimeout / 2))
	waitReadable(c)
	c.SetDeadline(deadline)
	body := errorJSON(msg)
	resp := "HTTP/1.1 " + strconv.Itoa(status) + " " + http.StatusText(status) + "\r\n" +
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
