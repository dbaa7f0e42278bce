// Package admin is the master's admin listener (Config.Admin): Prometheus
// metrics for the whole cluster, health endpoints, the lifecycle event stream
// and a live dashboard. It serves what a Source (the master) tells it and
// holds no cluster state of its own.
//
//	GET /          the dashboard: one self-contained page (embedded assets)
//	GET /status    the cluster's status as JSON (wire.Status)
//	GET /events    Server-Sent Events: every lifecycle event (wire.Event as
//	               JSON in the data field, its Seq as the id); ?json answers the
//	               kept events as one JSON array instead; Last-Event-ID or
//	               ?since=SEQ resumes after that event
//	GET /metrics   Prometheus exposition (promhttp content negotiation)
//	GET /livez     200 while the master's loop runs and its children answer heartbeats
//	GET /readyz    200 only while the cluster is up; 503 during start and from the
//	               first instant of a stop
package admin

import (
	"context"

	"github.com/brood-go/brood/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// Source is what the admin listener serves: the master.
type Source interface {
	// Status is the cluster's status (as `status --json`).
	Status() wire.Status
	// Subscribe returns the kept events after seq, a channel of the later
	// ones, and a function that ends the subscription. The channel is closed
	// when the subscription ends or the subscriber falls too far behind.
	Subscribe(seq uint64) (past []wire.Event, ch <-chan wire.Event, cancel func())
	// Live reports whether the master's loop runs and its children answer
	// heartbeats; Ready whether the cluster is up. Each returns why not.
	Live() (bool, string)
	Ready() (bool, string)
	// Gatherer gathers the cluster's metrics: the master's own and every
	// child's, merged. It is called once per scrape, with the scrape's context
	// carried by the request.
	Gatherer() prometheus.Gatherer
	// Done is closed when the master stops: streams end.
	Done() <-chan struct{}
}

var _ = context.Background
