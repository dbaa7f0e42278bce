package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Timing of a lease, as fractions of the bucket's TTL.
const (
	// renewDivisor: the holder renews every TTL/3 after its last renew was sent.
	renewDivisor = 3
	// marginDivisor: run's context ends TTL/5 before the earliest instant
	// the lease can expire on the server...
	marginDivisor = 5
	// rateSlackDivisor: ...plus TTL/100 for this host's clock running up to
	// 1% slower than the server's.
	rateSlackDivisor = 100
)

// errExpired is the cause of run's context when no renew succeeded in time.
var errExpired = errors.New("lease: renew deadline passed")

// Campaign campaigns for the lease key in kv and calls run(ctx, token) each
// time this candidate acquires it; ctx ends when the lease is lost, or may be
// about to be, and when Campaign's ctx is done. token is the KV revision of
// the acquiring write: it increases strictly from one leadership to the next
// (while the bucket lives), so a resource that remembers the highest token
// it has seen can refuse a stale leader (a fencing token).
//
// Safety: run's ctx is cancelled before the lease can expire on the server,
// hence before any other candidate can acquire it, provided run's caller
// stops acting on the lease when its ctx is done. See the package comment for
// the argument and its assumptions.
//
// The lease's TTL is the bucket's (see OpenBucket); it is read once, when
// Campaign starts. holder names this candidate in the lease's value and in
// logs (the member's node id). A nil logger means slog.Default.
//
// If run returns while the lease is held, Campaign releases the lease, waits
// a moment (so another candidate can take it) and campaigns again; run is
// called again on the next acquisition. Campaign never calls run twice at
// once.
//
// Campaign returns nil when ctx is done, after run has returned and the
// lease, if still held, has been released (deleted if its revision is still
// ours, so a waiting candidate takes over at once). It returns an error only
// if it cannot start: an invalid key or a bucket without TTL. Other errors
// (server unreachable, timeouts) are logged and retried.
func Campaign(ctx context.Context, kv jetstream.KeyValue, key, holder string, run func(ctx context.Context, token uint64), logger *slog.Logger) error {
	if logger == nil {
		logger = slog.Default()
	}
	c := &campaign{
		kv:      kv,
		name:    key,
		key:     Key(key),
		holder:  holder,
		nonce:   rand.Uint64(),
		run:     run,
		log:     logger.With("lease", key, "holder", holder),
		pending: map[uint64]write{},
	}
	ttl, err := c.bucketTTL(ctx)
	if err != nil || ttl == 0 {
		return err
	}
	c.setTTL(ttl)
	c.loop(ctx)
	return nil
}

// campaign is one Campaign call's state, owned by its goroutine.
type campaign struct {
	kv     jetstream.KeyValue
	name   string // as given, for logs
	key    string // Key(name)
	holder string
	nonce  uint64
	run    func(context.Context, uint64)
	log    *slog.Logger

	ttl        time.Duration
	renewEvery time.Duration // TTL/3
	margin     time.Duration // TTL/5 + TTL/100
	poll       time.Duration // waiting candidates retry at least this often
	retry      time.Duration // pause after a failed renew
	opTimeout  time.Duration // bound of one request while not holding

	seq     uint64           // last seq written
	pending map[uint64]write // writes sent and not known to have failed
	lastErr string           // of the last failed create, to log each new error once
}

// write is one write sent to the lease key.
type write struct {
	sent   time.Time // before the request left this process
	create bool
}

// term is one tenure as holder.
type term struct {
	rev, token uint64
	lastSent   time.Time // send time of the write at rev
	deadline   time.Time // lastSent + ttl - margin
}

func (c *campaign) setTTL(ttl time.Duration) {
	c.ttl = ttl
	c.renewEvery = ttl / renewDivisor
	c.margin = ttl/marginDivisor + ttl/rateSlackDivisor
	c.poll = min(max(ttl/10, 20*time.Millisecond), 500*time.Millisecond)
	c.retry = max(ttl/20, 10*time.Millisecond)
	c.opTimeout = min(max(ttl/2, 100*time.Millisecond), 5*time.Second)
}

