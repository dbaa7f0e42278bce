// Package schedule is brood's scheduling engine: it decides when scheduled tasks
// run, hands each run to a caller-provided Dispatch function, and keeps track of
// the outcome. It knows nothing about processes or IPC.
//
// # Model
//
// The agent owns the clock, the way Egg.js's agent owns timers for
// egg-schedule. It runs one Scheduler; when a task is due the Scheduler builds a
// Tick and calls Options.Dispatch, which sends it to one worker, to all workers,
// or runs it in the agent itself (Spec.Type), and says how many processes will
// report back. Each of them later reports an Outcome with Scheduler.Report. A
// run is complete when that many outcomes have arrived, or failed when
// Spec.Timeout passes first.
//
// Guarantees:
//
//   - No drift: an Every task is due at start+k*Every, whatever the latency of
//     the loop; a cron task at the cron expression's next time. If the loop falls
//     behind (the process was suspended), the missed times collapse into one run,
//     with a warning.
//   - No overlap: by default, a tick that comes while the previous run of the
//     same task has not completed (or not yet been dispatched) is skipped,
//     counted and logged. Spec.AllowOverlap lets runs overlap.
//   - Never silently lost: every tick ends up as exactly one of a completed run
//     (Status.Runs, of which Status.Failures failed) or a skip (Status.Skips),
//     and every failure and skip is logged. A tick that finds no ready worker
//     (Dispatch returns ErrNoWorker) waits and is retried, up to
//     Options.MaxWait, after which it fails. A dispatched run ends when its
//     outcomes are in or its Timeout passes; the caller reports the ticks of
//     processes that die (see Scheduler.Report).
//   - Continuity across schedulers: Options.Clock is given the Clock (each
//     task's last tick) before the ticks it covers are dispatched, and a
//     successor given it (Scheduler.Resume) makes each later tick once: the
//     ones missed in between late, within the catch-up bounds (CatchUpWindow,
//     MaxCatchUp), then the rest on the same grid.
//
// Time comes from the time package (time.Now, time.NewTimer); tests run the
// scheduler inside a testing/synctest bubble, whose fake clock makes them
// deterministic.
package schedule

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/robfig/cron/v3"
)

// Type says where a scheduled task runs.
type Type int

const (
	// OneWorker runs each tick in one worker, chosen by the dispatcher.
	OneWorker Type = iota
	// AllWorkers runs each tick in every worker.
	AllWorkers
	// Agent runs each tick in the agent process.
	Agent
	// OneInFleet runs each tick in one worker of one member of a fleet: the
	// dispatcher claims the tick, and a tick claimed elsewhere ends with
	// ErrElsewhere. Give its Every tasks Aligned ticks, so members agree.
	OneInFleet
)

// String returns "one-worker", "all-workers", "agent" or "one-in-fleet"
// ("Type(n)" otherwise).
func (t Type) String() string {
	switch t {
	case OneWorker:
		return "one-worker"
	case AllWorkers:
		return "all-workers"
	case Agent:
		return "agent"
	case OneInFleet:
		return "one-in-fleet"
	}
	return "Type(" + strconv.Itoa(int(t)) + ")"
}

// Spec describes one scheduled task.
type Spec struct {
	// Name identifies the task: unique, required, made of [A-Za-z0-9._-].
	Name string
	// Every runs the task at start+Every, start+2*Every, ... Set exactly one of
	// Every and Cron.
	Every time.Duration
	// Cron runs the task at the times of a cron expression, with an optional
	// leading seconds field ("*/10 * * * * *" or "0 3 * * *"), descriptors
	// ("@hourly", "@every 5s") and an optional time zone prefix
	// ("CRON_TZ=Asia/Shanghai 0 9 * * *", or "TZ="). Without a prefix the
	// expression is read in time.Local. Time zone names need the system's tz
	// database or an import of time/tzdata in the program.
	Cron string
	// Type says where each run happens.
	Type Type
	// Immediate also runs the task once when the scheduler starts.
	Immediate bool
	// Disable registers the task (it is listed and can be run with RunNow) but
	// never runs it on its schedule, nor at start.
	Disable bool
	// Timeout fails a run whose outcomes have not all arrived this long after it
	// was dispatched; the task is then free to run again and late outcomes are
	// ignored. Zero means no timeout: the run lasts until its outcomes arrive
	// (see Scheduler.Report about processes that die).
	Timeout time.Duration
	// AllowOverlap lets a tick start a run while earlier runs of the task are
	// still in flight. By default such a tick is skipped.
	AllowOverlap bool
	// Aligned puts an Every task's ticks on the multiples of Every since the
	// Unix epoch instead of start+k*Every, so that schedulers in different
	// processes (members of a fleet) agree on each tick's time.
	Aligned bool
}

var validName = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)

// cronParser accepts 5 or 6 fields (seconds optional) and descriptors.
var cronParser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour |
	cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Validate reports the first problem with the spec, as an error naming the task,
// or nil if the spec can be scheduled. A bad cron expression's error wraps the
// parser's.
func (s Spec) Validate() error {
	_, err := s.parse()
	return err
}

// parse validates the spec and returns its cron schedule (nil for Every).
func (s Spec) parse() (cron.Schedule, error) {
	switch {
	case s.Name == "":
		return nil, errors.New("schedule: Name is required")
	case !validName.MatchString(s.Name):
		return nil, fmt.Errorf("schedule %q: Name must only use letters, digits, '.', '_' and '-'", s.Name)
	case s.Every < 0:
		return nil, fmt.Errorf("schedule %q: Every must be positive, got %v", s.Name, s.Every)
	case (s.Every > 0) == (s.Cron != ""):
		return nil, fmt.Errorf("schedule %q: set exactly one of Every and Cron", s.Name)
	case s.Type < OneWorker || s.Type > OneInFleet:
		return nil, fmt.Errorf("schedule %q: unknown %v", s.Name, s.Type)
	case s.Timeout < 0:
		return nil, fmt.Errorf("schedule %q: Timeout must not be negative, got %v", s.Name, s.Timeout)
	case s.Cron == "":
		return nil, nil
	}
	sched, err := parseCron(s.Cron)
	if err != nil {
		return nil, fmt.Errorf("schedule %q: cron %q: %w", s.Name, s.Cron, err)
	}
	return sched, nil
}

// parseCron parses text with cronParser, turning the parser's panics (a time
// zone prefix with nothing after it) into errors.
func parseCron(text string) (sched cron.Schedule, err error) {
	hasTZ := strings.HasPrefix(text, "TZ=") || strings.HasPrefix(text, "CRON_TZ=")
	if hasTZ && !strings.Contains(text, " ") {
		return nil, errors.New("time zone prefix must be followed by a space and an expression")
	}
	defer func() {
		if p := recover(); p != nil {
			sched, err = nil, fmt.Errorf("invalid expression (%v)", p)
		}
	}()
	return cronParser.Parse(text)
}
