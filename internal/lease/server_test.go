package lease_test

import (
	"context"
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// natsServer is an embedded nats-server with JetStream whose store survives
// Restart on the same port.
type natsServer struct {
	t     testing.TB
	dir   string
	port  int
	srv   *server.Server
	alive bool
}

func startServer(t testing.TB) *natsServer {
	t.Helper()
	s := &natsServer{t: t, dir: t.TempDir(), port: -1}
	s.start()
	t.Cleanup(s.Stop)
	return s
}

func (s *natsServer) start() {
	s.t.Helper()
	opts := &server.Options{
		Host:      "127.0.0.1",
		Port:      s.port,
		JetStream: true,
		StoreDir:  s.dir,
		NoLog:     true,
		NoSigs:    true,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		s.t.Fatalf("nats-server: %v", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		s.t.Fatalf("nats-server on port %d not ready", s.port)
	}
	s.srv, s.alive = srv, true
	if s.port == -1 {
		s.port = srv.Addr().(*net.TCPAddr).Port
	}
}

// Addr is the server's host:port (stable across Restart).
func (s *natsServer) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL is the server's client URL.
func (s *natsServer) URL() string { return "nats://" + s.Addr() }

// Stop shuts the server down and waits for it.
func (s *natsServer) Stop() {
	if !s.alive {
		return
	}
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
	s.alive = false
}

// Restart stops the server and starts it again on the same port and store.
func (s *natsServer) Restart() {
	s.t.Helper()
	s.Stop()
	s.start()
}

// connect opens a NATS connection that reconnects forever (as the master's
// does) and closes it at cleanup.
func connect(t testing.TB, url string, opts ...nats.Option) *nats.Conn {
	t.Helper()
	opts = append([]nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(50 * time.Millisecond),
		nats.Timeout(2 * time.Second),
	}, opts...)
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		t.Fatalf("connect %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func jsOf(t testing.TB, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream: %v", err)
	}
	return js
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(10 * time.Millisecond) // polling interval, not synchronisation
	}
}

func testContext(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}
