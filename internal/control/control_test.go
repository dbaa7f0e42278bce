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
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestPaths(t *testing.T) {
	for _, tc := range []struct{ got, want string }{
		{SocketPath("/run/x"), "/run/x/control.sock"},
		{PIDPath("/run/x"), "/run/x/master.pid"},
		{LockPath("/run/x"), "/run/x/master.lock"},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestAcquireCreatesRunDir(t *testing.T) {
	dir := filepath.Join(runDir(t), "brood", "hello")
	acquire(t, dir)

	for _, d := range []string{dir, filepath.Dir(dir)} {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != 0o700 {
			t.Errorf("mode of %s: got %#o, want %#o", d, got, 0o700)
		}
	}
	if pid, err := ReadPID(dir); err != nil || pid != os.Getpid() {
		t.Errorf("ReadPID: got %d, %v, want %d", pid, err, os.Getpid())
	}
	if _, err := os.Stat(LockPath(dir)); err != nil {
		t.Errorf("lock file: %v", err)
	}
	if _, err := os.Lstat(SocketPath(dir)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket before Listen: got %v, want not exist", err)
	}
}

func TestAcquireTwice(t *testing.T) {
	dir := runDir(t)
	first := acquire(t, dir)

	// A second open file description of the lock file conflicts with the
	// first, even in the same process.
	_, err := Acquire(dir, "hello")
	var are *AlreadyRunningError
	if !errors.As(err, &are) {
		t.Fatalf("second Acquire: got %v, want *AlreadyRunningError", err)
	}
	if are.PID != os.Getpid() || are.RunDir != dir || are.Name != "hello" {
		t.Errorf("got %+v, want PID %d, RunDir %s, Name hello", *are, os.Getpid(), dir)
	}
	want := fmt.Sprintf("hello is already running (pid %d, run dir %s); stop it first or use another --run-dir", os.Getpid(), dir)
	if err.Error() != want {
		t.Errorf("got %q, want %q", err, want)
	}
	// The failed Acquire did not disturb the holder's pid file.
	if pid, err := ReadPID(dir); err != nil || pid != os.Getpid() {
		t.Errorf("ReadPID: got %d, %v, want %d", pid, err, os.Getpid())
	}

	if err := first.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	second, err := Acquire(dir, "hello")
	if err != nil {
		t.Fatalf("Acquire after Close: %v", err)
	}
	second.Close()
}

// TestLockNotInherited checks that a child process started while the lock is
// held does not keep it after the master lets go (brood masters start children
// all the time).
func TestLockNotInherited(t *testing.T) {
	dir := runDir(t)
	in := acquire(t, dir)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	startHold(t, exe, runDir(t), nil) // alive until the end of the test
	if err := in.Close(); err != nil {
		t.Fatal(err)
	}
	acquire(t, dir) // fails if the child inherited the lock
}

func TestAcquireLockedWithoutPIDFile(t *testing.T) {
	// A master between taking the lock and writing its pid file.
	dir := runDir(t)
	f, err := os.OpenFile(LockPath(dir), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		t.Fatal(err)
	}

	_, err = Acquire(dir, "hello")
	var are *AlreadyRunningError
	if !errors.As(err, &are) || are.PID != 0 {
		t.Fatalf("got %v, want *AlreadyRunningError with PID 0", err)
	}
	want := fmt.Sprintf("hello is already running (pid unknown, run dir %s); stop it first or use another --run-dir", dir)
	if err.Error() != want {
		t.Errorf("got %q, want %q", err, want)
	}
}

// staleSocket leaves a socket file at path that nothing listens on, as a
// killed master does.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
}

func TestAcquireCleansStaleRunDir(t *testing.T) {
	dir := runDir(t)
	if err := os.WriteFile(PIDPath(dir), []byte("4242\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".master.pid.123"), []byte("42"), 0o600); err != nil {
		t.Fatal(err)
	}
	staleSocket(t, SocketPath(dir))

	// Before: the socket is there but nothing answers.
	err := dial(t, dir).Do(ctx(t), "GET", "/status", nil, nil)
	want := fmt.Sprintf("no hello master is running (stale control socket at %s: connection refused)", SocketPath(dir))
	if !errors.Is(err, ErrNotRunning) || err.Error() != want {
		t.Fatalf("Do on a stale socket: got %v, want %q wrapping ErrNotRunning", err, want)
	}

	in := acquire(t, dir)
	if pid, err := ReadPID(dir); err != nil || pid != os.Getpid() {
		t.Errorf("ReadPID: got %d, %v, want %d", pid, err, os.Getpid())
	}
	for _, p := range []string{SocketPath(dir), filepath.Join(dir, ".master.pid.123")} {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s after Acquire: got %v, want not exist", p, err)
		}
	}
	if err := in.Listen(); err != nil {
		t.Errorf("Listen: %v", err)
	}
}

func TestAcquireRefusesUnsafeRunDir(t *testing.T) {
	dir := runDir(t)
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	_, err := Acquire(dir, "hello")
	if err == nil || !strings.Contains(err.Error(), "writable by group or others") {
		t.Errorf("world-writable run dir: got %v, want an error saying it is writable by others", err)
	}

	file := filepath.Join(runDir(t), "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = Acquire(file, "hello")
	if err == nil {
		t.Errorf("run dir that is a file: got nil error")
	}
}

// TestAcquireAfterMasterKilled runs a master in another process, kills it with
// SIGKILL and checks that its stale files do not stop the next master.
func TestAcquireAfterMasterKilled(t *testing.T) {
	dir := runDir(t)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	helper, kill := startHold(t, exe, dir, nil)

	// Alive: the lock is held, by the pid in the pid file.
	_, err = Acquire(dir, "hello")
	var are *AlreadyRunningError
	if !errors.As(err, &are) || are.PID != helper {
		t.Fatalf("Acquire while the helper runs: got %v, want *AlreadyRunningError with PID %d", err, helper)
	}
	var pid int
	if err := dial(t, dir).Do(ctx(t), "GET", "/pid", nil, &pid); err != nil || pid != helper {
		t.Fatalf("GET /pid: got %d, %v, want %d", pid, err, helper)
	}

	if err := kill(); err == nil || !strings.Contains(err.Error(), "killed") {
		t.Fatalf("helper exit: got %v, want killed", err)
	}

	// Dead: its pid file and socket are still there, stale.
	if pid, err := ReadPID(dir); err != nil || pid != helper {
		t.Errorf("ReadPID after kill: got %d, %v, want %d", pid, err, helper)
	}
	err = dial(t, dir).Do(ctx(t), "GET", "/pid", nil, &pid)
	if !errors.Is(err, ErrNotRunning) {
		t.Errorf("Do after kill: got %v, want ErrNotRunning", err)
	}

	// The lock went with the process: the next master takes over.
	in := acquire(t, dir)
	if pid, err := ReadPID(dir); err != nil || pid != os.Getpid() {
		t.Errorf("ReadPID: got %d, %v, want %d", pid, err, os.Getpid())
	}
	if _, err := os.Lstat(SocketPath(dir)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("stale socket after Acquire: got %v, want not exist", err)
	}
	serve(t, in, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, os.Getpid())
	}), nil)
	if err := dial(t, dir).Do(ctx(t), "GET", "/pid", nil, &pid); err != nil || pid != os.Getpid() {
		t.Errorf("GET /pid from the new master: got %d, %v, want %d", pid, err, os.Getpid())
	}
}

