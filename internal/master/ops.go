package master

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/wire"
)

// The operations: reload, scale, stop, rotate-logs, each with a defined
// outcome in every state of the cluster:
//
//	state \ op       reload / SIGHUP   scale     upgrade / SIGUSR2  stop          rotate-logs / SIGUSR1
//	starting         refused           refused   refused            aborts start  done
//	running          done              done      done               done          done
//	reloading        refused           refused   refused            done (ends it) done
//	scaling          refused           refused   refused            done (ends it) done
//	upgrading        refused           refused   refused            done (*)      done
//	replacing a slot done (waits)      done      refused (retry)    done          done
//	stopping         refused           refused   refused            done (no-op)  done
//
// (*) during the preflight a stop ends the upgrade before it froze anything;
// from the freeze to the exec (milliseconds) the stop waits for the next
// image, which then stops; during the new image's roll it ends the roll at
// its next step, as for a reload.
//
// A refusal is a *StateError (409 on the control socket); a stop during a
// reload or scale ends it at the next step, which reports errStopping.

// StateError is an operation refused in the cluster's current state.
type StateError struct {
	Op    string // reload, scale
	Cause string // "the cluster is starting", "a reload is in progress", ...
}

func (e *StateError) Error() string { return fmt.Sprintf("brood: %s refused: %s", e.Op, e.Cause) }

// badRequest is an operation asked with bad arguments (400 on the control
// socket).
type badRequest struct{ error }

func (e badRequest) Unwrap() error { return e.error }

// beginOp makes op the cluster's running operation, or refuses it.
func (m *Master) beginOp(op string) (end func(), err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.phase == phaseStarting:
		return nil, &StateError{Op: op, Cause: "the cluster is starting"}
	case m.phase >= phaseStopping:
		return nil, &StateError{Op: op, Cause: "the cluster is stopping"}
	case m.op != "":
		article := "a "
		if m.op == "upgrade" {
			article = "an "
		}
		return nil, &StateError{Op: op, Cause: article + m.op + " is in progress"}
	}
	m.op = op
	return func() {
		m.mu.Lock()
		m.op = ""
		m.mu.Unlock()
	}, nil
}

// RequestStop makes Run begin a graceful stop (idempotent).
func (m *Master) RequestStop(why string) {
	m.stopOnce.Do(func() {
		m.stopWhy = why
		close(m.stopReq)
	})
}

// Reload replaces every worker, one slot at a time (a new process ready, then
// the old one drains), then the agent (stopped first: it is a singleton). The
// new processes run the executable on disk now. If a new worker fails to
// start, the reload stops there and the old workers keep serving; the error
// is that worker's.
func (m *Master) Reload() (wire.ReloadResult, error) {
	end, err := m.beginOp("reload")
	if err != nil {
		return wire.ReloadResult{}, err
	}
	defer end()
	began := time.Now()
	m.events.publish(wire.Event{Type: wire.EventReloadBegun})
	res, err := m.reloadSlots(began, wire.ReasonReload)
	res.Took = time.Since(began).Seconds()
	ev := wire.Event{Type: wire.EventReloadEnded, Result: "ok", To: len(res.Replaced), Took: res.Took}
	if err != nil {
		ev.Result, ev.Detail = "failed", err.Error()
	}
	m.metrics.reloads.WithLabelValues(ev.Result).Inc()
	m.events.publish(ev)
	return res, err
}

func (m *Master) reloadSlots(began time.Time, why wire.Reason) (wire.ReloadResult, error) {
	var res wire.ReloadResult
	m.mu.Lock()
	slots := m.workerSlotsLocked()
	if m.agent != nil {
		slots = append(slots, m.agent) // last
	}
	m.mu.Unlock()
	for _, s := range slots {
		r, err := m.reloadSlot(s, began, why)
		if err != nil {
			what := "the old workers keep serving"
			if s == m.agent {
				what = "the slot restarts with backoff"
			}
			return res, fmt.Errorf("brood: reload aborted at %s; %s: %w", s, what, err)
		}
		if r != nil {
			res.Replaced = append(res.Replaced, *r)
		}
	}
	return res, nil
}

