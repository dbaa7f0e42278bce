package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/brood-go/brood/bench/internal/fixture"
)

// The scrape figures: GET /metrics on the master's admin listener of a
// bench/cluster with scrapeWorkers workers, each registering scrapeSeries
// application series of its own.
const (
	scrapeWorkers = 8
	scrapeSeries  = 10000
	scrapeAccept  = "text/plain;version=0.0.4" // the text format, as a Prometheus server asks for it
)

// scraper GETs /metrics over one keep-alive connection, uncompressed, and
// reads the whole body.
type scraper struct {
	url    string
	client *http.Client
}

func newScraper(addr string) *scraper {
	return &scraper{url: "http://" + addr + "/metrics", client: &http.Client{
		Timeout:   30 * time.Second,
		Transport: &http.Transport{DisableCompression: true, MaxIdleConnsPerHost: 1},
	}}
}

func (s *scraper) close() { s.client.CloseIdleConnections() }

// scrape returns how long one GET took (request written → last byte read)
// and, if body is set, the body.
func (s *scraper) scrape(body *bytes.Buffer) (time.Duration, int64, error) {
	req, err := http.NewRequest(http.MethodGet, s.url, nil)
	if err != nil {
		return 0, 0, err
	}
	req.Header.Set("Accept", scrapeAccept)
	t0 := time.Now()
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, 0, err
	}
	var w io.Writer = io.Discard
	if body != nil {
		body.Reset()
		w = body
	}
	n, err := io.Copy(w, resp.Body)
	resp.Body.Close()
	d := time.Since(t0)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("GET %s: %s", s.url, resp.Status)
	}
	return d, n, err
}

