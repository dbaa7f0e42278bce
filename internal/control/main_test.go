package control

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The test binary doubles as a helper process (the os/exec pattern): a test
// starts it with envHelper naming the helper and envRunDir the run dir.
const (
	envHelper = "CONTROL_TEST_HELPER"
	envRunDir = "CONTROL_TEST_RUN_DIR"
)

// TestMain runs a helper if the environment asks for one, else the tests,
// followed by a goroutine leak check.
func TestMain(m *testing.M) {
	switch h := os.Getenv(envHelper); h {
	case "":
		goleak.VerifyTestMain(m)
	case "hold":
		os.Exit(helperHold(os.Getenv(envRunDir)))
	case "dial":
		os.Exit(helperDial(os.Getenv(envRunDir)))
	case "listen":
		os.Exit(helperListen(os.Getenv(envRunDir)))
	default:
		fmt.Fprintf(os.Stderr, "control test: unknown helper %q\n", h)
		os.Exit(2)
	}
}

// helperHold is a minimal master: it acquires the run dir, serves GET /pid,
// prints "ready" and runs until its stdin is closed (or it is killed).
func helperHold(runDir string) int {
	in, err := Acquire(runDir, "hello")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer in.Close()
	if err := in.Listen(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /pid", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, os.Getpid())
	})
	go in.Serve(mux, nil) // returns when the deferred Close runs
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// helperListen is a server that is not a master: it listens on
// dir/control.sock with net/http (no Acquire, no SO_PEERCRED check), answers
// every request 200 "served", prints "ready" and runs until its stdin is
// closed.
func helperListen(dir string) int {
	ln, err := net.Listen("unix", SocketPath(dir))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, "served")
	}))
	fmt.Println("ready")
	io.Copy(io.Discard, os.Stdin)
	return 0
}

// dialResult is what helperDial prints, as JSON, on stdout.
type dialResult struct {
	// Raw HTTP/1.1 exchange on a connection of our own.
	Proto  string
	Status int
	Body   string
	// A connection that sends nothing.
	SilentStatus int
	// What Dial (or, if it succeeds, Client.Do) says.
	ClientError string
}

// helperDial asks the master of runDir for GET /status by hand, then connects
// and waits without sending anything, then asks with Client, and prints what it
// got.
func helperDial(runDir string) int {
	var res dialResult
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	conn, err := net.Dial("unix", SocketPath(runDir))
	if err != nil {
		return fail(err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, "GET /status HTTP/1.1\r\nHost: control\r\n\r\n"); err != nil {
		return fail(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return fail(err)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fail(err)
	}
	conn.Close()
	res.Proto, res.Status, res.Body = resp.Proto, resp.StatusCode, string(body)

	conn, err = net.Dial("unix", SocketPath(runDir))
	if err != nil {
		return fail(err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	resp, err = http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return fail(err)
	}
	conn.Close()
	res.SilentStatus = resp.StatusCode

	c, err := Dial(runDir, "hello")
	if err == nil {
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err = c.Do(ctx, "GET", "/status", nil, nil)
	}
	res.ClientError = fmt.Sprint(err)

	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		return fail(err)
	}
	return 0
}

// startHold starts helperHold on dir in a new process of exe (the test binary
// or a copy), as cred unless nil, and waits until it serves. kill sends it
// SIGKILL and returns the error of its Wait; it runs at the end of the test if
// the test did not call it.
func startHold(t *testing.T, exe, dir string, cred *syscall.Credential) (pid int, kill func() error) {
	t.Helper()
	return startHelper(t, "hold", exe, dir, cred)
}

// startHelper starts the helper named helper on dir, as startHold does.
func startHelper(t *testing.T, helper, exe, dir string, cred *syscall.Credential) (pid int, kill func() error) {
	t.Helper()
	cmd := exec.Command(exe)
	cmd.Dir = filepath.Dir(exe)
	cmd.Env = append(os.Environ(), envHelper+"="+helper, envRunDir+"="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe() // kept open: the helper runs until killed
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	kill = sync.OnceValue(func() error {
		cmd.Process.Kill()
		for range lines { // until the helper's stdout closes
		}
		err := cmd.Wait()
		stdin.Close()
		return err
	})
	t.Cleanup(func() { kill() })

	select {
	case line := <-lines:
		if line == "ready" {
			return cmd.Process.Pid, kill
		}
		kill()
		t.Fatalf("helper master said %q, want ready; stderr: %s", line, stderr.String())
	case <-time.After(10 * time.Second):
		kill()
		t.Fatalf("helper master not ready after 10s; stderr: %s", stderr.String())
	}
	panic("unreachable")
}

// runDir returns a fresh directory whose socket path fits a unix socket address
// with room to spare.
func runDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if len(SocketPath(dir)) <= maxSocketPath-32 {
		return dir
	}
	dir, err := os.MkdirTemp("", "ctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// acquire acquires dir and closes the instance at the end of the test.
func acquire(t *testing.T, dir string) *Instance {
	t.Helper()
	in, err := Acquire(dir, "hello")
	if err != nil {
		t.Fatalf("Acquire: %v", err)
	}
	t.Cleanup(func() { in.Close() })
	return in
}

// serve listens, runs Serve in a goroutine and returns a function that waits
// (at most 10s) for Serve to return after Close and returns its error. At the
// end of the test it closes in and checks that Serve returned nil.
func serve(t *testing.T, in *Instance, h http.Handler, log *slog.Logger) (wait func() error) {
	t.Helper()
	if err := in.Listen(); err != nil {
		t.Fatalf("Listen: %v", err)
	}
	errc := make(chan error, 1)
	go func() { errc <- in.Serve(h, log) }()
	wait = sync.OnceValue(func() error {
		select {
		case err := <-errc:
			return err
		case <-time.After(10 * time.Second):
			return errors.New("Serve did not return within 10s")
		}
	})
	t.Cleanup(func() {
		in.Close()
		if err := wait(); err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return wait
}

// dial returns a client for dir, closed at the end of the test.
func dial(t *testing.T, dir string) *Client {
	t.Helper()
	c, err := Dial(dir, "hello")
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// ctx returns a context that ends with the test or after 10s.
func ctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// recv waits at most 10s for a value on ch.
func recv[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// logBuffer collects the lines of a slog JSON handler.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) logger() *slog.Logger { return slog.New(slog.NewJSONHandler(l, nil)) }

// lines returns the lines logged so far.
func (l *logBuffer) lines() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for line := range strings.Lines(l.b.String()) {
		out = append(out, line)
	}
	return out
}

// duplicateKeys returns the keys that occur more than once at the top level of
// the JSON object line (a map would silently keep only the last).
func duplicateKeys(t *testing.T, line string) []string {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(line))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("log line %q: not a JSON object", line)
	}
	seen := map[string]bool{}
	var dup []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		k := tok.(string)
		if seen[k] {
			dup = append(dup, k)
		}
		seen[k] = true
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
	}
	return dup
}

// records returns the records logged so far with the message msg.
func (l *logBuffer) records(t *testing.T, msg string) []map[string]any {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	var recs []map[string]any
	for line := range strings.Lines(l.b.String()) {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if rec["msg"] == msg {
			recs = append(recs, rec)
		}
	}
	return recs
}