// bucketTTL reads the bucket's TTL, retrying while the server cannot be
// reached; 0 with a nil error means ctx ended first.
func (c *campaign) bucketTTL(ctx context.Context) (time.Duration, error) {
	if !validKey(c.key) {
		return 0, fmt.Errorf("lease: campaign for %q: invalid key %q", c.name, c.key)
	}
	for warned := false; ; {
		opCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		st, err := c.kv.Status(opCtx)
		cancel()
		if err == nil {
			if st.TTL() <= 0 {
				return 0, fmt.Errorf("lease: campaign for %q: bucket %s has no TTL, a dead holder would never be replaced", c.name, c.kv.Bucket())
			}
			return st.TTL(), nil
		}
		if !warned && ctx.Err() == nil {
			c.log.Warn("lease: cannot read the bucket's TTL, retrying", "bucket", c.kv.Bucket(), "err", err)
			warned = true
		}
		select {
		case <-ctx.Done():
			return 0, nil
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func validKey(k string) bool {
	return k != "" && k[0] != '.' && k[len(k)-1] != '.'
}

// loop alternates between waiting for the lease and holding it until ctx is
// done.
func (c *campaign) loop(ctx context.Context) {
	var w jetstream.KeyWatcher // open while waiting
	defer func() {
		if w != nil {
			_ = w.Stop()
		}
	}()
	poll := time.NewTimer(c.poll)
	defer poll.Stop()
	for {
		if t, ok := c.acquire(ctx); ok {
			if w != nil {
				_ = w.Stop()
				w = nil
			}
			returned := c.hold(ctx, t)
			if ctx.Err() != nil {
				return
			}
			if returned {
				// run gave the lease back: let another candidate have it.
				select {
				case <-ctx.Done():
					return
				case <-time.After(c.renewEvery):
				}
			}
			continue
		}
		if ctx.Err() != nil {
			return
		}
		if w == nil {
			var err error
			// A watcher sees a release (delete) and, with limit markers,
			// an expiry (purge) at once; the poll timer covers the rest.
			if w, err = c.kv.Watch(ctx, c.key, jetstream.UpdatesOnly(), jetstream.MetaOnly()); err != nil {
				c.log.Debug("lease: watch failed, polling", "err", err)
				w = nil
			}
		}
		var updates <-chan jetstream.KeyValueEntry
		if w != nil {
			updates = w.Updates()
		}
		poll.Reset(c.poll)
	wait:
		for {
			select {
			case <-ctx.Done():
				return
			case <-poll.C:
				break wait
			case e, ok := <-updates:
				if !ok {
					_ = w.Stop()
					w, updates = nil, nil
					continue
				}
				if e != nil && e.Operation() != jetstream.KeyValuePut {
					break wait
				}
			}
		}
		poll.Stop()
	}
}

// send records a write about to be sent and returns its value.
func (c *campaign) send(create bool) (uint64, []byte, time.Time) {
	c.seq++
	now := time.Now()
	for s, w := range c.pending {
		if now.Sub(w.sent) > c.ttl {
			delete(c.pending, s) // expired on the server whatever became of it
		}
	}
	c.pending[c.seq] = write{sent: now, create: create}
	return c.seq, value{nonce: c.nonce, seq: c.seq, holder: c.holder}.encode(), now
}

// acquire tries once to create the lease key. When the create's outcome is
// unknown, or the key exists, it reads the key: an earlier write of ours
// whose reply was lost is adopted.
func (c *campaign) acquire(ctx context.Context) (term, bool) {
	_, val, sent := c.send(true)
	opCtx, cancel := context.WithTimeout(ctx, c.opTimeout)
	defer cancel()
	rev, err := c.kv.Create(opCtx, c.key, val)
	if err == nil {
		return term{rev: rev, token: rev, lastSent: sent, deadline: sent.Add(c.ttl - c.margin)}, true
	}
	if ctx.Err() != nil {
		return term{}, false
	}
	// A fresh timeout: the create's may be spent, and a create that timed
	// out is the one most worth recognising.
	getCtx, cancelGet := context.WithTimeout(ctx, c.opTimeout)
	defer cancelGet()
	e, gerr := c.kv.Get(getCtx, c.key)
	if gerr == nil {
		// Ours: a create whose reply was lost, or a renew of a term that
		// ended that landed late. Either way the key is ours until w.sent+TTL.
		if w, ok := c.ours(e); ok {
			t := term{rev: e.Revision(), token: e.Revision(), lastSent: w.sent, deadline: w.sent.Add(c.ttl - c.margin)}
			if time.Until(t.deadline) > 0 {
				c.log.Info("lease: adopted a write of ours whose reply was lost", "token", t.token, "create", w.create)
				return t, true
			}
		}
	}
	if errors.Is(err, jetstream.ErrKeyExists) {
		c.lastErr = ""
		c.log.Debug("lease: held elsewhere", "by", holderOf(e, gerr))
		return term{}, false
	}
	level := slog.LevelWarn
	if err.Error() == c.lastErr {
		level = slog.LevelDebug
	}
	c.lastErr = err.Error()
	c.log.Log(ctx, level, "lease: create failed, retrying", "err", err)
	return term{}, false
}

// ours reports the write of this campaign that e holds, if any.
func (c *campaign) ours(e jetstream.KeyValueEntry) (write, bool) {
	v, err := decodeValue(e.Value())
	if err != nil || v.nonce != c.nonce {
		return write{}, false
	}
	w, ok := c.pending[v.seq]
	return w, ok
}

func holderOf(e jetstream.KeyValueEntry, err error) string {
	if err != nil {
		return "?"
	}
	v, derr := decodeValue(e.Value())
	if derr != nil {
		return "?"
	}
	return v.holder
}

// hold runs run for one term and renews the lease until ctx is done, the
// lease is lost or its deadline passes, or run returns (then it reports
// true). It returns after run has returned and the lease was released.
func (c *campaign) hold(ctx context.Context, t term) (runReturned bool) {
	runCtx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	// The deadline timer is the safety: it fires without waiting for any
	// request, even one blocked in a partition.
	deadline := time.AfterFunc(time.Until(t.deadline), func() { stop(errExpired) })
	defer deadline.Stop()
	done := make(chan struct{})
	log := c.log.With("token", t.token)
	log.Info("lease: acquired, leading")
	started := time.Now()
	go func() {
		defer close(done)
		c.run(runCtx, t.token)
	}()

	renew := time.NewTimer(time.Until(t.lastSent.Add(c.renewEvery)))
	defer renew.Stop()
	var why string
loop:
	for {
		select {
		case <-runCtx.Done():
			why = "stopped"
			if cause := context.Cause(runCtx); errors.Is(cause, errExpired) {
				why = "renew deadline passed"
			}
			break loop
		case <-done:
			why, runReturned = "run returned", true
			break loop
		case <-renew.C:
			next, ok := c.renew(runCtx, &t, deadline)
			if !ok {
				why = "lost"
				break loop
			}
			renew.Reset(next)
		}
	}
	stop(nil)
	<-done
	log.Info("lease: stopped leading", "why", why, "led", time.Since(started).Round(time.Millisecond))
	c.release(ctx, t, log) // conditional: harmless if it moved on
	return runReturned
}

// renew extends the term with one write, retrying transient failures until
// the deadline. It returns how long to wait before the next renew, or false
// when the lease is lost.
func (c *campaign) renew(ctx context.Context, t *term, deadline *time.Timer) (time.Duration, bool) {
	for level := slog.LevelWarn; ; level = slog.LevelDebug {
		_, val, sent := c.send(false)
		opCtx, cancel := context.WithDeadline(ctx, t.deadline)
		rev, err := c.kv.Update(opCtx, c.key, val, t.rev)
		if err == nil {
			cancel()
			return c.extend(t, rev, sent, deadline)
		}
		// The update failed, or its reply was lost: ask what the key holds.
		e, gerr := c.kv.Get(opCtx, c.key)
		cancel()
		if ctx.Err() != nil {
			return 0, true // stopping or expired; hold's loop sees runCtx
		}
		if gerr == nil {
			if w, ok := c.ours(e); ok {
				return c.extend(t, e.Revision(), w.sent, deadline)
			}
		}
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) && (gerr == nil || errors.Is(gerr, jetstream.ErrKeyNotFound)) {
			c.log.Warn("lease: lost", "token", t.token, "now", holderOf(e, gerr))
			return 0, false
		}
		c.log.Log(ctx, level, "lease: renew failed, retrying", "token", t.token, "err", err, "left", time.Until(t.deadline).Round(time.Millisecond))
		select {
		case <-ctx.Done():
			return 0, true
		case <-time.After(c.retry):
		}
	}
}

// extend moves the term to a write known to be stored at rev, sent at sent,
// unless the deadline fired first (then run's ctx is already done, and the
// term ends; its revision is still updated so that release can delete it).
func (c *campaign) extend(t *term, rev uint64, sent time.Time, deadline *time.Timer) (time.Duration, bool) {
	t.rev, t.lastSent = rev, sent
	if !deadline.Stop() {
		return 0, false
	}
	t.deadline = sent.Add(c.ttl - c.margin)
	deadline.Reset(time.Until(t.deadline))
	for s, w := range c.pending {
		if w.sent.Before(sent) {
			delete(c.pending, s)
		}
	}
	return max(time.Until(sent.Add(c.renewEvery)), 0), true
}

// release deletes the key if it still holds the term's revision, so that a
// waiting candidate takes over at once; a lease that moved on is left alone.
func (c *campaign) release(ctx context.Context, t term, log *slog.Logger) {
	opCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opTimeout)
	defer cancel()
	err := c.kv.Delete(opCtx, c.key, jetstream.LastRevision(t.rev))
	switch {
	case err == nil:
		log.Info("lease: released")
	case errors.Is(err, jetstream.ErrKeyRevisionMismatch):
		log.Debug("lease: not released, it moved on", "err", err)
	default:
		log.Warn("lease: release failed, it will expire", "err", err)
	}
}

// Holder returns who holds the lease key in kv now (the holder Campaign was
// given), or "" if nobody does.
func Holder(ctx context.Context, kv jetstream.KeyValue, key string) (string, error) {
	e, err := kv.Get(ctx, Key(key))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("lease: read %s in bucket %s: %w", key, kv.Bucket(), err)
	}
	v, err := decodeValue(e.Value())
	if err != nil {
		return "", fmt.Errorf("lease: read %s in bucket %s: %w", key, kv.Bucket(), err)
	}
	return v.holder, nil
}
