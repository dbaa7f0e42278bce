package lease_test

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestKVExpiryFacts checks what the lease relies on, and records how
// nats-server shows a key removed by the bucket's TTL (MaxAge), with and
// without LimitMarkerTTL:
//   - a key is never gone before TTL after its write was sent;
//   - afterwards Update with the old revision fails and Create succeeds;
//   - with limit markers a watcher sees the expiry as a purge; without,
//     nothing (the key just vanishes).
func TestKVExpiryFacts(t *testing.T) {
	const ttl = time.Second
	s := startServer(t)
	js := jsOf(t, connect(t, s.URL()))
	ctx := testContext(t, 30*time.Second)
	for _, markers := range []time.Duration{0, time.Second} {
		name := map[bool]string{true: "markers", false: "plain"}[markers > 0]
		kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: name, TTL: ttl, LimitMarkerTTL: markers})
		if err != nil {
			t.Fatal(err)
		}
		w, err := kv.Watch(ctx, "k", jetstream.UpdatesOnly())
		if err != nil {
			t.Fatal(err)
		}
		sent := time.Now()
		rev, err := kv.Create(ctx, "k", []byte("v"))
		if err != nil {
			t.Fatal(err)
		}
		var gone time.Duration
		for gone == 0 {
			_, err := kv.Get(ctx, "k")
			switch {
			case errors.Is(err, jetstream.ErrKeyNotFound):
				gone = time.Since(sent)
			case err != nil:
				t.Fatalf("%s: Get: %v", name, err)
			}
			time.Sleep(5 * time.Millisecond) // sampling interval
		}
		if gone < ttl {
			t.Errorf("%s: key gone %v after its write was sent, before the TTL %v", name, gone, ttl)
		}
		t.Logf("%s: key gone %v after its write was sent (TTL %v)", name, gone.Round(time.Millisecond), ttl)
		var expiry jetstream.KeyValueEntry
		timeout := time.After(time.Second)
	events:
		for {
			select {
			case e := <-w.Updates():
				if e != nil && e.Operation() != jetstream.KeyValuePut {
					expiry = e
					break events
				}
			case <-timeout:
				break events
			}
		}
		switch {
		case markers > 0 && expiry == nil:
			t.Errorf("%s: no watch event for the expiry", name)
		case markers == 0 && expiry != nil:
			t.Errorf("%s: watch event %v without markers", name, expiry.Operation())
		case expiry != nil:
			t.Logf("%s: watcher saw %v at revision %d", name, expiry.Operation(), expiry.Revision())
		default:
			t.Logf("%s: watcher saw nothing within 1s", name)
		}
		if _, err := kv.Update(ctx, "k", []byte("v2"), rev); !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			t.Errorf("%s: Update with the expired revision: %v, want ErrKeyRevisionMismatch", name, err)
		}
		if _, err := kv.Create(ctx, "k", []byte("v3")); err != nil {
			t.Errorf("%s: Create after expiry: %v", name, err)
		}
		_ = w.Stop()
	}
}
