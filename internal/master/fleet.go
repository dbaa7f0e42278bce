package master

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/brood-go/brood/internal/fleet"
	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/relay"
	"github.com/brood-go/brood/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// FleetConfig joins the cluster to a fleet over NATS (see package fleet).
// URLs empty: no fleet.
type FleetConfig struct {
	URLs     string // comma-separated NATS URLs
	Node     string // this member's id
	Auth     FleetAuth
	Optional bool          // start even if no server is reachable
	LeaseTTL time.Duration // for leader and singleton leases (the next step)
}

// FleetAuth are the NATS credentials (see fleet.Auth).
type FleetAuth = fleet.Auth

// fleetAnswer is a worker's reply to a request from the fleet.
type fleetAnswer struct {
	action  string
	flags   ipc.Flags
	payload []byte
}

// fleetTag identifies the child message behind an outgoing fleet message,
// to nack it if publishing fails.
type fleetTag struct {
	pid uint32
	id  uint64
}

// fleetReplySlack is how much longer than its requester the master waits for
// the fleet's answer to a child's request, so that the requester's own
// deadline is what it sees.
const fleetReplySlack = time.Second

// connectFleet connects to the fleet: the master holds the one NATS
// connection of the cluster.
func (m *Master) connectFleet() (*fleet.Conn, error) {
	fc := m.cfg.Fleet
	return fleet.Connect(fleet.Options{
		URLs: fc.URLs, Name: m.cfg.Name, Node: fc.Node, Auth: fc.Auth, Optional: fc.Optional, LeaseTTL: fc.LeaseTTL,
		Logger: m.log, MaxPending: m.cfg.MaxPending, MaxPendingBytes: m.cfg.MaxPendingBytes,
		Deliver: m.fromFleet,
		Flush:   func(k fleet.Kind) { m.router.FlushFleet(&m.fleetBatches[k]) },
		Serve:   m.serveFleet,
		Refused: func(out fleet.Outgoing, err error) {
			if t, ok := out.Tag.(fleetTag); ok {
				m.router.NackTo(t.pid, t.id, out.Env.Action, "fleet: "+err.Error())
			}
		},
		OnConnState: func(up bool) {
			ev := wire.Event{Type: wire.EventFleet, Result: "disconnected"}
			if up {
				ev.Result = "connected"
			}
			if fc := m.fleet.Load(); fc != nil && up {
				ev.Detail = fc.Server()
			}
			m.events.publish(ev)
		},
		Self: func() fleet.Announcement {
			return fleet.Announcement{PID: m.pid, Agent: m.cfg.Agent, ReadyWorkers: int(m.readyWorkers.Load()), StartedAt: m.startedAt}
		},
	})
}

// setReadyWorkersLocked tells the fleet how many workers can take its random
// messages and requests (none once the cluster stops). Called with m.mu held
// whenever the process table changes.
func (m *Master) setReadyWorkersLocked() {
	n := 0
	if m.phase < phaseStopping {
		for _, c := range m.children {
			if c.slot.role == ipc.RoleWorker && c.state == childReady {
				n++
			}
		}
	}
	m.readyWorkers.Store(int64(n))
	if f := m.fleet.Load(); f != nil {
		f.SetReadyWorkers(n)
	}
}

var fleetKinds = map[ipc.FleetScope]fleet.Kind{
	ipc.FleetAll: fleet.KindAll, ipc.FleetApp: fleet.KindApp, ipc.FleetAgent: fleet.KindAgent,
	ipc.FleetRandom: fleet.KindRandom, ipc.FleetRequest: fleet.KindRequest,
}

