package schedule_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/brood-go/brood/internal/schedule"
)

// clocks records what Options.Clock is given.
type clocks struct {
	mu   sync.Mutex
	list []schedule.Clock
}

func (c *clocks) record(cl schedule.Clock) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.list = append(c.list, slices.Clone(cl))
}

// latest returns the last Clock given, or nil.
func (c *clocks) latest() schedule.Clock {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.list) == 0 {
		return nil
	}
	return c.list[len(c.list)-1]
}

// lastOf is the Last of task's Mark in c (zero if it has none).
func lastOf(c schedule.Clock, task string) time.Time {
	for _, m := range c {
		if m.Task == task {
			return norm(m.Last)
		}
	}
	return time.Time{}
}

// resumed starts a Scheduler for specs resumed from clock, recording the
// clocks it reports.
func resumed(t *testing.T, specs []schedule.Spec, clock schedule.Clock, opts schedule.Options) (*harness, *clocks) {
	t.Helper()
	cs := &clocks{}
	opts.Clock = cs.record
	h := prepare(t, specs, opts)
	if err := h.s.Resume(clock); err != nil {
		t.Fatalf("Resume: %v", err)
	}
	h.run()
	return h, cs
}

func mark(spec schedule.Spec, last time.Time) schedule.Mark {
	return schedule.Mark{Task: spec.Name, Every: spec.Every, Cron: spec.Cron, Aligned: spec.Aligned, Last: last}
}

func TestResumeNextTickAfterLast(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// The predecessor made the tick due 300ms ago: the next one is due
		// 700ms from now, on its grid, and Immediate does not run again.
		job := schedule.Spec{Name: "job", Every: time.Second, Immediate: true}
		h, cs := resumed(t, []schedule.Spec{job}, schedule.Clock{mark(job, t0.Add(-300*time.Millisecond))}, schedule.Options{})
		h.noTick()
		if got, want := h.status("job").Next, t0.Add(700*time.Millisecond); !got.Equal(want) {
			t.Fatalf("Next = %v, want %v", got, want)
		}
		h.advance(700 * time.Millisecond)
		tk := h.next()
		if want := (schedule.Tick{Task: "job", Seq: 1, At: t0.Add(700 * time.Millisecond)}); tk != want {
			t.Fatalf("got %+v, want %+v", tk, want)
		}
		h.ok(tk)
		if got := lastOf(cs.latest(), "job"); !got.Equal(tk.At) {
			t.Fatalf("clock after the tick: job at %v, want %v", got, tk.At)
		}
		h.advance(time.Second)
		if tk := h.next(); !tk.At.Equal(t0.Add(1700 * time.Millisecond)) {
			t.Fatalf("second tick at %v, want %v", tk.At, t0.Add(1700*time.Millisecond))
		}
	})
}

func TestResumeCatchesUpInOrderOneAtATime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Last made 650ms ago, every 200ms: the ticks due 450, 250 and 50ms
		// ago were missed. They run late, in order, each once the previous
		// one is complete; then the schedule goes on at +150ms.
		job := schedule.Spec{Name: "job", Every: 200 * time.Millisecond}
		last := t0.Add(-650 * time.Millisecond)
		h, cs := resumed(t, []schedule.Spec{job}, schedule.Clock{mark(job, last)}, schedule.Options{})
		for i, ago := range []time.Duration{450, 250, 50} {
			tk := h.next()
			if want := t0.Add(-ago * time.Millisecond); !tk.At.Equal(want) || tk.Seq != uint64(i+1) {
				t.Fatalf("late tick %d: %+v, want seq %d at %v", i, tk, i+1, want)
			}
			if got := lastOf(cs.latest(), "job"); !got.Equal(tk.At) {
				t.Fatalf("late tick %d dispatched with the clock at %v, want %v", i, got, tk.At)
			}
			h.noTick() // the next one waits for this one's outcome
			h.ok(tk)
		}
		h.noTick()
		h.logged("level=INFO", "runs late", "schedule=job")
		h.advance(150 * time.Millisecond)
		if tk := h.next(); !tk.At.Equal(t0.Add(150*time.Millisecond)) || tk.Seq != 4 {
			t.Fatalf("first regular tick: %+v, want seq 4 at %v", tk, t0.Add(150*time.Millisecond))
		}
		if st := h.status("job"); st.Skips != 0 {
			t.Errorf("skips = %d, want 0", st.Skips)
		}
	})
}

func TestResumeAllowOverlapCatchesUpAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		job := schedule.Spec{Name: "job", Every: 200 * time.Millisecond, AllowOverlap: true}
		h, _ := resumed(t, []schedule.Spec{job}, schedule.Clock{mark(job, t0.Add(-650*time.Millisecond))}, schedule.Options{})
		for _, ago := range []time.Duration{450, 250, 50} {
			if tk := h.next(); !tk.At.Equal(t0.Add(-ago * time.Millisecond)) {
				t.Fatalf("late tick at %v, want %v", tk.At, t0.Add(-ago*time.Millisecond))
			}
		}
	})
}

func TestResumeBoundsTheCatchUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// An hour without an agent, every second: only the ticks of the last
		// CatchUpWindow (5s: more than 2 × 1s) run, the rest are skipped and
		// logged.
		job := schedule.Spec{Name: "job", Every: time.Second, AllowOverlap: true}
		h, _ := resumed(t, []schedule.Spec{job}, schedule.Clock{mark(job, t0.Add(-time.Hour))}, schedule.Options{})
		for s := 5; s >= 0; s-- {
			if tk := h.next(); !tk.At.Equal(t0.Add(-time.Duration(s) * time.Second)) {
				t.Fatalf("late tick at %v, want %v", tk.At, t0.Add(-time.Duration(s)*time.Second))
			}
		}
		h.noTick()
		h.logged("level=WARN", "beyond the catch-up bound", "schedule=job")
		if got, want := h.status("job").Next, t0.Add(time.Second); !got.Equal(want) {
			t.Fatalf("Next = %v, want %v", got, want)
		}
	})
}

func TestResumeBoundsTheCatchUpCount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Every 5ms, 1s missed: 200 ticks are due within the window, the
		// first MaxCatchUp run.
		job := schedule.Spec{Name: "job", Every: 5 * time.Millisecond, AllowOverlap: true}
		h, _ := resumed(t, []schedule.Spec{job}, schedule.Clock{mark(job, t0.Add(-time.Second))}, schedule.Options{})
		for i := range schedule.MaxCatchUp {
			want := t0.Add(-time.Second + time.Duration(i+1)*5*time.Millisecond)
			if tk := h.next(); !tk.At.Equal(want) {
				t.Fatalf("late tick %d at %v, want %v", i, tk.At, want)
			}
		}
		h.noTick()
		h.logged("level=WARN", "beyond the catch-up bound", "max_catch_up=100")
		if got, want := h.status("job").Next, t0.Add(5*time.Millisecond); !got.Equal(want) {
			t.Fatalf("Next = %v, want %v", got, want)
		}
	})
}

func TestResumeCron(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Every 10s; last at -20s: -10s and 0 were missed, the window is 2 × 10s.
		job := schedule.Spec{Name: "job", Cron: "*/10 * * * * *"}
		h, _ := resumed(t, []schedule.Spec{job}, schedule.Clock{mark(job, t0.Add(-20*time.Second))}, schedule.Options{})
		for _, at := range []time.Time{t0.Add(-10 * time.Second), t0} {
			tk := h.next()
			if !tk.At.Equal(at) {
				t.Fatalf("late tick at %v, want %v", tk.At, at)
			}
			h.ok(tk)
		}
		h.noTick()
		if got, want := h.status("job").Next, t0.Add(10*time.Second); !got.Equal(want) {
			t.Fatalf("Next = %v, want %v", got, want)
		}
	})
}

func TestResumeChangedSpecStartsAfresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// The mark was made for every 2s; the task is now every 1s: it
		// starts as without a clock (Immediate, then start+1s).
		job := schedule.Spec{Name: "job", Every: time.Second, Immediate: true}
		old := mark(job, t0.Add(-1500*time.Millisecond))
		old.Every = 2 * time.Second
		h, _ := resumed(t, []schedule.Spec{job}, schedule.Clock{old}, schedule.Options{})
		if tk := h.next(); !tk.At.Equal(t0) {
			t.Fatalf("Immediate tick at %v, want %v", tk.At, t0)
		}
		if got, want := h.status("job").Next, t0.Add(time.Second); !got.Equal(want) {
			t.Fatalf("Next = %v, want %v", got, want)
		}
	})
}

