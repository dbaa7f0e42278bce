// Package lease elects one leader among the members of a fleet and lets
// exactly one member claim each tick of a one-in-fleet schedule, over NATS
// JetStream key-value.
//
// # Leader lease
//
// Campaign holds a lease: a key in a bucket whose TTL (the stream's max age)
// is the lease's TTL. A candidate acquires it with Create, which fails while
// another holds it, and renews it every TTL/3 with Update(key, value,
// revision), which fails if anyone else wrote it since. The revision of the
// Create is the term's fencing token; KV revisions are stream sequences, so
// tokens increase strictly while the bucket lives (deleting the bucket resets
// them). A holder that stops deletes the key, conditionally on its revision,
// so a waiting candidate takes over at once; a dead holder's key expires
// after TTL, and a candidate that watches the key (a limit marker shows the
// expiry as a purge) or polls (every TTL/10, at most 500ms) takes over.
//
// # Why two runs never overlap
//
// The server removes a key no earlier than TTL after it stored the key's last
// write, by its clock. That write left this process after the holder noted
// the time of sending, so the server stored it later. The holder cancels
// run's context at
//
//	deadline = send time of its last successful write + TTL - TTL/5 - TTL/100
//
// on its monotonic clock, by a timer that needs no reply from anyone, unless a
// later write succeeds first. Another candidate can only create the key
// after the server removed it (expiry, or the holder's own release, which
// comes after run returned), and starts its run after that. So the holder's
// run context ends at least TTL/5 + TTL/100 before the key can be gone: the
// TTL/5 absorbs the holder's scheduling delay in firing the timer (a loaded
// host), the TTL/100 a holder clock up to 1% slower than the server's. A
// reply that arrives late, a request buffered while disconnected and flushed
// at reconnection: all move the server's store time later, never the
// deadline. A write whose reply is lost is recognised when the key is read
// back: the value carries a random per-campaign nonce and the write's
// sequence number, hence its send time.
//
// Assumptions: run stops acting on the lease when its context is done (what
// it cannot undo should be fenced with the token); the holder is not frozen
// longer than the margin between its timer's due time and its run noticing
// (GC and scheduling pauses are far shorter; SIGSTOP, a paused VM or a
// suspended host are not, and Go's monotonic clock does not count a suspend:
// fence with the token where that matters); the server's wall clock
// does not jump forward by more than the margin; every member uses the same
// bucket, whose TTL Campaign reads when it starts (OpenBucket refuses a TTL
// different from an existing bucket's); the bucket has one replica or the
// cluster does not lose acknowledged writes.
//
// # Key expiry, as observed on nats-server 2.15.2
//
// A bucket with TTL removes a key about 250ms after TTL (never before; the
// server's expiry timer is coarse). Without LimitMarkerTTL a watcher sees
// nothing: the key simply vanishes (Get: key not found; Update with the old
// revision: wrong last sequence 0; Create succeeds). With LimitMarkerTTL the
// server writes a marker with a new revision, which watchers and Get see as a
// purge (Nats-Marker-Reason: MaxAge); Create then succeeds over it.
// OpenBucket asks for markers and the campaign handles both.
//
// # One-in-fleet ticks
//
// NextTick gives ticks at multiples of an interval since the Unix epoch, so
// members agree on a tick's nominal time; ClaimTick creates "<task>.<tick
// unix nanos>" and the one Create that succeeds wins the tick. Claims expire
// with their bucket's TTL, which must be a few intervals (see ClaimTick).
package lease
