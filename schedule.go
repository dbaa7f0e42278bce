package brood

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/schedule"
	"github.com/brood-go/brood/internal/wire"
)

// ScheduleType says where a scheduled task runs (egg-schedule's "type").
type ScheduleType int

// Schedule types.
const (
	// OneWorker runs each tick in one ready worker, round robin over the
	// workers (egg-schedule's type "worker").
	OneWorker ScheduleType = iota
	// AllWorkers runs each tick in every ready worker (egg-schedule's "all").
	AllWorkers
	// InAgent runs each tick in the agent.
	InAgent
	// OneInFleet runs each tick once in the whole fleet (Config.Fleet): on
	// one worker of one member. The agent of every member ticks; each claims
	// the tick (task name and nominal time) in the fleet's key-value store,
	// and only the member that wins runs it, on one of its workers; the
	// others count it as a skip and log it at info level. An Every task of
	// this type ticks at the multiples of Every since the Unix epoch (cron
	// times are absolute already), so members agree on each tick as long as
	// their clocks agree to within a fraction of Every. A claim the server
	// does not confirm within 2s is not run: a tick may be lost while the
	// fleet's server is unreachable, it never runs twice. A cluster that is
	// not in a fleet is a fleet of one: OneInFleet runs like OneWorker. A
	// run asked by hand (`schedule run`, RunSchedule) runs on this member,
	// unclaimed. The agent's scheduler claims one tick at a time, so a slow
	// server delays the other tasks' ticks by up to those 2s.
	OneInFleet
)

func (t ScheduleType) String() string { return schedule.Type(t).String() }

// Schedule is a task run on a timer, in the egg-schedule model: the agent owns
// the clock and triggers each tick; the task runs where Type says; the worker
// that ran it reports the outcome and duration to the agent.
//
// A tick while the previous run of the same task is still running is skipped
// and logged, unless AllowOverlap. A tick when no worker is ready waits for one
// (up to a minute) instead of being lost. A panic in Task is a guarded panic
// (see Process.Go): it is reported as the run's error, and the worker is
// replaced gracefully.
//
// Across agents: an agent that replaces another (reload, a restart after a
// crash, the master's in-place upgrade) continues the schedule clock of the
// one before it. The agent reports to the master, as each tick starts (before
// it is sent to a worker or run), the tick's nominal time; the master keeps
// the latest and hands it to the next agent before that agent's schedules
// start. So each tick of an Every or Cron task is started once, with one
// exception: a tick the agent had started when it was killed (SIGKILL, a
// crash) is not started again, even if its run was cut short (an InAgent run
// dies with the agent). The ticks that came due while no agent ran (the
// replacement gap) run late, once each, in order of their nominal times
// (TickTime), one at a time unless AllowOverlap (a tick that comes due while
// they run joins them instead of being skipped), and the schedule goes on on
// the same grid. The catch-up is bounded: only the ticks due within
// max(2 × the interval, 5s) before the new agent's schedules started, at most
// 100 of them; older ones are skipped and logged (after a long outage, a
// thousand ticks do not run). Immediate runs only when a task starts afresh:
// on the cluster's first start, and for a task that is new or whose Every,
// Cron or alignment (Type OneInFleet or not) changed. OneInFleet tasks in a
// fleet are not resumed: their claims already run each tick once in the
// fleet, and the other members ran the ticks of the gap. The no-overlap rule
// holds within one agent: a run still going in a worker when the agent is
// replaced is not known to its successor.
type Schedule struct {
	// Name identifies the task (CLI: `schedule run NAME`): [A-Za-z0-9._-]+.
	Name string
	// Every runs the task every interval, without drift. Set Every or Cron.
	Every time.Duration
	// Cron runs the task at the times of a cron expression (robfig/cron syntax
	// with an optional seconds field, descriptors like "@hourly", and an optional
	// "CRON_TZ=Asia/Shanghai " prefix).
	Cron string
	// Type is where the task runs; OneWorker by default.
	Type ScheduleType
	// Immediate also runs the task once as soon as the cluster is ready (and
	// not again when another agent takes over and continues the clock).
	Immediate bool
	// Disable keeps the task listed and runnable by hand, never on its schedule.
	Disable bool
	// Timeout, if non-zero, fails a run that has not reported within it and
	// frees the task to run again; the context Task gets ends then too.
	Timeout time.Duration
	// AllowOverlap lets runs of this task overlap.
	AllowOverlap bool
	// Task is the work. ctx ends when the process stops or Timeout passes.
	Task func(ctx context.Context, p *Process) error
}

