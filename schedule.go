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
// holds across agents too: a new agent asks the workers, before its
// schedules start, which ticks of the agents before it they are still
// running (waiting up to a second for them), and counts those runs as its
// own until they report, so a task does not start while its run sent by the
// previous agent goes on (an InAgent run dies with its agent).
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
	// Agent is the pid of the agent that sent the tick (0 for an InAgent
	// run, and from a worker of an older build): a run that outlived its
	// agent reports to the next one, which inherited it.
	Agent int `json:"agent,omitempty"`
}

// runningMsg is a tick a worker is running, in its answer to
// wire.ActScheduleRunning.
type runningMsg struct {
	Task    string    `json:"task"`
	Seq     uint64    `json:"seq"`
	Agent   int       `json:"agent"` // the pid of the agent that sent it
	At      time.Time `json:"at"`
	Started time.Time `json:"started"`
}

// taskRunner runs ticks in a worker (or, for InAgent tasks, in the agent).
type taskRunner struct {
	p     *Process
	tasks map[string]Schedule

	mu      sync.Mutex
	running map[*runningMsg]struct{} // the ticks being run, until reported
}

func newTaskRunner(p *Process, list []Schedule) *taskRunner {
	r := &taskRunner{p: p, tasks: make(map[string]Schedule, len(list)), running: map[*runningMsg]struct{}{}}
	for _, s := range list {
		r.tasks[s.Name] = s
	}
	return r
}

// inFlight lists the ticks being run, oldest first.
func (r *taskRunner) inFlight() []runningMsg {
	r.mu.Lock()
	out := make([]runningMsg, 0, len(r.running))
	for t := range r.running {
		out = append(out, *t)
	}
	r.mu.Unlock()
	slices.SortFunc(out, func(a, b runningMsg) int { return a.Started.Compare(b.Started) })
	return out
}

// run executes one tick, sent by the agent of pid agent (0: this process is
// the agent), on a goroutine the process waits for at stop, and calls report
// with the outcome. A panic is reported as the run's error, then handled as a
// guarded panic. Until it has reported, the tick is in inFlight.
func (r *taskRunner) run(t tickMsg, agent int, report func(outcomeMsg)) {
	s, ok := r.tasks[t.Task]
	if !ok {
		report(outcomeMsg{Task: t.Task, Seq: t.Seq, Err: "unknown task in this process", PID: os.Getpid(), Agent: agent})
		return
	}
	rm := &runningMsg{Task: t.Task, Seq: t.Seq, Agent: agent, At: t.At, Started: time.Now()}
	r.mu.Lock()
	r.running[rm] = struct{}{}
	r.mu.Unlock()
	inner := report
	report = func(o outcomeMsg) {
		r.mu.Lock()
		delete(r.running, rm)
		r.mu.Unlock()
		inner(o)
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
		out := outcomeMsg{Task: t.Task, Seq: t.Seq, PID: os.Getpid(), Agent: agent}
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
		r.run(t, msg.From, func(o outcomeMsg) {
			if err := m.tell(ipc.DestAgent, 0, wire.ActScheduleDone, o); err != nil {
				p.log.Error("schedule outcome not sent", "task", o.Task, "seq", o.Seq, "err", err)
			}
		})
	})
	m.On(wire.ActScheduleRunning, func(msg Message) { msg.Reply(r.inFlight()) })
}

// agentScheduler is the agent side: the clock, dispatch, and the outcomes.
type agentScheduler struct {
	p      *Process
	sched  *schedule.Scheduler
	runner *taskRunner
	types  map[string]ScheduleType

	claims tickClaims // OneInFleet ticks claimed through the master

	clockBuf []byte // reportClock's encoding buffer (Run's goroutine only)

	resumed bool // a previous agent's clock was handed over (before Run)

	mu       sync.Mutex
	rr       int
	inflight map[int][]tickMsg // worker pid -> ticks sent and not reported
	// The previous agents' runs still going in workers (see inherit), by
	// worker pid; and, while inherit runs, the outcomes of such runs that
	// came before it had registered them.
	inherited  map[int][]runningMsg
	inheriting bool
	early      map[runningKey]bool
}

// runningKey identifies a run across agents.
type runningKey struct {
	task       string
	seq        uint64
	agent, pid int
}

