package schedule

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/robfig/cron/v3"
)

// Errors callers can test for with errors.Is.
var (
	// ErrNoWorker is what Options.Dispatch returns (possibly wrapped) when no
	// process can take the tick right now. The tick is not lost: it waits and is
	// retried, up to Options.MaxWait.
	ErrNoWorker = errors.New("no worker ready")
	// ErrElsewhere is what Options.Dispatch returns (possibly wrapped) for a
	// tick that runs somewhere else (another member of a fleet claimed it):
	// it ends as a skip, logged at info level, and is not retried.
	ErrElsewhere = errors.New("the tick runs elsewhere")
	// ErrUnknownTask is returned by RunNow for a name that was not registered.
	ErrUnknownTask = errors.New("unknown schedule")
	// ErrAlreadyRunning is returned by RunNow when a run of the task is in flight
	// and the task does not allow overlap.
	ErrAlreadyRunning = errors.New("already running")
	// ErrStopped is returned by RunNow once Run has returned.
	ErrStopped = errors.New("scheduler stopped")
)

// Defaults for Options.
const (
	// DefaultMaxWait is how long a tick waits for a worker unless
	// Options.MaxWait says otherwise.
	DefaultMaxWait = time.Minute
	// DefaultRetryInterval is how often a waiting tick is retried unless
	// Options.RetryInterval says otherwise.
	DefaultRetryInterval = time.Second
)

// idleWait bounds the loop's wait when nothing is due, so the loop always waits
// on exactly one timer.
const idleWait = time.Hour

// Tick asks for one run of a task. Dispatch sends it to where the task runs.
type Tick struct {
	Task string    // Spec.Name
	Seq  uint64    // 1, 2, ... per task; a retried tick keeps its Seq
	At   time.Time // when the tick was due (for RunNow, when it was asked for)
	Type Type      // Spec.Type
	// Manual is true for ticks made by RunNow.
	Manual bool
}

// Outcome is one process's report on a Tick, given to Scheduler.Report.
type Outcome struct {
	Task string // Tick.Task
	Seq  uint64 // Tick.Seq
	// Err is the task's error, empty on success. With Skipped, it is the reason.
	Err string
	// Skipped means the process did not run the task (it was stopping, say).
	Skipped bool
	// Duration is how long the task ran in that process.
	Duration time.Duration
	// PID identifies the process, for logs.
	PID int
	// Origin is zero for a run of this scheduler's, and for a run it
	// inherited the Origin given to Inherit (which scheduler dispatched it).
	Origin int
}

// Inherited is a run that a scheduler before this one dispatched and that a
// process is still running: see Scheduler.Inherit.
type Inherited struct {
	Task    string    // Tick.Task
	Seq     uint64    // the Tick.Seq of the scheduler that dispatched it
	Origin  int       // which scheduler that was (in brood, its agent's pid); not 0
	PID     int       // the process running it
	At      time.Time // the tick's nominal time
	Started time.Time // when the process began it
}

// Status describes a task for display, as returned by List.
type Status struct {
	Name         string
	Every        time.Duration // Spec.Every
	Cron         string        // Spec.Cron
	Type         Type
	Disabled     bool
	AllowOverlap bool
	Timeout      time.Duration
	// Running counts runs dispatched and not yet complete.
	Running int
	// Waiting counts ticks not yet dispatched (waiting for a worker).
	Waiting int
	// LastRun is when the latest run was dispatched.
	LastRun time.Time
	// LastResult describes the task's latest event: "running", "ok",
	// "error: ...", "timeout after 5s", "skipped: ...", "waiting for a worker",
	// "no worker became ready within 1m0s"; empty before the first tick.
	LastResult string
	// LastDuration is the duration of the latest completed run (the longest
	// reported Outcome.Duration, or the time it took if none was reported).
	LastDuration time.Duration
	// Next is when the task is next due; zero if disabled, before Run, or if
	// the cron expression has no further time.
	Next time.Time
	// Runs counts completed runs (successful or failed), Failures the failed
	// ones, Skips the ticks that did not run. Each tick ends in exactly one of
	// Runs and Skips.
	Runs, Failures, Skips uint64
}

