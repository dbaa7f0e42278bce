package lease_test

import (
	"context"
	"fmt"
	"github.com/brood-go/brood/internal/natstest"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/lease"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

const testTTL = 2 * time.Second

// tenure is one call of run: when it started and when its ctx was seen done.
type tenure struct {
	who         string
	token       uint64
	start, stop time.Time // stop is zero while running
}

// recorder records every run of every candidate, and any overlap the moment
// it happens.
type recorder struct {
	mu       sync.Mutex
	terms    []tenure
	overlaps []string
}

func (r *recorder) run(who string) func(context.Context, uint64) {
	return func(ctx context.Context, token uint64) {
		i := r.begin(who, token)
		<-ctx.Done()
		r.end(i)
	}
}

func (r *recorder) begin(who string, token uint64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	now := time.Now()
	for _, t := range r.terms {
		if t.stop.IsZero() {
			r.overlaps = append(r.overlaps, fmt.Sprintf("%s started (token %d) while %s runs (token %d)", who, token, t.who, t.token))
		}
	}
	r.terms = append(r.terms, tenure{who: who, token: token, start: now})
	return len(r.terms) - 1
}

func (r *recorder) end(i int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.terms[i].stop = time.Now()
}

func (r *recorder) snapshot() []tenure {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.terms)
}

// leader is the candidate running now, "" if none.
func (r *recorder) leader() string {
	for _, t := range r.snapshot() {
		if t.stop.IsZero() {
			return t.who
		}
	}
	return ""
}

// started reports a term that started after since, if any.
func (r *recorder) startedAfter(since time.Time) (tenure, bool) {
	for _, t := range r.snapshot() {
		if t.start.After(since) {
			return t, true
		}
	}
	return tenure{}, false
}

// ledAfter reports whether who started a term after since.
func (r *recorder) ledAfter(who string, since time.Time) bool {
	for _, t := range r.snapshot() {
		if t.who == who && t.start.After(since) {
			return true
		}
	}
	return false
}

func (r *recorder) last(who string) tenure {
	terms := r.snapshot()
	for i := len(terms) - 1; i >= 0; i-- {
		if terms[i].who == who {
			return terms[i]
		}
	}
	return tenure{}
}

// check fails the test on any overlap, any stop not before the next start,
// or tokens that do not increase strictly.
func (r *recorder) check(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, o := range r.overlaps {
		t.Errorf("overlap: %s", o)
	}
	terms := r.terms
	for i := 1; i < len(terms); i++ {
		prev, next := terms[i-1], terms[i]
		if prev.stop.IsZero() || !prev.stop.Before(next.start) {
			t.Errorf("term %d (%s, token %d, %v..%v) not over before term %d (%s, token %d) started at %v",
				i-1, prev.who, prev.token, prev.start.Format(time.StampMilli), prev.stop.Format(time.StampMilli),
				i, next.who, next.token, next.start.Format(time.StampMilli))
		}
		if next.token <= prev.token {
			t.Errorf("token %d of term %d not above token %d of term %d", next.token, i, prev.token, i-1)
		}
	}
	for i, tm := range terms {
		stop := "running"
		if !tm.stop.IsZero() {
			stop = tm.stop.Sub(tm.start).Round(time.Millisecond).String()
		}
		t.Logf("term %d: %s token %d for %s", i, tm.who, tm.token, stop)
	}
}

// candidate is one member campaigning over its own connection.
type candidate struct {
	name   string
	nc     *nats.Conn
	kv     jetstream.KeyValue
	cancel context.CancelFunc
	done   chan error
}

func newCandidate(t *testing.T, name, url string) *candidate {
	t.Helper()
	nc := connect(t, url)
	kv, err := lease.OpenBucket(testContext(t, 10*time.Second), jsOf(t, nc), lease.BucketName("test", "leases"), testTTL)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return &candidate{name: name, nc: nc, kv: kv}
}

func (c *candidate) start(t *testing.T, r *recorder) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	c.cancel, c.done = cancel, make(chan error, 1)
	logger := slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo})).With("who", c.name)
	go func() { c.done <- lease.Campaign(ctx, c.kv, "leader", c.name, r.run(c.name), logger) }()
	t.Cleanup(func() { c.stop(t) })
}