// ScheduleStatus describes a task as `schedule list` and `status --json` show
// it: Name, Type ("worker", "all", "agent"), Every or Cron, Disabled, Running
// (runs in progress), LastRun, LastResult ("ok" or the error), LastDuration
// (seconds), Next, and the counts Runs, Failures and Skips. It is the type the
// CLI reads, defined once in brood's wire contract.
type ScheduleStatus = wire.ScheduleStatus

// scheduleSpecs converts and validates the public schedules.
func scheduleSpecs(list []Schedule) ([]schedule.Spec, error) {
	specs := make([]schedule.Spec, 0, len(list))
	seen := map[string]bool{}
	var errs []error
	for _, s := range list {
		spec := schedule.Spec{
			Name: s.Name, Every: s.Every, Cron: s.Cron, Type: schedule.Type(s.Type),
			Immediate: s.Immediate, Disable: s.Disable, Timeout: s.Timeout, AllowOverlap: s.AllowOverlap,
			Aligned: s.Type == OneInFleet,
		}
		switch err := spec.Validate(); {
		case err != nil:
			errs = append(errs, err)
		case s.Task == nil:
			errs = append(errs, fmt.Errorf("schedule %q: Task is required", s.Name))
		case seen[s.Name]:
			errs = append(errs, fmt.Errorf("schedule %q: the name is used twice", s.Name))
		}
		seen[s.Name] = true
		specs = append(specs, spec)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("brood: Config.Schedules: %w", err)
	}
	return specs, nil
}

// tickMsg is a tick on the wire.
type tickMsg struct {
	Task string    `json:"task"`
	Seq  uint64    `json:"seq"`
	At   time.Time `json:"at"` // the tick's nominal time
}

type tickTimeKey struct{}

// TickTime returns the nominal time of the tick a scheduled Task runs for
// (not when it started: the time its schedule said, the same on every member
// of a fleet for a OneInFleet task), for example to make the task's effects
// idempotent. ok is false outside a Task's ctx and for runs asked by hand
// (`schedule run`).
func TickTime(ctx context.Context) (at time.Time, ok bool) {
	at, ok = ctx.Value(tickTimeKey{}).(time.Time)
	return at, ok && !at.IsZero()
}

// outcomeMsg is an outcome on the wire.
type outcomeMsg struct {
	Task     string  `json:"task"`
	Seq      uint64  `json:"seq"`
	Err      string  `json:"err,omitempty"`
	Duration float64 `json:"duration_seconds"`
	PID      int     `json:"pid"`
}

// taskRunner runs ticks in a worker (or, for InAgent tasks, in the agent).
type taskRunner struct {
	p     *Process
	tasks map[string]Schedule
}

func newTaskRunner(p *Process, list []Schedule) *taskRunner {
	r := &taskRunner{p: p, tasks: make(map[string]Schedule, len(list))}
	for _, s := range list {
		r.tasks[s.Name] = s
	}
	return r
}

// run executes one tick on a goroutine the process waits for at stop, and calls
// report with the outcome. A panic is reported as the run's error, then handled
// as a guarded panic.
func (r *taskRunner) run(t tickMsg, report func(outcomeMsg)) {
	s, ok := r.tasks[t.Task]
	if !ok {
		report(outcomeMsg{Task: t.Task, Seq: t.Seq, Err: "unknown task in this process", PID: os.Getpid()})
		return
	}
	r.p.goroutines.Add(1)
	go func() {
		defer r.p.goroutines.Done()
		ctx := context.WithValue(r.p.ctx, tickTimeKey{}, t.At)
		if s.Timeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, s.Timeout)
			defer cancel()
		}
		start := time.Now()
		out := outcomeMsg{Task: t.Task, Seq: t.Seq, PID: os.Getpid()}
		defer func() {
			if v := recover(); v != nil {
				out.Err = fmt.Sprintf("panic: %v", v)
				out.Duration = time.Since(start).Seconds()
				report(out)
				r.p.fault(fmt.Sprintf("panic in scheduled task %q: %v", t.Task, v), debug.Stack())
			}
		}()
		err := s.Task(ctx, r.p)
		out.Duration = time.Since(start).Seconds()
		if err != nil {
			out.Err = err.Error()
		}
		report(out)
	}()
}

