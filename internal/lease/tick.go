package lease

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// NextTick is the first instant after t that is a whole multiple of interval
// since the Unix epoch (UTC). Members of a fleet that tick at NextTick agree
// on each tick's nominal time without talking to each other, provided their
// clocks agree to within a fraction of the interval: a member whose clock is
// off by d claims each tick d late (or early), and a member off by more than
// the tick bucket's TTL could claim a tick whose key has already expired. It
// panics if interval is not positive, as time.NewTicker does.
func NextTick(t time.Time, interval time.Duration) time.Time {
	if interval <= 0 {
		panic("lease: non-positive interval for NextTick")
	}
	n, iv := t.UnixNano(), int64(interval)
	k := n / iv
	if n < 0 && n%iv != 0 {
		k-- // floor, for instants before the epoch
	}
	return time.Unix(0, (k+1)*iv)
}

// ClaimTick claims the tick of task at tick (its nominal time, as NextTick
// or a cron schedule gives it, not the time it fired) for holder: it creates
// the key TickKey(task, tick) in kv, and exactly one caller in the fleet
// wins each (task, tick). won is false with a nil error when another member
// won; on an error (server unreachable, timeout) the outcome is unknown to
// this caller, and it should not run the tick: a tick may then be lost, it
// never runs twice.
//
// kv's TTL removes claims: it must exceed the clock skew between members plus
// the time to claim, or a late member could claim an expired tick again. A
// few times the longest interval of a OneInFleet task is a safe choice.
func ClaimTick(ctx context.Context, kv jetstream.KeyValue, task string, tick time.Time, holder string) (won bool, err error) {
	key := TickKey(task, tick)
	v := value{nonce: rand.Uint64(), holder: holder}.encode()
	_, err = kv.Create(ctx, key, v)
	if err == nil {
		return true, nil
	}
	if errors.Is(err, jetstream.ErrKeyExists) {
		return false, nil
	}
	// The reply may be what was lost: the key holding our nonce means we won.
	if e, gerr := kv.Get(ctx, key); gerr == nil && string(e.Value()) == string(v) {
		return true, nil
	}
	return false, fmt.Errorf("lease: claim %s of task %q in bucket %s: %w", key, task, kv.Bucket(), err)
}
