package wire

import "github.com/brood-go/brood/internal/ipc"

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
	ActLogsReopen    = "brood:logs-reopen"    // master -> everyone: reopen your files
	ActLogsRotated   = "brood:logs-rotated"   // agent -> master: I renamed files ([]string)
	ActLogsRotate    = "brood:logs-rotate"    // master -> agent (request): rotate what is due now
	ActScheduleTick  = "brood:schedule-tick"  // agent -> worker: run this tick
	ActScheduleDone  = "brood:schedule-done"  // worker -> agent: the outcome
	ActScheduleRun   = "brood:schedule-run"   // -> agent (request): run a task now
	ActScheduleList  = "brood:schedule-list"  // -> agent (request): the task table
	ActScheduleRan   = "brood:schedule-ran"   // agent -> master: a run finished (ScheduleRun)
	ActMetricsGather = "brood:metrics-gather" // master -> child (request): your metrics (encoded by internal/metrics)
	ActMetricsFinal  = "brood:metrics-final"  // child -> master: my metrics, as I stop gracefully
)

// ReservedPrefix starts every action name brood reserves for itself.
const ReservedPrefix = "brood:"

// Member is one process of the cluster in the member table the master sends
// every child (ipc.KindMembers). brood.Member is its public twin.
type Member struct {
	PID   int      `json:"pid"`
	Role  ipc.Role `json:"role"`
	ID    int      `json:"id"`
	Ready bool     `json:"ready"`
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
