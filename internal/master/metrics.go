package master

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/brood-go/brood/internal/aside"
	"github.com/brood-go/brood/internal/metrics"
	"github.com/brood-go/brood/internal/relay"
	"github.com/brood-go/brood/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	dto "github.com/prometheus/client_model/go"
)

// maxGather bounds one child's encoded metrics.
const maxGather = 64 << 20

// supervisorMetrics are the master's own metrics (DESIGN §10's names), in a
// registry of their own: the process table and the relay are read at scrape
// time; restarts, reloads, schedule runs, scrape errors and heartbeat round
// trips are counted as they happen.
type supervisorMetrics struct {
	reg          *prometheus.Registry
	restarts     *prometheus.CounterVec
	reloads      *prometheus.CounterVec
	scheduleRuns *prometheus.CounterVec
	scheduleTime *prometheus.HistogramVec
	scrapeErrors *prometheus.CounterVec
	heartbeatRTT prometheus.Histogram
}

func newSupervisorMetrics(m *Master) *supervisorMetrics {
	s := &supervisorMetrics{
		reg: prometheus.NewRegistry(),
		restarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brood_restarts_total", Help: "Restarts and replacements of a slot's process, by typed reason.",
		}, []string{"role", "slot", "reason"}),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brood_reloads_total", Help: "Rolling reloads, by result (ok, failed).",
		}, []string{"result"}),
		scheduleRuns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brood_schedule_runs_total", Help: "Runs of scheduled tasks, by task and result (ok, failed).",
		}, []string{"name", "result"}),
		scheduleTime: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "brood_schedule_run_duration_seconds", Help: "How long runs of scheduled tasks took.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"name"}),
		scrapeErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "brood_scrape_errors_total", Help: "Gathers of a process's metrics that failed or missed the scrape's deadline; its last copy was served.",
		}, []string{"role", "slot"}),
		heartbeatRTT: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "brood_heartbeat_rtt_seconds", Help: "Round trip of the master's heartbeat pings to its children.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 14),
		}),
	}
	s.reg.MustRegister(s.restarts, s.reloads, s.scheduleRuns, s.scheduleTime, s.scrapeErrors, s.heartbeatRTT, clusterCollector{m})
	if m.cfg.Fleet.URLs != "" {
		s.reg.MustRegister(fleetCollector{m})
	}
	// The master's own runtime, labelled as one process of the cluster so that
	// the children's (per slot) sit beside it in the same families.
	own := prometheus.WrapRegistererWith(prometheus.Labels{"role": "master", "slot": "0"}, s.reg)
	own.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return s
}

// clusterCollector reads the process table and the relay's counters at
// scrape time.
type clusterCollector struct{ m *Master }

var (
	descProcesses   = prometheus.NewDesc("brood_processes", "Processes of the cluster by role and state (restarting: a slot waiting for its process).", []string{"role", "state"}, nil)
	descRSS         = prometheus.NewDesc("brood_process_resident_memory_bytes", "Resident memory of each slot's process (both, while a replacement overlaps).", []string{"role", "slot"}, nil)
	descCPU         = prometheus.NewDesc("brood_process_cpu_seconds_total", "CPU time (user and system) of each slot's processes, the exited ones included.", []string{"role", "slot"}, nil)
	descRelayed     = prometheus.NewDesc("brood_messages_relayed_total", "Messages the master wrote to a receiver.", nil, nil)
	descDirect      = prometheus.NewDesc("brood_messages_direct_total", "Messages the processes sent each other over direct channels, as they report at each heartbeat.", nil, nil)
	descHeld        = prometheus.NewDesc("brood_messages_held", "Messages the master holds now for processes that are not ready.", nil, nil)
	descHeldTotal   = prometheus.NewDesc("brood_messages_held_total", "Messages that had to wait for their receiver to be ready.", nil, nil)
	descRefused     = prometheus.NewDesc("brood_messages_refused_total", "Messages refused (a bound hit, an unknown pid): each one was reported to its sender.", nil, nil)
	descRedelivered = prometheus.NewDesc("brood_messages_redelivered_total", "Messages delivered again after their receiver died.", nil, nil)
	descDropped     = prometheus.NewDesc("brood_output_dropped_lines_total", "Log and output lines dropped because the master's output did not keep up.", nil, nil)
)

func (c clusterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descProcesses, descRSS, descCPU, descRelayed, descDirect, descHeld, descHeldTotal, descRefused, descRedelivered, descDropped} {
		ch <- d
	}
}

