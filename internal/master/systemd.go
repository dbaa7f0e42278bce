package master

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/brood-go/brood/internal/listener"
	"github.com/brood-go/brood/internal/sdnotify"
	"github.com/brood-go/brood/internal/wire"
	"golang.org/x/sys/unix"
)

// The master under a service manager (DESIGN §11): sd_notify datagrams that
// follow the cluster's lifecycle, the watchdog, and the fd store.
//
// The sequence systemd sees:
//
//	STATUS=starting: …                 while the processes start
//	READY=1 STATUS=… MAINPID=<pid>     the cluster is up (when `start --daemon` returns)
//	STATUS=2/2 workers ready, …        on every process event
//	RELOADING=1 MONOTONIC_USEC=…       a reload begins (SIGHUP, `reload`)
//	STATUS=reloading 1/2               as each slot is replaced
//	READY=1 STATUS=…                   the reload is done, or it was aborted
//	                                   (STATUS=reload failed: …; the old workers serve)
//	STOPPING=1 STATUS=stopping: …      the first instant of a stop
//	WATCHDOG=1                         every WATCHDOG_USEC/2 while Live
//
// Type=notify-reload (systemd 253 and later) makes `systemctl reload` wait
// for the READY=1 that ends the reload. Datagrams are sent from one goroutine
// that follows the event stream, so they keep the events' order.

// Names under which the master keeps its own sockets in the fd store.
const (
	storeListenName = listener.StorePrefix + "listen-" // + index in Config.Listen
	storeAdminName  = listener.StorePrefix + "admin"
)

// service is the master's side of the service manager.
type service struct {
	n        *sdnotify.Notifier // nil: not run by a service manager
	watchdog time.Duration      // 0: no watchdog pings
	store    bool               // push sockets to the fd store
	wg       sync.WaitGroup     // the notification and watchdog goroutines
	stopDog  chan struct{}
}

// newService reads the service manager's environment. A malformed variable is
// an error naming it.
func newService() (*service, error) {
	n, err := sdnotify.FromEnv()
	if err != nil {
		return nil, fmt.Errorf("brood: %w", err)
	}
	s := &service{n: n, stopDog: make(chan struct{})}
	if n == nil {
		return s, nil
	}
	if s.watchdog, _, err = sdnotify.Watchdog(); err != nil {
		return nil, fmt.Errorf("brood: %w", err)
	}
	s.store = sdnotify.FDStoreSize() > 0 || envTrue(wire.EnvFDStore)
	return s, nil
}

func envTrue(key string) bool {
	v, _ := strconv.ParseBool(os.Getenv(key))
	return v
}

func closeFD(fd int) { _ = unix.Close(fd) }

// notify sends one datagram, logging a failure: the cluster keeps running
// whatever the service manager's socket does.
func (m *Master) notify(assignments ...string) {
	if err := m.svc.n.Notify(assignments...); err != nil {
		m.log.Warn("sd_notify failed", "err", err)
	}
}

// startService begins following the event stream for the service manager,
// and the watchdog. The goroutines end when the event stream is closed (the
// end of Run) and by stopService.
func (m *Master) startService() {
	if m.svc.n == nil {
		return
	}
	m.log.Info("notifying the service manager", "socket", m.svc.n.Addr(), "watchdog_every", m.svc.watchdog, "fd_store", m.svc.store)
	_, events, _ := m.events.subscribe(^uint64(0)) // from now on
	m.svc.wg.Go(func() { m.followForService(events) })
	if m.svc.watchdog > 0 {
		m.svc.wg.Go(m.watchdogLoop)
	}
}

// stopService waits for the service goroutines; the event stream must have
// been closed.
func (m *Master) stopService() {
	close(m.svc.stopDog)
	m.svc.wg.Wait()
}

// followForService turns lifecycle events into notifications.
func (m *Master) followForService(events <-chan wire.Event) {
	reloading, replaced, starting := false, 0, true
	for ev := range events {
		switch ev.Type {
		case wire.EventClusterReady:
			starting = false
			m.notify("READY=1", "STATUS="+m.serviceStatus(false), "MAINPID="+strconv.Itoa(m.pid))
		case wire.EventReloadBegun:
			reloading, replaced = true, 0
			m.notify("RELOADING=1", "MONOTONIC_USEC="+strconv.FormatUint(sdnotify.MonotonicUsec(), 10),
				fmt.Sprintf("STATUS=reloading 0/%d", m.reloadSlotCount()))
		case wire.EventReplaced:
			if reloading && ev.Reason == wire.ReasonReload {
				replaced++
				m.notify(fmt.Sprintf("STATUS=reloading %d/%d", replaced, m.reloadSlotCount()))
			} else {
				m.notify("STATUS=" + m.serviceStatus(starting))
			}
		case wire.EventReloadEnded:
			reloading = false
			if ev.Result == "ok" {
				m.notify("READY=1", "STATUS="+m.serviceStatus(starting))
			} else {
				m.notify("READY=1", "STATUS=reload failed: "+oneLine(ev.Detail))
			}
		case wire.EventStopping:
			status := "STATUS=stopping: " + oneLine(ev.Detail)
			if d := m.cfg.DrainDelay; d > 0 {
				status += fmt.Sprintf(" (workers serve %v more, then drain)", d)
			}
			m.notify("STOPPING=1", status)
		case wire.EventStartFailed:
			m.notify("STATUS=start failed: " + oneLine(ev.Detail))
		case wire.EventStarted, wire.EventReady, wire.EventExited, wire.EventRestarted, wire.EventScaled:
			if !reloading && !m.stopping() {
				m.notify("STATUS=" + m.serviceStatus(starting))
			}
		}
	}
}

