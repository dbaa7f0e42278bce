package wire

import (
	"encoding/json"
	"time"
)

// Status is the body of GET /status (`status --json`).
type Status struct {
	Name       string    `json:"name"`
	PID        int       `json:"pid"`
	State      string    `json:"state"`               // starting, running, stopping
	Operation  string    `json:"operation,omitempty"` // reload or scale while one runs
	Listen     []string  `json:"listen"`
	Workers    int       `json:"workers"` // configured worker count
	StartedAt  time.Time `json:"started_at"`
	RSSBytes   uint64    `json:"rss_bytes"`   // the master's
	CPUPercent float64   `json:"cpu_percent"` // the master's, over the last sample interval
	RunDir     string    `json:"run_dir"`
	Processes  []Process `json:"processes"`
	Messages   Messages  `json:"messages"`
	// DroppedOutputLines counts lines of the master's and children's output
	// dropped because standard error did not keep up.
	DroppedOutputLines uint64 `json:"dropped_output_lines"`
	// Schedules is the agent's schedule table ([]ScheduleStatus), if the
	// cluster has schedules and the agent answered.
	Schedules json.RawMessage `json:"schedules,omitempty"`
}

// Process is one child, or one slot waiting for a child (pid 0, state
// "restarting").
type Process struct {
	Role       string    `json:"role"` // agent, worker
	ID         int       `json:"id"`
	PID        int       `json:"pid"`
	State      string    `json:"state"` // starting, ready, stopping, restarting
	Restarts   int       `json:"restarts"`
	LastReason string    `json:"last_restart_reason,omitempty"` // "<reason>: <detail>"
	LastKind   Reason    `json:"last_restart_kind,omitempty"`   // the typed reason alone
	RSSBytes   uint64    `json:"rss_bytes"`
	CPUPercent float64   `json:"cpu_percent"`
	CPUSeconds float64   `json:"cpu_seconds"` // user + system since it started
	StartedAt  time.Time `json:"started_at"`
	Uptime     float64   `json:"uptime_seconds"`
}

// Messages are the master's relay counters since it started.
type Messages struct {
	Relayed     uint64 `json:"relayed"`
	Held        uint64 `json:"held"`
	Redelivered uint64 `json:"redelivered"`
	Refused     uint64 `json:"refused"`
	LostReplies uint64 `json:"lost_replies"`
}

// Replacement is one process replaced by a reload.
type Replacement struct {
	Role   string `json:"role"`
	ID     int    `json:"id"`
	OldPID int    `json:"old_pid"`
	NewPID int    `json:"new_pid"`
}

// ReloadResult is the body of POST /reload.
type ReloadResult struct {
	Replaced []Replacement `json:"replaced"`
	Took     float64       `json:"took_seconds"`
}

// ScaleRequest is the body of POST /scale.
type ScaleRequest struct {
	Workers int `json:"workers"`
}

// ScaleResult is the answer to POST /scale.
type ScaleResult struct {
	From int `json:"from"`
	To   int `json:"to"`
}

// ScheduleRunRequest is the body of POST /schedules/run.
type ScheduleRunRequest struct {
	Name string `json:"name"`
}

// MaxWorkers is the largest worker count a cluster accepts (Config.Workers,
// --workers, scale): beyond it a value is a typo, not a plan.
const MaxWorkers = 1024

// ScheduleStatus describes a scheduled task as `schedule list` and
// `status --json` show it (brood.ScheduleStatus).
type ScheduleStatus struct {
	Name         string    `json:"name"`
	Type         string    `json:"type"`
	Every        string    `json:"every,omitempty"`
	Cron         string    `json:"cron,omitempty"`
	Disabled     bool      `json:"disabled,omitempty"`
	Running      int       `json:"running"`
	LastRun      time.Time `json:"last_run,omitzero"`
	LastResult   string    `json:"last_result,omitempty"`
	LastDuration float64   `json:"last_duration_seconds"`
	Next         time.Time `json:"next,omitzero"`
	Runs         uint64    `json:"runs"`
	Failures     uint64    `json:"failures"`
	Skips        uint64    `json:"skips"`
}
