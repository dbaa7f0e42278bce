package lease

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// OpenBucket creates the KV bucket named bucket with the given TTL (every key
// is removed ttl after its last write), or opens it if it exists with that
// TTL. A bucket that exists with another TTL is an error, not updated: a
// lease is only safe if every member of the fleet agrees on its TTL, and
// Campaign reads it from the bucket.
//
// The bucket keeps one revision per key on file storage with one replica,
// and keeps limit markers (LimitMarkerTTL) so that watchers see a key expire
// as a purge; on servers without markers (before 2.11) it is created without
// them and waiting candidates find expired keys by polling.
func OpenBucket(ctx context.Context, js jetstream.JetStream, bucket string, ttl time.Duration) (jetstream.KeyValue, error) {
	if ttl <= 0 {
		return nil, fmt.Errorf("lease: bucket %s: TTL %v, want > 0", bucket, ttl)
	}
	cfg := jetstream.KeyValueConfig{
		Bucket:         bucket,
		Description:    "brood leases and one-in-fleet ticks",
		TTL:            ttl,
		History:        1,
		Storage:        jetstream.FileStorage,
		Replicas:       1,
		LimitMarkerTTL: max(ttl, time.Second),
	}
	kv, err := js.CreateKeyValue(ctx, cfg)
	if errors.Is(err, jetstream.ErrLimitMarkerTTLNotSupported) {
		cfg.LimitMarkerTTL = 0
		kv, err = js.CreateKeyValue(ctx, cfg)
	}
	if err == nil {
		return kv, nil
	}
	if !errors.Is(err, jetstream.ErrBucketExists) {
		return nil, fmt.Errorf("lease: create bucket %s: %w", bucket, err)
	}
	kv, err = js.KeyValue(ctx, bucket)
	if err != nil {
		return nil, fmt.Errorf("lease: open bucket %s: %w", bucket, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("lease: status of bucket %s: %w", bucket, err)
	}
	if st.TTL() != ttl {
		return nil, fmt.Errorf("lease: bucket %s exists with TTL %v, want %v (every member must use the same TTL)", bucket, st.TTL(), ttl)
	}
	return kv, nil
}