type status struct {
	Name    string `json:"name"`
	Workers int    `json:"workers"`
}

type scaleRequest struct {
	Workers int `json:"workers"`
}

func TestRoundTrip(t *testing.T) {
	dir := runDir(t)
	in := acquire(t, dir)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, status{Name: "hello", Workers: 4})
	})
	mux.HandleFunc("POST /scale", func(w http.ResponseWriter, r *http.Request) {
		var req scaleRequest
		if err := ReadJSON(r, &req); err != nil {
			WriteError(w, http.StatusBadRequest, err)
			return
		}
		if req.Workers <= 0 {
			WriteError(w, http.StatusBadRequest, errors.New("workers must be positive"))
			return
		}
		WriteJSON(w, http.StatusOK, status{Name: "hello", Workers: req.Workers})
	})
	mux.HandleFunc("POST /stop", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	})
	serve(t, in, mux, nil)
	c := dial(t, dir)

	var st status
	if err := c.Do(ctx(t), "GET", "/status", nil, &st); err != nil || st != (status{"hello", 4}) {
		t.Errorf("GET /status: got %+v, %v, want {hello 4}", st, err)
	}
	if err := c.Do(ctx(t), "POST", "/scale", scaleRequest{Workers: 8}, &st); err != nil || st.Workers != 8 {
		t.Errorf("POST /scale: got %+v, %v, want 8 workers", st, err)
	}

	err := c.Do(ctx(t), "POST", "/scale", scaleRequest{Workers: 0}, &st)
	var se *StatusError
	if !errors.As(err, &se) || se.Status != http.StatusBadRequest || se.Message != "workers must be positive" {
		t.Fatalf("POST /scale 0: got %#v, want a 400 StatusError", err)
	}
	if want := "control: POST /scale: 400 Bad Request: workers must be positive"; err.Error() != want {
		t.Errorf("got %q, want %q", err, want)
	}

	err = c.Do(ctx(t), "POST", "/scale", map[string]int{"wrokers": 3}, &st)
	if !errors.As(err, &se) || se.Status != http.StatusBadRequest || !strings.Contains(se.Message, `unknown field "wrokers"`) {
		t.Errorf("POST /scale with a misspelt field: got %v, want a 400 naming the field", err)
	}

	err = c.Do(ctx(t), "GET", "/nope", nil, &st)
	if !errors.As(err, &se) || se.Status != http.StatusNotFound || se.Message != "404 page not found" {
		t.Errorf("GET /nope: got %v, want a 404 with the body as message", err)
	}

	st = status{Name: "untouched"}
	if err := c.Do(ctx(t), "POST", "/stop", nil, &st); err != nil || st.Name != "untouched" {
		t.Errorf("POST /stop (204): got %+v, %v, want no error and out untouched", st, err)
	}

	if err := c.Do(ctx(t), "GET", "status", nil, nil); err == nil {
		t.Errorf("path without a leading slash: got nil error")
	}
}

