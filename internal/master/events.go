package master

import (
	"log/slog"
	"sync"
	"time"

	"github.com/brood-go/brood/internal/wire"
)

// eventsKept is how many lifecycle events the master keeps for `events` and
// /events.
const eventsKept = 512

// eventLog is the master's lifecycle event stream: every transition is
// published here once, and logs, status and the `events` command read it.
// Publishing never blocks: a subscriber that falls eventsKept events behind is
// dropped (its channel closed) and can read what it missed with since.
type eventLog struct {
	mu   sync.Mutex
	seq  uint64
	ring []wire.Event // the last eventsKept, oldest first once full
	next int          // where the next event goes once the ring is full
	subs map[chan wire.Event]struct{}
	log  func(wire.Event) // synchronous subscriber: the log line of the event
}

func newEventLog(log func(wire.Event)) *eventLog {
	return &eventLog{ring: make([]wire.Event, 0, eventsKept), subs: map[chan wire.Event]struct{}{}, log: log}
}

// publish stamps ev with its sequence number and time, keeps it, logs it and
// hands it to every subscriber.
func (l *eventLog) publish(ev wire.Event) wire.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.seq++
	ev.Seq, ev.Time = l.seq, time.Now()
	if len(l.ring) < cap(l.ring) {
		l.ring = append(l.ring, ev)
	} else {
		l.ring[l.next] = ev
		l.next = (l.next + 1) % len(l.ring)
	}
	if l.log != nil {
		l.log(ev)
	}
	for ch := range l.subs {
		select {
		case ch <- ev:
		default: // too slow: end its stream rather than block the master
			delete(l.subs, ch)
			close(ch)
		}
	}
	return ev
}

// since returns the kept events with a sequence number above seq, oldest first.
func (l *eventLog) since(seq uint64) []wire.Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.sinceLocked(seq)
}

func (l *eventLog) sinceLocked(seq uint64) []wire.Event {
	var out []wire.Event
	for i := range l.ring {
		ev := l.ring[(l.next+i)%len(l.ring)]
		if ev.Seq > seq {
			out = append(out, ev)
		}
	}
	return out
}

// subscribe returns the kept events after seq and a channel of every later one,
// and a function that ends the subscription. The channel is closed when the
// subscription ends, or when the subscriber fell too far behind.
func (l *eventLog) subscribe(seq uint64) (past []wire.Event, ch <-chan wire.Event, cancel func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	c := make(chan wire.Event, eventsKept)
	l.subs[c] = struct{}{}
	return l.sinceLocked(seq), c, func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if _, ok := l.subs[c]; ok {
			delete(l.subs, c)
			close(c)
		}
	}
}

// closeAll ends every subscription (the master is stopping).
func (l *eventLog) closeAll() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for c := range l.subs {
		delete(l.subs, c)
		close(c)
	}
}

// logEvent is the log line of a lifecycle event. The messages and keys are
// what operators grep for: started, ready, exited, crashed, restarting,
// restarted, replaced, ...
func logEvent(log *slog.Logger, ev wire.Event) {
	child := []any{"child_role", ev.Role, "child_id", ev.ID, "child_pid", ev.PID}
	switch ev.Type {
	case wire.EventStarted:
		log.Info("started", child...)
	case wire.EventReady:
		log.Info("ready", append(child, "took", time.Duration(ev.Took*float64(time.Second)).Round(time.Millisecond))...)
	case wire.EventExited:
		attrs := append(child, "reason", ev.Reason.String(), "detail", ev.Detail,
			"uptime", time.Duration(ev.Uptime*float64(time.Second)).Round(time.Millisecond))
		switch ev.Result {
		case "crashed":
			log.Warn("crashed", append(attrs, "restarts", ev.Restarts)...)
		case "crashed-during-start":
			log.Warn("crashed during the start", attrs...)
		case "not-ready":
			log.Warn("exited before it was ready", attrs...)
		default:
			log.Info("exited", attrs...)
		}
	case wire.EventRestarting:
		attrs := append(child, "reason", ev.Reason.String(), "detail", ev.Detail, "restarts", ev.Restarts)
		switch {
		case ev.Result == "failed":
			log.Warn("restart failed", attrs...)
		case ev.Backoff > 0:
			log.Info("restart delayed (crash loop)", append(attrs, "delay", time.Duration(ev.Backoff*float64(time.Second)))...)
		}
	case wire.EventRestarted:
		log.Info("restarted", append(child, "old_pid", ev.OldPID, "reason", ev.Reason.String(), "detail", ev.Detail)...)
	case wire.EventReplaced:
		log.Info("replaced", append(child, "old_pid", ev.OldPID, "reason", ev.Reason.String(), "detail", ev.Detail)...)
	case wire.EventClusterReady:
		log.Info("cluster ready", "workers", ev.To, "took", time.Duration(ev.Took*float64(time.Second)).Round(time.Millisecond), "detail", ev.Detail)
	case wire.EventStartFailed:
		log.Error("start failed", "err", ev.Detail)
	case wire.EventReloadBegun:
		log.Info("reload: replacing every worker, then the agent")
	case wire.EventReloadEnded:
		if ev.Result == "ok" {
			log.Info("reload done", "replaced", ev.To, "took", time.Duration(ev.Took*float64(time.Second)).Round(time.Millisecond))
		} else {
			log.Error("reload aborted; the remaining workers keep the old binary", "err", ev.Detail)
		}
	case wire.EventScaled:
		if ev.Result == "ok" {
			log.Info("scaled", "from", ev.From, "to", ev.To)
		} else {
			log.Error("scale failed", "from", ev.From, "to", ev.To, "err", ev.Detail)
		}
	case wire.EventScheduleRun:
		log.Debug("schedule run", "task", ev.Task, "result", ev.Result, "detail", ev.Detail, "child_pid", ev.PID)
	case wire.EventLogsRotated:
		log.Info("log files reopened", "why", ev.Detail)
	case wire.EventStopping:
		log.Info("stopping", "cause", ev.Detail)
	case wire.EventStopped:
		log.Info("stopped")
	case wire.EventUpgradeBegun:
		log.Info("upgrade: re-executing the master in place", "detail", ev.Detail)
	case wire.EventUpgradeEnded:
		switch ev.Result {
		case "ok":
			log.Info("upgraded", "detail", ev.Detail, "replaced", ev.To, "took", time.Duration(ev.Took*float64(time.Second)).Round(time.Millisecond))
		case "rolled-back":
			log.Error("upgrade rolled back; the master runs its previous binary", "err", ev.Detail)
		default:
			log.Error("upgrade failed", "err", ev.Detail)
		}
	case wire.EventFleet:
		// internal/fleet logs the connection's changes itself, with the error.
	case wire.EventLeader:
		if ev.Result == "start" {
			log.Info("this member leads the fleet", "agent_pid", ev.PID, "detail", ev.Detail)
		} else {
			log.Info("this member no longer leads the fleet", "agent_pid", ev.PID, "detail", ev.Detail)
		}
	}
}
