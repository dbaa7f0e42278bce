package master

import (
	"sync"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/relay"
	"github.com/brood-go/brood/internal/wire"
)

// schedClock is the agent slot's schedule clock: the bytes the agent last
// sent (wire.ActScheduleClock), which the master keeps without interpreting
// them (internal/schedule encodes and decodes them, in the agent) and hands
// to every agent it starts after that (wire.ActScheduleResume), so that the
// schedules continue across reload, crash restart and, saved with the rest
// of the master's state, upgrade.
//
// Its lock is a leaf: it is taken under the router's lock (the clock arrives
// through onMasterMessage) and under m.mu (spawn hands it on), and nothing
// else is taken under it.
type schedClock struct {
	mu sync.Mutex
	b  []byte // nil: no agent has reported a clock
}

// scheduleClock returns a copy of the agent slot's latest schedule clock, nil
// if no agent has reported one: the state an upgrade hands on.
func (m *Master) scheduleClock() []byte {
	m.clock.mu.Lock()
	defer m.clock.mu.Unlock()
	if len(m.clock.b) == 0 {
		return nil
	}
	return append([]byte(nil), m.clock.b...)
}

// setScheduleClock replaces the agent slot's schedule clock with a copy of b
// (nil or empty: none). The next agent to start is handed it.
func (m *Master) setScheduleClock(b []byte) {
	m.clock.mu.Lock()
	defer m.clock.mu.Unlock()
	if len(b) == 0 {
		m.clock.b = nil
		return
	}
	m.clock.b = append(m.clock.b[:0], b...) // in the steady state, no allocation per tick
}

// onScheduleClock records the clock an agent reports. Only the agent keeps
// the schedule table; a clock from anyone else is refused and logged. Called
// by the router with its lock held (see onMasterMessage).
func (m *Master) onScheduleClock(from *relay.Endpoint, payload []byte) {
	if from.Role != ipc.RoleAgent {
		m.log.Warn("schedule clock from a process that is not the agent ignored", "from_pid", from.PID, "from_role", wire.RoleName(from.Role))
		return
	}
	m.setScheduleClock(payload)
}

// handScheduleClockLocked gives c, an agent that has just been spawned, the
// clock of the agent before it, if there was one. It is a pid-addressed
// message from the master, so the router holds it until c is ready and
// delivers it before c's brood:ready, which starts c's scheduler. Called with
// m.mu held.
func (m *Master) handScheduleClockLocked(c *child) {
	if c.slot.role != ipc.RoleAgent {
		return
	}
	b := m.scheduleClock()
	if b == nil {
		return // the first agent, or none before it started a scheduler
	}
	m.router.Event(c.ep, wire.ActScheduleResume, b)
	m.log.Debug("schedule clock handed to the new agent", "child_pid", c.pid, "bytes", len(b))
}
