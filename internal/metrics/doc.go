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
// No goroutines: a Cluster is a mutex and maps; all the work is done in the
// caller's goroutine.
package metrics
