package schedule_test

import (
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestMain fails the run if a test leaves a goroutine behind: the scheduler
// starts none, and every Run loop a test starts is stopped by its cleanup.
//
// It also pins time.Local to UTC. Inside a synctest bubble time.Now is in
// time.Local, and a cron expression without a time zone prefix is read in it:
// pinned, the tests' expected times hold on any host.
func TestMain(m *testing.M) {
	time.Local = time.UTC
	goleak.VerifyTestMain(m)
}
