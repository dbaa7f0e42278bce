package master

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/brood-go/brood/internal/fleet"
	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/lease"
	"github.com/brood-go/brood/internal/relay"
	"github.com/brood-go/brood/internal/wire"
	"github.com/nats-io/nats.go/jetstream"
)

// The fleet's leases (DESIGN §13), held by the master for its agent: the
// leader lease behind Fleet.OnLeader, and the claims of OneInFleet ticks.
// Both live in JetStream key-value buckets of the fleet's NATS server
// (internal/lease); the master holds the connection, the agent runs the code.

// leaderKey is the leader lease's key in its bucket.
const leaderKey = "leader"

// tickClaimTimeout bounds one claim of a one-in-fleet tick: a claim that
// has not succeeded by then counts as lost (the tick may be lost, never run
// twice).
const tickClaimTimeout = 2 * time.Second

// ticksTTL is how long a tick's claim is kept: well beyond any clock skew
// between members plus the time to claim (see lease.ClaimTick).
func ticksTTL(leaseTTL time.Duration) time.Duration { return max(time.Minute, 6*leaseTTL) }

// leases is the master's side of the fleet's leases.
type leases struct {
	mu          sync.Mutex
	leaderKV    jetstream.KeyValue
	ticksKV     jetstream.KeyValue
	campaigning map[int]bool // agent pids with a campaign
	leading     atomic.Bool
	token       atomic.Uint64
}

// bucket opens (or creates) a bucket once and keeps it.
func (m *Master) bucket(ctx context.Context, fc *fleet.Conn, purpose string, ttl time.Duration, slot *jetstream.KeyValue) (jetstream.KeyValue, error) {
	m.leases.mu.Lock()
	kv := *slot
	m.leases.mu.Unlock()
	if kv != nil {
		return kv, nil
	}
	js, err := fc.JetStream()
	if err != nil {
		return nil, fmt.Errorf("fleet: JetStream: %w", err)
	}
	kv, err = lease.OpenBucket(ctx, js, lease.BucketName(m.cfg.Name, purpose), ttl)
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	m.leases.mu.Lock()
	*slot = kv
	m.leases.mu.Unlock()
	return kv, nil
}

// onLeaderWant starts the campaign for the leader lease on behalf of the
// agent that asked (Fleet.OnLeader). It lasts as long as that agent process:
// when it exits, the lease is released and another member's agent leads.
// Called from a router callback: it takes no lock but leaf ones.
func (m *Master) onLeaderWant(from *relay.Endpoint) {
	fc := m.fleet.Load()
	if fc == nil || from.Role != ipc.RoleAgent {
		m.log.Warn("ignored a request to lead the fleet", "from_pid", from.PID, "in_fleet", fc != nil)
		return
	}
	pid := int(from.PID)
	m.leases.mu.Lock()
	if m.leases.campaigning == nil {
		m.leases.campaigning = map[int]bool{}
	}
	dup := m.leases.campaigning[pid]
	m.leases.campaigning[pid] = true
	m.leases.mu.Unlock()
	if dup {
		return
	}
	fc.Go("leader campaign", func(ctx context.Context) {
		defer func() {
			m.leases.mu.Lock()
			delete(m.leases.campaigning, pid)
			m.leases.mu.Unlock()
		}()
		m.campaign(ctx, fc, pid, from)
	})
}

// campaign campaigns for the agent pid until ctx is done or the agent exits.
func (m *Master) campaign(ctx context.Context, fc *fleet.Conn, pid int, ep *relay.Endpoint) {
	m.mu.Lock()
	c := m.children[pid]
	m.mu.Unlock()
	if c == nil {
		return // it exited already
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() { // ends with the campaign: cancel is deferred
		select {
		case <-c.exited:
			cancel()
		case <-ctx.Done():
		}
	}()
	log := m.log.With("lease", leaderKey, "agent_pid", pid)
	var kv jetstream.KeyValue
	for wait := 100 * time.Millisecond; ; wait = min(2*wait, 5*time.Second) {
		var err error
		if kv, err = m.bucket(ctx, fc, "leader", fc.LeaseTTL(), &m.leases.leaderKV); err == nil {
			break
		}
		log.Warn("cannot open the leader lease's bucket; retrying", "err", err, "in", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
	err := lease.Campaign(ctx, kv, leaderKey, fc.Node(), func(lctx context.Context, token uint64) {
		b, _ := json.Marshal(wire.LeaderTerm{Token: token})
		m.leases.token.Store(token)
		m.leases.leading.Store(true)
		m.events.publish(wire.Event{Type: wire.EventLeader, Result: "start", Role: "agent", PID: pid, Detail: fmt.Sprintf("token %d", token)})
		m.router.Event(ep, wire.ActLeaderStart, b)
		<-lctx.Done()
		m.router.Event(ep, wire.ActLeaderStop, b)
		m.leases.leading.Store(false)
		m.events.publish(wire.Event{Type: wire.EventLeader, Result: "stop", Role: "agent", PID: pid,
			Detail: fmt.Sprintf("token %d: %v", token, context.Cause(lctx))})
	}, log)
	if err != nil {
		log.Error("cannot campaign for the fleet's leader lease", "err", err)
	}
}

// onTickClaim claims a one-in-fleet tick for the agent and answers it.
// Called from a router callback: the claim runs on a goroutine of its own.
func (m *Master) onTickClaim(from *relay.Endpoint, payload []byte) {
	var claim wire.TickClaim
	if err := json.Unmarshal(payload, &claim); err != nil {
		m.log.Warn("malformed tick claim", "from_pid", from.PID, "err", err)
		return
	}
	answer := func(won bool, err error) {
		claim.Won, claim.Err = won, ""
		if err != nil {
			claim.Err = err.Error()
		}
		b, _ := json.Marshal(claim)
		m.router.Event(from, wire.ActTickClaimed, b)
	}
	fc := m.fleet.Load()
	started := fc != nil && fc.Go("tick claim", func(ctx context.Context) {
		ctx, cancel := context.WithTimeout(ctx, tickClaimTimeout)
		defer cancel()
		kv, err := m.bucket(ctx, fc, "ticks", ticksTTL(fc.LeaseTTL()), &m.leases.ticksKV)
		if err != nil {
			answer(false, err)
			return
		}
		won, err := lease.ClaimTick(ctx, kv, claim.Task, claim.At, fc.Node())
		answer(won, err)
	})
	if !started {
		m.goOwned("tick claim answer", func() { answer(false, errors.New("this cluster is not in a fleet, or its master is stopping")) })
	}
}

// leaderStatus says who leads the fleet, for status: this member (without
// asking the server) or the holder the leader lease names.
func (m *Master) leaderStatus(fc *fleet.Conn) (leader string, token uint64) {
	if m.leases.leading.Load() {
		return fc.Node(), m.leases.token.Load()
	}
	m.leases.mu.Lock()
	kv := m.leases.leaderKV
	m.leases.mu.Unlock()
	if kv == nil || !fc.Connected() {
		return "", 0
	}
	ctx, cancel := context.WithTimeout(context.Background(), 250*time.Millisecond)
	defer cancel()
	holder, err := lease.Holder(ctx, kv, leaderKey)
	if err != nil {
		return "", 0
	}
	return holder, 0
}
