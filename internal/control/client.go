package control

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"os"
	"strings"
	"syscall"
)

// maxResponseBody is the largest response body Client.Do reads.
const maxResponseBody = 16 << 20

// ErrNotRunning is wrapped by the errors of Dial and Client.Do when no master is
// running in the run dir: there is no control socket, or nothing accepts on it
// (a stale socket left by a killed master). Test with errors.Is.
var ErrNotRunning = errors.New("control: master is not running")

// notRunningError says why no master is running; it matches ErrNotRunning and
// unwraps to the system error, if any.
type notRunningError struct {
	name, why string
	err       error
}

func (e *notRunningError) Error() string {
	return fmt.Sprintf("no %s master is running (%s)", e.name, e.why)
}

func (e *notRunningError) Is(target error) bool { return target == ErrNotRunning }
func (e *notRunningError) Unwrap() error        { return e.err }

// StatusError is the error Client.Do returns for a response whose status is not
// 2xx.
type StatusError struct {
	Method, Path string
	Status       int    // HTTP status code
	Message      string // the "error" of a JSON error body, else the body text or the status text
}

// Error reads like "control: POST /scale: 400 Bad Request: workers must be positive".
func (e *StatusError) Error() string {
	return fmt.Sprintf("control: %s %s: %d %s: %s", e.Method, e.Path, e.Status, http.StatusText(e.Status), e.Message)
}

// Client talks to the master of a run dir over its control socket. It is safe
// for concurrent use; Close releases its idle connections.
type Client struct {
	name, sock string
	owner      int // uid the run dir belongs to, and the server must run as
	tr         *http.Transport
	hc         *http.Client
}

// Peer is what SO_PEERCRED says about the process at the other end of a
// control connection: for a client, the server that created the listening
// socket.
type Peer struct {
	PID, UID int
}

// Dial returns a client for the master of runDir, named name in messages. It
// checks the path of the run dir as Acquire does (every ancestor owned by root
// or the effective uid and not writable by group or others unless sticky; the
// run dir, and its parent when it is DefaultRunDir(name), real directories of
// their owner, not writable by group or others) and refuses with an
// *UnsafePathError otherwise. The run dir must be owned by the effective uid;
// root may also talk to a master whose uid owns the run dir. Every connection
// the client makes then checks with SO_PEERCRED that the server runs as the
// run dir's owner, and refuses it otherwise (see Do).
//
// Dial checks that the control socket exists but does not connect: if there is
// no socket, the error wraps ErrNotRunning and reads like
//
//	no hello master is running (no control socket at /tmp/brood-0/hello/control.sock)
//
// A socket that nothing accepts on (left by a killed master) is reported by Do,
// also with an error wrapping ErrNotRunning.
func Dial(runDir, name string) (*Client, error) {
	sock := SocketPath(runDir)
	if err := checkSocketPath(sock); err != nil {
		return nil, err
	}
	owner, err := checkClientRunDir(runDir, name)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, &notRunningError{name: name, why: "no control socket at " + sock, err: err}
	}
	if err != nil {
		return nil, err
	}
	fi, err := os.Lstat(sock)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, &notRunningError{name: name, why: "no control socket at " + sock, err: err}
	case err != nil:
		return nil, fmt.Errorf("control: %w", err)
	case fi.Mode().Type() != fs.ModeSocket:
		return nil, fmt.Errorf("control: %s is not a socket", sock)
	}
	c := &Client{name: name, sock: sock, owner: owner}
	c.tr = &http.Transport{
		DialContext:        c.dial,
		DisableCompression: true,
		MaxIdleConns:       2,
	}
	c.hc = &http.Client{Transport: c.tr}
	return c, nil
}

// serverConn is a connection to a server whose credentials were checked.
type serverConn struct {
	*net.UnixConn
	peer Peer
}

// dial connects to the control socket, whatever address net/http asks for, and
// refuses a server that does not run as the run dir's owner.
func (c *Client) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.sock)
	switch {
	case errors.Is(err, syscall.ENOENT):
		return nil, &notRunningError{name: c.name, why: "no control socket at " + c.sock, err: err}
	case errors.Is(err, syscall.ECONNREFUSED):
		return nil, &notRunningError{name: c.name, why: "stale control socket at " + c.sock + ": connection refused", err: err}
	case err != nil:
		return nil, err
	}
	uc := conn.(*net.UnixConn) // a "unix" dial always gives one
	cred, err := peerCred(uc)
	if err != nil {
		uc.Close()
		return nil, fmt.Errorf("control: %s: %w", c.sock, err)
	}
	if int(cred.Uid) != c.owner {
		uc.Close()
		return nil, fmt.Errorf("control: refusing the server on %s: it runs as uid %d (pid %d), but the run dir belongs to uid %d", c.sock, cred.Uid, cred.Pid, c.owner)
	}
	return &serverConn{UnixConn: uc, peer: Peer{PID: int(cred.Pid), UID: int(cred.Uid)}}, nil
}

// Do sends a request with method and path (which may carry a query) to the
// master. If in is not nil it is sent as the JSON body. A 2xx response's JSON
// body is decoded into out unless out is nil or the body is empty. Any other
// status is returned as a *StatusError carrying the server's message. ctx bounds
// the whole call, connection included; a canceled call's error wraps ctx.Err().
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	return c.DoPeer(ctx, method, path, in, out, nil)
}

// DoPeer is Do, and also calls gotConn (unless nil) with the credentials of
// the server on the connection that carries the request, once that
// connection is established and before the request is written. A response
// that follows therefore proves the server was alive after gotConn ran: stop
// opens the master's pidfd there. gotConn may run more than once if the
// transport retries on another connection.
func (c *Client) DoPeer(ctx context.Context, method, path string, in, out any, gotConn func(Peer)) error {
	if gotConn != nil {
		ctx = httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
			GotConn: func(info httptrace.GotConnInfo) {
				if sc, ok := info.Conn.(*serverConn); ok {
					gotConn(sc.peer)
				}
			},
		})
	}
	if !strings.HasPrefix(path, "/") {
		return fmt.Errorf("control: %s %s: path must start with /", method, path)
	}
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("control: %s %s: encode request: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://control"+path, body)
	if err != nil {
		return fmt.Errorf("control: %s %s: %w", method, path, err)
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")

	resp, err := c.hc.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // drop `Get "http://control/..."`: the socket is what matters
		}
		var nr *notRunningError
		if errors.As(err, &nr) {
			return nr
		}
		return fmt.Errorf("control: %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody+1))
	if err != nil {
		return fmt.Errorf("control: %s %s: read response: %w", method, path, err)
	}
	if len(b) > maxResponseBody {
		return fmt.Errorf("control: %s %s: response larger than %d bytes", method, path, maxResponseBody)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &StatusError{Method: method, Path: path, Status: resp.StatusCode, Message: errorMessage(resp.StatusCode, b)}
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("control: %s %s: decode response: %w", method, path, err)
		}
	}
	return nil
}

// errorMessage extracts the message of an error response body.
func errorMessage(status int, body []byte) string {
	var eb errorBody
	if json.Unmarshal(body, &eb) == nil && eb.Error != "" {
		return eb.Error
	}
	if s := strings.TrimSpace(string(body)); s != "" {
		const max = 512
		if len(s) > max {
			s = s[:max] + "..."
		}
		return s
	}
	return http.StatusText(status)
}

// Close closes the client's idle connections. Requests in flight are not
// affected; the client remains usable.
func (c *Client) Close() error {
	c.tr.CloseIdleConnections()
	return nil
}
