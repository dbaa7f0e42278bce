package brood

import (
	"github.com/brood-go/brood/internal/aside"
	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/metrics"
	"github.com/brood-go/brood/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics says how the admin listener's /metrics merges the application's own
// metrics: whatever each process registered with prometheus.DefaultRegisterer
// (promauto, prometheus.MustRegister), gathered by the master at scrape time.
//
// Counters and histograms are summed over the cluster and never decrease: when
// a process exits, its last values are kept in the cluster's total. A process
// that stops gracefully (stop, reload, scale down, recycling, a guarded panic)
// sends its metrics one last time as it exits, so nothing it counted is lost;
// a process killed outright (SIGKILL, OOM, a crash) loses what it counted
// since the last scrape. Gauges are kept per process, with labels role and
// slot, unless Gauges names another way to merge them; summaries are kept per
// process. A process that does not answer within the scrape's deadline is
// served from its last copy and counted in brood_scrape_errors_total.
type Metrics struct {
	// Gauges maps a gauge's metric name to how it is merged over the
	// processes. Absent names are GaugePerProcess.
	Gauges map[string]GaugeMerge
}

// GaugeMerge is how a gauge is merged over the processes of the cluster.
type GaugeMerge int

// Gauge merges.
const (
	// GaugePerProcess keeps one series per process, with labels role and slot.
	GaugePerProcess GaugeMerge = iota
	// GaugeSum adds the processes' values (a pool size, bytes in use).
	GaugeSum
	// GaugeMin and GaugeMax keep the smallest or largest value.
	GaugeMin
	GaugeMax
)

// policies converts Metrics to the merger's options.
func (m Metrics) policies() metrics.Options {
	opts := metrics.Options{Gauges: map[string]metrics.Policy{}}
	for name, g := range m.Gauges {
		opts.Gauges[name] = metrics.Policy(g)
	}
	return opts
}

// installMetrics makes a child answer the master's gather requests with its
// prometheus.DefaultGatherer, encoded for the wire. The gather runs on a
// goroutine of its own, not in line with the message handlers: a slow handler
// does not make the scrape miss this process, and a gather (tens of
// milliseconds for 10,000 series) does not delay the Requests behind it. It
// runs at the lowest CPU priority (aside.Idle), so a scrape adds little to the
// latency of the program's requests and messages. On a machine with no CPU
// to spare such a gather may miss the scrape's deadline: its answer then
// serves the next scrape, and the master asks the next gather at normal
// priority (wire.GatherNow), as it does the first.
func installMetrics(p *Process) {
	m := p.Messenger()
	if m.side == nil {
		m.side = map[string]func(Message){}
	}
	m.side[wire.ActMetricsGather] = func(msg Message) {
		var b []byte
		var err error
		gather := func() { b, err = gatherOwn() }
		if string(msg.Data) == wire.GatherNow {
			aside.Run(gather)
		} else {
			aside.Idle(gather)
		}
		if err != nil {
			p.log.Warn("gathering metrics", "err", err)
		}
		msg.Reply(b) // raw bytes; an empty reply is "nothing registered"
	}
}

// sendFinalMetrics hands the master this process's metrics one last time, as
// it stops gracefully: what it counted since the last scrape is not lost.
func sendFinalMetrics(p *Process) {
	b, err := gatherOwn()
	if err != nil || len(b) == 0 {
		return
	}
	if err := p.Messenger().tell(ipc.DestMaster, 0, wire.ActMetricsFinal, b); err != nil {
		p.log.Debug("final metrics not sent", "err", err)
	}
}

func gatherOwn() ([]byte, error) {
	fams, err := prometheus.DefaultGatherer.Gather()
	if len(fams) == 0 {
		return nil, err
	}
	b, encErr := metrics.Encode(fams)
	if encErr != nil {
		return nil, encErr
	}
	return b, err
}