func TestResumeUnknownAndNewTasks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// "gone" is not a task any more: ignored, and not in the clock this
		// scheduler reports. "new" has no mark: it starts afresh.
		job := schedule.Spec{Name: "job", Every: time.Second}
		fresh := schedule.Spec{Name: "new", Every: 300 * time.Millisecond}
		gone := schedule.Mark{Task: "gone", Every: time.Second, Last: t0.Add(-100 * time.Millisecond)}
		h, cs := resumed(t, []schedule.Spec{job, fresh},
			schedule.Clock{gone, mark(job, t0.Add(-100*time.Millisecond))}, schedule.Options{})
		h.noTick()
		h.advance(300 * time.Millisecond)
		tk := h.next()
		if tk.Task != "new" || !tk.At.Equal(t0.Add(300*time.Millisecond)) {
			t.Fatalf("got %+v, want new at +300ms", tk)
		}
		c := cs.latest()
		if len(c) != 2 || c[0].Task != "job" || c[1].Task != "new" {
			t.Fatalf("clock %+v, want job (resumed) and new", c)
		}
		if got := lastOf(c, "job"); !got.Equal(t0.Add(-100 * time.Millisecond)) {
			t.Errorf("job's mark %v, want the resumed one", got)
		}
	})
}

func TestResumeTickDuringCatchUpJoinsIt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Two late ticks; the first runs past the next regular tick, which
		// joins the catch-up behind the second instead of being skipped, and
		// does not move the clock until it starts.
		job := schedule.Spec{Name: "job", Every: 200 * time.Millisecond}
		h, cs := resumed(t, []schedule.Spec{job}, schedule.Clock{mark(job, t0.Add(-450*time.Millisecond))}, schedule.Options{})
		first := h.next()
		h.advance(300 * time.Millisecond) // the regular tick at +150ms comes during the first late run
		h.noTick()
		if got := lastOf(cs.latest(), "job"); !got.Equal(first.At) {
			t.Fatalf("clock at %v during the catch-up, want %v", got, first.At)
		}
		h.ok(first)
		for _, at := range []time.Time{t0.Add(-50 * time.Millisecond), t0.Add(150 * time.Millisecond)} {
			tk := h.next()
			if !tk.At.Equal(at) {
				t.Fatalf("late tick at %v, want %v", tk.At, at)
			}
			if got := lastOf(cs.latest(), "job"); !got.Equal(at) {
				t.Fatalf("clock at %v when the tick at %v started", got, at)
			}
			h.noTick()
			h.ok(tk)
		}
		if st := h.status("job"); st.Skips != 0 {
			t.Errorf("skips = %d, want 0", st.Skips)
		}
		h.advance(100 * time.Millisecond)
		if tk := h.next(); !tk.At.Equal(t0.Add(350 * time.Millisecond)) {
			t.Fatalf("regular tick at %v, want +350ms", tk.At)
		}
	})
}

func TestResumeCatchUpOfASlowTaskEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Every 1s, two ticks missed; the first late run lasts 10s. The
		// regular ticks due within the catch-up window (5s from the start)
		// join the catch-up; later ones are skipped, as overlapping ticks are.
		job := schedule.Spec{Name: "job", Every: time.Second}
		h, cs := resumed(t, []schedule.Spec{job}, schedule.Clock{mark(job, t0.Add(-2500*time.Millisecond))}, schedule.Options{})
		first := h.next()
		h.advance(10 * time.Second)
		h.noTick()
		if got := lastOf(cs.latest(), "job"); !got.Equal(first.At) {
			t.Fatalf("clock at %v while the first late run lasts, want %v", got, first.At)
		}
		h.ok(first)
		want := []time.Time{t0.Add(-500 * time.Millisecond)}
		for k := range 5 {
			want = append(want, t0.Add(500*time.Millisecond+time.Duration(k)*time.Second))
		}
		for _, at := range want {
			tk := h.next()
			if !tk.At.Equal(at) {
				t.Fatalf("late tick at %v, want %v", tk.At, at)
			}
			h.ok(tk)
		}
		h.noTick()
		if st := h.status("job"); st.Skips != 5 {
			t.Errorf("skips = %d, want 5 (the ticks at +5.5s .. +9.5s)", st.Skips)
		}
		h.advance(time.Second)
		if tk := h.next(); !tk.At.Equal(t0.Add(10500 * time.Millisecond)) {
			t.Fatalf("regular tick at %v, want +10.5s", tk.At)
		}
	})
}

func TestClockReportedBeforeDispatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Every tick made from a schedule is in the clock before Dispatch
		// sees it, so a successor never makes it again.
		cs := &clocks{}
		var mu sync.Mutex
		var bad []schedule.Tick
		var h *harness
		h = prepare(t, []schedule.Spec{{Name: "a", Every: 100 * time.Millisecond}, {Name: "b", Cron: "* * * * * *"}},
			schedule.Options{Clock: cs.record, Dispatch: func(tk schedule.Tick) (int, error) {
				if !lastOf(cs.latest(), tk.Task).Equal(norm(tk.At)) {
					mu.Lock()
					bad = append(bad, tk)
					mu.Unlock()
				}
				return h.dispatch(tk)
			}})
		h.run()
		for range 30 {
			h.advance(100 * time.Millisecond)
			for len(h.ticks) > 0 {
				h.ok(h.next())
			}
		}
		mu.Lock()
		defer mu.Unlock()
		if len(bad) > 0 {
			t.Fatalf("ticks dispatched before the clock covered them: %+v", bad)
		}
		if err := h.s.Resume(nil); err == nil {
			t.Error("Resume after Run: no error")
		}
	})
}

