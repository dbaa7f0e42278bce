package master

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/relay"
	"github.com/brood-go/brood/internal/wire"
)

// onMasterReply hands a reply to the master's request that waits for it.
func (m *Master) onMasterReply(f ipc.Frame) {
	if m.fleetAsks.Resolve(f.Ref, f.From, fleetAnswer{action: string(f.Action), flags: f.Flags, payload: append([]byte(nil), f.Payload...)}) {
		return
	}
	if !m.asks.Resolve(f.Ref, f.From, append([]byte(nil), f.Payload...)) {
		m.log.Warn("reply to the master dropped: no such request from that process", "action", string(f.Action), "from_pid", f.From, "ref", f.Ref)
	}
}

// askAgent sends a request to the agent and waits for its answer, decoded
// into out.
func (m *Master) askAgent(ctx context.Context, action string, data, out any) error {
	m.mu.Lock()
	var c *child
	if m.agent != nil {
		c = m.agent.serving
	}
	m.mu.Unlock()
	if c == nil {
		return fmt.Errorf("%s: no agent is running right now", action)
	}
	payload, err := json.Marshal(data)
	if err != nil {
		return err
	}
	b, err := m.ask(ctx, c, action, payload)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, out)
}

// ask sends a request to child c and waits for its reply's payload.
func (m *Master) ask(ctx context.Context, c *child, action string, payload []byte) ([]byte, error) {
	id := m.askID.Add(1)
	reply := m.asks.Add(id, uint32(c.pid))
	defer m.asks.Remove(id)
	m.router.Request(c.ep, id, action, payload)
	select {
	case b := <-reply:
		return b, nil
	case <-c.exited:
		return nil, fmt.Errorf("%s: %s exited before answering", action, c)
	case <-ctx.Done():
		return nil, fmt.Errorf("%s: no answer from %s: %w", action, c, ctx.Err())
	}
}

// onMasterMessage handles brood's messages to the master. The router calls
// it with its lock held: it must not take m.mu (recordExit holds m.mu while it
// calls the router), so it works only through goOwned and leaf locks.
func (m *Master) onMasterMessage(from *relay.Endpoint, f ipc.Frame) {
	switch string(f.Action) {
	case wire.ActLogsRotated:
		// Not on the reader's goroutine: reopening takes m.mu and writes files.
		why := fmt.Sprintf("pid %d rotated %s", from.PID, f.Payload)
		m.goOwned("log reopen", func() { m.reopenLogs(why) })
	case wire.ActScheduleRan:
		var run wire.ScheduleRun
		if json.Unmarshal(f.Payload, &run) != nil {
			return
		}
		ev := wire.Event{Type: wire.EventScheduleRun, Task: run.Task, PID: run.PID, Took: run.Duration, Result: "ok", Detail: run.Err}
		if run.Err != "" {
			ev.Result = "failed"
		}
		m.metrics.scheduleRuns.WithLabelValues(run.Task, ev.Result).Inc()
		m.metrics.scheduleTime.WithLabelValues(run.Task).Observe(run.Duration)
		m.events.publish(ev)
	case wire.ActMetricsFinal:
		m.onFinalMetrics(from, f.Payload)
	case wire.ActLeaderWant:
		m.onLeaderWant(from)
	case wire.ActTickClaim:
		m.onTickClaim(from, f.Payload)
	case wire.ActScheduleClock:
		m.onScheduleClock(from, f.Payload)
	case wire.ActDrain:
		m.router.Drained(from)
	default:
		m.log.Warn("unknown message to the master", "action", string(f.Action), "from_pid", from.PID)
	}
}

func jsonRaw(v any) (json.RawMessage, error) { return json.Marshal(v) }
