package lease_test

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestKVExpiryFacts records how nats-server shows a key removed by the
// bucket's TTL (MaxAge), with and without LimitMarkerTTL.
func TestKVExpiryFacts(t *testing.T) {
	s := startServer(t)
	js := jsOf(t, connect(t, s.URL()))
	ctx := testContext(t, 30*time.Second)
	for _, markers := range []time.Duration{0, time.Second} {
		name := map[bool]string{true: "m", false: "n"}[markers > 0]
		kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "facts" + name, TTL: time.Second, LimitMarkerTTL: markers})
		if err != nil {
			t.Fatal(err)
		}
		w, err := kv.Watch(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		rev, err := kv.Create(ctx, "k", []byte("v"))
		if err != nil {
			t.Fatal(err)
		}
		created := time.Now()
		var gone time.Duration
		for gone == 0 {
			if _, err := kv.Get(ctx, "k"); err != nil {
				gone = time.Since(created)
				t.Logf("markers=%v: Get fails after %v: %v", markers, gone, err)
			}
			time.Sleep(5 * time.Millisecond)
		}
		timeout := time.After(time.Second)
	events:
		for {
			select {
			case e := <-w.Updates():
				if e == nil {
					continue
				}
				t.Logf("markers=%v: watch: %v rev=%d op=%v after %v", markers, e.Key(), e.Revision(), e.Operation(), time.Since(created))
				if e.Operation() != jetstream.KeyValuePut {
					break events
				}
			case <-timeout:
				t.Logf("markers=%v: no watch event within 1s of the key vanishing", markers)
				break events
			}
		}
		_, err = kv.Update(ctx, "k", []byte("v2"), rev)
		t.Logf("markers=%v: update old rev: %v", markers, err)
		r2, err := kv.Create(ctx, "k", []byte("v3"))
		t.Logf("markers=%v: create again: rev=%d %v", markers, r2, err)
		_ = w.Stop()
		st, _ := kv.Status(ctx)
		t.Logf("status ttl=%v markers=%v", st.TTL(), st.LimitMarkerTTL())
	}
}