func TestPeerFrom(t *testing.T) {
	if _, _, ok := PeerFrom(context.Background()); ok {
		t.Errorf("PeerFrom(Background): got ok")
	}
	dir := runDir(t)
	in := acquire(t, dir)
	type peerInfo struct{ PID, UID int }
	serve(t, in, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		pid, uid, ok := PeerFrom(r.Context())
		if !ok {
			WriteError(w, http.StatusInternalServerError, errors.New("no peer in the request context"))
			return
		}
		WriteJSON(w, http.StatusOK, peerInfo{pid, uid})
	}), nil)

	var got peerInfo
	if err := dial(t, dir).Do(ctx(t), "GET", "/whoami", nil, &got); err != nil {
		t.Fatal(err)
	}
	// The client is this process.
	if want := (peerInfo{os.Getpid(), os.Geteuid()}); got != want {
		t.Errorf("got %+v, want %+v", got, want)
	}
}

func TestSocketModeIgnoresUmask(t *testing.T) {
	old := unix.Umask(0) // the process's umask; the tests do not run in parallel
	defer unix.Umask(old)
	// t.TempDir's own mode depends on the umask, and Acquire refuses a
	// world-writable parent.
	base := runDir(t)
	if err := os.Chmod(base, 0o700); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, "run")
	in := acquire(t, dir)
	if err := in.Listen(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Lstat(SocketPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode: got %v, want a socket with mode 0600", fi.Mode())
	}
}

func TestListenSocketPathTooLong(t *testing.T) {
	dir := filepath.Join(runDir(t), strings.Repeat("x", 100))
	in := acquire(t, dir)
	err := in.Listen()
	if err == nil || !strings.Contains(err.Error(), "more than the 107 a unix socket allows") {
		t.Errorf("Listen: got %v, want an error about the path length", err)
	}
	if _, err := Dial(dir, "hello"); err == nil || errors.Is(err, ErrNotRunning) {
		t.Errorf("Dial: got %v, want an error about the path length", err)
	}
}

func TestClose(t *testing.T) {
	dir := runDir(t)
	in := acquire(t, dir)
	wait := serve(t, in, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		WriteJSON(w, http.StatusOK, "ok")
	}), nil)
	c := dial(t, dir)
	if err := c.Do(ctx(t), "GET", "/", nil, nil); err != nil { // leaves an idle connection
		t.Fatal(err)
	}

	if err := in.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := wait(); err != nil {
		t.Errorf("Serve after Close: got %v, want nil", err)
	}
	for _, p := range []string{SocketPath(dir), PIDPath(dir)} {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s after Close: got %v, want not exist", p, err)
		}
	}
	if _, err := os.Stat(LockPath(dir)); err != nil {
		t.Errorf("lock file after Close: got %v, want it kept", err)
	}
	if err := in.Close(); err != nil {
		t.Errorf("second Close: got %v, want nil", err)
	}
	if err := in.Listen(); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Listen after Close: got %v, want net.ErrClosed", err)
	}
	if err := in.Serve(http.NotFoundHandler(), nil); !errors.Is(err, net.ErrClosed) {
		t.Errorf("Serve after Close: got %v, want net.ErrClosed", err)
	}
	if _, err := Dial(dir, "hello"); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Dial after Close: got %v, want ErrNotRunning", err)
	}
	// The lock is free.
	acquire(t, dir)
}

