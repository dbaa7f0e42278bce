package lease_test

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/lease"
)

// TestClaimTickOnce: 5 claimers on their own connections claim the same 20
// ticks concurrently; each tick is won exactly once.
func TestClaimTickOnce(t *testing.T) {
	const claimers, ticks = 5, 20
	s := startServer(t)
	ctx := testContext(t, 60*time.Second)
	interval := 200 * time.Millisecond
	first := lease.NextTick(time.Now(), interval)
	wins := make([][]string, ticks)
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, claimers*ticks)
	for c := range claimers {
		kv, err := lease.OpenBucket(ctx, jsOf(t, connect(t, s.URL())), lease.BucketName("test", "ticks"), time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		holder := fmt.Sprintf("m%d", c)
		for i := range ticks {
			wg.Add(1)
			go func() {
				defer wg.Done()
				tick := first.Add(time.Duration(i) * interval)
				won, err := lease.ClaimTick(ctx, kv, "report.daily", tick, holder)
				if err != nil {
					errs <- err
					return
				}
				if won {
					mu.Lock()
					wins[i] = append(wins[i], holder)
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("ClaimTick: %v", err)
	}
	for i, w := range wins {
		if len(w) != 1 {
			t.Errorf("tick %d won by %v, want exactly one winner", i, w)
		}
	}
	// Another task's tick at the same instant is a different claim.
	kv, err := lease.OpenBucket(ctx, jsOf(t, connect(t, s.URL())), lease.BucketName("test", "ticks"), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if won, err := lease.ClaimTick(ctx, kv, "report.weekly", first, "m0"); err != nil || !won {
		t.Errorf("ClaimTick of another task at a claimed instant: won %v, err %v; want true, nil", won, err)
	}
}

func TestNextTick(t *testing.T) {
	for _, tc := range []struct {
		now      time.Time
		interval time.Duration
		want     time.Time
	}{
		{time.Unix(0, 0), time.Second, time.Unix(1, 0)},
		{time.Unix(10, 0), 5 * time.Second, time.Unix(15, 0)},                  // on a tick: the next one
		{time.Unix(10, 1), 5 * time.Second, time.Unix(15, 0)},                  //
		{time.Unix(-7, 0), 5 * time.Second, time.Unix(-5, 0)},                  // before the epoch
		{time.Unix(-10, 0), 5 * time.Second, time.Unix(-5, 0)},                 //
		{time.Unix(1700000123, 5e8), time.Hour, time.Unix(1700002800, 0)},      // 472222*3600 + 3600
		{time.Unix(1700000123, 5e8), 24 * time.Hour, time.Unix(1700006400, 0)}, // midnight UTC
	} {
		got := lease.NextTick(tc.now, tc.interval)
		if !got.Equal(tc.want) {
			t.Errorf("NextTick(%v, %v) = %v, want %v", tc.now.UTC(), tc.interval, got.UTC(), tc.want.UTC())
		}
	}
	// Any instant: the tick is after it, within one interval, and a multiple
	// of the interval since the epoch, whatever the time zone.
	loc := time.FixedZone("odd", 5*3600+1800)
	for _, iv := range []time.Duration{time.Millisecond, 200 * time.Millisecond, 7 * time.Second, time.Minute, 90 * time.Minute} {
		for _, now := range []time.Time{time.Now(), time.Now().In(loc), time.Date(2026, 3, 29, 1, 59, 59, 999, loc)} {
			got := lease.NextTick(now, iv)
			if !got.After(now) || got.Sub(now) > iv || got.UnixNano()%int64(iv) != 0 {
				t.Errorf("NextTick(%v, %v) = %v: want after, within one interval, a multiple of it", now, iv, got)
			}
		}
	}
}

func TestNextTickPanicsOnNonPositiveInterval(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("NextTick(now, 0) did not panic")
		}
	}()
	lease.NextTick(time.Now(), 0)
}
