package wire

import (
	"fmt"
	"strings"
	"time"
)

// Reason says why a process ended or was restarted: a small closed set that
// metrics and scripts can count, with the free text in a detail beside it.
type Reason uint8

// Reasons. The first eight are the restart reasons of DESIGN §10
// (brood_restarts_total{reason}); Stop is an exit the master asked for that is
// not followed by a restart (cluster stop, scale down).
const (
	ReasonNone    Reason = iota
	ReasonExit           // the process exited on its own (a status, a returned error)
	ReasonSignal         // killed by a signal nobody in brood sent (OOM killer, kill -9)
	ReasonPanic          // a panic: escaped (exit 2) or guarded (graceful replacement)
	ReasonHang           // no heartbeat answer within HeartbeatTimeout
	ReasonMemory         // RSS above MaxRSS: recycled
	ReasonReload         // replaced by a rolling reload
	ReasonScale          // removed by scale down
	ReasonUpgrade        // replaced after an upgrade of the master
	ReasonStop           // stopped with the cluster
	reasonEnd
)

var reasonNames = [...]string{"", "exit", "signal", "panic", "hang", "memory", "reload", "scale", "upgrade", "stop"}

// String returns the reason's name ("exit", "signal", ...), "" for ReasonNone.
func (r Reason) String() string {
	if r < reasonEnd {
		return reasonNames[r]
	}
	return fmt.Sprintf("reason(%d)", uint8(r))
}

// MarshalText encodes the reason by name.
func (r Reason) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText decodes a reason name.
func (r *Reason) UnmarshalText(b []byte) error {
	for i, n := range reasonNames {
		if n == string(b) {
			*r = Reason(i)
			return nil
		}
	}
	return fmt.Errorf("wire: unknown reason %q", b)
}

// Reasons lists every reason but ReasonNone, in order.
func Reasons() []Reason {
	out := make([]Reason, 0, reasonEnd-1)
	for r := ReasonNone + 1; r < reasonEnd; r++ {
		out = append(out, r)
	}
	return out
}

// EventType names a lifecycle event.
type EventType string

// Lifecycle events, in the order a cluster usually sees them.
const (
	EventStarted      EventType = "started"       // a process was started (pid)
	EventReady        EventType = "ready"         // it reported Ready
	EventExited       EventType = "exited"        // it ended (reason, detail, uptime)
	EventRestarting   EventType = "restarting"    // its slot is being restarted (reason, detail, backoff); result "failed" for a failed attempt
	EventRestarted    EventType = "restarted"     // a crashed slot has a ready process again (old_pid, reason)
	EventReplaced     EventType = "replaced"      // a new process took the slot of old_pid (reason)
	EventClusterReady EventType = "cluster-ready" // the first start completed
	EventStartFailed  EventType = "start-failed"  // the first start was aborted (detail)
	EventReloadBegun  EventType = "reload-begun"
	EventReloadEnded  EventType = "reload-ended" // result: ok or failed (detail)
	EventScaled       EventType = "scaled"       // from, to; result: ok or failed
	EventScheduleRun  EventType = "schedule-run" // task, result, duration
	EventLogsRotated  EventType = "logs-rotated" // detail: who asked
	EventStopping     EventType = "stopping"     // detail: why
	EventStopped      EventType = "stopped"
	EventFleet        EventType = "fleet"         // the fleet connection: result connected or disconnected (detail: server)
	EventLeader       EventType = "leader"        // this member's agent leads the fleet (result start) or stops (stop); detail: token N
	EventUpgradeBegun EventType = "upgrade-begun" // the master re-executes itself (detail: old → new build)
	EventUpgradeEnded EventType = "upgrade-ended" // result: ok, failed (nothing changed) or rolled-back (detail)
)

// EventTypes lists every event type, in the order above (the dashboard
// subscribes to each).
var EventTypes = []EventType{
	EventStarted, EventReady, EventExited, EventRestarting, EventRestarted, EventReplaced,
	EventClusterReady, EventStartFailed, EventReloadBegun, EventReloadEnded, EventScaled,
	EventScheduleRun, EventLogsRotated, EventStopping, EventStopped, EventFleet, EventLeader,
	EventUpgradeBegun, EventUpgradeEnded,
}

// Event is one entry of the master's lifecycle event stream (`events`).
type Event struct {
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	Type     EventType `json:"type"`
	Role     string    `json:"role,omitempty"`
	ID       int       `json:"id"`
	PID      int       `json:"pid,omitempty"`
	OldPID   int       `json:"old_pid,omitempty"`
	Reason   Reason    `json:"reason,omitempty"`
	Detail   string    `json:"detail,omitempty"`
	Restarts int       `json:"restarts,omitempty"`
	Backoff  float64   `json:"backoff_seconds,omitempty"`
	Uptime   float64   `json:"uptime_seconds,omitempty"`
	Result   string    `json:"result,omitempty"` // ok, failed
	From     int       `json:"from,omitempty"`   // scaled
	To       int       `json:"to,omitempty"`     // scaled
	Task     string    `json:"task,omitempty"`   // schedule-run
	Took     float64   `json:"took_seconds,omitempty"`
}

// ReasonText renders a reason with its detail: "signal: killed by SIGKILL".
func ReasonText(r Reason, detail string) string {
	switch {
	case r == ReasonNone || strings.HasPrefix(detail, r.String()):
		return detail
	case detail == "":
		return r.String()
	}
	return r.String() + ": " + detail
}
