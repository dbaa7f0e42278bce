package schedule

import (
	"errors"
	"log/slog"
	"time"
)

// maxResumeAge bounds how old a Mark may be to be resumed from; older (or
// zero) marks are ignored, which also keeps the grid arithmetic of nextAfter
// clear of time.Duration's saturation (292 years).
const maxResumeAge = 100 * 365 * 24 * time.Hour

// Resume makes Run continue the schedules where c, the Clock of a scheduler
// that ran before this one (the agent this one takes over from), left them,
// instead of starting them afresh. For each enabled task with a Mark in c made
// for the same Every, Cron and Aligned:
//
//   - the ticks that came due after Mark.Last and up to Run's start are made
//     late, once each, in order of their nominal times, and one at a time (each
//     once the previous run is complete) unless the task allows overlap; only
//     those due within the catch-up window (max(2 × interval, CatchUpWindow)
//     before Run's start), at most MaxCatchUp of them; the others are skipped
//     and logged;
//   - the next tick is the first nominal tick after Run's start, on the grid of
//     Mark.Last for an Every task, so the successor's ticks continue the
//     predecessor's (no drift across the replacement); a tick that comes due
//     while a late run is in flight or late ticks remain joins them (it is not
//     skipped for overlapping: the scheduler is behind, not the task), within
//     the same window from Run's start and MaxCatchUp; after the window, such
//     a tick is skipped as a tick during a run in flight is;
//   - Immediate does not run: the task is not starting, it is continuing.
//
// Tasks without a Mark, or whose Mark was made for another timing, start as if
// Resume had not been called; marks of unknown tasks are ignored, as are marks
// in the future (the wall clock went back) or older than a century. Resume must be called before Run; afterwards it fails.
func (s *Scheduler) Resume(c Clock) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("schedule: Resume called after Run")
	}
	s.resume = make(map[string]Mark, len(c))
	for _, m := range c {
		s.resume[m.Task] = m
	}
	return nil
}

// resumeTask continues t from last at now (Run's start): it sets t.last,
// t.backlog and t.next. It reports false, changing nothing, for a mark it does
// not resume from. Called with s.mu held.
func (s *Scheduler) resumeTask(t *task, last, now time.Time) (bool, []note) {
	if last.IsZero() || now.Sub(last) >= maxResumeAge {
		return false, nil
	}
	interval := t.spec.Every
	first := t.nextAfter(last, last)
	if t.cron != nil && !first.IsZero() {
		if second := t.cron.Next(first); !second.IsZero() {
			interval = second.Sub(first)
		}
	}
	if first.IsZero() || last.After(now) {
		// The cron expression has no time after last, or last is in the
		// future (the wall clock went back): start afresh.
		return false, nil
	}
	t.last = last
	window := max(2*interval, CatchUpWindow)
	cutoff := now.Add(-window)
	at := first
	if at.Before(cutoff) {
		at = t.nextAfter(last, cutoff.Add(-time.Nanosecond)) // the first tick at or after cutoff
	}
	older := !first.Equal(at) // ticks before the window are skipped
	for !at.IsZero() && !at.After(now) && len(t.backlog) < MaxCatchUp {
		t.backlog = append(t.backlog, at)
		at = t.nextAfter(last, at)
	}
	further := !at.IsZero() && !at.After(now) // beyond MaxCatchUp
	if further {
		at = t.nextAfter(last, now)
	}
	t.next = at
	if len(t.backlog) > 0 {
		t.lateUntil = now.Add(window)
	}
	args := []any{"schedule", t.spec.Name, "last", last, "catch_up", len(t.backlog), "next", t.next}
	notes := []note{{slog.LevelInfo, "schedule resumed from the previous agent's clock", args}}
	if older || further {
		notes = append(notes, note{slog.LevelWarn, "missed ticks beyond the catch-up bound are skipped",
			[]any{"schedule", t.spec.Name, "first_missed", first, "window", window, "max_catch_up", MaxCatchUp}})
	}
	if t.next.IsZero() {
		notes = append(notes, note{slog.LevelWarn, "cron expression has no next time; the task will not run on its schedule again",
			[]any{"schedule", t.spec.Name, "cron", t.spec.Cron}})
	}
	return true, notes
}

// nextAfter is the first nominal time of t's schedule after x: the cron
// expression's next time, or for an Every task the first time after x on the
// grid through grid (x must not be before grid). Zero: none.
func (t *task) nextAfter(grid, x time.Time) time.Time {
	if t.cron != nil {
		return t.cron.Next(x)
	}
	every := t.spec.Every
	return grid.Add((x.Sub(grid)/every + 1) * every)
}

// catchUp makes t's late ticks that can start now: the oldest one if no run of
// t is in flight, or all of them if t allows overlap. Called with s.mu held.
func (s *Scheduler) catchUp(t *task, now time.Time) []note {
	var notes []note
	for len(t.backlog) > 0 && (len(t.runs) == 0 || t.spec.AllowOverlap) {
		at := t.backlog[0]
		t.backlog = t.backlog[1:]
		if len(t.backlog) == 0 {
			t.backlog = nil
		}
		notes = append(notes, note{slog.LevelInfo, "schedule tick runs late, catching up after the agent's replacement",
			[]any{"schedule", t.spec.Name, "due", at, "late", now.Sub(at)}})
		notes = append(notes, s.tick(t, at, now)...)
		t.lateSeq = t.seq
		s.advance(t, at, true)
	}
	return notes
}

// joinCatchUp queues a tick of t's schedule, due at at, behind the late ticks
// if t is catching up: a late run is in flight or late ticks remain, the
// catch-up window that began at Run's start has not passed, and the backlog
// has room. Catching up is the agent being behind, not the task: its ticks
// are not skipped for overlapping a late run. It reports whether it queued
// the tick. Called with s.mu held.
func (s *Scheduler) joinCatchUp(t *task, at, now time.Time) bool {
	switch {
	case t.spec.AllowOverlap || !now.Before(t.lateUntil) || len(t.backlog) >= MaxCatchUp:
		return false
	case len(t.backlog) == 0 && (len(t.runs) == 0 || t.runs[len(t.runs)-1].tick.Seq != t.lateSeq || t.runs[len(t.runs)-1].origin != 0):
		return false
	}
	t.backlog = append(t.backlog, at)
	return true
}

// advance moves t's mark to at, the nominal time of a tick just made. A tick
// of the schedule made while late ticks remain does not move it: the mark
// must not pass a tick that has not started. Called with s.mu held.
func (s *Scheduler) advance(t *task, at time.Time, late bool) {
	if !late && len(t.backlog) > 0 {
		return
	}
	if at.After(t.last) {
		t.last = at
		s.clockMoved = true
	}
}

// clockLocked is the scheduler's Clock. Called with s.mu held.
func (s *Scheduler) clockLocked() Clock {
	c := make(Clock, 0, len(s.tasks))
	for _, t := range s.tasks { // sorted by name
		if !t.last.IsZero() {
			c = append(c, Mark{Task: t.spec.Name, Every: t.spec.Every, Cron: t.spec.Cron, Aligned: t.spec.Aligned, Last: t.last})
		}
	}
	return c
}