// installAgentSchedules starts the scheduler in the agent once the cluster is
// ready, and answers the list/run requests.
func installAgentSchedules(p *Process, list []Schedule) error {
	specs, err := scheduleSpecs(list)
	if err != nil {
		return err
	}
	a := &agentScheduler{p: p, runner: newTaskRunner(p, list), types: map[string]ScheduleType{}, inflight: map[int][]tickMsg{},
		inherited: map[int][]runningMsg{}, early: map[runningKey]bool{}}
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
				if a.resumed {
					a.inherit(ctx)
				}
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
		lost, lostInherited := a.inflight[ev.PID], a.inherited[ev.PID]
		delete(a.inflight, ev.PID)
		delete(a.inherited, ev.PID)
		a.mu.Unlock()
		why := "worker exited before reporting: " + ev.Reason
		for _, t := range lost {
			a.sched.Report(schedule.Outcome{Task: t.Task, Seq: t.Seq, PID: ev.PID, Err: why})
		}
		for _, t := range lostInherited {
			a.sched.Report(schedule.Outcome{Task: t.Task, Seq: t.Seq, PID: ev.PID, Origin: t.Agent, Err: why})
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
		return
	}
	a.resumed = true
}

// inheritWait bounds how long a new agent's scheduler waits, at its start,
// for the workers to say which ticks they are running.
const inheritWait = time.Second

// inherit asks every ready worker which ticks of the agents before this one
// it is still running, and makes them runs in flight of this scheduler
// (Scheduler.Inherit): a task without AllowOverlap does not start again
// while its run goes on in a worker, whichever agent sent it. Called before
// Run. A worker that does not answer within inheritWait (its handlers are
// busy, or it is of an older build) is logged and left out.
func (a *agentScheduler) inherit(ctx context.Context) {
	m := a.p.Messenger()
	self := os.Getpid()
	ctx, cancel := context.WithTimeout(ctx, inheritWait)
	defer cancel()
	a.mu.Lock()
	a.inheriting = true
	a.mu.Unlock()
	var wg sync.WaitGroup
	for _, mb := range m.Members() {
		if mb.Role != Worker || !mb.Ready {
			continue
		}
		wg.Go(func() {
			reply, err := m.request(ctx, mb.PID, wire.ActScheduleRunning, nil)
			var runs []runningMsg
			if err == nil {
				err = reply.Decode(&runs)
			}
			if err != nil {
				a.p.log.Warn("schedule runs of the previous agent not known: a task may overlap its run in this worker", "worker_pid", mb.PID, "err", err)
				return
			}
			for _, rm := range runs {
				if rm.Agent == 0 || rm.Agent == self {
					continue
				}
				// Under a.mu, so that report sees the run either
				// inherited in both places or not at all (then it is
				// early). The scheduler calls nothing back with its lock
				// held, so a.mu before its lock is safe.
				a.mu.Lock()
				k := runningKey{rm.Task, rm.Seq, rm.Agent, mb.PID}
				if a.early[k] {
					delete(a.early, k)
				} else {
					a.inherited[mb.PID] = append(a.inherited[mb.PID], rm)
					a.sched.Inherit(schedule.Inherited{Task: rm.Task, Seq: rm.Seq, Origin: rm.Agent, PID: mb.PID, At: rm.At, Started: rm.Started})
				}
				a.mu.Unlock()
			}
		})
	}
	wg.Wait()
	a.mu.Lock()
	a.inheriting = false
	clear(a.early)
	a.mu.Unlock()
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
		a.runner.run(msg, 0, a.report)
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
	out := schedule.Outcome{Task: o.Task, Seq: o.Seq, Err: o.Err, PID: o.PID, Duration: time.Duration(o.Duration * float64(time.Second))}
	a.mu.Lock()
	if o.Agent != 0 && o.Agent != os.Getpid() {
		// A run an agent before this one sent: inherited, or about to be.
		out.Origin = o.Agent
		list := a.inherited[o.PID]
		i := slices.IndexFunc(list, func(t runningMsg) bool { return t.Task == o.Task && t.Seq == o.Seq && t.Agent == o.Agent })
		if i >= 0 {
			a.inherited[o.PID] = slices.Delete(list, i, i+1)
		} else if a.inheriting {
			a.early[runningKey{o.Task, o.Seq, o.Agent, o.PID}] = true
		}
	} else {
		list := a.inflight[o.PID]
		for i, t := range list {
			if t.Task == o.Task && t.Seq == o.Seq {
				a.inflight[o.PID] = append(list[:i:i], list[i+1:]...)
				break
			}
		}
	}
	a.mu.Unlock()
	a.sched.Report(out)
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