func (c clusterCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.m
	st := m.Status()
	counts := map[[2]string]int{}
	for _, role := range []string{"agent", "worker"} {
		for _, state := range []string{"starting", "ready", "stopping", "restarting"} {
			counts[[2]string{role, state}] = 0
		}
	}
	if !m.cfg.Agent {
		for _, state := range []string{"starting", "ready", "stopping", "restarting"} {
			delete(counts, [2]string{"agent", state})
		}
	}
	// CPU time is per slot and counts the slot's exited processes too, so it
	// never goes down when a process is replaced.
	type slotKey struct {
		role string
		id   int
	}
	cpu := map[slotKey]float64{}
	rss := map[slotKey]float64{}
	m.mu.Lock()
	for _, s := range m.slotsLocked() {
		cpu[slotKey{wire.RoleName(s.role), s.id}] = s.cpuRetired
	}
	m.mu.Unlock()
	for _, p := range st.Processes {
		counts[[2]string{p.Role, p.State}]++
		if p.PID == 0 {
			continue
		}
		k := slotKey{p.Role, p.ID}
		cpu[k] += p.CPUSeconds
		rss[k] += float64(p.RSSBytes)
	}
	for k, v := range cpu {
		slot := strconv.Itoa(k.id)
		ch <- prometheus.MustNewConstMetric(descCPU, prometheus.CounterValue, v, k.role, slot)
		ch <- prometheus.MustNewConstMetric(descRSS, prometheus.GaugeValue, rss[k], k.role, slot)
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(descProcesses, prometheus.GaugeValue, float64(n), k[0], k[1])
	}
	rs := m.router.Stats()
	ch <- prometheus.MustNewConstMetric(descRelayed, prometheus.CounterValue, float64(rs.Relayed))
	ch <- prometheus.MustNewConstMetric(descDirect, prometheus.CounterValue, float64(m.directSent.Load()))
	ch <- prometheus.MustNewConstMetric(descHeld, prometheus.GaugeValue, float64(m.heldNow()))
	ch <- prometheus.MustNewConstMetric(descHeldTotal, prometheus.CounterValue, float64(rs.Held))
	ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(rs.Dropped))
	ch <- prometheus.MustNewConstMetric(descRedelivered, prometheus.CounterValue, float64(rs.Redelivered))
	ch <- prometheus.MustNewConstMetric(descDropped, prometheus.CounterValue, float64(st.DroppedOutputLines))
}

// heldNow counts the messages queued for processes that are not ready yet.
func (m *Master) heldNow() int {
	m.mu.Lock()
	eps := make([]*child, 0, len(m.children))
	for _, c := range m.children {
		eps = append(eps, c)
	}
	m.mu.Unlock()
	n := 0
	for _, c := range eps {
		q, _ := m.router.Pending(c.ep)
		n += q
	}
	return n
}

// Gatherer is the cluster's /metrics: the master's own metrics and, merged,
// every child's prometheus.DefaultGatherer, gathered now. Past the children's
// answers, putting it together (the merged view, the master's registry, the
// families sorted and checked) is done at low priority if that is done
// within half the scrape timeout (aside.IdleBy).
func (m *Master) Gatherer() prometheus.Gatherer {
	return prometheus.GathererFunc(func() ([]*dto.MetricFamily, error) {
		// Children first: the scrape errors they count are in this
		// scrape's copy of the master's registry.
		m.gatherChildren()
		g := prometheus.Gatherers{prometheus.GathererFunc(m.mergedFamilies), m.metrics.reg}
		d := aside.IdleBy(time.Now().Add(m.cfg.ScrapeTimeout/2), func() decoded {
			fams, err := g.Gather()
			return decoded{fams, err}
		})
		return d.fams, d.err
	})
}

// mergedFamilies is the children's metrics as gatherChildren last left them.
// In single-process mode every role shares this process's DefaultGatherer,
// which is served as it is.
func (m *Master) mergedFamilies() ([]*dto.MetricFamily, error) {
	if m.cfg.Single {
		return prometheus.DefaultGatherer.Gather()
	}
	return m.merged.Families(), nil
}

// metricsKey names a child's copy in the merger.
func metricsKey(c *child) metrics.Key {
	return metrics.Key{Role: wire.RoleName(c.slot.role), Slot: c.slot.id, PID: c.pid}
}