func TestClockEncoding(t *testing.T) {
	c := schedule.Clock{
		{Task: "a.b_c-1", Every: 200 * time.Millisecond, Last: time.Unix(0, 1_700_000_000_123_456_789).UTC()},
		{Task: "cron", Cron: "CRON_TZ=Asia/Shanghai 0 9 * * *", Last: time.Unix(1_700_000_000, 0).UTC()},
		{Task: "fleet", Every: time.Minute, Aligned: true, Last: time.Unix(-5, 0).UTC()},
	}
	b, err := c.AppendBinary(nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := schedule.ParseClock(b)
	if err != nil {
		t.Fatalf("ParseClock: %v", err)
	}
	if !slices.EqualFunc(got, c, func(a, b schedule.Mark) bool { return a == b }) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, c)
	}
	if c, err := schedule.ParseClock(nil); err != nil || len(c) != 0 {
		t.Errorf("ParseClock(nil) = %v, %v; want empty", c, err)
	}
	for name, bad := range map[string][]byte{
		"version":   append([]byte{2}, b[1:]...),
		"truncated": b[:len(b)-1],
		"trailing":  append(bytes.Clone(b), 0),
		"count":     {1, 0xff, 0xff, 0xff, 0xff, 0x0f},
		"name":      {1, 1, 1, '/', 0, 2, 0, 0},
		"both":      {1, 1, 1, 'a', 0, 2, 1, '*', 0},
		"neither":   {1, 1, 1, 'a', 0, 0, 0, 0},
		"flags":     {1, 1, 1, 'a', 2, 2, 0, 0},
		"order":     {1, 2, 1, 'b', 0, 2, 0, 0, 1, 'a', 0, 2, 0, 0},
		"repeated":  {1, 2, 1, 'a', 0, 2, 0, 0, 1, 'a', 0, 2, 0, 0},
	} {
		if _, err := schedule.ParseClock(bad); !errors.Is(err, schedule.ErrBadClock) {
			t.Errorf("%s: ParseClock(%x) = %v, want ErrBadClock", name, bad, err)
		}
	}
}

// FuzzParseClock: ParseClock never panics, and what it accepts encodes back to
// the same bytes.
func FuzzParseClock(f *testing.F) {
	c := schedule.Clock{
		{Task: "a", Every: time.Second, Last: time.Unix(1, 2)},
		{Task: "b", Cron: "@hourly", Aligned: true, Last: time.Unix(-1, 0)},
	}
	b, _ := c.AppendBinary(nil)
	f.Add(b)
	f.Add([]byte{1, 0})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := schedule.ParseClock(data)
		if err != nil {
			if !errors.Is(err, schedule.ErrBadClock) {
				t.Fatalf("error %v does not wrap ErrBadClock", err)
			}
			return
		}
		if len(data) == 0 {
			return
		}
		again, _ := c.AppendBinary(nil)
		if !bytes.Equal(again, data) {
			// Varints have one shortest form; a longer one decodes the same.
			c2, err := schedule.ParseClock(again)
			if err != nil || !slices.EqualFunc(c, c2, func(a, b schedule.Mark) bool {
				return a.Task == b.Task && a.Every == b.Every && a.Cron == b.Cron && a.Aligned == b.Aligned && a.Last.Equal(b.Last)
			}) {
				t.Fatalf("re-encoding %x gave %x, which decodes to %+v, %v", data, again, c2, err)
			}
		}
	})
}