// onFleetMessage takes a child's message for the fleet. The router calls it
// with its lock held: it queues, or starts a goroutine, and never blocks.
func (m *Master) onFleetMessage(from *relay.Endpoint, f ipc.Frame) error {
	fc := m.fleet.Load()
	if fc == nil {
		return errors.New("this cluster is not in a fleet")
	}
	kind, ok := fleetKinds[ipc.FleetScope(f.To)]
	if !ok {
		return fmt.Errorf("unknown fleet scope %d", f.To)
	}
	env := fleet.Envelope{Node: fc.Node(), PID: from.PID, Role: wire.RoleName(from.Role), Action: string(f.Action), Raw: f.Flags&ipc.FlagRaw != 0}
	data := bytes.Clone(f.Payload)
	if kind != fleet.KindRequest {
		if f.Flags&ipc.FlagRequest != 0 {
			return errors.New("a fleet request must have the request scope")
		}
		return fc.Publish(fleet.Outgoing{Kind: kind, Env: env, Data: data, Tag: fleetTag{pid: from.PID, id: f.ID}})
	}
	if f.Flags&ipc.FlagRequest == 0 {
		return errors.New("the fleet's request scope takes requests only")
	}
	timeout := fleet.DefaultRequestTimeout
	if f.Ref > 0 {
		timeout = min(time.Duration(f.Ref)*time.Millisecond, 10*fleet.DefaultRequestTimeout)
	}
	pid, id, action := from.PID, f.ID, env.Action
	started := fc.Go("fleet request from pid", func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, timeout+fleetReplySlack)
		defer cancel()
		renv, rdata, err := fc.Request(ctx, env, data)
		var rerr error
		switch {
		case errors.Is(err, fleet.ErrNoResponders):
			rerr = m.router.FleetReply(pid, id, wire.ActFleetNoResponders, 0, nil)
		case err != nil:
			rerr = m.router.FleetReply(pid, id, wire.ActRefused, 0, []byte("fleet: "+err.Error()))
		default:
			payload := ipc.AppendOrigin(make([]byte, 0, len(renv.Node)+7+len(rdata)), renv.Node, renv.PID, wireRole(renv.Role))
			flags := ipc.FlagFleet
			if renv.Raw {
				flags |= ipc.FlagRaw
			}
			rerr = m.router.FleetReply(pid, id, action, flags, append(payload, rdata...))
		}
		if rerr != nil {
			m.log.Warn("fleet: answer to a request lost", "action", action, "to_pid", pid, "err", rerr)
		}
	})
	if !started {
		return errors.New("the master is stopping")
	}
	return nil
}

func wireRole(name string) ipc.Role {
	switch name {
	case "agent":
		return ipc.RoleAgent
	case "worker":
		return ipc.RoleWorker
	}
	return ipc.RoleMaster
}

func originPayload(env fleet.Envelope, data []byte) []byte {
	b := make([]byte, 0, len(env.Node)+7+len(data))
	b = ipc.AppendOrigin(b, env.Node, env.PID, wireRole(env.Role))
	return append(b, data...)
}

var fleetDests = map[fleet.Kind]ipc.Dest{
	fleet.KindAll: ipc.DestAll, fleet.KindApp: ipc.DestApp, fleet.KindAgent: ipc.DestAgent, fleet.KindRandom: ipc.DestRandom,
}

// fromFleet delivers a message from the fleet to this cluster, as a
// role-addressed message (held for a process that is starting).
func (m *Master) fromFleet(k fleet.Kind, env fleet.Envelope, data []byte) error {
	if strings.HasPrefix(env.Action, "brood:") {
		return fmt.Errorf("reserved action %q from the fleet", env.Action)
	}
	dest, ok := fleetDests[k]
	if !ok {
		return fmt.Errorf("fleet kind %v is not a delivery", k)
	}
	var flags ipc.Flags
	if env.Raw {
		flags |= ipc.FlagRaw
	}
	return m.router.FromFleet(&m.fleetBatches[k], dest, env.Action, flags, originPayload(env, data))
}

// serveFleet has a request from the fleet answered by one ready worker.
func (m *Master) serveFleet(ctx context.Context, env fleet.Envelope, data []byte) (fleet.Envelope, []byte, error) {
	if strings.HasPrefix(env.Action, "brood:") {
		return fleet.Envelope{}, nil, fmt.Errorf("reserved action %q", env.Action)
	}
	e := m.router.PickReady()
	if e == nil {
		return fleet.Envelope{}, nil, errors.New("no ready worker")
	}
	m.mu.Lock()
	var exited <-chan struct{}
	if c := m.children[int(e.PID)]; c != nil {
		exited = c.exited
	}
	m.mu.Unlock()
	id := m.askID.Add(1)
	reply := m.fleetAsks.Add(id, e.PID)
	defer m.fleetAsks.Remove(id)
	var flags ipc.Flags
	if env.Raw {
		flags |= ipc.FlagRaw
	}
	if err := m.router.FleetRequest(e, id, env.Action, flags, originPayload(env, data)); err != nil {
		return fleet.Envelope{}, nil, err
	}
	select {
	case a := <-reply:
		if a.action == wire.ActRefused {
			return fleet.Envelope{}, nil, fmt.Errorf("worker pid %d: %s", e.PID, a.payload)
		}
		return fleet.Envelope{Node: m.cfg.Fleet.Node, PID: e.PID, Role: "worker", Action: env.Action, Raw: a.flags&ipc.FlagRaw != 0}, a.payload, nil
	case <-exited:
		return fleet.Envelope{}, nil, fmt.Errorf("worker pid %d exited before answering", e.PID)
	case <-ctx.Done():
		return fleet.Envelope{}, nil, fmt.Errorf("no answer from worker pid %d: %w", e.PID, context.Cause(ctx))
	}
}

