package master

import (
	"context"
	"time"

	"github.com/brood-go/brood/internal/wire"
)

// Status describes the cluster for `status`. Resource figures are sampled now
// if the last sample is older than half a second or a process has none yet.
func (m *Master) Status() wire.Status {
	now := time.Now()
	m.mu.Lock()
	stale := now.Sub(m.self.at) > 500*time.Millisecond
	for _, c := range m.children {
		stale = stale || (c.usage.at.IsZero() && c.pid < SinglePIDBase)
	}
	m.mu.Unlock()
	if stale {
		m.sampleUsage(now)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st := wire.Status{
		Name: m.cfg.Name, PID: m.pid, State: m.phase.String(), Operation: m.op, Listen: m.boundAddrs(),
		Workers: len(m.workers), StartedAt: m.startedAt, RunDir: m.cfg.RunDir,
		RSSBytes: m.self.rss, CPUPercent: m.self.cpuPercent,
		DroppedOutputLines: m.stdout.Dropped() + m.stderr.Dropped() + m.logs.q.dropped.Load(),
	}
	m.statusBuildLocked(&st)
	row := func(s *slot, c *child) wire.Process {
		p := wire.Process{Role: wire.RoleName(s.role), ID: s.id, Restarts: s.restarts,
			LastReason: wire.ReasonText(s.lastReason, s.lastDetail), LastKind: s.lastReason, State: "restarting"}
		if c != nil {
			p.PID, p.State, p.StartedAt = c.pid, c.state.String(), c.startedAt
			p.Uptime = now.Sub(c.startedAt).Seconds()
			p.RSSBytes, p.CPUPercent, p.CPUSeconds = c.usage.rss, c.usage.cpuPercent, c.usage.cpu.Seconds()
		}
		return p
	}
	for _, s := range m.slotsLocked() {
		seen := false
		for _, c := range m.childrenOfLocked(s) {
			st.Processes = append(st.Processes, row(s, c))
			seen = true
		}
		if !seen && !s.removed {
			st.Processes = append(st.Processes, row(s, nil))
		}
	}
	rs := m.router.Stats()
	st.Fleet = m.fleetStatus()
	st.Messages = wire.Messages{Relayed: rs.Relayed, Held: rs.Held, Redelivered: rs.Redelivered, Refused: rs.Dropped, LostReplies: rs.LostReplies, Direct: m.directSent.Load()}
	return st
}

// statusWithSchedules is Status plus the agent's schedule table, if any.
func (m *Master) statusWithSchedules(ctx context.Context) wire.Status {
	st := m.Status()
	if m.cfg.Schedules {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		var list []wire.ScheduleStatus
		if err := m.askAgent(ctx, wire.ActScheduleList, nil, &list); err == nil {
			st.Schedules, _ = jsonRaw(list)
		}
	}
	return st
}

// Events returns the kept lifecycle events after seq, oldest first.
func (m *Master) Events(seq uint64) []wire.Event { return m.events.since(seq) }