// stop ends the campaign and waits for Campaign to return.
func (c *candidate) stop(t *testing.T) {
	t.Helper()
	if c.cancel == nil {
		return
	}
	c.cancel()
	select {
	case err := <-c.done:
		if err != nil {
			t.Errorf("%s: Campaign: %v", c.name, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("%s: Campaign did not return", c.name)
	}
	c.cancel = nil
}

// testWriter sends log lines to t.Log while the test runs.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(b[:len(b)-1]))
	return len(b), nil
}

func startCandidates(t *testing.T, r *recorder, urls ...string) []*candidate {
	t.Helper()
	var cs []*candidate
	for i, u := range urls {
		c := newCandidate(t, fmt.Sprintf("c%d", i), u)
		c.start(t, r)
		cs = append(cs, c)
	}
	return cs
}

func byName(cs []*candidate, name string) *candidate {
	for _, c := range cs {
		if c.name == name {
			return c
		}
	}
	return nil
}

// TestCampaignOneLeaderAtATime: three candidates, the leader stops and
// restarts its campaign five times. A stopping leader releases the lease, and
// the next takes it over the release's delete marker, not after an expiry
// (an observer's watcher records the operations on the key it is sent).
func TestCampaignOneLeaderAtATime(t *testing.T) {
	s := startServer(t)
	r := &recorder{}
	ops := watchOps(t, newCandidate(t, "observer", s.URL()).kv)
	cs := startCandidates(t, r, s.URL(), s.URL(), s.URL())
	for change := range 5 {
		var who string
		waitFor(t, 10*time.Second, "a leader", func() bool { who = r.leader(); return who != "" })
		c := byName(cs, who)
		// Let the term live past a renew or two before it ends.
		cur := r.last(who)
		waitFor(t, 10*time.Second, "a renew", func() bool { return time.Since(cur.start) > testTTL/2 })
		before := time.Now()
		c.stop(t)
		next, ok := tenure{}, false
		waitFor(t, 10*time.Second, "the next leader", func() bool { next, ok = r.startedAfter(before); return ok })
		t.Logf("change %d: %s released, %s leads after %v", change, who, next.who, next.start.Sub(before).Round(time.Millisecond))
		// The operation stored just before the new leader's create.
		var prev opRecord
		waitFor(t, 10*time.Second, "the observer to see the create", func() bool {
			var seen bool
			prev, seen = ops.before(next.token)
			return seen
		})
		switch took := next.start.Sub(before); {
		case prev.rev == next.token-1 && prev.op != jetstream.KeyValueDelete:
			t.Errorf("change %d: the lease was taken over a %v at revision %d, want the release's delete", change, prev.op, prev.rev)
		case prev.rev != next.token-1 && took >= testTTL/2:
			// The bucket keeps one revision per key: a watcher that lags
			// misses a revision overwritten before it was sent (seen in
			// CI: the delete, 2 ms before the create). Then only the time
			// tells a release from an expiry.
			t.Errorf("change %d: the observer missed revision %d, and the next leader took %v: an expiry, not the release", change, next.token-1, took)
		}
		c.start(t, r)
	}
	for _, c := range cs {
		c.stop(t)
	}
	r.check(t)
}

type opRecord struct {
	rev uint64
	op  jetstream.KeyValueOp
}

// opLog is every operation on the lease key, in revision order.
type opLog struct {
	mu  sync.Mutex
	ops []opRecord
}

// before reports the operation just before revision rev, once rev is seen.
func (l *opLog) before(rev uint64) (opRecord, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, o := range l.ops {
		if o.rev == rev && i > 0 {
			return l.ops[i-1], true
		}
	}
	return opRecord{}, false
}

func watchOps(t *testing.T, kv jetstream.KeyValue) *opLog {
	t.Helper()
	w, err := kv.Watch(t.Context(), lease.Key("leader"), jetstream.MetaOnly())
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	l := &opLog{}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for e := range w.Updates() {
			if e != nil {
				l.mu.Lock()
				l.ops = append(l.ops, opRecord{e.Revision(), e.Operation()})
				l.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() { _ = w.Stop(); <-done })
	return l
}

// TestCampaignDeadHolderReplaced: the holder's connection is closed under it
// (no release reaches the server); another candidate leads within TTL + 1s.
func TestCampaignDeadHolderReplaced(t *testing.T) {
	s := startServer(t)
	r := &recorder{}
	cs := startCandidates(t, r, s.URL(), s.URL(), s.URL())
	var who string
	waitFor(t, 10*time.Second, "a leader", func() bool { who = r.leader(); return who != "" })
	// Let the holder renew at least once, so the kill is mid-term.
	first := r.last(who)
	waitFor(t, 5*time.Second, "a renew", func() bool { return time.Since(first.start) > testTTL/2 })
	killed := time.Now()
	byName(cs, who).nc.Close()
	var next tenure
	waitFor(t, 2*testTTL+5*time.Second, "a new leader", func() bool {
		n, ok := r.startedAfter(killed)
		next = n
		return ok
	})
	took := next.start.Sub(killed)
	t.Logf("holder %s killed; %s leads after %v (TTL %v)", who, next.who, took.Round(time.Millisecond), testTTL)
	if took > testTTL+time.Second {
		t.Errorf("takeover took %v, want within TTL + 1s = %v", took, testTTL+time.Second)
	}
	old := r.last(who)
	if old.stop.IsZero() {
		t.Fatalf("the killed holder's run still runs")
	}
	t.Logf("the killed holder's run ended %v after the kill, %v before the takeover", old.stop.Sub(killed).Round(time.Millisecond), next.start.Sub(old.stop).Round(time.Millisecond))
	for _, c := range cs {
		c.stop(t)
	}
	r.check(t)
}

// disturbLeader runs three candidates, each behind a proxy, waits for a
// leader and one of its renews, then disturbs the leader's proxy (Cut or
// Stall) and waits for another candidate to lead: the disturbed leader's run
// must have ended before that one started. It returns what the caller needs
// to go on.
func disturbLeader(t *testing.T, what string, disturb func(*natstest.Proxy)) (r *recorder, cs []*candidate, ps []*natstest.Proxy, i int, next tenure) {
	t.Helper()
	s := startServer(t)
	r = &recorder{}
	var urls []string
	for range 3 {
		p := natstest.NewProxy(t, s.Addr())
		ps = append(ps, p)
		urls = append(urls, p.URL())
	}
	cs = startCandidates(t, r, urls...)
	var who string
	waitFor(t, 10*time.Second, "a leader", func() bool { who = r.leader(); return who != "" })
	i = slices.IndexFunc(cs, func(c *candidate) bool { return c.name == who })
	first := r.last(who)
	waitFor(t, 5*time.Second, "a renew", func() bool { return time.Since(first.start) > testTTL/2 })
	at := time.Now()
	disturb(ps[i])
	waitFor(t, 2*testTTL+5*time.Second, "a new leader", func() bool {
		n, ok := r.startedAfter(at)
		next = n
		return ok
	})
	old := r.last(who)
	if old.stop.IsZero() || !old.stop.Before(next.start) {
		t.Fatalf("%s leader %s stopped at %v, not before %s started at %v", what, who, old.stop, next.who, next.start)
	}
	t.Logf("%s %s: its run ended %v after; %s started %v later (%v after)",
		what, who, old.stop.Sub(at).Round(time.Millisecond), next.who, next.start.Sub(old.stop).Round(time.Millisecond), next.start.Sub(at).Round(time.Millisecond))
	return r, cs, ps, i, next
}

// TestCampaignPartition: the leader is cut from the server by its proxy; its
// run ends before another candidate's starts; restored, it campaigns again
// and leads once the others stop.
func TestCampaignPartition(t *testing.T) {
	r, cs, ps, i, _ := disturbLeader(t, "cut", (*natstest.Proxy).Cut)
	who := cs[i].name
	ps[i].Restore()
	waitFor(t, 15*time.Second, who+" reconnected", func() bool { return cs[i].nc.IsConnected() })
	// The others stop: the restored candidate must take the lease.
	restored := time.Now()
	for j, c := range cs {
		if j != i {
			c.stop(t)
		}
	}
	waitFor(t, 2*testTTL+5*time.Second, who+" leads again", func() bool { return r.ledAfter(who, restored) })
	cs[i].stop(t)
	r.check(t)
}

// TestCampaignStalledLeader: the leader's connection stalls (open, nothing
// arrives: its renews neither fail nor succeed); its run ends before another
// candidate's starts. Restored, its held requests reach the server late
// (conditional on an old revision, they must fail) and it leads again once
// the others stop.
func TestCampaignStalledLeader(t *testing.T) {
	r, cs, ps, i, next := disturbLeader(t, "stalled", (*natstest.Proxy).Stall)
	who := cs[i].name
	// Hold the stall a while longer, so that the stalled candidate queues
	// creates too, then deliver everything late.
	cur := r.last(next.who)
	waitFor(t, 5*time.Second, "the new leader to renew", func() bool { return time.Since(cur.start) > testTTL/2 })
	ps[i].Restore()
	restored := time.Now()
	// The new leader must keep its lease through the late delivery.
	waitFor(t, 5*time.Second, "a renew past the late delivery", func() bool { return time.Since(restored) > testTTL })
	if l := r.last(next.who); !l.stop.IsZero() {
		t.Errorf("the new leader %s lost its lease at %v, after the stalled requests arrived", next.who, l.stop)
	}
	stopping := time.Now() // the restored candidate may take over before the last stop returns
	for j, c := range cs {
		if j != i {
			c.stop(t)
		}
	}
	waitFor(t, 2*testTTL+10*time.Second, who+" leads again", func() bool { return r.ledAfter(who, stopping) })
	cs[i].stop(t)
	r.check(t)
}

// TestCampaignRunReturns: a run that returns gives the lease back at once;
// another candidate takes it, and the first is called again later.
func TestCampaignRunReturns(t *testing.T) {
	s := startServer(t)
	r := &recorder{}
	q := newCandidate(t, "quitter", s.URL())
	quit := make(chan struct{})
	var calls atomic.Int32
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- lease.Campaign(ctx, q.kv, "leader", "quitter", func(ctx context.Context, token uint64) {
			i := r.begin("quitter", token)
			defer r.end(i)
			if calls.Add(1) == 1 {
				select {
				case <-quit: // the first call returns on its own
				case <-ctx.Done():
				}
				return
			}
			<-ctx.Done()
		}, nil)
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Campaign: %v", err)
		}
	})
	waitFor(t, 10*time.Second, "quitter leads", func() bool { return r.leader() == "quitter" })
	other := newCandidate(t, "other", s.URL())
	other.start(t, r)
	returned := time.Now()
	close(quit)
	var next tenure
	waitFor(t, 10*time.Second, "other leads", func() bool { var ok bool; next, ok = r.startedAfter(returned); return ok })
	if next.who != "other" {
		t.Fatalf("after quitter's run returned, %s leads, want other", next.who)
	}
	t.Logf("run returned; other leads after %v", next.start.Sub(returned).Round(time.Millisecond))
	other.stop(t)
	waitFor(t, 10*time.Second, "quitter's second run", func() bool { return calls.Load() == 2 && r.leader() == "quitter" })
	cancel()
	waitFor(t, 10*time.Second, "quitter's run to end", func() bool { return r.leader() == "" })
	r.check(t)
}