// fleetStatus describes the fleet connection for status, or nil.
func (m *Master) fleetStatus() *wire.FleetStatus {
	fc := m.fleet.Load()
	if fc == nil {
		return nil
	}
	st := &wire.FleetStatus{
		Node: fc.Node(), State: fc.State(), Server: fc.Server(), URLs: fc.URLs(), InQueueGroups: fc.InQueueGroups(),
		LeaseTTL: fc.LeaseTTL().Seconds(), Counters: wire.FleetCounters(fc.Counters()),
	}
	st.Leader, st.LeaderToken = m.leaderStatus(fc)
	for _, mb := range fc.Members() {
		st.Members = append(st.Members, wire.FleetMember{
			Node: mb.Node, PID: mb.PID, Agent: mb.Agent, ReadyWorkers: mb.ReadyWorkers, StartedAt: mb.StartedAt,
			LastSeen: mb.LastSeen, Self: mb.Node == fc.Node(),
		})
	}
	return st
}

// fleetNode is the node id children are told ("" when not in a fleet).
func fleetNode(cfg Config) string {
	if cfg.Fleet.URLs == "" {
		return ""
	}
	return cfg.Fleet.Node
}

// fleetCollector reads the fleet's counters at scrape time.
type fleetCollector struct{ m *Master }

var (
	descFleetMessages   = prometheus.NewDesc("brood_fleet_messages_total", "Fleet messages and requests by direction (out: published by this member; in: from the fleet to this member's processes) and result (ok, error).", []string{"direction", "result"}, nil)
	descFleetRequests   = prometheus.NewDesc("brood_fleet_requests_total", "Fleet requests by direction (out: this member's processes asked; in: this member's workers took).", []string{"direction"}, nil)
	descFleetConnected  = prometheus.NewDesc("brood_fleet_connected", "1 while the master is connected to the fleet's NATS server.", nil, nil)
	descFleetReconnects = prometheus.NewDesc("brood_fleet_reconnects_total", "Reconnections to the fleet's NATS server.", nil, nil)
	descFleetDisconnect = prometheus.NewDesc("brood_fleet_disconnects_total", "Losses of the connection to the fleet's NATS server.", nil, nil)
	descFleetMembers    = prometheus.NewDesc("brood_fleet_members", "Members of the fleet heard from recently, this one included.", nil, nil)
)

func (fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descFleetMessages, descFleetRequests, descFleetConnected, descFleetReconnects, descFleetDisconnect, descFleetMembers} {
		ch <- d
	}
}

func (c fleetCollector) Collect(ch chan<- prometheus.Metric) {
	fc := c.m.fleet.Load()
	var n wire.FleetCounters
	connected, members := 0.0, 0.0
	if fc != nil {
		n = wire.FleetCounters(fc.Counters())
		if fc.Connected() {
			connected = 1
		}
		members = float64(len(fc.Members()))
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(descFleetMessages, n.SentOK, "out", "ok")
	counter(descFleetMessages, n.SendErrors, "out", "error")
	counter(descFleetMessages, n.ReceivedOK, "in", "ok")
	counter(descFleetMessages, n.RecvErrors, "in", "error")
	counter(descFleetRequests, n.RequestsOut, "out")
	counter(descFleetRequests, n.RequestsIn, "in")
	counter(descFleetReconnects, n.Reconnects)
	counter(descFleetDisconnect, n.Disconnects)
	ch <- prometheus.MustNewConstMetric(descFleetConnected, prometheus.GaugeValue, connected)
	ch <- prometheus.MustNewConstMetric(descFleetMembers, prometheus.GaugeValue, members)
}
