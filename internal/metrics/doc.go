// Package metrics merges the Prometheus metrics gathered from the processes
// of a cluster into one view that stays monotonic when processes die or are
// replaced, and carries them over IPC.
//
// The master keeps one Cluster. At scrape time it asks every child for its
// prometheus.DefaultGatherer (the child answers with Encode), Decodes the
// answers, calls Update per child (a child that missed the deadline simply
// keeps its last copy) and serves Families. When a child exits — after one
// last gather if it stops gracefully — the master calls Retire: its counters
// and histograms are folded into a retained base, so the cluster's counters
// never go down; its gauges and summaries disappear with it.
//
// Merging, per family type:
//
//   - counter, histogram: one series per distinct label set, the sum over
//     the live children plus the base. Classic buckets are summed per upper
//     bound over the union of the bounds (a child without some bound counts
//     there as at its next lower bound). Native buckets are summed at the
//     coarsest schema among the inputs and the widest zero bucket. Created
//     timestamps, exemplars and sample timestamps are dropped.
//   - gauge: per child with labels role and slot added (PerSlot, the
//     default), or Sum/Min/Max over the live children per label set, as
//     Options.Gauges says.
//   - summary, untyped, gauge histogram: per child with role and slot added.
//
// Decisions and limits:
//
//   - The labels added to per-process series are role and slot; in a family
//     where some child already uses one of those names, that family gets
//     brood_role and brood_slot instead (the program's labels are never
//     touched). Two live processes with one role and slot (a replacement
//     overlapping the process it replaces): the per-process series of the
//     newest only, so no series appears twice; both are summed in counters.
//   - The retained base keeps every counter and histogram series a retired
//     child had, for the life of the Cluster, as a single process keeps its
//     counters: high-cardinality labels cost memory here too.
//   - A Key once retired is remembered (the last 4096): an Update for it is a
//     gather that crossed the child's exit, and is ignored. Keys carry the
//     pid, so a restarted child is a new Key.
//   - A summed counter is never served lower than it was last served: a
//     child whose counter went down within one pid, or the same values added
//     in another order once a child retires (float rounding), would otherwise
//     show Prometheus a reset. The served value waits until the sum passes
//     it. Histograms are taken as they come (a native histogram reset by
//     client_golang within one pid makes the merged one go down by as much).
//   - Native buckets are merged for the exponential schemas -4..8; other
//     schemas leave the native part of that series out. A family in which
//     some children expose native buckets and others classic ones only gets
//     a native part that misses the latter's observations (its count and
//     sum are the total).
//   - Counts are added as float64: exact up to 2^53.
//
// No goroutines: a Cluster is a mutex and maps; all the work is done in the
// caller's goroutine.
package metrics
