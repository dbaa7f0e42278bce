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
	// Fleet is the fleet connection, if the cluster is in a fleet.
	Fleet *FleetStatus `json:"fleet,omitempty"`
	// Build is the binary the master runs now; Upgrades counts the in-place
	// upgrades (DESIGN §12) this master process has had since it started.
	Build    Build `json:"build"`
	Upgrades int   `json:"upgrades"`
}

// Build describes a binary. It has the fields of upgrade.Build, which
// converts to it and back (wire cannot import package upgrade, which
// depends on it); upgrade.Build.String formats it.
type Build struct {
	Module    string `json:"module"`
	Version   string `json:"version"`
	Revision  string `json:"revision"`
	Modified  bool   `json:"modified"`
	GoVersion string `json:"go"`
	Time      string `json:"time"`
}

// FleetStatus is the master's connection to its fleet.
type FleetStatus struct {
	Node          string        `json:"node"`
	State         string        `json:"state"`            // connected, connecting, reconnecting, disconnected, closed
	Server        string        `json:"server,omitempty"` // the server connected to (redacted)
	URLs          string        `json:"urls"`             // as configured (redacted)
	InQueueGroups bool          `json:"in_queue_groups"`  // takes the fleet's random messages and requests (has a ready worker)
	LeaseTTL      float64       `json:"lease_ttl_seconds"`
	Members       []FleetMember `json:"members"` // heard from recently, this one included
	// Leader is the node whose agent leads the fleet (Fleet.OnLeader), ""
	// if none does or it is unknown; LeaderToken is the lease's fencing
	// token when this member leads.
	Leader      string        `json:"leader,omitempty"`
	LeaderToken uint64        `json:"leader_token,omitempty"`
	Counters    FleetCounters `json:"counters"`
}

// FleetMember is one member of the fleet as its announcements describe it.
type FleetMember struct {
	Node         string    `json:"node"`
	PID          int       `json:"pid"` // its master's
	Agent        bool      `json:"agent"`
	ReadyWorkers int       `json:"ready_workers"`
	StartedAt    time.Time `json:"started_at"`
	LastSeen     time.Time `json:"last_seen"`
	Self         bool      `json:"self,omitempty"`
}

// FleetCounters count the fleet's traffic since the master connected.
type FleetCounters struct {
	SentOK      uint64 `json:"sent"`           // messages and requests published (or buffered while disconnected)
	SendErrors  uint64 `json:"send_errors"`    // not published: queue full, too large, reconnect buffer full, closed
	ReceivedOK  uint64 `json:"received"`       // from the fleet and handed to a process
	RecvErrors  uint64 `json:"receive_errors"` // from the fleet but not delivered: malformed, nobody to take it
	RequestsOut uint64 `json:"requests_out"`
	RequestsIn  uint64 `json:"requests_in"`
	Reconnects  uint64 `json:"reconnects"`
	Disconnects uint64 `json:"disconnects"`
	AsyncErrors uint64 `json:"async_errors"`
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

// Messages are the master's relay counters since it started (across
// upgrades), and the processes' count of what they sent directly.
type Messages struct {
	Relayed     uint64 `json:"relayed"`
	Held        uint64 `json:"held"`
	Redelivered uint64 `json:"redelivered"`
	Refused     uint64 `json:"refused"`
	LostReplies uint64 `json:"lost_replies"`
	// Direct counts the messages (and replies) the processes sent each other
	// over direct channels, as they report at each heartbeat: none of them
	// went through the master, and none is in Relayed.
	Direct uint64 `json:"direct"`
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

// UpgradeRequest is the body of POST /upgrade.
type UpgradeRequest struct {
	// KeepWorkers leaves the children running their old binary (they are
	// adopted by the new master); otherwise they are rolled like a reload.
	KeepWorkers bool `json:"keep_workers"`
	// PreflightTimeout bounds the new binary's check run (0: 10 s).
	PreflightTimeout float64 `json:"preflight_timeout_seconds,omitempty"`
}

// UpgradeResult is the answer to POST /upgrade: the master's pid (unchanged),
// its build before and after, how long the whole upgrade took (the exec,
// the restore and the roll of the children), and the children replaced.
type UpgradeResult struct {
	PID      int           `json:"pid"`
	From     Build         `json:"from"`
	To       Build         `json:"to"`
	Upgrades int           `json:"upgrades"`
	Took     float64       `json:"took_seconds"`
	Replaced []Replacement `json:"replaced"`
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