// reloadSlot replaces the process of s that was started before began. A slot
// whose process is being replaced already (a guarded panic, recycling) is
// waited for: its new process runs the new binary. A slot that is restarting
// needs nothing: its next process runs the new binary too.
func (m *Master) reloadSlot(s *slot, began time.Time, why wire.Reason) (*wire.Replacement, error) {
	for {
		m.mu.Lock()
		old, starting := s.serving, s.starting
		var busy <-chan struct{}
		switch {
		case starting != nil:
			busy = starting.exited
			if starting.state == childStarting {
				busy = anyOf(starting.ready, starting.exited)
			}
		case old != nil && old.stopWhy != wire.ReasonNone:
			busy = old.exited
		}
		m.mu.Unlock()
		if busy != nil {
			select {
			case <-busy:
				continue
			case <-m.life.Done():
				return nil, errStopping
			}
		}
		if old == nil || !old.startedAt.Before(began) {
			return nil, nil
		}
		replace := s.replace
		if s == m.agent {
			replace = s.replaceStopFirst
		}
		nc, err := replace(old, why, "")
		switch {
		case err == nil:
			return &wire.Replacement{Role: wire.RoleName(s.role), ID: s.id, OldPID: old.pid, NewPID: nc.pid}, nil
		case errors.Is(err, errBusy) || errors.Is(err, errGone):
			continue // raced with another transition of the slot: look again
		default:
			return nil, err
		}
	}
}

// anyOf returns a channel closed when a or b is.
func anyOf(a, b <-chan struct{}) <-chan struct{} {
	c := make(chan struct{})
	go func() {
		defer close(c)
		select {
		case <-a:
		case <-b:
		}
	}()
	return c
}

// Scale changes the number of workers: new slots start (in parallel) and must
// all become ready, or they are removed again; removed slots (the highest ids)
// drain and stop.
func (m *Master) Scale(n int) (wire.ScaleResult, error) {
	if n < 1 || n > wire.MaxWorkers {
		return wire.ScaleResult{}, badRequest{fmt.Errorf("brood: scale to %d: want 1 to %d workers", n, wire.MaxWorkers)}
	}
	end, err := m.beginOp("scale")
	if err != nil {
		return wire.ScaleResult{}, err
	}
	defer end()
	m.mu.Lock()
	from := len(m.workers)
	m.mu.Unlock()
	res := wire.ScaleResult{From: from, To: n}
	err = m.scale(from, n)
	ev := wire.Event{Type: wire.EventScaled, From: from, To: n, Result: "ok"}
	if err != nil {
		ev.Result, ev.Detail = "failed", err.Error()
	}
	m.events.publish(ev)
	return res, err
}

func (m *Master) scale(from, n int) error {
	switch {
	case n > from:
		var added []*slot
		for id := from + 1; id <= n; id++ {
			added = append(added, m.addSlot(ipc.RoleWorker, id))
		}
		errs := make([]error, len(added))
		var wg sync.WaitGroup
		for i, s := range added {
			wg.Go(func() {
				if _, err := s.startChild(); err != nil {
					errs[i] = fmt.Errorf("start %s: %w", s, err)
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			for _, s := range added {
				s.remove()
			}
			return fmt.Errorf("brood: scale to %d workers failed; back to %d: %w", n, from, err)
		}
	case n < from:
		var wg sync.WaitGroup
		m.mu.Lock()
		var removed []*slot
		for id := from; id > n; id-- {
			removed = append(removed, m.workers[id])
		}
		m.mu.Unlock()
		for _, s := range removed {
			wg.Go(s.remove)
		}
		wg.Wait()
	}
	m.mu.Lock()
	m.sendPidsLocked()
	m.mu.Unlock()
	return nil
}

// ReloadInBackground runs a reload on a goroutine owned by the master (SIGHUP).
// A reload refused in the current state is logged, with why.
func (m *Master) ReloadInBackground(by string) {
	started := m.goOwned("reload", func() {
		if _, err := m.Reload(); err != nil {
			var se *StateError
			if errors.As(err, &se) {
				m.log.Warn("reload refused", "by", by, "err", err)
				m.notifyReloadRefused(err)
				return
			}
			m.log.Error("reload failed", "by", by, "err", err)
		}
	})
	if started {
		m.log.Info("reload requested", "by", by)
	} else {
		m.log.Warn("reload requested while stopping; ignored", "by", by)
	}
}

// onReplaceMe handles a worker that had a guarded panic: it is already
// draining; start its replacement at once. The agent keeps running after a
// guarded panic, so a ReplaceMe from it is ignored.
func (m *Master) onReplaceMe(c *child, detail string) {
	if c.slot.role != ipc.RoleWorker {
		m.log.Warn("ignored a replacement request from a process that is not a worker", "child_pid", c.pid, "slot", c.slot.String())
		return
	}
	m.log.Warn("replacing after a guarded panic", "child_pid", c.pid, "slot", c.slot.String(), "detail", detail)
	m.goOwned("replacement", func() { _, _ = c.slot.replace(c, wire.ReasonPanic, "guarded "+detail) })
}
