// Package natstest runs NATS servers for brood's fleet tests: embedded
// (github.com/nats-io/nats-server/v2, JetStream on, a temporary store) or as
// an external process built from the same module. Only tests import it:
// package brood and the packages it links never do.
package natstest

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Server is an embedded NATS server.
type Server struct {
	t    testing.TB
	mu   sync.Mutex
	srv  *server.Server
	port int
	dir  string
}

// Start runs an embedded server on 127.0.0.1 and a free port, with JetStream
// and a store in a temporary directory; it is shut down when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	s := &Server{t: t, port: -1, dir: t.TempDir()}
	s.start()
	t.Cleanup(s.Shutdown)
	return s
}

func (s *Server) start() {
	s.t.Helper()
	opts := &server.Options{
		Host: "127.0.0.1", Port: s.port, JetStream: true, StoreDir: s.dir,
		NoLog: true, NoSigs: true, ServerName: "brood-test",
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		s.t.Fatalf("natstest: new server: %v", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		s.t.Fatalf("natstest: server not ready on port %d", s.port)
	}
	s.mu.Lock()
	s.srv = srv
	s.port = srv.Addr().(*net.TCPAddr).Port
	s.mu.Unlock()
}

// URL is the server's client URL.
func (s *Server) URL() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return "nats://127.0.0.1:" + strconv.Itoa(s.port)
}

// Shutdown stops the server (idempotent) and waits until it has stopped.
func (s *Server) Shutdown() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
}

// Restart stops the server and starts a new one on the same port and store.
func (s *Server) Restart() {
	s.t.Helper()
	s.Shutdown()
	s.start()
}

// NumClients is how many clients are connected now.
func (s *Server) NumClients() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv == nil {
		return 0
	}
	return s.srv.NumClients()
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

var buildMu sync.Mutex

// Binary builds the nats-server command from the module this repository
// requires (once per version, kept in the user's cache directory) and
// returns its path.
func Binary(t testing.TB) string {
	t.Helper()
	buildMu.Lock()
	defer buildMu.Unlock()
	cache, err := os.UserCacheDir()
	if err != nil {
		cache = os.TempDir()
	}
	dir := filepath.Join(cache, "brood-test")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "nats-server-"+server.VERSION)
	if _, err := os.Stat(bin); err == nil {
		return bin
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	tmp := bin + ".tmp" + strconv.Itoa(os.Getpid())
	cmd := exec.CommandContext(ctx, "go", "build", "-o", tmp, "github.com/nats-io/nats-server/v2")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("natstest: build nats-server: %v\n%s", err, out.String())
	}
	if err := os.Rename(tmp, bin); err != nil {
		t.Fatal(err)
	}
	return bin
}

// Process is an external nats-server process.
type Process struct {
	Cmd  *exec.Cmd
	Port int
	out  bytes.Buffer
	done chan struct{}
}

// StartProcess runs the nats-server binary on 127.0.0.1 and a free port
// with JetStream, and waits until it accepts connections. It is killed when
// the test ends if it is still running.
func StartProcess(t testing.TB, bin string) *Process {
	t.Helper()
	p := &Process{Port: FreePort(t), done: make(chan struct{})}
	p.Cmd = exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(p.Port), "-js", "-sd", t.TempDir())
	p.Cmd.Stdout, p.Cmd.Stderr = &syncWriter{b: &p.out}, &syncWriter{b: &p.out}
	p.Cmd.WaitDelay = 5 * time.Second
	if err := p.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.Cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.Cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			t.Logf("nats-server output:\n%s", p.out.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", p.Addr(), time.Second)
		if err == nil {
			c.Close()
			return p
		}
		select {
		case <-p.done:
			t.Fatalf("natstest: nats-server exited: %s", p.out.String())
		case <-time.After(20 * time.Millisecond): // polling a port: no event to wait on
		}
		if time.Now().After(deadline) {
			t.Fatalf("natstest: nats-server not listening on %s: %v", p.Addr(), err)
		}
	}
}

// Addr is host:port.
func (p *Process) Addr() string { return "127.0.0.1:" + strconv.Itoa(p.Port) }

// URL is the client URL.
func (p *Process) URL() string { return "nats://" + p.Addr() }

// Stop stops the server with SIGTERM and waits for it.
func (p *Process) Stop(t testing.TB) {
	t.Helper()
	_ = p.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		t.Fatalf("natstest: nats-server did not stop on SIGTERM")
	}
}

type syncWriter struct {
	mu sync.Mutex
	b  *bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}
