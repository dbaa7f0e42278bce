package schedule_test

import (
	"testing"
	"time"

	"github.com/brood-go/brood/internal/schedule"
)

func TestFakeClock(t *testing.T) {
	c := schedule.NewFakeClock(t0)
	late := c.NewTimer(3 * time.Second)
	early := c.NewTimer(time.Second)
	stopped := c.NewTimer(time.Second)
	now := c.NewTimer(0)
	c.BlockUntil(3) // returns at once: three pending timers

	if !stopped.Stop() || stopped.Stop() {
		t.Fatalf("Stop: want true, then false")
	}
	select {
	case at := <-now.C():
		if !at.Equal(t0) {
			t.Fatalf("zero timer sent %v, want %v", at, t0)
		}
	default:
		t.Fatalf("a zero-duration timer did not fire at once")
	}

	c.Advance(2 * time.Second)
	if got := c.Now(); !got.Equal(t0.Add(2 * time.Second)) {
		t.Fatalf("Now = %v, want %v", got, t0.Add(2*time.Second))
	}
	select {
	case at := <-early.C():
		if !at.Equal(t0.Add(time.Second)) {
			t.Fatalf("timer sent %v, want its deadline %v", at, t0.Add(time.Second))
		}
	default:
		t.Fatalf("a due timer did not fire during Advance")
	}
	select {
	case <-late.C():
		t.Fatalf("a timer fired before its deadline")
	case <-stopped.C():
		t.Fatalf("a stopped timer fired")
	default:
	}
	if early.Stop() {
		t.Fatalf("Stop of a fired timer returned true")
	}

	blocked := make(chan struct{})
	go func() {
		c.BlockUntil(2)
		close(blocked)
	}()
	c.NewTimer(time.Hour) // now late and this one: two pending
	select {
	case <-blocked:
	case <-time.After(guard):
		t.Fatalf("BlockUntil(2) did not return with two pending timers")
	}
	c.Advance(time.Hour)
	select {
	case <-late.C():
	default:
		t.Fatalf("late timer did not fire")
	}
}
