package schedule_test

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/brood-go/brood/internal/schedule"
)

func TestList(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, []schedule.Spec{
			{Name: "c", Every: 30 * time.Second, Type: schedule.Agent, Timeout: time.Second},
			{Name: "b", Cron: "0 * * * *", Type: schedule.AllWorkers, Disable: true},
			{Name: "a", Every: time.Minute, AllowOverlap: true},
		}, schedule.Options{})
		h.advance(30 * time.Second)
		tk := h.next()
		h.s.Report(schedule.Outcome{Task: tk.Task, Seq: tk.Seq, Duration: 250 * time.Millisecond, PID: 7})
		h.advance(30 * time.Second) // a: dispatched, no outcome; c: dispatched, times out later
		h.next()
		h.next()
		h.advance(time.Second)

		got := h.list()
		want := []schedule.Status{
			{Name: "a", Every: time.Minute, AllowOverlap: true, Running: 1,
				LastRun: t0.Add(time.Minute), LastResult: "running", Next: t0.Add(2 * time.Minute)},
			{Name: "b", Cron: "0 * * * *", Type: schedule.AllWorkers, Disabled: true},
			{Name: "c", Every: 30 * time.Second, Type: schedule.Agent, Timeout: time.Second,
				LastRun: t0.Add(time.Minute), LastResult: "timeout after 1s", LastDuration: time.Second,
				Next: t0.Add(90 * time.Second), Runs: 2, Failures: 1},
		}
		if len(got) != len(want) {
			t.Fatalf("got %d statuses, want %d", len(got), len(want))
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("status %d:\ngot  %+v\nwant %+v", i, got[i], want[i])
			}
		}
	})
}

func TestListBeforeRun(t *testing.T) {
	s, err := schedule.New([]schedule.Spec{{Name: "a", Every: time.Minute}},
		schedule.Options{Dispatch: func(schedule.Tick) (int, error) { return 1, nil }})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	want := []schedule.Status{{Name: "a", Every: time.Minute}}
	if got := s.List(); len(got) != 1 || got[0] != want[0] {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}

func TestReportUnknown(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, []schedule.Spec{{Name: "a", Every: time.Minute}}, schedule.Options{})
		h.s.Report(schedule.Outcome{Task: "nope", Seq: 1})
		h.s.Report(schedule.Outcome{Task: "a", Seq: 42, Err: "boom"})
		if st := h.status("a"); st.Runs+st.Failures+st.Skips != 0 || st.LastResult != "" {
			t.Fatalf("got %+v, want an untouched status", st)
		}
		h.logged("level=DEBUG", "ignoring the outcome", "schedule=nope")
		h.logged("level=DEBUG", "ignoring the outcome", "schedule=a", "seq=42")
	})
}

func TestRunTwice(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := start(t, nil, schedule.Options{})
		if err := h.s.Run(context.Background()); err == nil || err.Error() != "schedule: Run called twice" {
			t.Fatalf("got %v, want an error", err)
		}
	})
}

// TestRealTime runs a few ticks outside any synctest bubble, on the real clock.
func TestRealTime(t *testing.T) {
	ticks := make(chan schedule.Tick, 10)
	s, err := schedule.New([]schedule.Spec{{Name: "a", Every: time.Millisecond}}, schedule.Options{
		Dispatch: func(tk schedule.Tick) (int, error) {
			select {
			case ticks <- tk:
			default:
			}
			return 1, nil
		},
	})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- s.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	for range 3 {
		select {
		case tk := <-ticks:
			s.Report(schedule.Outcome{Task: tk.Task, Seq: tk.Seq})
		case <-time.After(guard):
			t.Fatal("no tick on the real clock")
		}
	}
}
