package lease_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// lossyKV performs every write and then, while told to, loses its reply, as
// a reply lost on the way back would.
type lossyKV struct {
	jetstream.KeyValue
	loseCreates, loseUpdates atomic.Bool
	lost                     atomic.Int32
}

var errLostReply = errors.New("test: reply lost")

func (k *lossyKV) Create(ctx context.Context, key string, value []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	rev, err := k.KeyValue.Create(ctx, key, value, opts...)
	if err == nil && k.loseCreates.Load() {
		k.lost.Add(1)
		return 0, errLostReply
	}
	return rev, err
}

func (k *lossyKV) Update(ctx context.Context, key string, value []byte, last uint64) (uint64, error) {
	rev, err := k.KeyValue.Update(ctx, key, value, last)
	if err == nil && k.loseUpdates.Load() {
		k.lost.Add(1)
		return 0, errLostReply
	}
	return rev, err
}

// TestCampaignLostReplies: every reply to the holder's creates and renews is
// lost, yet the writes happened; reading the key back, the holder recognises
// its own writes (nonce and sequence in the value) and keeps leading, instead
// of leaving an orphan lease to expire.
func TestCampaignLostReplies(t *testing.T) {
	s := startServer(t)
	r := &recorder{}
	c := newCandidate(t, "lossy", s.URL())
	kv := &lossyKV{KeyValue: c.kv}
	kv.loseCreates.Store(true)
	kv.loseUpdates.Store(true)
	c.kv = kv
	c.start(t, r)
	waitFor(t, 10*time.Second, "lossy leads", func() bool { return r.leader() == "lossy" })
	first := r.last("lossy")
	waitFor(t, 10*time.Second, "two TTLs of leading", func() bool { return time.Since(first.start) > 2*testTTL })
	if l := r.last("lossy"); l.token != first.token || !l.stop.IsZero() {
		t.Errorf("the term did not last: first %+v, last %+v", first, l)
	}
	if n := kv.lost.Load(); n < 4 {
		t.Errorf("%d replies lost, want a create and several renews", n)
	}
	t.Logf("%d replies lost, one unbroken term with token %d", kv.lost.Load(), first.token)
	// A second candidate never got in, and takes over at once on release.
	other := newCandidate(t, "other", s.URL())
	other.start(t, r)
	stopped := time.Now()
	c.stop(t)
	waitFor(t, 10*time.Second, "other leads", func() bool { n, ok := r.startedAfter(stopped); return ok && n.who == "other" })
	if d := r.last("other").start.Sub(stopped); d > testTTL/2 {
		t.Errorf("takeover after release took %v: the release did not delete the adopted revision", d)
	}
	other.stop(t)
	r.check(t)
}
