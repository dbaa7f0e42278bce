// Package metrics merges the Prometheus metrics gathered from the processes
// of a cluster into one view that stays monotonic when processes die or are
// replaced, and carries them over IPC.
package metrics