// notifyReloadRefused answers a reload that did not begin, so that a
// `systemctl reload` under Type=notify-reload returns at once instead of
// waiting for its timeout: RELOADING=1, then READY=1 with why.
func (m *Master) notifyReloadRefused(err error) {
	if m.svc.n == nil || m.stopping() {
		return
	}
	m.notify("RELOADING=1", "MONOTONIC_USEC="+strconv.FormatUint(sdnotify.MonotonicUsec(), 10))
	m.notify("READY=1", "STATUS="+oneLine(err.Error()))
}

// watchdogLoop pings the watchdog while the master is live: its heartbeat
// loop runs and every ready child answers heartbeats (Live). A child hung past
// its heartbeat timeout pauses the pings until it has been replaced.
func (m *Master) watchdogLoop() {
	t := time.NewTicker(m.svc.watchdog)
	defer t.Stop()
	paused := false
	for {
		select {
		case <-m.svc.stopDog:
			return
		case <-t.C:
		}
		if ok, why := m.Live(); !ok {
			if !paused {
				m.log.Warn("watchdog pings paused", "why", why)
			}
			paused = true
			continue
		}
		if paused {
			m.log.Info("watchdog pings resumed")
			paused = false
		}
		m.notify("WATCHDOG=1")
	}
}

// stopping reports whether a stop has begun.
func (m *Master) stopping() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.phase >= phaseStopping
}

// reloadSlotCount is the number of slots a reload replaces.
func (m *Master) reloadSlotCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := len(m.workers)
	if m.agent != nil {
		n++
	}
	return n
}

// serviceStatus is the one-line STATUS=: "2/2 workers ready, agent ready,
// 0 restarts" (restarts as in status: reloads count), with "starting: "
// before the first start has completed.
func (m *Master) serviceStatus(starting bool) string {
	st := m.Status()
	ready, restarts := 0, 0
	agent := ""
	for _, p := range st.Processes {
		restarts += p.Restarts
		switch {
		case p.Role == "agent":
			agent = ", agent " + p.State
		case p.State == "ready":
			ready++
		}
	}
	prefix := ""
	if starting {
		prefix = "starting: "
	}
	return fmt.Sprintf("%s%d/%d workers ready%s, %d restarts", prefix, ready, st.Workers, agent, restarts)
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

// openSockets opens the admin listener's socket and the cluster's, taking
// the ones the service manager passed (socket activation, the fd store), and
// keeps the ones the master bound itself in the fd store if there is one. A
// passed socket nothing uses is an error naming it, unless it is one of the
// master's own from the fd store (the configuration changed since it was
// stored): that one is dropped from the store.
func (m *Master) openSockets(ctx context.Context) (admin *listener.Socket, socks []*listener.Socket, err error) {
	passed, err := listener.Activated()
	if err != nil {
		return nil, nil, fmt.Errorf("brood: %w", err)
	}
	for _, p := range passed {
		m.log.Info("socket passed by the service manager", "fd", p.FD, "name", p.Name, "addr", p.Addr.String())
	}
	closeAll := func() {
		for _, p := range passed {
			closeFD(p.FD)
		}
	}
	// The master's own sockets from the fd store come back by name.
	listen := make([]string, len(m.cfg.Listen))
	for i, a := range m.cfg.Listen {
		listen[i] = listener.PreferStored(a, storeListenName+strconv.Itoa(i), passed)
	}
	if m.cfg.Admin != "" {
		var got []*listener.Socket
		got, passed, err = listener.OpenWith(ctx, []string{listener.PreferStored(m.cfg.Admin, storeAdminName, passed)}, false, passed)
		if err != nil {
			closeAll()
			return nil, nil, fmt.Errorf("brood: admin listener: %w", err)
		}
		admin = got[0]
	}
	socks, unused, err := listener.OpenWith(ctx, listen, m.cfg.ReusePort, passed)
	if err != nil {
		closeAll()
		if admin != nil {
			admin.Close()
		}
		return nil, nil, fmt.Errorf("brood: %w", err)
	}
	var foreign []string
	for _, p := range unused {
		if strings.HasPrefix(p.Name, listener.StorePrefix) {
			m.log.Warn("dropping a stored socket no listen address uses", "name", p.Name, "addr", p.Addr.String())
			m.notify("FDSTOREREMOVE=1", "FDNAME="+p.Name)
			closeFD(p.FD)
			continue
		}
		foreign = append(foreign, p.String())
	}
	if len(foreign) > 0 {
		for _, p := range unused {
			closeFD(p.FD)
		}
		listener.CloseAll(socks)
		if admin != nil {
			admin.Close()
		}
		return nil, nil, fmt.Errorf("brood: socket activation: passed %s not used by any listen address (listen %q, admin %q); listen on its address or on fd://NAME",
			strings.Join(foreign, ", "), m.cfg.Listen, m.cfg.Admin)
	}
	if m.svc.store {
		if admin != nil {
			m.storeSocket(admin, storeAdminName)
		}
		for i, s := range socks {
			m.storeSocket(s, storeListenName+strconv.Itoa(i))
		}
	}
	return admin, socks, nil
}

// storeSocket pushes a socket the master bound itself to the fd store under
// name, so that the next start (`systemctl restart`) takes it back from
// LISTEN_FDS with its queued connections. A unix socket's file is then kept:
// the stored socket still serves that path.
func (m *Master) storeSocket(s *listener.Socket, name string) {
	if s.Passed {
		return // the service manager has it already
	}
	if err := m.svc.n.NotifyWithFDs([]int{s.FD()}, "FDSTORE=1", "FDNAME="+name); err != nil {
		m.log.Warn("could not keep a socket in the fd store", "addr", s.Bound.String(), "err", err)
		return
	}
	s.KeepFile()
	m.log.Info("socket kept in the fd store", "name", name, "addr", s.Bound.String())
}
