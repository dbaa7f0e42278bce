package schedule

import "time"

// Clock is the scheduler's source of time. All scheduling decisions (when a task
// is due, retries, MaxWait, Timeout) are made against it, so a FakeClock makes
// them deterministic in tests.
type Clock interface {
	// Now returns the current time.
	Now() time.Time
	// NewTimer returns a Timer that sends on its channel once, when d has
	// passed. A d of zero or less fires at once.
	NewTimer(d time.Duration) Timer
}

// Timer is a one-shot timer created by a Clock.
type Timer interface {
	// C returns the channel the timer sends the time on when it fires.
	C() <-chan time.Time
	// Stop prevents the timer from firing. It reports whether it stopped the
	// timer (false if it had already fired or been stopped).
	Stop() bool
}

// RealClock returns the Clock of the time package: time.Now and time.NewTimer.
func RealClock() Clock { return realClock{} }

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time { return r.t.C }
func (r realTimer) Stop() bool          { return r.t.Stop() }
