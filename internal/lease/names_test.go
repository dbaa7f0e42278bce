package lease_test

import (
	"regexp"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/lease"
)

var (
	bucketRe = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)     // nats.go's validBucketRe
	keyRe    = regexp.MustCompile(`^[-/_=\.a-zA-Z0-9]+$`) // nats.go's validKeyRe
)

func TestNames(t *testing.T) {
	names := []string{"", "app", "my app", "my-app", "my_app", "a.b", "a=2Eb", "a-2Eb", "é", "x/y", "*", ">", "  "}
	buckets, keys := map[string]string{}, map[string]string{}
	for _, n := range names {
		b := lease.BucketName(n, "leases")
		if !bucketRe.MatchString(b) {
			t.Errorf("BucketName(%q) = %q: not a valid bucket name", n, b)
		}
		if prev, dup := buckets[b]; dup {
			t.Errorf("BucketName(%q) = BucketName(%q) = %q", n, prev, b)
		}
		buckets[b] = n
		k := lease.Key(n)
		if !keyRe.MatchString(k) || k[0] == '.' {
			t.Errorf("Key(%q) = %q: not a valid key", n, k)
		}
		if prev, dup := keys[k]; dup {
			t.Errorf("Key(%q) = Key(%q) = %q", n, prev, k)
		}
		keys[k] = n
		tk := lease.TickKey(n, time.Unix(1, 5))
		if !keyRe.MatchString(tk) || tk[0] == '.' {
			t.Errorf("TickKey(%q) = %q: not a valid key", n, tk)
		}
	}
	if got, want := lease.BucketName("my app", "leases"), "brood_my-20app_leases"; got != want {
		t.Errorf("BucketName = %q, want %q", got, want)
	}
	if got, want := lease.TickKey("report.daily", time.Unix(60, 0)), "report=2Edaily.60000000000"; got != want {
		t.Errorf("TickKey = %q, want %q", got, want)
	}
}

// TestOpenBucketTTLMismatch: members that disagree on the TTL are refused
// rather than silently changing the bucket under the others.
func TestOpenBucketTTLMismatch(t *testing.T) {
	s := startServer(t)
	js := jsOf(t, connect(t, s.URL()))
	ctx := testContext(t, 10*time.Second)
	name := lease.BucketName("test", "leases")
	if _, err := lease.OpenBucket(ctx, js, name, testTTL); err != nil {
		t.Fatal(err)
	}
	if _, err := lease.OpenBucket(ctx, js, name, testTTL); err != nil {
		t.Errorf("OpenBucket again with the same TTL: %v", err)
	}
	if _, err := lease.OpenBucket(ctx, js, name, 2*testTTL); err == nil {
		t.Errorf("OpenBucket with another TTL: no error")
	} else {
		t.Logf("OpenBucket with another TTL: %v", err)
	}
}