// installWorkerSchedules lets a worker run ticks sent by the agent.
func installWorkerSchedules(p *Process, list []Schedule) {
	if len(list) == 0 {
		return
	}
	r := newTaskRunner(p, list)
	m := p.Messenger()
	m.On(wire.ActScheduleTick, func(msg Message) {
		var t tickMsg
		if err := msg.Decode(&t); err != nil {
			p.log.Error("bad schedule tick", "err", err)
			return
		}
		r.run(t, func(o outcomeMsg) {
			if err := m.tell(ipc.DestAgent, 0, wire.ActScheduleDone, o); err != nil {
				p.log.Error("schedule outcome not sent", "task", o.Task, "seq", o.Seq, "err", err)
			}
		})
	})
}

// agentScheduler is the agent side: the clock, dispatch, and the outcomes.
type agentScheduler struct {
	p      *Process
	sched  *schedule.Scheduler
	runner *taskRunner
	types  map[string]ScheduleType

	claims tickClaims // OneInFleet ticks claimed through the master

	clockBuf []byte // reportClock's encoding buffer (Run's goroutine only)

	mu       sync.Mutex
	rr       int
	inflight map[int][]tickMsg // worker pid -> ticks sent and not reported
}

// installAgentSchedules starts the scheduler in the agent once the cluster is
// ready, and answers the list/run requests.
func installAgentSchedules(p *Process, list []Schedule) error {
	specs, err := scheduleSpecs(list)
	if err != nil {
		return err
	}
	a := &agentScheduler{p: p, runner: newTaskRunner(p, list), types: map[string]ScheduleType{}, inflight: map[int][]tickMsg{}}
	a.claims.install(p)
	for _, s := range list {
		a.types[s.Name] = s.Type
	}
	a.sched, err = schedule.New(specs, schedule.Options{Logger: p.log, Dispatch: a.dispatch, Clock: a.reportClock})
	if err != nil {
		return fmt.Errorf("brood: %w", err)
	}
	m := p.Messenger()
	var startOnce sync.Once
	// The clock of the agent before this one arrives before brood:ready
	// (handlers run one at a time, in order), which starts the scheduler.
	m.On(wire.ActScheduleResume, func(msg Message) { a.resume(msg.Data) })
	m.On(ActionReady, func(Message) {
		startOnce.Do(func() {
			p.Go(func(ctx context.Context) {
				if err := a.sched.Run(ctx); err != nil {
					p.log.Error("scheduler stopped", "err", err)
				}
			})
		})
	})
	m.On(wire.ActScheduleDone, func(msg Message) {
		var o outcomeMsg
		if err := msg.Decode(&o); err == nil {
			a.report(o)
		}
	})
	m.On(ActionWorkerStart, func(Message) { a.sched.WorkersAvailable() })
	m.On(ActionWorkerExit, func(msg Message) {
		var ev ProcessEvent
		if msg.Decode(&ev) != nil {
			return
		}
		a.mu.Lock()
		lost := a.inflight[ev.PID]
		delete(a.inflight, ev.PID)
		a.mu.Unlock()
		for _, t := range lost {
			a.sched.Report(schedule.Outcome{Task: t.Task, Seq: t.Seq, PID: ev.PID, Err: "worker exited before reporting: " + ev.Reason})
		}
	})
	m.On(wire.ActScheduleList, func(msg Message) { msg.Reply(a.list()) })
	m.On(wire.ActScheduleRun, func(msg Message) {
		var name string
		msg.Decode(&name)
		msg.Reply(wire.ErrorReply(a.sched.RunNow(name)))
	})
	p.runSchedule = func(name string) error { return a.sched.RunNow(name) }
	return nil
}

// resume makes the scheduler, which has not started yet, continue the clock of
// the agent before this one (see Scheduler.Resume). OneInFleet tasks in a
// fleet are left out: their ticks are claimed fleet-wide, the other members
// ran those of the gap, and a late claim could outlive the claims' TTL.
func (a *agentScheduler) resume(b []byte) {
	clock, err := schedule.ParseClock(b)
	if err != nil {
		a.p.log.Error("the previous agent's schedule clock is unreadable; the schedules start afresh", "err", err)
		return
	}
	if a.p.Fleet().Enabled() {
		clock = slices.DeleteFunc(clock, func(mk schedule.Mark) bool { return a.types[mk.Task] == OneInFleet })
	}
	if err := a.sched.Resume(clock); err != nil {
		a.p.log.Error("schedule clock not resumed", "err", err)
	}
}

