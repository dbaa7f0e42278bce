package master

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/relay"
	"github.com/brood-go/brood/internal/wire"
)

// asks are the master's own requests to its children (schedule table,
// rotate-logs), each bound to the process it was sent to: a reply is taken
// only from that process, for that request.
type asks struct {
	mu      sync.Mutex
	last    uint64
	pending map[uint64]*ask
}

type ask struct {
	pid   uint32
	reply chan []byte
}

func (a *asks) add(pid uint32) (uint64, *ask) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.last++
	k := &ask{pid: pid, reply: make(chan []byte, 1)}
	a.pending[a.last] = k
	return a.last, k
}

func (a *asks) remove(id uint64) {
	a.mu.Lock()
	defer a.mu.Unlock()
	delete(a.pending, id)
}

// resolve hands a reply to the request it answers, if from is the process
// the request went to; it reports whether it did.
func (a *asks) resolve(id uint64, from uint32, payload []byte) bool {
	a.mu.Lock()
	k := a.pending[id]
	if k == nil || k.pid != from {
		a.mu.Unlock()
		return false
	}
	delete(a.pending, id)
	a.mu.Unlock()
	k.reply <- append([]byte(nil), payload...)
	return true
}

// onMasterReply hands a reply to the master's request that waits for it.
func (m *Master) onMasterReply(f ipc.Frame) {
	if !m.asks.resolve(f.Ref, f.From, f.Payload) {
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
	id, k := m.asks.add(uint32(c.pid))
	defer m.asks.remove(id)
	m.router.Request(c.ep, id, action, payload)
	select {
	case b := <-k.reply:
		return json.Unmarshal(b, out)
	case <-c.exited:
		return fmt.Errorf("%s: the agent (pid %d) exited before answering", action, c.pid)
	case <-ctx.Done():
		return fmt.Errorf("%s: no answer from the agent (pid %d): %w", action, c.pid, ctx.Err())
	}
}

// onMasterMessage handles brood's messages to the master.
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
		m.events.publish(ev)
	default:
		m.log.Warn("unknown message to the master", "action", string(f.Action), "from_pid", from.PID)
	}
}

func jsonRaw(v any) (json.RawMessage, error) { return json.Marshal(v) }
