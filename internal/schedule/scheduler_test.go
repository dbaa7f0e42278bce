package schedule_test

import (
	"errors"
	"fmt"
	"testing"
	"testing/synctest"
	"time"
	_ "time/tzdata" // CRON_TZ tests must not depend on the host's tz database

	"github.com/brood-go/brood/internal/schedule"
)

// Every test runs its Scheduler in a synctest bubble (see harness).

func TestEveryDoesNotDrift(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// The loop handles every tick 250ms late; ticks stay on the
		// start+k*Every grid. It is held in Dispatch: that of the Immediate
		// run of "slow" returns at 1.25s, that of the tick due at k*Every 250ms
		// after (k+1)*Every.
		var h *harness
		h = prepare(t, []schedule.Spec{
			{Name: "job", Every: time.Second},
			{Name: "slow", Every: time.Hour, Immediate: true},
		}, schedule.Options{
			Dispatch: func(tk schedule.Tick) (int, error) {
				if tk.Task == "slow" {
					time.Sleep(1250 * time.Millisecond)
					return 1, nil
				}
				n, err := h.dispatch(tk)
				time.Sleep(time.Until(tk.At.Add(time.Second + 250*time.Millisecond)))
				return n, err
			},
		})
		h.run()
		h.advance(1250 * time.Millisecond)
		for k := 1; k <= 50; k++ {
			tk := h.next()
			want := schedule.Tick{Task: "job", Seq: uint64(k), At: t0.Add(time.Duration(k) * time.Second)}
			if tk != want {
				t.Fatalf("tick %d: got %+v, want %+v", k, tk, want)
			}
			h.ok(tk)
			if got, want := h.status("job").Next, t0.Add(time.Duration(k+1)*time.Second); !got.Equal(want) {
				t.Fatalf("after tick %d: Next = %v, want %v", k, got, want)
			}
			h.advance(time.Second)
		}
	})
}

func TestEveryFallsBehind(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// The Immediate run of "slow" holds the loop in Dispatch from the start
		// to 3.5s, as if the process were suspended: 1s, 2s and 3s have passed
		// when the loop looks again, and make one run.
		var h *harness
		h = prepare(t, []schedule.Spec{
			{Name: "job", Every: time.Second},
			{Name: "slow", Every: time.Hour, Immediate: true},
		}, schedule.Options{
			Dispatch: func(tk schedule.Tick) (int, error) {
				if tk.Task == "slow" {
					time.Sleep(3500 * time.Millisecond)
					return 1, nil
				}
				return h.dispatch(tk)
			},
		})
		h.run()
		h.advance(3500 * time.Millisecond)
		tk := h.next()
		if tk.Seq != 1 || !tk.At.Equal(t0.Add(time.Second)) {
			t.Fatalf("got %+v, want seq 1 at %v", tk, t0.Add(time.Second))
		}
		h.ok(tk)
		h.noTick()
		h.logged("level=WARN", "fell behind", "schedule=job")
		h.advance(500 * time.Millisecond)
		if tk := h.next(); tk.Seq != 2 || !tk.At.Equal(t0.Add(4*time.Second)) {
			t.Fatalf("got %+v, want seq 2 at %v", tk, t0.Add(4*time.Second))
		}
	})
}

