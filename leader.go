package brood

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/schedule"
	"github.com/brood-go/brood/internal/wire"
)

// OnLeader runs run(ctx) in the agent while this member leads the fleet:
// on exactly one member's agent at a time. Leadership is a lease in the
// fleet's JetStream key-value store (Config.FleetLeaseTTL, default 10s),
// held by the master for its agent and renewed every third of the TTL; a
// member whose master dies (or that loses the server) is replaced as leader
// within the TTL and a second.
//
// ctx ends when the lease is lost, or could be about to be: before the lease
// can expire on the server, hence before any other member can lead, as long
// as run stops acting on its lease when ctx is done and the master is not
// frozen (SIGSTOP, a suspended VM) for longer than a fifth of the TTL. For
// the cases that leaves, LeaderToken(ctx) is a fencing token: it grows
// strictly from one leadership to the next, so a resource that remembers the
// highest token it saw can refuse a stale leader. ctx also ends when the
// agent stops; a new agent (after a crash or a reload) campaigns again when
// it calls OnLeader. run may be called again each time this member leads
// again; it is never running twice at once.
//
// A cluster that is not in a fleet is a fleet of one: run starts at once
// and runs until the agent stops (token 0). OnLeader is for the agent, once:
// in a worker, or called a second time, it logs an error and does nothing.
func (f *Fleet) OnLeader(run func(ctx context.Context)) {
	p := f.p
	if p.role != Agent {
		p.log.Error("Fleet.OnLeader is for the agent; ignored")
		return
	}
	f.leaderMu.Lock()
	twice := f.leaderSet
	f.leaderSet = true
	f.leaderMu.Unlock()
	if twice {
		p.log.Error("Fleet.OnLeader called twice; the second call is ignored")
		return
	}
	if !f.Enabled() {
		p.Go(func(ctx context.Context) { run(context.WithValue(ctx, leaderTokenKey{}, uint64(0))) })
		return
	}
	var (
		mu     sync.Mutex
		cancel context.CancelFunc
		done   chan struct{} // closed when the running run returns
	)
	m := p.Messenger()
	m.On(wire.ActLeaderStart, func(msg Message) {
		var term wire.LeaderTerm
		if msg.Decode(&term) != nil {
			return
		}
		mu.Lock()
		if cancel != nil { // cannot happen (a stop precedes every start); be safe
			cancel()
		}
		prev := done
		ctx, c := context.WithCancel(context.WithValue(p.ctx, leaderTokenKey{}, term.Token))
		cancel, done = c, make(chan struct{})
		finished := done
		mu.Unlock()
		p.log.Info("leading the fleet", "token", term.Token)
		p.Go(func(context.Context) {
			defer close(finished)
			if prev != nil {
				<-prev // never two runs at once
			}
			run(ctx)
		})
	})
	m.On(wire.ActLeaderStop, func(msg Message) {
		var term wire.LeaderTerm
		_ = msg.Decode(&term)
		mu.Lock()
		if cancel != nil {
			cancel()
			cancel = nil
		}
		mu.Unlock()
		p.log.Info("no longer leading the fleet", "token", term.Token)
	})
	if err := m.tell(ipc.DestMaster, 0, wire.ActLeaderWant, nil); err != nil {
		p.log.Error("cannot ask the master to campaign for the fleet's leadership", "err", err)
	}
}

type leaderTokenKey struct{}

// LeaderToken returns the fencing token of the leadership ctx belongs to
// (the ctx OnLeader's run gets): the lease's revision in the fleet's
// key-value store, which grows strictly from one leadership to the next. ok
// is false for any other ctx.
func LeaderToken(ctx context.Context) (token uint64, ok bool) {
	token, ok = ctx.Value(leaderTokenKey{}).(uint64)
	return token, ok
}

// tickClaims claims OneInFleet ticks through the master, for the agent's
// scheduler, and remembers the ones it won (a tick that waits for a worker
// is dispatched again and must not be claimed twice).
type tickClaims struct {
	mu      sync.Mutex
	nextID  uint64
	waiting map[uint64]chan wire.TickClaim
	won     map[string]time.Time // task@nanos -> tick time
}

// claimWait bounds the wait for the master's answer: its own bound on the
// claim (2s), and a second for the round trip.
const claimWait = 3 * time.Second

func (c *tickClaims) install(p *Process) {
	c.waiting = map[uint64]chan wire.TickClaim{}
	c.won = map[string]time.Time{}
	p.Messenger().On(wire.ActTickClaimed, func(msg Message) {
		var a wire.TickClaim
		if msg.Decode(&a) != nil {
			return
		}
		c.mu.Lock()
		ch := c.waiting[a.ID]
		delete(c.waiting, a.ID)
		c.mu.Unlock()
		if ch != nil {
			ch <- a // buffered
		}
	})
}

// claim claims the tick of task at at for this member. nil: this member runs
// it; an error wrapping schedule.ErrElsewhere: another member does; any other
// error: nobody here knows, and the tick is not run.
func (c *tickClaims) claim(p *Process, task string, at time.Time) error {
	key := task + "@" + strconv.FormatInt(at.UnixNano(), 10)
	c.mu.Lock()
	if _, ok := c.won[key]; ok {
		c.mu.Unlock()
		return nil
	}
	c.nextID++
	id := c.nextID
	ch := make(chan wire.TickClaim, 1)
	c.waiting[id] = ch
	c.mu.Unlock()
	drop := func() {
		c.mu.Lock()
		delete(c.waiting, id)
		c.mu.Unlock()
	}
	if err := p.Messenger().tell(ipc.DestMaster, 0, wire.ActTickClaim, wire.TickClaim{ID: id, Task: task, At: at}); err != nil {
		drop()
		return fmt.Errorf("claim the tick in the fleet: %w (not run: a tick may be lost, never run twice)", err)
	}
	t := time.NewTimer(claimWait)
	defer t.Stop()
	var a wire.TickClaim
	select {
	case a = <-ch:
	case <-t.C:
		drop()
		return fmt.Errorf("claim the tick in the fleet: no answer from the master within %v (not run: a tick may be lost, never run twice)", claimWait)
	case <-p.ctx.Done():
		drop()
		return fmt.Errorf("claim the tick in the fleet: %w", context.Cause(p.ctx))
	}
	switch {
	case a.Err != "":
		return fmt.Errorf("claim the tick in the fleet: %s (not run: a tick may be lost, never run twice)", a.Err)
	case !a.Won:
		return fmt.Errorf("another member of the fleet claimed it: %w", schedule.ErrElsewhere)
	}
	c.mu.Lock()
	c.won[key] = at
	for k, tick := range c.won { // forget ticks long past
		if time.Since(tick) > 10*time.Minute {
			delete(c.won, k)
		}
	}
	c.mu.Unlock()
	return nil
}
