package control

import (
	"encoding/json"
	"time"
)

// The JSON the control socket speaks. The master serves it; the CLI reads it.
// Keys of Status and Process are a contract (scripts read `status --json`):
// add fields freely, never rename or remove one.

// Status is the body of GET /status.
type Status struct {
	Name       string    `json:"name"`
	PID        int       `json:"pid"`
	State      string    `json:"state"` // starting, running, stopping
	Listen     []string  `json:"listen"`
	Workers    int       `json:"workers"` // configured worker count
	StartedAt  time.Time `json:"started_at"`
	RSSBytes   uint64    `json:"rss_bytes"`   // the master's
	CPUPercent float64   `json:"cpu_percent"` // the master's, over the last sample interval
	RunDir     string    `json:"run_dir"`
	Processes  []Process `json:"processes"`
	Messages   Messages  `json:"messages"`
	// Schedules is the agent's schedule table (brood.ScheduleStatus list), if
	// the cluster has schedules and the agent answered.
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
	LastReason string    `json:"last_restart_reason,omitempty"`
	RSSBytes   uint64    `json:"rss_bytes"`
	CPUPercent float64   `json:"cpu_percent"`
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