func TestCron(t *testing.T) {
	shanghai, _ := time.LoadLocation("Asia/Shanghai")
	newYork, _ := time.LoadLocation("America/New_York")
	day := 24 * time.Hour
	tests := []struct {
		cron string
		want []time.Time
	}{
		{"*/10 * * * * *", []time.Time{t0.Add(10 * time.Second), t0.Add(20 * time.Second), t0.Add(30 * time.Second)}},
		{"*/5 * * * *", []time.Time{t0.Add(5 * time.Minute), t0.Add(10 * time.Minute), t0.Add(15 * time.Minute)}},
		{"@every 5s", []time.Time{t0.Add(5 * time.Second), t0.Add(10 * time.Second)}},
		{"@hourly", []time.Time{t0.Add(time.Hour), t0.Add(2 * time.Hour)}},
		// 09:00 in Shanghai (UTC+8) is 01:00 UTC.
		{"CRON_TZ=Asia/Shanghai 0 9 * * *", []time.Time{
			time.Date(2000, 1, 1, 9, 0, 0, 0, shanghai), t0.Add(day + time.Hour)}},
		// 00:30 in New York (UTC-5 in January) is 05:30 UTC.
		{"TZ=America/New_York 30 0 * * *", []time.Time{
			time.Date(2000, 1, 1, 0, 30, 0, 0, newYork), t0.Add(day + 5*time.Hour + 30*time.Minute)}},
	}
	for _, tt := range tests {
		t.Run(tt.cron, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := start(t, []schedule.Spec{{Name: "job", Cron: tt.cron}}, schedule.Options{})
				for i, want := range tt.want {
					if next := h.status("job").Next; !next.Equal(want) {
						t.Fatalf("run %d: Next = %v, want %v", i+1, next, want)
					}
					h.advance(time.Until(want))
					tk := h.next()
					if tk.Seq != uint64(i+1) || !tk.At.Equal(want) {
						t.Fatalf("got %+v, want seq %d at %v", tk, i+1, want)
					}
					h.ok(tk)
				}
			})
		})
	}
}

func TestImmediate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, []schedule.Spec{
			{Name: "job", Every: time.Hour, Immediate: true},
			{Name: "off", Every: time.Hour, Immediate: true, Disable: true},
		}, schedule.Options{})
		tk := h.next()
		if want := (schedule.Tick{Task: "job", Seq: 1, At: t0}); tk != want {
			t.Fatalf("got %+v, want %+v", tk, want)
		}
		h.ok(tk)
		h.noTick()
		h.advance(time.Hour)
		if tk := h.next(); tk.Task != "job" || tk.Seq != 2 || !tk.At.Equal(t0.Add(time.Hour)) {
			t.Fatalf("got %+v, want job seq 2 at %v", tk, t0.Add(time.Hour))
		}
		h.noTick()
	})
}

func TestNoOverlap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, []schedule.Spec{{Name: "job", Every: time.Second}}, schedule.Options{})
		h.advance(time.Second)
		first := h.next()

		h.advance(time.Second) // seq 2: seq 1 has not reported yet
		h.noTick()
		st := h.status("job")
		if st.Skips != 1 || st.Running != 1 || st.LastResult != "skipped: previous run still running" {
			t.Fatalf("got %+v, want 1 skip, 1 running, LastResult skipped", st)
		}
		h.logged("level=WARN", `msg="schedule tick skipped: previous run still running"`, "schedule=job", "seq=2", "previous_seq=1")

		h.ok(first)
		h.advance(time.Second)
		if tk := h.next(); tk.Seq != 3 {
			t.Fatalf("got seq %d, want 3", tk.Seq)
		}
		if st := h.status("job"); st.Runs != 1 || st.Skips != 1 || st.Running != 1 {
			t.Fatalf("got %+v, want 1 run, 1 skip, 1 running", st)
		}
	})
}

func TestAllowOverlap(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, []schedule.Spec{{Name: "job", Every: time.Second, AllowOverlap: true}}, schedule.Options{})
		h.advance(time.Second)
		first := h.next()
		h.advance(time.Second)
		second := h.next()
		if err := h.s.RunNow("job"); err != nil {
			t.Fatalf("RunNow: %v", err)
		}
		third := h.next()
		if st := h.status("job"); st.Running != 3 || st.Skips != 0 {
			t.Fatalf("got %+v, want 3 running, no skip", st)
		}
		for _, tk := range []schedule.Tick{second, third, first} {
			h.ok(tk)
		}
		if st := h.status("job"); st.Running != 0 || st.Runs != 3 {
			t.Fatalf("got %+v, want 3 runs, none running", st)
		}
	})
}

func TestTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, []schedule.Spec{{Name: "job", Every: time.Minute, Timeout: 5 * time.Second}}, schedule.Options{})
		h.advance(time.Minute)
		first := h.next()
		h.advance(4 * time.Second)
		if st := h.status("job"); st.Running != 1 || st.Failures != 0 {
			t.Fatalf("before the timeout: got %+v, want running", st)
		}
		h.advance(time.Second)
		st := h.status("job")
		if st.Running != 0 || st.Runs != 1 || st.Failures != 1 || st.LastResult != "timeout after 5s" || st.LastDuration != 5*time.Second {
			t.Fatalf("got %+v, want a failed run, timeout after 5s", st)
		}
		h.logged("level=ERROR", "schedule=job", "seq=1", `result="timeout after 5s"`)

		h.ok(first) // late: ignored
		if got := h.status("job"); got != st {
			t.Fatalf("a late outcome changed the status: got %+v, want %+v", got, st)
		}
		h.logged("level=DEBUG", "ignoring the outcome", "seq=1")

		h.advance(55 * time.Second) // the task is free again
		if tk := h.next(); tk.Seq != 2 {
			t.Fatalf("got seq %d, want 2", tk.Seq)
		}
	})
}

func TestNoWorker(t *testing.T) {
	for _, how := range []string{"WorkersAvailable", "retry"} {
		t.Run(how, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := start(t, []schedule.Spec{{Name: "job", Every: time.Minute}}, schedule.Options{MaxWait: 5 * time.Minute})
				h.setReply(0, fmt.Errorf("agent: %w", schedule.ErrNoWorker))
				h.advance(time.Minute)
				first := h.next()
				st := h.status("job")
				if st.Waiting != 1 || st.Running != 0 || st.LastResult != "waiting for a worker" || st.Runs+st.Failures+st.Skips != 0 {
					t.Fatalf("got %+v, want 1 waiting", st)
				}
				h.logged("level=WARN", "no worker ready", "schedule=job", "seq=1", "max_wait=5m0s")

				h.setReply(1, nil)
				if how == "WorkersAvailable" {
					h.s.WorkersAvailable()
				} else {
					h.advance(schedule.DefaultRetryInterval)
				}
				if tk := h.next(); tk != first {
					t.Fatalf("got %+v, want the waiting tick %+v", tk, first)
				}
				st = h.status("job")
				if st.Waiting != 0 || st.Running != 1 || st.LastResult != "running" {
					t.Fatalf("got %+v, want 1 running", st)
				}
				h.ok(first)
				if st := h.status("job"); st.Runs != 1 || st.Failures != 0 || st.LastResult != "ok" {
					t.Fatalf("got %+v, want 1 successful run", st)
				}
			})
		})
	}
}

func TestNoWorkerSkipsLaterTicks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, []schedule.Spec{{Name: "job", Every: time.Minute}},
			schedule.Options{MaxWait: 5 * time.Minute, RetryInterval: time.Hour})
		h.setReply(0, schedule.ErrNoWorker)
		h.advance(time.Minute)
		h.next()
		h.advance(time.Minute)
		h.noTick()
		st := h.status("job")
		if st.Skips != 1 || st.Waiting != 1 || st.LastResult != "skipped: previous run still waiting for a worker" {
			t.Fatalf("got %+v, want 1 skip and 1 waiting", st)
		}
		h.logged("level=WARN", "schedule=job", "seq=2", "previous_seq=1")
	})
}

// TestExpiryFreesTaskAtOnce checks that a run that times out at the very time
// of the next tick does not make that tick skip.
func TestExpiryFreesTaskAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, []schedule.Spec{{Name: "job", Every: time.Minute, Timeout: time.Minute}}, schedule.Options{})
		h.advance(time.Minute)
		h.next()
		h.advance(time.Minute)
		if tk := h.next(); tk.Seq != 2 {
			t.Fatalf("got seq %d, want 2", tk.Seq)
		}
		if st := h.status("job"); st.Skips != 0 || st.Failures != 1 || st.Running != 1 {
			t.Fatalf("got %+v, want 1 timeout, no skip, 1 running", st)
		}
	})
}

