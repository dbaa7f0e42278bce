package brood

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/wire"
)

// Errors of the Fleet. They are wrapped with the action; test with errors.Is.
var (
	// ErrNoFleet: the cluster is not in a fleet (Config.Fleet is empty).
	ErrNoFleet = errors.New("this cluster is not in a fleet (Config.Fleet, --fleet)")
	// ErrNoResponders: a fleet Request found no ready worker anywhere in the
	// fleet. It comes back as soon as the NATS server says so (one round trip
	// to the server), not at the request's deadline.
	ErrNoResponders = errors.New("no worker in the fleet is ready to answer")
)

// Fleet sends messages to every member of the fleet: the brood clusters of
// the same Name joined over NATS (Config.Fleet). The master holds the one
// NATS connection and relays between it and its processes; messages from the
// fleet reach the same Messenger.On handlers as local ones, with
// Message.Node naming the member they were sent from.
//
// Delivery guarantee: at most once (core NATS). Messages of one kind
// (Broadcast, SendToApp, SendToAgent) from one sender reach a process in send
// order while the connection stays up; each kind travels on a subject of its
// own, so messages of different kinds may overtake each other, and
// SendRandom/Request pick a receiver each time. A send returns once
// the message is handed to this member's master; if the master then cannot
// publish it — its bounded fleet queue (Config.MaxPending, MaxPendingBytes)
// is full, the message exceeds the server's max_payload, or the connection
// has been down long enough that nats.go's reconnect buffer (8 MiB) is full
// — the sender's Messenger logs it and counts it in Stats.Refused, the
// master counts it (status, brood_fleet_messages_total{direction="out",
// result="error"}), and a Request fails with ErrNotDelivered. While the
// server is unreachable, messages within that buffer are sent on reconnect;
// messages the server had sent to a member that was disconnected at the time
// are lost. Local messaging (Messenger) does not depend on the fleet and
// keeps working throughout. Within a member, a fleet message is delivered as
// a role-addressed local message is (held for a process that is starting, see
// Messenger).
type Fleet struct {
	m    *Messenger
	node string   // "" when not in a fleet
	p    *Process // whose fleet handle this is

	leaderMu  sync.Mutex
	leaderSet bool // OnLeader was called
}

// Fleet returns the process's handle on the fleet. It is never nil; when the
// cluster is not in a fleet every send fails with ErrNoFleet.
func (p *Process) Fleet() *Fleet { return p.fleet }

// Node is this member's node id (Config.Node), or "" when not in a fleet.
func (f *Fleet) Node() string { return f.node }

// Enabled reports whether the cluster is in a fleet.
func (f *Fleet) Enabled() bool { return f.node != "" }

// Broadcast sends to every process (agent and workers) of every member of the
// fleet, this member and the sender included, once each.
func (f *Fleet) Broadcast(action string, data any) error {
	return f.send(ipc.FleetAll, action, data, "every process of the fleet")
}

// SendToApp sends to every worker of every member of the fleet.
func (f *Fleet) SendToApp(action string, data any) error {
	return f.send(ipc.FleetApp, action, data, "every worker of the fleet")
}

// SendToAgent sends to every member's agent (a member without one drops it,
// counted there).
func (f *Fleet) SendToAgent(action string, data any) error {
	return f.send(ipc.FleetAgent, action, data, "every agent of the fleet")
}

// SendRandom sends to one worker somewhere in the fleet: NATS picks one of
// the members that have a ready worker (a queue group), and that member's
// master one of its workers, round robin.
func (f *Fleet) SendRandom(action string, data any) error {
	return f.send(ipc.FleetRandom, action, data, "a worker of the fleet")
}

func (f *Fleet) send(scope ipc.FleetScope, action string, data any, where string) error {
	if f.node == "" {
		return fmt.Errorf("brood: send %q to %s: %w", action, where, ErrNoFleet)
	}
	return f.m.sendID(ipc.DestFleet, uint32(scope), f.m.nextID.Add(1), 0, action, data, where)
}

// Request sends a request to one worker somewhere in the fleet (chosen as by
// SendRandom) and waits for its Reply until ctx is done. The answer's
// Message.Node and From name the member and worker that answered. With no
// ready worker anywhere in the fleet it fails at once with ErrNoResponders;
// if the member that took it could not have it answered (its worker exited,
// its handler queue was full) it fails with ErrNotDelivered and the reason.
// The answering member learns ctx's deadline; with none, the master gives
// up after 30 s (ErrNotDelivered).
func (f *Fleet) Request(ctx context.Context, action string, data any) (Message, error) {
	const where = "a worker of the fleet"
	if f.node == "" {
		return Message{}, fmt.Errorf("brood: request %q to %s: %w", action, where, ErrNoFleet)
	}
	m := f.m
	if strings.HasPrefix(action, "brood:") {
		return Message{}, fmt.Errorf("brood: request %q to %s: %w", action, where, ErrReservedAction)
	}
	payload, raw, err := encodeData(data)
	if err != nil {
		return Message{}, fmt.Errorf("brood: request %q to %s: %w", action, where, err)
	}
	var timeout uint64
	if dl, ok := ctx.Deadline(); ok {
		timeout = uint64(max(1, time.Until(dl).Milliseconds()))
	}
	id := m.nextID.Add(1)
	outcome := m.pending.Add(id, m.masterPID)
	defer m.pending.Remove(id)
	h := ipc.Header{Kind: ipc.KindMessage, Dest: ipc.DestFleet, Role: m.role, Flags: ipc.FlagRequest, From: m.self, To: uint32(ipc.FleetRequest), ID: id, Ref: timeout}
	if raw {
		h.Flags |= ipc.FlagRaw
	}
	if err := m.w.Append(&h, action, payload); err != nil {
		return Message{}, m.sendError("request", action, where, err)
	}
	m.sent.Add(1)
	select {
	case r := <-outcome:
		if r.err != nil {
			return Message{}, fmt.Errorf("brood: request %q to %s: %w", action, where, r.err)
		}
		return r.msg, nil
	case <-ctx.Done():
		return Message{}, fmt.Errorf("brood: request %q to %s: %w", action, where, context.Cause(ctx))
	}
}

// fleetReply resolves a fleet request with the master's answer.
func (m *Messenger) fleetReply(f ipc.Frame) {
	switch string(f.Action) {
	case wire.ActFleetNoResponders:
		m.pending.Resolve(f.Ref, f.From, requestResult{err: ErrNoResponders})
	default:
		m.pending.Resolve(f.Ref, f.From, requestResult{msg: m.toMessage(f, string(f.Action))})
	}
}