func TestResumeBeforeTheFirstTick(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Agents replaced more often than the tasks' interval, none of them
		// up for a whole second, with a gap over the tick at 1s: each
		// successor continues the first scheduler's schedules, so the tick
		// at 1s runs late (after the gap) and the one at 2s on time, once
		// each. Started afresh each time, "every" would never run, and the
		// others would lose the tick at 1s.
		specs := []schedule.Spec{
			{Name: "aligned", Every: time.Second, Aligned: true},
			{Name: "cron", Cron: "* * * * * *"},
			{Name: "every", Every: time.Second},
		}
		spans := [][2]time.Duration{{0, 300}, {400, 700}, {800, 950}, {1100, 1400}, {1500, 1800}, {1900, 2200}} // ms since t0
		type dispatched struct{ at, when time.Duration }
		got := map[string][]dispatched{}
		var clock schedule.Clock
		for _, span := range spans {
			time.Sleep(time.Until(t0.Add(span[0] * time.Millisecond)))
			var mu sync.Mutex
			cs := &clocks{}
			s, err := schedule.New(specs, schedule.Options{Clock: cs.record, Dispatch: func(tk schedule.Tick) (int, error) {
				mu.Lock()
				defer mu.Unlock()
				got[tk.Task] = append(got[tk.Task], dispatched{tk.At.Sub(t0), time.Since(t0)})
				return 1, nil
			}})
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			if err := s.Resume(clock); err != nil {
				t.Fatalf("Resume: %v", err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- s.Run(ctx) }()
			time.Sleep(time.Until(t0.Add(span[1] * time.Millisecond)))
			synctest.Wait()
			cancel()
			if err := <-done; err != nil {
				t.Fatalf("Run: %v", err)
			}
			if clock = cs.latest(); len(clock) != len(specs) {
				t.Fatalf("scheduler of %v–%v ms handed over %+v, want a mark per task", int64(span[0]), int64(span[1]), clock)
			}
		}
		want := []dispatched{{time.Second, 1100 * time.Millisecond}, {2 * time.Second, 2 * time.Second}}
		for _, spec := range specs {
			if !slices.Equal(got[spec.Name], want) {
				t.Errorf("%s: ticks (nominal, dispatched) %v, want %v", spec.Name, got[spec.Name], want)
			}
		}
	})
}

func TestInheritedRunBlocksOverlap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// The previous agent's run of job (its seq 7, on pid 100) is still
		// going: this scheduler's ticks skip until its outcome comes, and an
		// outcome of this scheduler's own seq 7 does not end it.
		job := schedule.Spec{Name: "job", Every: 100 * time.Millisecond}
		other := schedule.Spec{Name: "other", Every: 100 * time.Millisecond, AllowOverlap: true}
		h := start(t, []schedule.Spec{job, other}, schedule.Options{})
		for _, task := range []string{"job", "other"} {
			h.s.Inherit(schedule.Inherited{Task: task, Seq: 7, Origin: 41, PID: 100, At: t0.Add(-time.Second), Started: t0.Add(-900 * time.Millisecond)})
		}
		h.s.Inherit(schedule.Inherited{Task: "gone", Seq: 1, Origin: 41, PID: 100}) // ignored
		if st := h.status("job"); st.Running != 1 {
			t.Fatalf("job: %d running, want the inherited run", st.Running)
		}
		h.advance(100 * time.Millisecond)
		if tk := h.next(); tk.Task != "other" || tk.Seq != 1 {
			t.Fatalf("got %+v, want other's first tick (it allows overlap)", tk)
		}
		h.ok(schedule.Tick{Task: "other", Seq: 1})
		h.noTick()                                                  // job's tick was skipped
		h.s.Report(schedule.Outcome{Task: "job", Seq: 7, PID: 100}) // not the inherited one: Origin 0
		if st := h.status("job"); st.Running != 1 || st.Skips != 1 {
			t.Fatalf("job: running %d, skips %d; want the inherited run still running and one skip", st.Running, st.Skips)
		}
		h.s.Report(schedule.Outcome{Task: "job", Seq: 7, PID: 100, Origin: 41})
		if st := h.status("job"); st.Running != 0 || st.Runs != 1 || st.LastResult != "ok" {
			t.Fatalf("job after the inherited outcome: %+v", st)
		}
		h.advance(100 * time.Millisecond)
		for range 2 {
			tk := h.next()
			if tk.Task == "job" && tk.Seq != 2 {
				t.Fatalf("job's tick %+v, want seq 2", tk)
			}
			h.ok(tk)
		}
	})
}

func TestInheritedRunTimesOut(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Timeout counts from when the process began the run.
		job := schedule.Spec{Name: "job", Every: time.Second, Timeout: 500 * time.Millisecond}
		h := start(t, []schedule.Spec{job}, schedule.Options{})
		h.s.Inherit(schedule.Inherited{Task: "job", Seq: 3, Origin: 41, PID: 100, At: t0.Add(-time.Second), Started: t0.Add(-300 * time.Millisecond)})
		h.advance(200 * time.Millisecond)
		if st := h.status("job"); st.Running != 0 || st.Failures != 1 {
			t.Fatalf("after its timeout: %+v, want it failed", st)
		}
		h.logged("schedule run failed", "timeout after 500ms")
	})
}