func TestMaxWait(t *testing.T) {
	tests := []struct {
		maxWait, retry time.Duration
		attempts       int
		want           string
	}{
		{10 * time.Second, 0, 10, "no worker became ready within 10s"},
		{0, 20 * time.Second, 3, "no worker became ready within 1m0s"}, // the default
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := start(t, []schedule.Spec{{Name: "job", Every: time.Hour}},
					schedule.Options{MaxWait: tt.maxWait, RetryInterval: tt.retry})
				h.setReply(0, schedule.ErrNoWorker)
				h.advance(time.Hour)
				retry := max(tt.retry, schedule.DefaultRetryInterval)
				for range tt.attempts {
					if tk := h.next(); tk.Seq != 1 {
						t.Fatalf("got %+v, want a retry of seq 1", tk)
					}
					h.advance(retry)
				}
				h.noTick()
				st := h.status("job")
				if st.Waiting != 0 || st.Runs != 1 || st.Failures != 1 || st.LastResult != tt.want {
					t.Fatalf("got %+v, want a failed run: %s", st, tt.want)
				}
				h.logged("level=ERROR", "schedule=job", "seq=1", tt.want)
			})
		})
	}
}

func TestDispatchError(t *testing.T) {
	tests := []struct {
		n    int
		err  error
		want string
	}{
		{0, errors.New("ipc: connection closed"), "error: dispatch: ipc: connection closed"},
		{0, nil, "error: dispatch: 0 processes to report and no error"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := start(t, []schedule.Spec{{Name: "job", Every: time.Minute}}, schedule.Options{})
				h.setReply(tt.n, tt.err)
				h.advance(time.Minute)
				h.next()
				st := h.status("job")
				if st.Running+st.Waiting != 0 || st.Runs != 1 || st.Failures != 1 || st.LastResult != tt.want {
					t.Fatalf("got %+v, want a failed run: %s", st, tt.want)
				}
				h.logged("level=ERROR", "schedule run failed", "schedule=job", "seq=1")
				h.setReply(1, nil) // the next tick is not affected
				h.advance(time.Minute)
				if tk := h.next(); tk.Seq != 2 {
					t.Fatalf("got seq %d, want 2", tk.Seq)
				}
			})
		})
	}
}

func TestRunNow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, []schedule.Spec{
			{Name: "b", Every: time.Second, Disable: true, Type: schedule.Agent},
			{Name: "a", Cron: "@hourly"},
		}, schedule.Options{})

		err := h.s.RunNow("nope")
		if want := `schedule "nope": unknown schedule (known: a, b)`; err == nil || err.Error() != want || !errors.Is(err, schedule.ErrUnknownTask) {
			t.Fatalf("got %v, want %q", err, want)
		}

		h.advance(10 * time.Second) // a disabled task never ticks on its own
		h.noTick()
		if st := h.status("b"); !st.Next.IsZero() || !st.Disabled {
			t.Fatalf("got %+v, want disabled with no Next", st)
		}

		if err := h.s.RunNow("b"); err != nil {
			t.Fatalf("RunNow: %v", err)
		}
		tk := h.next()
		if want := (schedule.Tick{Task: "b", Seq: 1, At: t0.Add(10 * time.Second), Type: schedule.Agent, Manual: true}); tk != want {
			t.Fatalf("got %+v, want %+v", tk, want)
		}
		h.logged("level=INFO", "schedule run requested", "schedule=b", "seq=1")

		err = h.s.RunNow("b")
		if want := `schedule "b": already running (seq 1)`; err == nil || err.Error() != want || !errors.Is(err, schedule.ErrAlreadyRunning) {
			t.Fatalf("got %v, want %q", err, want)
		}

		h.ok(tk)
		if err := h.s.RunNow("b"); err != nil {
			t.Fatalf("RunNow after the outcome: %v", err)
		}
		if tk := h.next(); tk.Seq != 2 || !tk.Manual {
			t.Fatalf("got %+v, want manual seq 2", tk)
		}
		if st := h.status("b"); st.Runs != 1 || st.Running != 1 {
			t.Fatalf("got %+v, want 1 run and 1 running", st)
		}

		h.stop()
		if err := h.s.RunNow("a"); !errors.Is(err, schedule.ErrStopped) {
			t.Fatalf("RunNow after Run returned: got %v, want ErrStopped", err)
		}
	})
}