// Options configures a Scheduler.
type Options struct {
	// Logger receives the scheduler's logs; nil discards them.
	Logger *slog.Logger
	// Dispatch hands a tick to where it runs and returns how many processes
	// will report an Outcome for it (1 for OneWorker and Agent, the number of
	// workers for AllWorkers). It returns ErrNoWorker if no process can take it
	// now; any other error fails the run. Required. It is only called from
	// Run's goroutine, one call at a time, with no lock held; it should not
	// block for long, as the loop waits for it.
	Dispatch func(Tick) (int, error)
	// MaxWait bounds how long a tick waits for a worker; after that the run
	// fails. Zero means DefaultMaxWait.
	MaxWait time.Duration
	// RetryInterval is how often a waiting tick is retried; WorkersAvailable
	// retries at once. Zero means DefaultRetryInterval.
	RetryInterval time.Duration
	// Clock, if set, is given the scheduler's Clock each time it moves: at
	// Run's start (the origins of the schedules started afresh), and when
	// Run makes a tick from a schedule (to dispatch, or skipped because a run
	// is in flight), before that tick is dispatched, so that a successor given
	// that Clock (Resume) never makes a tick this scheduler has started. It is
	// called from Run's goroutine, one call at a time, with no lock held, at
	// most once per pass of the loop; it should not block.
	Clock func(Clock)
}

// Scheduler runs tasks on their schedules. Its methods are safe for concurrent
// use; Run must be called once, and drives everything time-related.
type Scheduler struct {
	log      *slog.Logger
	dispatch func(Tick) (int, error)
	maxWait  time.Duration
	retry    time.Duration
	wake     chan struct{} // nudges Run after RunNow, WorkersAvailable and a catch-up run's Report
	onClock  func(Clock)

	mu         sync.Mutex
	tasks      []*task // sorted by name
	byName     map[string]*task
	started    bool
	stopped    bool
	resume     map[string]Mark // given by Resume, applied by Run's start
	clockMoved bool            // a task's last moved since onClock was last called
}

type task struct {
	spec Spec
	cron cron.Schedule // nil for Every
	next time.Time     // zero: never (disabled, not started, cron exhausted)
	seq  uint64
	runs []*run // in flight: inherited ones (see Inherit) first, then in Seq order

	// last is the nominal time of the latest tick made from the schedule
	// (its Mark in the Clock), or before the first the schedule's origin
	// (see start); zero before Run. backlog holds the ticks
	// a resumed task is still to run late, oldest first; until lateUntil, a
	// tick due while the late run lateSeq is in flight joins them.
	last      time.Time
	backlog   []time.Time
	lateUntil time.Time
	lateSeq   uint64

	lastRun      time.Time
	lastResult   string
	lastDuration time.Duration
	runsDone     uint64
	failures     uint64
	skips        uint64
}

type runState int

const (
	queued      runState = iota // to be dispatched: first attempt or retry
	dispatching                 // Dispatch is being called
	running                     // dispatched, outcomes expected
)

type run struct {
	task      *task
	tick      Tick
	state     runState
	queuedAt  time.Time
	retryAt   time.Time // zero: as soon as possible
	waiting   bool      // Dispatch returned ErrNoWorker at least once
	startedAt time.Time
	deadline  time.Time // zero: no timeout

	expected, reported, failed, skipped int
	firstErr, firstSkip                 string
	longest                             time.Duration

	origin, pid int // an inherited run (see Inherit): origin is not 0
}

// note is a log record built under the lock and written after it is released.
type note struct {
	level slog.Level
	msg   string
	args  []any
}

