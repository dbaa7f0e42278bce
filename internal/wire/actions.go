package wire

import (
	"time"

	"github.com/brood-go/brood/internal/ipc"
)

// Built-in actions the master sends (the public names are brood.Action*). The
// "brood:" prefix is reserved.
const (
	ActionReady       = "brood:ready"
	ActionPids        = "brood:pids"
	ActionAgentExit   = "brood:agent-exit"
	ActionAgentStart  = "brood:agent-start"
	ActionWorkerExit  = "brood:worker-exit"
	ActionWorkerStart = "brood:worker-start"
)

// Internal actions between the master and its children.
const (
	ActLogsReopen   = "brood:logs-reopen"   // master -> everyone: reopen your files
	ActLogsRotated  = "brood:logs-rotated"  // agent -> master: I renamed files ([]string)
	ActLogsRotate   = "brood:logs-rotate"   // master -> agent (request): rotate what is due now
	ActScheduleTick = "brood:schedule-tick" // agent -> worker: run this tick
	ActScheduleDone = "brood:schedule-done" // worker -> agent: the outcome
	// ActScheduleRunning (agent -> worker, a request) asks for the ticks the
	// worker is running, with the pid of the agent that sent each: a new
	// agent inherits its predecessor's runs still going (no overlap across
	// agents).
	ActScheduleRunning = "brood:schedule-running"
	ActScheduleRun     = "brood:schedule-run"   // -> agent (request): run a task now
	ActScheduleList    = "brood:schedule-list"  // -> agent (request): the task table
	ActScheduleRan     = "brood:schedule-ran"   // agent -> master: a run finished (ScheduleRun)
	ActMetricsGather   = "brood:metrics-gather" // master -> child (request): your metrics (encoded by internal/metrics); payload GatherNow or none
	ActMetricsFinal    = "brood:metrics-final"  // child -> master: my metrics, as I stop gracefully

	ActLeaderWant  = "brood:leader-want"  // agent -> master: campaign for the fleet's leader lease for me
	ActLeaderStart = "brood:leader-start" // master -> agent: you lead now (LeaderTerm)
	ActLeaderStop  = "brood:leader-stop"  // master -> agent: stop leading at once (LeaderTerm)
	ActTickClaim   = "brood:tick-claim"   // agent -> master: claim a one-in-fleet tick (TickClaim)
	ActTickClaimed = "brood:tick-claimed" // master -> agent: the claim's outcome (TickClaim)
)

// GatherNow is the payload of an ActMetricsGather that must not wait at low
// priority: the child's first gather, or the next after one that missed a
// scrape's deadline. Without it a child gathers at low priority.
const GatherNow = "now"

// The schedule clock: what lets an agent that takes over continue the
// schedules of the one before it (across reload, crash restart and upgrade).
const (
	// ActScheduleClock (agent -> master) carries the agent's schedule clock,
	// raw bytes encoded by internal/schedule (Clock.AppendBinary), sent when
	// the agent's scheduler starts and each time a tick starts; the master
	// keeps the latest, uninterpreted.
	ActScheduleClock = "brood:schedule-clock"
	// ActScheduleResume (master -> a starting agent) hands it the clock the
	// agent before it sent last, ahead of its brood:ready, so that its
	// scheduler continues that clock.
	ActScheduleResume = "brood:schedule-resume"
)

// LeaderTerm is the data of ActLeaderStart and ActLeaderStop: the lease's
// fencing token (its KV revision at acquisition).
type LeaderTerm struct {
	Token uint64 `json:"token"`
}

// TickClaim is the data of ActTickClaim (ID, Task, At) and of its answer
// ActTickClaimed (ID, Won, Err).
type TickClaim struct {
	ID   uint64    `json:"id"`
	Task string    `json:"task"`
	At   time.Time `json:"at"`
	Won  bool      `json:"won,omitempty"`
	Err  string    `json:"err,omitempty"`
}

// ReservedPrefix starts every action name brood reserves for itself.
const ReservedPrefix = "brood:"

// Member is one process of the cluster in the member table the master sends
// every child (ipc.KindMembers). brood.Member is its public twin.
type Member struct {
	PID   int      `json:"pid"`
	Role  ipc.Role `json:"role"`
	ID    int      `json:"id"`
	Ready bool     `json:"ready"`
	// Stopping: it drains before it exits (a reload, a scale down, a
	// replacement): still reachable by pid, but no place for new work.
	Stopping bool `json:"stopping,omitempty"`
}

// ProcessEvent is the data of the brood:*-start and brood:*-exit events.
type ProcessEvent struct {
	Role   string `json:"role"`
	ID     int    `json:"id"`
	PID    int    `json:"pid"`
	Reason string `json:"reason,omitempty"` // for exits: what ended it, e.g. "signal: signal: killed"
}

// ScheduleRun is the data of ActScheduleRan: one finished run of a task.
type ScheduleRun struct {
	Task     string  `json:"task"`
	Err      string  `json:"err,omitempty"`
	Duration float64 `json:"duration_seconds"`
	PID      int     `json:"pid"`
}

// ErrorBody is the body of an answer that can fail: {"error": "..."}.
type ErrorBody struct {
	Error string `json:"error,omitempty"`
}

// ErrorReply is the ErrorBody of err (empty for nil).
func ErrorReply(err error) ErrorBody {
	if err == nil {
		return ErrorBody{}
	}
	return ErrorBody{Error: err.Error()}
}

// RoleName is the name of a role in logs, events and status: "master",
// "agent", "worker".
func RoleName(r ipc.Role) string {
	switch r {
	case ipc.RoleMaster:
		return "master"
	case ipc.RoleAgent:
		return "agent"
	case ipc.RoleWorker:
		return "worker"
	}
	return "none"
}

// ActFleetNoResponders is the action of the master's reply to a child's
// fleet request that no worker anywhere in the fleet could take.
const ActFleetNoResponders = "brood:fleet-no-responders"

// ActRefused is the action of a reply that says the request was not
// handled; the payload is the reason.
const ActRefused = "brood:refused"

// ActDirectOpen is the message a sender relays, addressed by pid, to a peer
// before its first frame on their direct channel: everything it relayed to
// that peer before comes before it, so the peer hands the channel's messages
// to its handlers only once this has arrived (per-sender order across the
// switch from the relay to the channel; DESIGN §3a).
const ActDirectOpen = "brood:direct-open"

// ActDrain is what a process that is stopping sends, before it closes its
// handler queue, to the master (DestMaster) and over each of its direct
// channels; each answers ActDrained after everything it sent that process
// before. The stopping process reads until every answer has come (or a
// bound passes), so the messages already on their way to it are handled by
// it, not redelivered to its replacement behind newer ones. Neither is for
// handlers, and on a direct channel neither counts as a message.
const (
	ActDrain   = "brood:drain"
	ActDrained = "brood:drained"
)
