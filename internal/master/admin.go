package master

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/brood-go/brood/internal/admin"
	"github.com/brood-go/brood/internal/control"
	"github.com/brood-go/brood/internal/listener"
	"github.com/brood-go/brood/internal/wire"
)

// The master as the admin listener's Source (internal/admin): status,
// events, health and metrics.

var _ admin.Source = (*Master)(nil)

// serveAdmin serves the admin listener on sock until the returned function
// is called, at the very end of Run: /readyz answers 503 through the whole
// stop.
func (m *Master) serveAdmin(sock *listener.Socket) (stop func(), err error) {
	socks := []*listener.Socket{sock}
	l, err := sock.Listener()
	if err != nil {
		listener.CloseAll(socks)
		return nil, fmt.Errorf("brood: admin listener: %w", err)
	}
	m.log.Info("admin listener", "addr", socks[0].Bound.String())
	open := new(control.ConnCount)
	srv := &http.Server{
		Handler:           admin.Handler(m, admin.Options{Name: m.cfg.Name, Logger: m.log}),
		ReadHeaderTimeout: 10 * time.Second,
		ConnState:         open.Track,
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			m.log.Error("admin listener stopped", "err", err)
		}
	}()
	m.adminAddr = socks[0].Bound.String()
	// An upgrade hands the socket on: every request accepted is answered,
	// the ones still to come wait in the backlog.
	m.adminSock = sock
	m.adminHalt = func() { _ = control.Quiesce(srv, l, served, open, time.Second) }
	return func() {
		m.events.closeAll() // event streams end with the master
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
		<-served
		listener.CloseAll(socks)
	}, nil
}

// Subscribe is the event stream for /events.
func (m *Master) Subscribe(seq uint64) ([]wire.Event, <-chan wire.Event, func()) {
	return m.events.subscribe(seq)
}

// Done is closed when Run returns.
func (m *Master) Done() <-chan struct{} { return m.done }

// Ready reports whether the cluster is up: started, and no stop asked for
// (the first instant of a stop already answers no).
func (m *Master) Ready() (bool, string) {
	select {
	case <-m.stopReq:
		return false, "stopping: " + m.stopWhy
	default:
	}
	if m.runCtx.Err() != nil {
		return false, "stopping"
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.phase != phaseRunning {
		return false, "the cluster is " + m.phase.String()
	}
	return true, ""
}

// Live reports whether the master's loop runs (its heartbeat round came
// within three intervals) and every ready child answers heartbeats.
func (m *Master) Live() (bool, string) {
	now := time.Now()
	if last := m.lastBeat.Load(); last != 0 && now.Sub(time.Unix(0, last)) > 3*m.cfg.HeartbeatInterval+time.Second {
		return false, fmt.Sprintf("the master's heartbeat loop has not run for %v", now.Sub(time.Unix(0, last)).Round(time.Millisecond))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.children {
		if c.state != childReady {
			continue
		}
		if silent := now.Sub(time.Unix(0, c.lastSeen.Load())); silent > m.cfg.HeartbeatTimeout {
			return false, fmt.Sprintf("%s has not answered heartbeats for %v", c, silent.Round(time.Millisecond))
		}
	}
	return true, ""
}