// TestCampaignNeedsTTL: a bucket without TTL would keep a dead holder's
// lease forever; Campaign refuses it.
func TestCampaignNeedsTTL(t *testing.T) {
	s := startServer(t)
	ctx := testContext(t, 10*time.Second)
	kv, err := jsOf(t, connect(t, s.URL())).CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "forever"})
	if err != nil {
		t.Fatal(err)
	}
	err = lease.Campaign(ctx, kv, "leader", "c", func(context.Context, uint64) { t.Error("run called") }, nil)
	if err == nil {
		t.Fatal("Campaign on a bucket without TTL: no error")
	}
	t.Logf("Campaign on a bucket without TTL: %v", err)
}

// TestCampaignServerRestart: the server restarts on the same port and store,
// first at once, then after an outage longer than the TTL (the leader's run
// must end while the server is down); both times the campaigns recover and a
// leader holds a lease written after the restart.
func TestCampaignServerRestart(t *testing.T) {
	s := startServer(t)
	r := &recorder{}
	cs := startCandidates(t, r, s.URL(), s.URL(), s.URL())
	observer := newCandidate(t, "observer", s.URL())
	ctx := testContext(t, 60*time.Second)
	recovered := func(restarted time.Time) {
		t.Helper()
		var e jetstream.KeyValueEntry
		waitFor(t, 3*testTTL+10*time.Second, "a lease written after the restart, and its holder running", func() bool {
			var err error
			e, err = observer.kv.Get(ctx, "leader")
			return err == nil && e.Created().After(restarted) && r.leader() != ""
		})
		t.Logf("after the restart: lease at revision %d, leader %s, %v after the restart", e.Revision(), r.leader(), time.Since(restarted).Round(time.Millisecond))
	}
	waitFor(t, 10*time.Second, "a leader", func() bool { return r.leader() != "" })
	s.Restart()
	recovered(time.Now())

	s.Stop()
	down := time.Now()
	waitFor(t, 2*testTTL+5*time.Second, "no leader while the server is down", func() bool { return r.leader() == "" })
	t.Logf("server down: the leader's run ended after %v", time.Since(down).Round(time.Millisecond))
	s.start()
	recovered(time.Now())
	for _, c := range cs {
		c.stop(t)
	}
	r.check(t)
}