func TestCloseListenedNeverServed(t *testing.T) {
	dir := runDir(t)
	in := acquire(t, dir)
	if err := in.Listen(); err != nil {
		t.Fatal(err)
	}
	if err := in.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Lstat(SocketPath(dir)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket after Close: got %v, want not exist", err)
	}
}

func TestCloseLetsRequestsFinish(t *testing.T) {
	dir := runDir(t)
	in := acquire(t, dir)
	entered, release := make(chan struct{}), make(chan struct{})
	wait := serve(t, in, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		close(entered)
		<-release
		WriteJSON(w, http.StatusOK, "done")
	}), nil)

	c, reqCtx := dial(t, dir), ctx(t)
	done := make(chan error, 1)
	var got string
	go func() { done <- c.Do(reqCtx, "POST", "/stop", nil, &got) }()
	recv(t, entered, "the handler to start")

	// Start Close and wait until it is shutting the server down, then check it
	// waits for the handler.
	in.mu.Lock()
	srv := in.srv
	in.mu.Unlock()
	shuttingDown := make(chan struct{})
	srv.RegisterOnShutdown(func() { close(shuttingDown) })
	closed := make(chan error, 1)
	go func() { closed <- in.Close() }()
	recv(t, shuttingDown, "Close to begin the shutdown")
	select {
	case err := <-closed:
		t.Fatalf("Close returned %v while a handler was running", err)
	default:
	}

	close(release)
	if err := recv(t, done, "the request to finish"); err != nil || got != "done" {
		t.Errorf("request in flight during Close: got %q, %v, want done", got, err)
	}
	if err := recv(t, closed, "Close to return"); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := wait(); err != nil {
		t.Errorf("Serve: %v", err)
	}
}

func TestDoDeadline(t *testing.T) {
	dir := runDir(t)
	in := acquire(t, dir)
	handlerDone := make(chan error, 1)
	serve(t, in, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done() // never answers; the client gives up
		handlerDone <- r.Context().Err()
	}), nil)

	c := dial(t, dir)
	ctx, cancel := context.WithTimeout(ctx(t), 100*time.Millisecond)
	defer cancel()
	err := c.Do(ctx, "POST", "/stop", nil, nil)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Do: got %v, want context.DeadlineExceeded", err)
	}
	// The server saw the client go away.
	if err := recv(t, handlerDone, "the handler's context to end"); !errors.Is(err, context.Canceled) {
		t.Errorf("handler context: got %v, want context.Canceled", err)
	}
}