// reportClock sends the scheduler's clock to the master, which keeps it for
// the next agent. It is called before the ticks it covers are dispatched, so
// an agent that dies after dispatching a tick never has it made again.
func (a *agentScheduler) reportClock(c schedule.Clock) {
	a.clockBuf, _ = c.AppendBinary(a.clockBuf[:0])
	if err := a.p.Messenger().tell(ipc.DestMaster, 0, wire.ActScheduleClock, a.clockBuf); err != nil {
		a.p.log.Debug("schedule clock not sent to the master", "err", err)
	}
}

func (a *agentScheduler) dispatch(t schedule.Tick) (int, error) {
	msg := tickMsg{Task: t.Task, Seq: t.Seq}
	if !t.Manual {
		msg.At = t.At
	}
	m := a.p.Messenger()
	if a.types[t.Task] == OneInFleet && a.p.Fleet().Enabled() && !t.Manual {
		if err := a.claims.claim(a.p, t.Task, t.At); err != nil {
			return 0, err
		}
	}
	if a.types[t.Task] == InAgent {
		a.runner.run(msg, a.report)
		return 1, nil
	}
	var ready []int
	for _, mb := range m.Members() {
		if mb.Role == Worker && mb.Ready && !mb.Stopping { // a draining worker would not report the run
			ready = append(ready, mb.PID)
		}
	}
	if len(ready) == 0 {
		return 0, schedule.ErrNoWorker
	}
	targets := ready
	if a.types[t.Task] == OneWorker || a.types[t.Task] == OneInFleet {
		a.mu.Lock()
		a.rr++
		targets = []int{ready[a.rr%len(ready)]}
		a.mu.Unlock()
	}
	sent := 0
	for _, pid := range targets {
		if err := m.tell(ipc.DestPID, uint32(pid), wire.ActScheduleTick, msg); err != nil {
			a.p.log.Warn("schedule tick not sent", "task", t.Task, "seq", t.Seq, "pid", pid, "err", err)
			continue
		}
		a.mu.Lock()
		a.inflight[pid] = append(a.inflight[pid], msg)
		a.mu.Unlock()
		sent++
	}
	if sent == 0 {
		return 0, schedule.ErrNoWorker
	}
	return sent, nil
}

func (a *agentScheduler) report(o outcomeMsg) {
	a.mu.Lock()
	list := a.inflight[o.PID]
	for i, t := range list {
		if t.Task == o.Task && t.Seq == o.Seq {
			a.inflight[o.PID] = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	a.mu.Unlock()
	a.sched.Report(schedule.Outcome{Task: o.Task, Seq: o.Seq, Err: o.Err, PID: o.PID, Duration: time.Duration(o.Duration * float64(time.Second))})
	// The master's event stream records every run (`events`).
	run := wire.ScheduleRun{Task: o.Task, Err: o.Err, Duration: o.Duration, PID: o.PID}
	if err := a.p.Messenger().tell(ipc.DestMaster, 0, wire.ActScheduleRan, run); err != nil {
		a.p.log.Debug("schedule run not reported to the master", "task", o.Task, "err", err)
	}
}

func (a *agentScheduler) list() []ScheduleStatus {
	var out []ScheduleStatus
	for _, s := range a.sched.List() {
		st := ScheduleStatus{
			Name: s.Name, Type: s.Type.String(), Cron: s.Cron, Disabled: s.Disabled, Running: s.Running,
			LastRun: s.LastRun, LastResult: s.LastResult, LastDuration: s.LastDuration.Seconds(), Next: s.Next,
			Runs: s.Runs, Failures: s.Failures, Skips: s.Skips,
		}
		if s.Every > 0 {
			st.Every = s.Every.String()
		}
		out = append(out, st)
	}
	return out
}

// RunSchedule runs the schedule named name now, wherever its Type says, as a
// tick of its own (the overlap rule applies). From a worker it asks the agent.
func (p *Process) RunSchedule(name string) error {
	if p.runSchedule != nil {
		return p.runSchedule(name)
	}
	ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
	defer cancel()
	agent := p.Messenger().AgentPID()
	if agent == 0 {
		return fmt.Errorf("brood: run schedule %q: no agent is running", name)
	}
	reply, err := p.Messenger().request(ctx, agent, wire.ActScheduleRun, name)
	if err != nil {
		return fmt.Errorf("brood: run schedule %q: %w", name, err)
	}
	var body wire.ErrorBody
	if err := reply.Decode(&body); err != nil {
		return err
	}
	if body.Error != "" {
		return errors.New(body.Error)
	}
	return nil
}
