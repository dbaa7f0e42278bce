package master

import (
	"fmt"
	"time"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/proc"
	"github.com/brood-go/brood/internal/wire"
)

// heartbeatLoop pings every child and kills the ones that stopped answering;
// it also samples memory for MaxRSS recycling.
func (m *Master) heartbeatLoop() {
	defer m.wg.Done()
	t := time.NewTicker(m.cfg.HeartbeatInterval)
	defer t.Stop()
	var seq uint64
	for {
		select {
		case <-m.life.Done():
			return
		case <-t.C:
		}
		seq++
		now := time.Now()
		m.lastBeat.Store(now.UnixNano())
		m.mu.Lock()
		if m.frozen { // an upgrade: the channels are being handed over
			m.mu.Unlock()
			continue
		}
		var hung, heavy []*child
		for _, c := range m.children {
			if c.state == childExited {
				continue
			}
			h := ipc.Header{Kind: ipc.KindPing, Role: ipc.RoleMaster, From: uint32(m.pid), ID: seq}
			c.pingSeq.Store(seq)
			c.pingAt.Store(now.UnixNano())
			_ = c.ep.Writer().Append(&h, "", nil)
			if silent := now.Sub(time.Unix(0, c.lastSeen.Load())); silent > m.cfg.HeartbeatTimeout && c.killDetail == "" {
				hung = append(hung, c)
			}
			if m.cfg.MaxRSS > 0 && c.slot.role == ipc.RoleWorker && c.state == childReady && c.stopWhy == wire.ReasonNone && m.phase == phaseRunning {
				heavy = append(heavy, c)
			}
		}
		m.mu.Unlock()
		m.sampleUsage(now)
		for _, c := range hung {
			m.log.Error("hung: no heartbeat answer; killing", "child_pid", c.pid, "slot", c.slot.String(), "timeout", m.cfg.HeartbeatTimeout)
			c.slot.kill(c, wire.ReasonHang, fmt.Sprintf("no heartbeat answer for %v", m.cfg.HeartbeatTimeout))
		}
		for _, c := range heavy {
			m.mu.Lock()
			rss := c.usage.rss
			m.mu.Unlock()
			if rss <= m.cfg.MaxRSS {
				continue
			}
			detail := fmt.Sprintf("rss %d MiB over MaxRSS %d MiB", rss>>20, m.cfg.MaxRSS>>20)
			m.log.Warn("recycling", "child_pid", c.pid, "slot", c.slot.String(), "rss_bytes", rss, "max_rss", m.cfg.MaxRSS)
			m.goOwned("recycling", func() { _, _ = c.slot.replace(c, wire.ReasonMemory, detail) })
		}
	}
}

// usage is a resource sample of one process.
type usage struct {
	rss        uint64
	cpuPercent float64
	cpu        time.Duration
	at         time.Time
}

// sample updates u from /proc.
func (u *usage) sample(pid int, now time.Time) {
	s, err := proc.Read(pid)
	if err != nil {
		return
	}
	if !u.at.IsZero() {
		if wall := now.Sub(u.at); wall > 0 {
			u.cpuPercent = float64(s.CPUTime-u.cpu) / float64(wall) * 100
		}
	}
	u.rss, u.cpu, u.at = s.RSS, s.CPUTime, now
}

// sampleUsage reads RSS and CPU time of the master and every child (for
// status and MaxRSS), outside the lock. Virtual pids of single-process mode
// are skipped.
func (m *Master) sampleUsage(now time.Time) {
	m.mu.Lock()
	targets := make([]*child, 0, len(m.children))
	samples := make([]usage, 0, len(m.children))
	for _, c := range m.children {
		if c.pid < SinglePIDBase {
			targets = append(targets, c)
			samples = append(samples, c.usage)
		}
	}
	self := m.self
	m.mu.Unlock()
	for i, c := range targets {
		samples[i].sample(c.pid, now)
	}
	self.sample(m.pid, now)
	m.mu.Lock()
	for i, c := range targets {
		c.usage = samples[i]
	}
	m.self = self
	m.mu.Unlock()
}