// waitOK scrapes until one answers 200 (the listener is up).
func (s *scraper) waitOK(within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		_, _, err := s.scrape(nil)
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// scrapeStats is one run of scrapes: latencies in ms, the payload of the
// last one and the series (sample lines) in it.
type scrapeStats struct {
	ms     []float64
	bytes  int64
	series int
}

func (s scrapeStats) pct(p float64) float64 {
	if len(s.ms) == 0 {
		return 0
	}
	v := slices.Clone(s.ms)
	slices.Sort(v)
	return v[min(len(v)-1, int(float64(len(v))*p))]
}

// series counts the sample lines of a text exposition.
func countSeries(b []byte) int {
	n := 0
	for line := range bytes.Lines(b) {
		if len(line) > 1 && line[0] != '#' {
			n++
		}
	}
	return n
}

// scrapeRun does warm scrapes that are not counted, then n timed ones, back to
// back.
func scrapeRun(s *scraper, warm, n int) (scrapeStats, error) {
	var st scrapeStats
	for range warm {
		if _, _, err := s.scrape(nil); err != nil {
			return st, err
		}
	}
	var body bytes.Buffer
	for i := range n {
		var buf *bytes.Buffer
		if i == n-1 {
			buf = &body // keep the last one to count its series
		}
		d, size, err := s.scrape(buf)
		if err != nil {
			return st, err
		}
		st.ms, st.bytes = append(st.ms, ms(d)), size
	}
	st.series = countSeries(body.Bytes())
	return st, nil
}

// hungStops counts the scrape clusters that did not stop by themselves within
// scrapeStopWait of SIGTERM (their group is killed then). A master with
// children holding 10k series each can deadlock in its stop (onFinalMetrics
// takes Master.mu inside the router's read lock while recordExit holds
// Master.mu and waits for the router's write lock), so these figures do not
// wait the other figures' 15 s for it, and say how often it happened.
var hungStops, scrapeStops int

const scrapeStopWait = 3 * time.Second

func stopScrapeCluster(c *cluster) {
	scrapeStops++
	if !c.stop(scrapeStopWait) {
		hungStops++
	}
}

func hungNote() string {
	return fmt.Sprintf(" Clusters that did not stop by themselves within %v of SIGTERM (killed): %d of %d so far.", scrapeStopWait, hungStops, scrapeStops)
}

// startScrapeCluster runs bench/cluster with scrapeWorkers workers of
// scrapeSeries series and the admin listener on; extra flags follow.
func (b *bench) startScrapeCluster(extra ...string) (*cluster, string, error) {
	admin, err := freeAddr()
	if err != nil {
		return nil, "", err
	}
	c, err := b.startBenchCluster(append([]string{"-workers", strconv.Itoa(scrapeWorkers),
		"-series", strconv.Itoa(scrapeSeries), "-admin", admin}, extra...)...)
	return c, admin, err
}

// --- scrape

func (b *bench) figScrape() []row {
	names := [2]string{
		fmt.Sprintf("GET /metrics, %d workers × %dk series, p50", scrapeWorkers, scrapeSeries/1000),
		fmt.Sprintf("GET /metrics, %d workers × %dk series, p99", scrapeWorkers, scrapeSeries/1000),
	}
	fail := func(err error) []row { return []row{errorRow(names[0], err), errorRow(names[1], err)} }
	var p50, p99, f50, f99 []float64
	var size, fsize, series, fseries []float64
	var o50, o99, osize []float64 // the reference: one process with one worker's 10k series
	// At most 3 runs: the 80k-series floor alone takes ~1 min per run here.
	runs := min(b.runs, 3)
	for run := range runs {
		var cs, fs, one scrapeStats
		var err error
		// Rotate who goes first, so a noisy minute weighs on all.
		for k := range 3 {
			switch (k + run) % 3 {
			case 0:
				fs, err = b.scrapeFloorOnce(scrapeWorkers)
			case 1:
				cs, err = b.scrapeClusterOnce()
			default:
				one, err = b.scrapeFloorOnce(1)
			}
			if err != nil {
				return fail(err)
			}
		}
		p50, p99 = append(p50, cs.pct(0.50)), append(p99, cs.pct(0.99))
		f50, f99 = append(f50, fs.pct(0.50)), append(f99, fs.pct(0.99))
		size, fsize = append(size, float64(cs.bytes)), append(fsize, float64(fs.bytes))
		series, fseries = append(series, float64(cs.series)), append(fseries, float64(fs.series))
		o50, o99, osize = append(o50, one.pct(0.50)), append(o99, one.pct(0.99)), append(osize, float64(one.bytes))
	}
	r50 := ratioRow(names[0], "ms", p50, f50, true, 0)
	r50.goal, r50.pass = "—", "info"
	r99 := ratioRow(names[1], "ms", p99, f99, true, 0)
	r99.goal, r99.pass = "≤ 150 ms", passFail(median(p99) <= 150)
	r50.note = fmt.Sprintf("%d runs, %d timed scrapes per run after %d warm ones, back to back on one keep-alive connection, Accept %s, no compression; "+
		"bench/cluster with %d workers, each registering %d series of its own with promauto (fixture.RegisterSeries: 40%% counters with 3 labels, 52%% histograms of 10 buckets, the rest gauges; the same names and labels in every worker, as one program's workers have), gathered by the master over IPC and merged. "+
		"Served: %.0f series, %.0f KiB (medians). Floor: one process (bench/floor metrics) with the same %d×%d series as distinct series (label shard), plain promhttp.Handler: %.0f series, %.0f KiB. "+
		"Reference: the same floor with one worker's %d series only (what the same program pays unclustered, one process): p50 %.1f ms, p99 %.1f ms, %.0f KiB.",
		runs, b.scrapeN, b.scrapeWarm, scrapeAccept, scrapeWorkers, scrapeSeries, median(series), median(size)/1024,
		scrapeWorkers, scrapeSeries, median(fseries), median(fsize)/1024, scrapeSeries, median(o50), median(o99), median(osize)/1024)
	r99.note = "goal on the median of the runs' p99; ratio: to the floor's p99 in the same run." + hungNote()
	return []row{r50, r99}
}

func (b *bench) scrapeFloorOnce(copies int) (scrapeStats, error) {
	addr, err := freeAddr()
	if err != nil {
		return scrapeStats{}, err
	}
	p, err := start(b.logDir, "floor-metrics", nil, b.exe("floor"), "metrics", "-listen", addr,
		"-series", strconv.Itoa(scrapeSeries), "-copies", strconv.Itoa(copies))
	if err != nil {
		return scrapeStats{}, err
	}
	defer p.stop(5 * time.Second)
	s := newScraper(addr)
	defer s.close()
	if err := s.waitOK(30 * time.Second); err != nil {
		return scrapeStats{}, fmt.Errorf("floor metrics: %w", err)
	}
	return scrapeRun(s, b.scrapeWarm, b.scrapeN)
}

func (b *bench) scrapeClusterOnce() (scrapeStats, error) {
	c, admin, err := b.startScrapeCluster()
	if err != nil {
		return scrapeStats{}, err
	}
	defer stopScrapeCluster(c)
	if _, err := c.ready(30 * time.Second); err != nil {
		return scrapeStats{}, err
	}
	s := newScraper(admin)
	defer s.close()
	if err := s.waitOK(10 * time.Second); err != nil {
		return scrapeStats{}, fmt.Errorf("admin /metrics: %w", err)
	}
	return scrapeRun(s, b.scrapeWarm, b.scrapeN)
}

// --- rttscrape

// scrapeLoop scrapes back to back until stop is called, which returns the
// scrapes' latencies.
func scrapeLoop(addr string) (stop func() (scrapeStats, error)) {
	ctx, cancel := context.WithCancel(context.Background())
	var st scrapeStats
	var err error
	var wg sync.WaitGroup
	wg.Go(func() {
		s := newScraper(addr)
		defer s.close()
		for ctx.Err() == nil {
			d, n, e := s.scrape(nil)
			if e != nil {
				err = e
				return
			}
			st.ms, st.bytes = append(st.ms, ms(d)), n
		}
	})
	return func() (scrapeStats, error) {
		cancel()
		wg.Wait()
		return st, err
	}
}

func (b *bench) figRTTScrape() []row {
	names := [2]string{
		fmt.Sprintf("messenger RTT while /metrics is scraped (%d workers × %dk series), p50", scrapeWorkers, scrapeSeries/1000),
		fmt.Sprintf("messenger RTT while /metrics is scraped (%d workers × %dk series), p99", scrapeWorkers, scrapeSeries/1000),
	}
	fail := func(err error) []row { return []row{errorRow(names[0], err), errorRow(names[1], err)} }
	var p50, p99, f50, f99, scrapes, scrapeP50 []float64
	const delay = "1s" // the agent waits this long after ready: the scrape loop is running by then
	for run := range b.runs {
		for k := range 2 {
			scraping := (k+run)%2 == 1
			admin, err := freeAddr()
			if err != nil {
				return fail(err)
			}
			var r fixture.RTT
			c, out, err := b.startMessengerBench("rtt", b.rttN, "-workers", strconv.Itoa(scrapeWorkers),
				"-series", strconv.Itoa(scrapeSeries), "-admin", admin, "-msg-delay", delay)
			var st scrapeStats
			if err == nil {
				st, err = awaitRTT(c, admin, out, &r, scraping)
			}
			if err != nil {
				return fail(err)
			}
			if scraping {
				p50, p99 = append(p50, us(r.P50)), append(p99, us(r.P99))
				scrapes, scrapeP50 = append(scrapes, float64(len(st.ms))), append(scrapeP50, st.pct(0.5))
			} else {
				f50, f99 = append(f50, us(r.P50)), append(f99, us(r.P99))
			}
		}
	}
	r50 := ratioRow(names[0], "µs", p50, f50, true, 0)
	r50.goal, r50.pass = "—", "info"
	r99 := ratioRow(names[1], "µs", p99, f99, true, 1.2)
	r50.note = fmt.Sprintf("the rtt figure's round trips (%d per run after 1,000 warm-up ones, Request + Reply of 24 bytes, agent → each of the %d workers in turn), with a client scraping the admin listener's /metrics back to back (as the scrape figure) from the cluster's ready until the last round trip; "+
		"%.0f scrapes per run during it (median), their p50 %.0f ms. Floor: the same cluster (admin listener on, same series) with no scrape, runs alternating.",
		b.rttN, scrapeWorkers, median(scrapes), median(scrapeP50))
	r99.note = "goal on the median of the per-run ratios." + hungNote()
	return []row{r50, r99}
}

// awaitRTT waits for a started rtt cluster's result, scraping its /metrics
// back to back meanwhile if scraping is set, and stops the cluster.
func awaitRTT(c *cluster, admin, out string, r *fixture.RTT, scraping bool) (scrapeStats, error) {
	defer stopScrapeCluster(c)
	if _, err := c.ready(30 * time.Second); err != nil {
		return scrapeStats{}, err
	}
	var stop func() (scrapeStats, error)
	if scraping {
		stop = scrapeLoop(admin)
	}
	err := awaitMessengerResult(c, "rtt", out, r)
	var st scrapeStats
	if stop != nil {
		var serr error
		st, serr = stop()
		err = errors.Join(err, serr)
	}
	return st, err
}
