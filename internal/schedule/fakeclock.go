package schedule

import (
	"slices"
	"sync"
	"time"
)

// FakeClock is a Clock whose time moves only when Advance is called. It is meant
// for tests, here and in packages that drive a Scheduler: Advance fires due
// timers synchronously and in deadline order, and BlockUntil waits until the code
// under test is waiting on its timers, so tests never sleep.
//
// A FakeClock is safe for concurrent use.
type FakeClock struct {
	mu     sync.Mutex
	cond   sync.Cond // signalled when a timer is created
	now    time.Time
	timers []*fakeTimer // pending, in creation order
}

// NewFakeClock returns a FakeClock whose current time is start.
func NewFakeClock(start time.Time) *FakeClock {
	f := &FakeClock{now: start}
	f.cond.L = &f.mu
	return f
}

// Now returns the fake current time.
func (f *FakeClock) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// NewTimer returns a timer that fires when the fake time reaches Now()+d. A d of
// zero or less fires at once and is never counted as pending.
func (f *FakeClock) NewTimer(d time.Duration) Timer {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := &fakeTimer{clock: f, at: f.now.Add(d), c: make(chan time.Time, 1)}
	if d <= 0 {
		t.c <- f.now
		return t
	}
	f.timers = append(f.timers, t)
	f.cond.Broadcast()
	return t
}

// Advance moves the fake time forward by d (which must not be negative) and,
// before returning, fires every pending timer whose deadline has been reached, in
// deadline order. Each fired timer receives its own deadline on its channel and
// stops being pending.
func (f *FakeClock) Advance(d time.Duration) {
	if d < 0 {
		panic("schedule: FakeClock.Advance with a negative duration")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	slices.SortStableFunc(f.timers, func(a, b *fakeTimer) int { return a.at.Compare(b.at) })
	for len(f.timers) > 0 && !f.timers[0].at.After(f.now) {
		t := f.timers[0]
		f.timers = f.timers[1:]
		t.c <- t.at // buffered and sent at most once: never blocks
	}
}

// BlockUntil waits until at least n timers are pending (created, not yet fired
// nor stopped). A Scheduler's Run loop holds exactly one pending timer while it
// is idle, so BlockUntil(1) after Advance returns once the loop has handled
// everything that became due.
func (f *FakeClock) BlockUntil(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for len(f.timers) < n {
		f.cond.Wait()
	}
}

type fakeTimer struct {
	clock *FakeClock
	at    time.Time
	c     chan time.Time
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	f := t.clock
	f.mu.Lock()
	defer f.mu.Unlock()
	i := slices.Index(f.timers, t)
	if i < 0 {
		return false
	}
	f.timers = slices.Delete(f.timers, i, i+1)
	return true
}
