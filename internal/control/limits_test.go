package control

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rawGet sends GET /status on conn and reads the response.
func rawGet(t *testing.T, conn net.Conn, br *bufio.Reader) *http.Response {
	t.Helper()
	if _, err := io.WriteString(conn, "GET /status HTTP/1.1\r\nHost: control\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body = io.NopCloser(strings.NewReader(string(body)))
	return resp
}

func bodyOf(resp *http.Response) string {
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// setBounds shortens the server's bounds for one test.
func setBounds(t *testing.T, read time.Duration, conns int) {
	oldRead, oldConns := requestReadTimeout, maxConns
	requestReadTimeout, maxConns = read, conns
	t.Cleanup(func() { requestReadTimeout, maxConns = oldRead, oldConns })
}

func okHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil {
			io.Copy(io.Discard, r.Body)
		}
		WriteJSON(w, http.StatusOK, "ok")
	})
}

// TestConnectionCap holds the server's connections open and checks that the
// next one is answered 503 at once, and that closing one makes room.
func TestConnectionCap(t *testing.T) {
	setBounds(t, 10*time.Second, 2)
	dir := runDir(t)
	in := acquire(t, dir)
	var logs logBuffer
	serve(t, in, okHandler(), logs.logger())

	var held []net.Conn
	for range 2 {
		c, err := net.Dial("unix", SocketPath(dir))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if resp := rawGet(t, c, bufio.NewReader(c)); resp.StatusCode != http.StatusOK {
			t.Fatalf("connection under the cap: got %d", resp.StatusCode)
		}
		held = append(held, c) // kept alive, idle
	}

	c, err := net.Dial("unix", SocketPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	resp := rawGet(t, c, bufio.NewReader(c))
	want := `{"error":"control socket: too many connections (2 open); try again"}` + "\n"
	if got := bodyOf(resp); resp.StatusCode != http.StatusServiceUnavailable || got != want || resp.Header.Get("Content-Type") != "application/json" {
		t.Errorf("connection over the cap: got %d %q, want 503 %q", resp.StatusCode, got, want)
	}
	if n := len(logs.records(t, "control socket: too many connections")); n != 1 {
		t.Errorf("got %d too-many-connections lines logged, want 1", n)
	}

	// Closing a held connection gives its place back once the server has
	// seen it close; wait for that, with a deadline.
	held[0].Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("unix", SocketPath(dir))
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(10 * time.Second))
		status := rawGet(t, c, bufio.NewReader(c)).StatusCode
		c.Close()
		if status == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("still %d 10s after a held connection closed", status)
		}
	}
}

// TestSilentClientDropped connects and sends nothing: the server hangs up
// after the read bound.
func TestSilentClientDropped(t *testing.T) {
	setBounds(t, 200*time.Millisecond, 32)
	dir := runDir(t)
	serve(t, acquire(t, dir), okHandler(), nil)

	c, err := net.Dial("unix", SocketPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second)) // far beyond the bound
	if _, err := io.ReadAll(c); err != nil {
		t.Errorf("silent client: got %v, want the server to close the connection (EOF) after 200ms", err)
	}
}

// TestSlowBodyDropped sends headers and part of a body, then stalls: reading
// the body fails after the read bound, and the handler answers.
func TestSlowBodyDropped(t *testing.T) {
	setBounds(t, 200*time.Millisecond, 32)
	dir := runDir(t)
	serve(t, acquire(t, dir), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var v any
		if err := ReadJSON(r, &v); err != nil {
			WriteError(w, http.StatusBadRequest, err)
			return
		}
		WriteJSON(w, http.StatusOK, v)
	}), nil)

	c, err := net.Dial("unix", SocketPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second)) // far beyond the bound
	if _, err := io.WriteString(c, "POST /scale HTTP/1.1\r\nHost: control\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{\"wor"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("stalled body: got %v, want an answer within 5s", err)
	}
	if got := bodyOf(resp); resp.StatusCode != http.StatusBadRequest || !strings.Contains(got, "i/o timeout") {
		t.Errorf("stalled body: got %d %q, want 400 saying the body timed out", resp.StatusCode, got)
	}
}

// scaleBody is the body of a POST in these tests.
type scaleBody struct {
	Workers int `json:"workers"`
}

// TestLongHandlerNotCanceled: the read bound does not cut a handler that takes
// longer than it (a reload can take minutes), with or without a body.
func TestLongHandlerNotCanceled(t *testing.T) {
	const bound = 100 * time.Millisecond
	setBounds(t, bound, 32)
	dir := runDir(t)
	serve(t, acquire(t, dir), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var req scaleBody
		if r.Method == "POST" {
			if err := ReadJSON(r, &req); err != nil {
				WriteError(w, http.StatusBadRequest, err)
				return
			}
		}
		select {
		case <-r.Context().Done():
			WriteError(w, http.StatusInternalServerError, fmt.Errorf("handler context ended: %w", r.Context().Err()))
		case <-time.After(5 * bound): // the long work being tested
			WriteJSON(w, http.StatusOK, req)
		}
	}), nil)

	c := dial(t, dir)
	var res scaleBody
	if err := c.Do(ctx(t), "POST", "/scale", scaleBody{Workers: 3}, &res); err != nil || res.Workers != 3 {
		t.Errorf("POST with a body: got %+v, %v, want Workers 3", res, err)
	}
	if err := c.Do(ctx(t), "GET", "/status", nil, nil); err != nil {
		t.Errorf("GET: %v", err)
	}
}
