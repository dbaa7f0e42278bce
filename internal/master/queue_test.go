package master

import (
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"
)

// TestDrainQueueWritesOneAtATime: write is never called twice at once, not
// even by pushes that race with close (write-through after close must wait
// for the draining goroutine). The writer keeps state without a lock, so the
// race detector sees any overlap, and the in-flight count sees it without.
func TestDrainQueueWritesOneAtATime(t *testing.T) {
	for range 50 {
		var (
			written  []int
			inFlight int
			overlaps int
		)
		q := newDrainQueue(1<<20, func(int) int { return 1 }, func(v int) {
			inFlight++
			if inFlight > 1 {
				overlaps++
			}
			written = append(written, v)
			inFlight--
		})
		var pushers sync.WaitGroup
		for p := range 4 {
			pushers.Go(func() {
				for i := range 200 {
					q.push(p*1000 + i)
				}
			})
		}
		q.close()
		pushers.Wait()
		q.close() // idempotent
		if overlaps > 0 {
			t.Fatalf("write overlapped itself %d times", overlaps)
		}
		if got := len(written) + int(q.dropped.Load()); got != 800 {
			t.Fatalf("%d written + %d dropped, want 800 in all", len(written), q.dropped.Load())
		}
	}
}

// TestNewRefusesWithoutLeaks: a configuration New refuses leaves no
// goroutine behind (its checks come before the outputs start).
func TestNewRefusesWithoutLeaks(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	if _, err := New(Config{Name: "x", Admin: "udp://nowhere:1"}); err == nil {
		t.Fatal("a bad admin address was accepted")
	}
	t.Setenv("NOTIFY_SOCKET", "relative/socket")
	if _, err := New(Config{Name: "x"}); err == nil || !strings.Contains(err.Error(), "NOTIFY_SOCKET") {
		t.Fatalf("a bad NOTIFY_SOCKET: %v", err)
	}
}