// gatherChildren asks every child for its metrics in parallel and returns
// once every child has answered or ScrapeTimeout has passed.
// A child that fails or misses the deadline is served from its last copy and
// counted in brood_scrape_errors_total. Its answer still becomes its copy
// when it comes, for the next scrape, and it is not asked again until then,
// so gathers never pile up in a slow child. In single-process mode there is
// nothing to ask (see mergedFamilies).
//
// Children gather at low CPU priority (see installMetrics in package
// brood), which on a machine with no CPU to spare may take long. So a child
// that has no copy yet, or whose last gather missed a scrape's deadline, is
// asked to gather now (wire.GatherNow), at normal priority: under overload
// a child's copy is at most one scrape old.
func (m *Master) gatherChildren() {
	if m.cfg.Single {
		return
	}
	m.scrapeMu.Lock()
	defer m.scrapeMu.Unlock()
	m.mu.Lock()
	var targets []*child
	for _, c := range m.children {
		if c.state == childReady || c.state == childStopping {
			targets = append(targets, c)
		}
	}
	m.mu.Unlock()
	answered := make(chan gathered, len(targets)) // never blocks a gather
	// Answers are decoded at low priority if that is done within the
	// scrape's time, else at normal priority (aside.IdleBy).
	decodeBy := time.Now().Add(m.cfg.ScrapeTimeout)
	waiting := map[*child]bool{}
	for _, c := range targets {
		if !c.gathering.CompareAndSwap(false, true) {
			m.scrapeMissed(c, errors.New("its answer to an earlier gather has not come yet"))
			continue
		}
		// Each gather is owned by the master, and ends when the child
		// answers or exits, or after lateGatherLimit. Not m.life: while the
		// cluster stops, its draining processes still answer.
		if !m.goOwned("metrics gather", func() { answered <- gathered{c, m.gather(c, decodeBy)} }) {
			c.gathering.Store(false)
			continue // the master is stopping
		}
		waiting[c] = true
	}
	deadline := time.NewTimer(m.cfg.ScrapeTimeout)
	defer deadline.Stop()
	for len(waiting) > 0 {
		select {
		case a := <-answered:
			delete(waiting, a.c)
			if a.err != nil {
				m.scrapeMissed(a.c, a.err)
			}
		case <-deadline.C:
			for c := range waiting {
				c.gatherLate.Store(true)
				m.scrapeMissed(c, fmt.Errorf("no answer within the scrape timeout (%v)", m.cfg.ScrapeTimeout))
			}
			return
		}
	}
}

// lateGatherLimit bounds how long the master waits for a child's answer to a
// gather after the scrape that asked has been served without it.
const lateGatherLimit = time.Minute

// decoded is a child's answer, decoded, or a gather.
type decoded struct {
	fams []*dto.MetricFamily
	err  error
}

// gathered is the outcome of a child's gather.
type gathered struct {
	c   *child
	err error
}

// gather asks c for its metrics and makes the answer its copy in the merger,
// decoded at low priority if that is done by decodeBy (the decoding is most
// of the master's work for a scrape). If it fails, the next gather is asked
// to be done now.
func (m *Master) gather(c *child, decodeBy time.Time) error {
	defer c.gathering.Store(false)
	var now []byte
	if c.gatherLate.Swap(false) || !c.gathered.Load() {
		now = []byte(wire.GatherNow)
	}
	ctx, cancel := context.WithTimeout(context.Background(), lateGatherLimit)
	defer cancel()
	b, err := m.ask(ctx, c, wire.ActMetricsGather, now)
	var fams []*dto.MetricFamily
	if err == nil && len(b) > 0 {
		d := aside.IdleBy(decodeBy, func() decoded {
			fams, err := metrics.Decode(b, maxGather)
			return decoded{fams, err}
		})
		fams, err = d.fams, d.err
	}
	if err != nil {
		c.gatherLate.Store(true)
		m.log.Debug("gather metrics", "child_pid", c.pid, "err", err)
		return err
	}
	m.merged.Update(metricsKey(c), fams)
	c.gathered.Store(true)
	return nil
}

// scrapeMissed counts a child served from its last copy.
func (m *Master) scrapeMissed(c *child, why error) {
	m.metrics.scrapeErrors.WithLabelValues(wire.RoleName(c.slot.role), strconv.Itoa(c.slot.id)).Inc()
	m.log.Debug("scrape served a child's last copy", "child_pid", c.pid, "why", why)
}

// onFinalMetrics takes the metrics a child sent as it stops gracefully. It
// runs on the child's reader, inside the router's callback (with the router's
// lock held), so it must not take m.mu: the key comes from the endpoint, and
// the merger's lock is a leaf. Being on the reader, it is done before the
// child's exit is recorded (and its copy retired).
func (m *Master) onFinalMetrics(from *relay.Endpoint, payload []byte) {
	fams, err := metrics.Decode(payload, maxGather)
	if err != nil {
		m.log.Warn("bad final metrics from a child", "child_pid", from.PID, "err", err)
		return
	}
	m.merged.Update(metrics.Key{Role: wire.RoleName(from.Role), Slot: from.Slot().ID, PID: int(from.PID)}, fams)
}

// observePong records a heartbeat's round trip, and the count of messages
// c has sent over direct channels, which its pong carries (a uvarint,
// cumulative; an empty payload, from a child before direct channels, is 0):
// what it grew by since the last pong is added to the cluster's count.
// A malformed count, or one that went down, is ignored. It runs on c's
// reader.
func (m *Master) observePong(c *child, seq uint64, payload []byte) {
	if sent := c.pingAt.Load(); sent != 0 && c.pingSeq.Load() == seq {
		m.metrics.heartbeatRTT.Observe(time.Since(time.Unix(0, sent)).Seconds())
	}
	if len(payload) == 0 {
		return
	}
	n, k := binary.Uvarint(payload)
	if k != len(payload) || n < c.directSent {
		return
	}
	m.directSent.Add(n - c.directSent)
	c.directSent = n
}