func TestDialNotRunning(t *testing.T) {
	dir := runDir(t)
	_, err := Dial(dir, "hello")
	want := fmt.Sprintf("no hello master is running (no control socket at %s)", SocketPath(dir))
	if !errors.Is(err, ErrNotRunning) || err.Error() != want {
		t.Errorf("got %v, want %q wrapping ErrNotRunning", err, want)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("got %v, want it to wrap fs.ErrNotExist too", err)
	}

	if err := os.WriteFile(SocketPath(dir), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Dial(dir, "hello"); err == nil || errors.Is(err, ErrNotRunning) {
		t.Errorf("Dial to a regular file: got %v, want an error saying it is not a socket", err)
	}
}

func TestReadPID(t *testing.T) {
	dir := runDir(t)
	if pid, err := ReadPID(dir); err == nil || pid != 0 {
		t.Errorf("absent: got %d, %v, want 0 and an error", pid, err)
	}
	for content, want := range map[string]int{"123\n": 123, " 7 ": 7, "abc": 0, "-5\n": 0, "": 0, "12 34": 0} {
		if err := os.WriteFile(PIDPath(dir), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		pid, err := ReadPID(dir)
		if pid != want || (err == nil) != (want != 0) {
			t.Errorf("ReadPID of %q: got %d, %v, want %d", content, pid, err, want)
		}
	}
}

func TestWriteJSONUnencodable(t *testing.T) {
	rec := newRecorder()
	WriteJSON(rec, http.StatusOK, func() {})
	if rec.status != http.StatusInternalServerError || !strings.Contains(rec.body.String(), `"error":"control: encode response`) {
		t.Errorf("got %d %s, want a 500 error body", rec.status, rec.body.String())
	}
}

// recorder is a minimal http.ResponseWriter.
type recorder struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func newRecorder() *recorder                    { return &recorder{header: http.Header{}} }
func (r *recorder) Header() http.Header         { return r.header }
func (r *recorder) WriteHeader(status int)      { r.status = status }
func (r *recorder) Write(p []byte) (int, error) { return r.body.Write(p) }

// TestRefusesOtherUID connects from a process running as uid 65534 and checks
// that the server answers 403 without reaching the handler, and logs it.
func TestRefusesOtherUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start a helper process as uid 65534")
	}
	dir, exe := sharedDir(t)
	in := acquire(t, dir)
	var logs logBuffer
	var served atomic.Int32
	// The master's logger already carries its own pid, as in brood.
	serve(t, in, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		served.Add(1)
		WriteJSON(w, http.StatusOK, "served")
	}), logs.logger().With("role", "master", "pid", os.Getpid()))
	// The socket is 0600, so uid 65534's connect() would fail with EACCES
	// before the server ever saw it. Open it to everyone to prove that the
	// SO_PEERCRED check is what refuses the connection.
	if err := os.Chmod(SocketPath(dir), 0o666); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(exe)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), envHelper+"=dial", envRunDir+"="+dir,
		"GORACE="+os.Getenv("GORACE")+" atexit_sleep_ms=0") // a -race binary otherwise lingers 1s at exit
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("helper: %v; stderr: %s", err, stderr.String())
	}
	var res dialResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		t.Fatalf("helper output %q: %v", stdout.String(), err)
	}

	msg := fmt.Sprintf("control socket: uid %d is not allowed (owner uid 0)", nobody)
	wantBody := `{"error":"` + msg + `"}` + "\n"
	if res.Proto != "HTTP/1.1" || res.Status != http.StatusForbidden || res.Body != wantBody {
		t.Errorf("raw request: got %s %d %q, want HTTP/1.1 403 %q", res.Proto, res.Status, res.Body, wantBody)
	}
	if res.SilentStatus != http.StatusForbidden {
		t.Errorf("connection that sends nothing: got %d, want 403", res.SilentStatus)
	}
	// The client refuses first: the run dir is not nobody's.
	wantDial := fmt.Sprintf("control: unsafe run dir %s: %s (owner uid 0, mode 0711) is owned by uid 0, not by uid %d", dir, dir, nobody)
	if res.ClientError != wantDial {
		t.Errorf("Dial as uid %d: got %q, want %q", nobody, res.ClientError, wantDial)
	}
	if n := served.Load(); n != 0 {
		t.Errorf("handler ran %d times for a refused peer, want 0", n)
	}

	// The refusal was logged before it was written, so both are logged by now.
	for _, line := range logs.lines() {
		if dup := duplicateKeys(t, line); len(dup) > 0 {
			t.Errorf("log line has duplicate keys %v: %s", dup, line)
		}
	}
	recs := logs.records(t, "control socket: refused connection")
	if len(recs) != 2 {
		t.Fatalf("got %d refusals logged, want 2 (the raw and the silent connection): %v", len(recs), recs)
	}
	for _, r := range recs {
		if r["peer_uid"] != float64(nobody) || r["peer_pid"] != float64(cmd.Process.Pid) || r["owner_uid"] != float64(0) || r["pid"] != float64(os.Getpid()) {
			t.Errorf("logged %v, want peer_uid %d, peer_pid %d, owner_uid 0 and the master's own pid %d", r, nobody, cmd.Process.Pid, os.Getpid())
		}
	}
}

// TestRootIsNotExempt runs a master as uid 65534 and connects to it as root:
// file permissions do not stop root, the SO_PEERCRED check does.
func TestRootIsNotExempt(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start a helper process as uid 65534")
	}
	base, exe := sharedDir(t)
	dir := filepath.Join(base, "run")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(dir, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	startHold(t, exe, dir, &syscall.Credential{Uid: nobody, Gid: nobody})

	err := dial(t, dir).Do(ctx(t), "GET", "/pid", nil, nil)
	var se *StatusError
	want := fmt.Sprintf("control socket: uid 0 is not allowed (owner uid %d)", nobody)
	if !errors.As(err, &se) || se.Status != http.StatusForbidden || se.Message != want {
		t.Errorf("GET /pid as root: got %v, want 403 %q", err, want)
	}
}

// nobody is the uid and gid that root tests run helper processes as.
const nobody = 65534

// sharedDir returns a directory of mode 0711 holding a copy of the test binary,
// exe, so that a helper running as nobody can run it and reach a socket in dir
// (the go build directory and t.TempDir are 0700).
func sharedDir(t *testing.T) (dir, exe string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "ctl")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(self)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	exe = filepath.Join(dir, "helper.test")
	dst, err := os.OpenFile(exe, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		t.Fatal(err)
	}
	if err := dst.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(exe, 0o755); err != nil { // whatever the umask
		t.Fatal(err)
	}
	return dir, exe
}