func TestAllWorkers(t *testing.T) {
	ok := schedule.Outcome{}
	boom := schedule.Outcome{Err: "boom"}
	stopping := schedule.Outcome{Skipped: true, Err: "stopping"}
	tests := []struct {
		name     string
		outcomes []schedule.Outcome
		want     string
		runs     uint64
		failures uint64
		skips    uint64
	}{
		{"all ok", []schedule.Outcome{ok, ok, ok}, "ok", 1, 0, 0},
		{"one failed", []schedule.Outcome{ok, boom, ok}, "error: boom (1 of 3 processes failed)", 1, 1, 0},
		{"some skipped", []schedule.Outcome{ok, stopping, ok}, "ok", 1, 0, 0},
		{"all skipped", []schedule.Outcome{stopping, stopping, stopping}, "skipped: stopping", 0, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := start(t, []schedule.Spec{{Name: "job", Every: time.Minute, Type: schedule.AllWorkers}}, schedule.Options{})
				h.setReply(3, nil)
				h.advance(time.Minute)
				tk := h.next()
				if tk.Type != schedule.AllWorkers {
					t.Fatalf("got %+v, want an all-workers tick", tk)
				}
				for i, o := range tt.outcomes {
					if st := h.status("job"); st.Running != 1 {
						t.Fatalf("after %d outcomes: got %+v, want running", i, st)
					}
					o.Task, o.Seq, o.PID = tk.Task, tk.Seq, 100+i
					o.Duration = time.Duration(i+1) * time.Second
					h.s.Report(o)
				}
				st := h.status("job")
				if st.Running != 0 || st.LastResult != tt.want || st.Runs != tt.runs || st.Failures != tt.failures ||
					st.Skips != tt.skips || st.LastDuration != 3*time.Second {
					t.Fatalf("got %+v, want %q, runs %d, failures %d, skips %d, last duration 3s",
						st, tt.want, tt.runs, tt.failures, tt.skips)
				}
			})
		})
	}

	t.Run("timeout", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			h := start(t, []schedule.Spec{{Name: "job", Every: time.Minute, Type: schedule.AllWorkers, Timeout: 5 * time.Second}}, schedule.Options{})
			h.setReply(3, nil)
			h.advance(time.Minute)
			tk := h.next()
			h.ok(tk)
			h.ok(tk)
			h.advance(5 * time.Second)
			if st := h.status("job"); st.Running != 0 || st.Failures != 1 || st.LastResult != "timeout after 5s (2 of 3 processes reported)" {
				t.Fatalf("got %+v, want a timeout with 2 of 3 reported", st)
			}
		})
	})
}

// TestOutcomeDuringDispatch checks that Dispatch is called with no lock held,
// and that outcomes arriving before Dispatch returns count.
func TestOutcomeDuringDispatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var h *harness
		h = prepare(t, []schedule.Spec{{Name: "job", Every: time.Minute}}, schedule.Options{
			Dispatch: func(tk schedule.Tick) (int, error) {
				h.s.List()
				h.s.Report(schedule.Outcome{Task: tk.Task, Seq: tk.Seq, Duration: time.Millisecond})
				h.ticks <- tk
				return 1, nil
			},
		})
		h.run()
		h.advance(time.Minute)
		h.next()
		if st := h.status("job"); st.Running != 0 || st.Runs != 1 || st.LastResult != "ok" || st.LastDuration != time.Millisecond {
			t.Fatalf("got %+v, want 1 successful run of 1ms", st)
		}
	})
}