// New returns a Scheduler for specs. It validates every spec and rejects
// duplicate names, returning all the problems found at once.
func New(specs []Spec, opts Options) (*Scheduler, error) {
	if opts.Dispatch == nil {
		return nil, errors.New("schedule: Options.Dispatch is required")
	}
	s := &Scheduler{
		log:      opts.Logger,
		dispatch: opts.Dispatch,
		maxWait:  orDuration(opts.MaxWait, DefaultMaxWait),
		retry:    orDuration(opts.RetryInterval, DefaultRetryInterval),
		wake:     make(chan struct{}, 1),
		onClock:  opts.Clock,
		byName:   make(map[string]*task, len(specs)),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	var errs []error
	for _, spec := range specs {
		c, err := spec.parse()
		switch {
		case err != nil:
			errs = append(errs, err)
		case s.byName[spec.Name] != nil:
			errs = append(errs, fmt.Errorf("schedule %q: duplicate name", spec.Name))
		default:
			t := &task{spec: spec, cron: c}
			s.byName[spec.Name] = t
			s.tasks = append(s.tasks, t)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	slices.SortFunc(s.tasks, func(a, b *task) int { return strings.Compare(a.spec.Name, b.spec.Name) })
	return s, nil
}

// orDuration returns d if it is positive, def otherwise.
func orDuration(d, def time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return def
}

// Run is the scheduling loop: it starts the schedules (and Immediate runs) at
// the current time, dispatches due ticks, retries waiting ones and
// enforces MaxWait and Timeout. It returns nil when ctx is done, or an error
// if called twice. It starts no goroutine. Runs in flight when it returns are
// left as they are; RunNow fails with ErrStopped afterwards.
func (s *Scheduler) Run(ctx context.Context) error {
	if err := s.start(); err != nil {
		return err
	}
	defer s.stop()
	for ctx.Err() == nil {
		batch, wakeAt, clock := s.collect()
		if clock != nil {
			s.onClock(clock) // before the ticks it covers are dispatched
		}
		for _, r := range batch {
			n, err := s.dispatch(r.tick)
			s.dispatched(r, n, err)
		}
		if len(batch) > 0 {
			continue // time has moved on; look again before waiting
		}
		timer := time.NewTimer(time.Until(wakeAt))
		select {
		case <-ctx.Done():
		case <-timer.C:
		case <-s.wake:
		}
		timer.Stop()
	}
	return nil
}

func (s *Scheduler) start() error {
	s.mu.Lock()
	if s.started {
		s.mu.Unlock()
		return errors.New("schedule: Run called twice")
	}
	s.started = true
	now := time.Now()
	var notes []note
	for _, t := range s.tasks {
		if t.spec.Disable {
			continue
		}
		if m, ok := s.resume[t.spec.Name]; ok && m.matches(t.spec) {
			if resumed, rn := s.resumeTask(t, m.Last, now); resumed {
				notes = append(notes, rn...)
				continue
			}
		}
		// The schedule starts at now. Its origin (now, or for an Aligned
		// task the multiple of Every at or before now) is its Mark until
		// the first tick, so that a successor continues the grid: an agent
		// replaced more often than its task's interval must not restart
		// the wait for the first tick each time, or the task never runs.
		switch {
		case t.cron == nil && t.spec.Aligned:
			t.next = alignedNext(now, t.spec.Every)
			t.last = t.next.Add(-t.spec.Every)
		case t.cron == nil:
			t.next = now.Add(t.spec.Every)
			t.last = now
		default:
			t.next = t.cron.Next(now)
			t.last = now
		}
		if t.next.IsZero() {
			notes = append(notes, note{slog.LevelWarn, "cron expression has no next time; the task will not run on its schedule",
				[]any{"schedule", t.spec.Name, "cron", t.spec.Cron}})
		}
		if t.spec.Immediate {
			notes = append(notes, s.tick(t, now, now)...)
		}
	}
	s.clockMoved = true // the origins, and the marks resumed from
	n := len(s.tasks)
	s.mu.Unlock()
	s.log.Info("scheduler started", "tasks", n)
	s.emit(notes)
	return nil
}

// alignedNext is the first multiple of every since the Unix epoch after now.
func alignedNext(now time.Time, every time.Duration) time.Time {
	n := now.UnixNano()
	return time.Unix(0, (n/int64(every)+1)*int64(every))
}

func (s *Scheduler) stop() {
	s.mu.Lock()
	s.stopped = true
	s.mu.Unlock()
}

// collect handles everything due at the current time: it makes the ticks of due
// schedules and of catch-ups, fails runs past their MaxWait or Timeout, and
// returns the runs to dispatch now (marked dispatching), when to look again,
// and the Clock if it moved and Options.Clock wants it.
func (s *Scheduler) collect() (batch []*run, wakeAt time.Time, clock Clock) {
	s.mu.Lock()
	now := time.Now()
	wakeAt = now.Add(idleWait)
	soonest := func(t time.Time) {
		if !t.IsZero() && t.Before(wakeAt) {
			wakeAt = t
		}
	}
	var notes []note
	for _, t := range s.tasks {
		// Expire first: a run that ends now frees the task for a tick due now.
		for _, r := range slices.Clone(t.runs) {
			switch {
			case r.state == queued && !now.Before(r.queuedAt.Add(s.maxWait)):
				text := fmt.Sprintf("no worker became ready within %v", s.maxWait)
				notes = append(notes, s.finish(r, failed, text, 0))
			case r.state == running && !r.deadline.IsZero() && !now.Before(r.deadline):
				notes = append(notes, s.timeout(r, now))
			}
		}
		notes = append(notes, s.catchUp(t, now)...)
		if !t.next.IsZero() && !now.Before(t.next) {
			notes = append(notes, s.due(t, now)...)
		}
		soonest(t.next)
		for _, r := range t.runs {
			switch {
			case r.state == queued && !now.Before(r.retryAt):
				r.state = dispatching
				r.startedAt = now
				batch = append(batch, r)
			case r.state == queued:
				soonest(r.retryAt)
				soonest(r.queuedAt.Add(s.maxWait))
			case r.state == running:
				soonest(r.deadline)
			}
		}
	}
	if s.clockMoved && s.onClock != nil {
		clock = s.clockLocked()
	}
	s.clockMoved = false
	s.mu.Unlock()
	s.emit(notes)
	return batch, wakeAt, clock
}

// due makes the tick of t's schedule that is due at now and moves t.next on.
// If several times have passed (the loop fell behind), they make one tick, due
// at the first of them. Called with s.mu held.
func (s *Scheduler) due(t *task, now time.Time) []note {
	at := t.next
	var behind bool
	if t.cron == nil {
		every := t.spec.Every
		t.next = at.Add((now.Sub(at)/every + 1) * every) // on the grid: no drift
		behind = now.Sub(at) >= every
	} else {
		t.next = t.cron.Next(now)
		following := t.cron.Next(at)
		behind = !following.IsZero() && !following.After(now)
	}
	var notes []note
	if t.next.IsZero() {
		notes = append(notes, note{slog.LevelWarn, "cron expression has no next time; the task will not run on its schedule again",
			[]any{"schedule", t.spec.Name, "cron", t.spec.Cron}})
	}
	if s.joinCatchUp(t, at, now) {
		return notes
	}
	s.advance(t, at, false)
	if behind {
		notes = append(notes, note{slog.LevelWarn, "scheduler fell behind; missed times make one run",
			[]any{"schedule", t.spec.Name, "due", at, "now", now}})
	}
	return append(notes, s.tick(t, at, now)...)
}

// tick makes the next tick of t, due at at, and queues it for dispatch, unless
// a run of t is in flight and t does not allow overlap: then it is skipped.
// Called with s.mu held.
func (s *Scheduler) tick(t *task, at, now time.Time) []note {
	t.seq++
	if len(t.runs) > 0 && !t.spec.AllowOverlap {
		prev := t.runs[len(t.runs)-1]
		why := "previous run still running"
		if prev.state == queued {
			why = "previous run still waiting for a worker"
		}
		t.skips++
		t.lastResult = "skipped: " + why
		return []note{{slog.LevelWarn, "schedule tick skipped: " + why,
			[]any{"schedule", t.spec.Name, "seq", t.seq, "previous_seq", prev.tick.Seq}}}
	}
	t.queue(Tick{Task: t.spec.Name, Seq: t.seq, At: at, Type: t.spec.Type}, now)
	return nil
}

func (t *task) queue(tk Tick, now time.Time) {
	t.runs = append(t.runs, &run{task: t, tick: tk, queuedAt: now})
}

// dispatched records what Dispatch said about r.
func (s *Scheduler) dispatched(r *run, n int, err error) {
	s.mu.Lock()
	now := time.Now()
	t := r.task
	args := []any{"schedule", t.spec.Name, "seq", r.tick.Seq}
	var notes []note
	switch {
	case err == nil && n > 0:
		r.state = running
		r.expected = n
		if t.spec.Timeout > 0 {
			r.deadline = r.startedAt.Add(t.spec.Timeout)
		}
		t.lastRun = r.startedAt
		t.lastResult = "running"
		notes = append(notes, note{slog.LevelDebug, "schedule run dispatched",
			append(args, "processes", n, "manual", r.tick.Manual)})
		if r.reported >= r.expected { // the outcomes beat us to it
			notes = append(notes, s.complete(r, now))
		}
	case errors.Is(err, ErrElsewhere):
		notes = append(notes, s.finish(r, elsewhere, "skipped: "+err.Error(), 0))
	case errors.Is(err, ErrNoWorker):
		r.state = queued
		r.retryAt = now.Add(s.retry)
		if !r.waiting {
			r.waiting = true
			t.lastResult = "waiting for a worker"
			notes = append(notes, note{slog.LevelWarn, "no worker ready; the tick waits",
				append(args, "max_wait", s.maxWait)})
		}
	default:
		if err == nil {
			err = fmt.Errorf("%d processes to report and no error", n)
		}
		notes = append(notes, s.finish(r, failed, "error: dispatch: "+err.Error(), 0))
	}
	s.mu.Unlock()
	s.emit(notes)
}

// Report records one process's outcome of a tick. The run completes when as
// many outcomes as Dispatch announced have arrived: it failed if any of them has
// Err set, was skipped if all were Skipped, and succeeded otherwise. Outcomes
// for runs no longer in flight (timed out, already complete, unknown) are
// ignored and logged at debug level.
//
// The scheduler cannot tell that a process died with a tick: the caller must
// report an Outcome with Err for each tick it sent to a process that exited
// before reporting, or a run without Timeout stays in flight (and, without
// AllowOverlap, blocks its task) for ever.
func (s *Scheduler) Report(o Outcome) {
	s.mu.Lock()
	notes := s.report(o)
	t := s.byName[o.Task]
	catchingUp := t != nil && len(t.backlog) > 0
	s.mu.Unlock()
	s.emit(notes)
	if catchingUp {
		s.signal() // the next late tick may start now
	}
}

func (s *Scheduler) report(o Outcome) []note {
	var r *run
	if t := s.byName[o.Task]; t != nil {
		for _, x := range t.runs {
			if x.tick.Seq == o.Seq && x.state != queued && x.origin == o.Origin && (o.Origin == 0 || x.pid == o.PID) {
				r = x
				break
			}
		}
	}
	if r == nil {
		return []note{{slog.LevelDebug, "ignoring the outcome of a run not in flight (timed out, complete or unknown)",
			[]any{"schedule", o.Task, "seq", o.Seq, "pid", o.PID}}}
	}
	r.reported++
	switch {
	case o.Skipped:
		r.skipped++
		if r.firstSkip == "" {
			r.firstSkip = o.Err
		}
	case o.Err != "":
		r.failed++
		if r.firstErr == "" {
			r.firstErr = o.Err
		}
	}
	r.longest = max(r.longest, o.Duration)
	if r.state == running && r.reported >= r.expected {
		return []note{s.complete(r, time.Now())}
	}
	return nil
}

type result int

const (
	succeeded result = iota
	failed
	skipped
	elsewhere // skipped: it runs somewhere else (ErrElsewhere)
)

// complete ends r once all its outcomes are in. Called with s.mu held.
func (s *Scheduler) complete(r *run, now time.Time) note {
	d := r.longest
	if d == 0 {
		d = now.Sub(r.startedAt)
	}
	switch {
	case r.failed > 0:
		text := "error: " + r.firstErr
		if r.expected > 1 {
			text += fmt.Sprintf(" (%d of %d processes failed)", r.failed, r.expected)
		}
		return s.finish(r, failed, text, d)
	case r.skipped == r.reported:
		why := orString(r.firstSkip, "not run by the receiving process")
		return s.finish(r, skipped, "skipped: "+why, d)
	}
	return s.finish(r, succeeded, "ok", d)
}

// timeout ends r, whose outcomes did not all arrive in time, as failed.
func (s *Scheduler) timeout(r *run, now time.Time) note {
	text := fmt.Sprintf("timeout after %v", r.task.spec.Timeout)
	if r.expected > 1 {
		text += fmt.Sprintf(" (%d of %d processes reported)", r.reported, r.expected)
	}
	return s.finish(r, failed, text, now.Sub(r.startedAt))
}

// finish takes r out of flight and accounts for it. Called with s.mu held.
func (s *Scheduler) finish(r *run, res result, text string, d time.Duration) note {
	t := r.task
	t.runs = slices.DeleteFunc(t.runs, func(x *run) bool { return x == r })
	t.lastResult = text
	t.lastDuration = d
	// at, the tick's nominal time, tells which tick of the schedule ended so.
	args := []any{"schedule", t.spec.Name, "seq", r.tick.Seq, "at", r.tick.At, "duration", d}
	switch res {
	case failed:
		t.runsDone++
		t.failures++
		return note{slog.LevelError, "schedule run failed", append(args, "result", text)}
	case skipped:
		t.skips++
		return note{slog.LevelWarn, "schedule run skipped", append(args, "result", text)}
	case elsewhere:
		t.skips++
		return note{slog.LevelInfo, "schedule tick runs elsewhere", append(args, "result", text)}
	}
	t.runsDone++
	return note{slog.LevelInfo, "schedule run finished", args}
}

// orString returns s if it is not empty, def otherwise.
func orString(s, def string) string {
	if s != "" {
		return s
	}
	return def
}

// RunNow asks for a run of the named task now, whether or not it is disabled.
// It returns at once: the tick (Manual, with the task's next Seq) is dispatched
// by Run's loop like any other, so its outcome shows in List and in the logs.
// It fails with ErrUnknownTask (the error lists the known names), with
// ErrAlreadyRunning if a run of the task is in flight and the task does not
// allow overlap, or with ErrStopped once Run has returned. Before Run starts,
// the tick waits for it.
func (s *Scheduler) RunNow(name string) error {
	s.mu.Lock()
	t := s.byName[name]
	var err error
	var seq uint64
	switch {
	case t == nil:
		names := make([]string, len(s.tasks))
		for i, t := range s.tasks {
			names[i] = t.spec.Name
		}
		err = fmt.Errorf("schedule %q: %w (known: %s)", name, ErrUnknownTask, orString(strings.Join(names, ", "), "none"))
	case s.stopped:
		err = fmt.Errorf("schedule %q: %w", name, ErrStopped)
	case len(t.runs) > 0 && !t.spec.AllowOverlap:
		err = fmt.Errorf("schedule %q: %w (seq %d)", name, ErrAlreadyRunning, t.runs[0].tick.Seq)
	default:
		t.seq++
		seq = t.seq
		now := time.Now()
		t.queue(Tick{Task: name, Seq: seq, At: now, Type: t.spec.Type, Manual: true}, now)
	}
	s.mu.Unlock()
	if err != nil {
		return err
	}
	s.log.Info("schedule run requested", "schedule", name, "seq", seq)
	s.signal()
	return nil
}

// Inherit makes a run that a scheduler before this one dispatched, and that
// a process is still running, one of this scheduler's runs in flight: until
// its Outcome (with the same Task, Seq, Origin and PID) is reported, or its
// Timeout from Started passes, the task is running, so that a tick that
// would overlap it is skipped unless AllowOverlap. The no-overlap rule so
// holds across a replacement of the scheduler, not only within one. The
// caller must report an Outcome with Err if the process exits first, as for
// the runs it dispatches. An Origin of 0 or an unknown Task is ignored.
func (s *Scheduler) Inherit(in Inherited) {
	s.mu.Lock()
	t := s.byName[in.Task]
	if t == nil || in.Origin == 0 {
		s.mu.Unlock()
		return
	}
	r := &run{task: t, tick: Tick{Task: in.Task, Seq: in.Seq, At: in.At, Type: t.spec.Type},
		state: running, queuedAt: in.Started, startedAt: in.Started, expected: 1, origin: in.Origin, pid: in.PID}
	if t.spec.Timeout > 0 {
		r.deadline = in.Started.Add(t.spec.Timeout)
	}
	t.runs = append(t.runs, r)
	s.mu.Unlock()
	s.log.Info("schedule run inherited from the previous agent, still running", "schedule", in.Task,
		"seq", in.Seq, "at", in.At, "pid", in.PID, "since", in.Started)
	s.signal() // its timeout may be the loop's next deadline
}

// WorkersAvailable tells the scheduler that a worker became ready: ticks waiting
// for one are retried at once instead of at their next RetryInterval.
func (s *Scheduler) WorkersAvailable() {
	s.mu.Lock()
	for _, t := range s.tasks {
		for _, r := range t.runs {
			if r.state == queued {
				r.retryAt = time.Time{}
			}
		}
	}
	s.mu.Unlock()
	s.signal()
}

// List returns the status of every task, sorted by name.
func (s *Scheduler) List() []Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Status, len(s.tasks))
	for i, t := range s.tasks {
		st := Status{
			Name:         t.spec.Name,
			Every:        t.spec.Every,
			Cron:         t.spec.Cron,
			Type:         t.spec.Type,
			Disabled:     t.spec.Disable,
			AllowOverlap: t.spec.AllowOverlap,
			Timeout:      t.spec.Timeout,
			LastRun:      t.lastRun,
			LastResult:   t.lastResult,
			LastDuration: t.lastDuration,
			Next:         t.next,
			Runs:         t.runsDone,
			Failures:     t.failures,
			Skips:        t.skips,
		}
		for _, r := range t.runs {
			if r.state == queued {
				st.Waiting++
			} else {
				st.Running++
			}
		}
		out[i] = st
	}
	return out
}

// signal wakes Run's loop if it is waiting.
func (s *Scheduler) signal() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Scheduler) emit(notes []note) {
	for _, n := range notes {
		s.log.Log(context.Background(), n.level, n.msg, n.args...)
	}
}
