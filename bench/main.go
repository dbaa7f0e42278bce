// Command bench measures brood against floors measured in the same run, and
// prints one table:
//
//	go run ./bench                 # every figure, 5 runs each; writes bench/RESULTS.md
//	go run ./bench -quick          # 2 runs, shorter loads (a smoke test; no RESULTS.md)
//	go run ./bench -only=rtt       # one figure (or a comma-separated list)
//
// It builds examples/hello and the programs under bench/ into a temporary
// directory, runs each figure several times on loopback, and reports the median,
// min and max of the runs, the floor's median, the ratio, the goal and whether
// it is met. The machine is noisy (absolute figures move 10-20%), so goals are
// ratios to a floor measured in the same run: floor and brood runs alternate,
// and the ratio is the median of the per-run ratios; other goals are judged on
// the median of the runs.
//
// The figures and their floors:
//
//   - start: exec of the hello example (master + agent + 2 workers) → first HTTP
//     200 on its port, polled every 0.2 ms. Floor: exec of a single net/http
//     process (bench/floor http) → first 200. Goal ≤ 3× floor.
//   - http: requests/s of the bench cluster (bench/cluster: 2 workers serving
//     fixture.Handler, a fixed 13-byte body, with brood.ServeHTTP), keep-alive and
//     Connection: close. Floor: one net/http process serving the same handler.
//     Same load generator for both: wrk -t2 -c64 -d5s (installed with apt-get if
//     missing and root; else a Go load generator, named in the table). Goal ≥ 0.95×.
//     The note gives a reference: the same cluster with ReadHeaderTimeout -1,
//     configured as the floor is (to tell the default header timeout's share).
//   - rtt: messenger round trip agent → worker → agent, Request + Reply of a
//     24-byte raw payload, p50 and p99 over 20,000 round trips (after 1,000 warm-up
//     ones), alternating between the two workers. Floor: two processes
//     ping-ponging a frame of the same wire size over a raw socketpair, blocking
//     write(2) + read(2) per hop, same count. Goal p50 ≤ 2.5×, p99 ≤ 4×. The note
//     gives the relayed breakdown (agent → worker's handler, worker's reply →
//     agent, on CLOCK_MONOTONIC) and references: the same ping-pong through Go's
//     netpoller; through a third process that only copies bytes, with blocking
//     calls and through Go's netpoller (what any relay costs); that blocking
//     relay and brood with every process pinned to one CPU.
//   - oneway: messenger one-way throughput, 64-byte raw payloads sent by the agent;
//     msgs/s counts deliveries (handler calls in the workers): SendRandom (one
//     delivery per send) and SendToApp (two per send). The sender is paced by a
//     window of marks (see bench/cluster) so it stays under Config.MaxPending;
//     refused messages are counted. Floor: one process writing frames of the same
//     wire size to a socketpair, one write(2) per frame, another reading them.
//     Goal ≥ 1× floor and ≥ 1 M msgs/s.
//   - direct: agent↔worker direct channels (the default) against
//     Config.RelayOnly (bench/cluster -relay-only), each run alternating
//     which goes first: the rtt figure's round trips (goal, direct: p50 ≤ 2.5×
//     and p99 ≤ 3× the same raw socketpair ping-pong floor; relay-only: info);
//     the master's CPU (utime+stime from /proc/<pid>/stat, read by the agent
//     just around the timed round trips) as % of one core (goal, direct:
//     ≤ 10%); one-way SendRandom of 64-byte raw payloads, deliveries/s, paced
//     as oneway (goal, direct: ≥ 3 M/s and ≥ 0.5× a batched floor: frames of
//     the same wire size written to a socketpair 64 KiB at a time, bench/floor
//     oneway -batch); and Egg's method, agent SendRandom → worker
//     SendToAgent → agent handler ping-pong, p50 and p99 (info, ratio to the
//     raw ping-pong floor). The notes give the master's relayed and direct
//     message counters after each run (admin /metrics), which show whether
//     the default run took the direct path; until direct channels exist both
//     settings relay.
//   - kill: SIGKILL of a worker of hello → a new worker pid answers HTTP. Floor:
//     that replacement's own start → ready, from the master's "ready" log line
//     ("took"). Goal ≤ floor + 20 ms (median of the per-run differences).
//   - reload: failed requests (wrk socket errors + non-2xx) while the master of
//     hello does a rolling reload (SIGHUP) under load, keep-alive and
//     Connection: close. Goal 0. Reported "n/a" when the build has no reload
//     (the CLI lists no reload command, or no worker pid changes within 5 s).
//   - stop: SIGTERM to the master of an idle hello cluster → the master has exited
//     (what `stop` waits for), checking that every child was gone by then. Goal
//     ≤ 300 ms, and no child outlives the master.
//   - rss: VmRSS of hello's master, agent and workers, idle after its first request.
//     Floor: a Go program that only sleeps (bench/bare). Goals: master ≤ 15 MiB,
//     master + agent + 2 workers ≤ 50 MiB.
//   - flood: VmRSS of bench/cluster's master while worker 1 sends 300 messages
//     of 1 MiB to the agent at once with SendToAgent and the agent's handler
//     takes 10 ms each (a slow agent), peak sampled every 5 ms until every
//     message is handled or refused; and 10 s after. Floor: the same master
//     idle before the flood. Goals: peak ≤ Config.MaxPendingBytes (64 MiB) +
//     20 MiB; after ≤ 2× idle.
//   - scrape: GET /metrics on the master's admin listener (Config.Admin) of
//     bench/cluster with 8 workers, each registering 10,000 series of its own
//     with promauto (counters with labels, histograms of 10 buckets, gauges;
//     the same names in every worker), gathered over IPC and merged at scrape
//     time: p50 and p99 of 100 scrapes back to back (after 5 warm-up ones),
//     text format, uncompressed; the note gives the payload. Floor: one process
//     (bench/floor metrics) exposing the same 80,000 series, distinct, with
//     plain promhttp; the note gives one process with one worker's 10k series.
//     At most 3 runs (the floor takes ~1 min a run). Goal p99 ≤ 150 ms.
//   - rttscrape: the rtt figure's round trips on that cluster (8 workers × 10k
//     series, admin listener on) while a client scrapes /metrics back to back.
//     Floor: the same cluster, not scraped. Goal p99 ≤ 1.2× floor.
//   - micro: go test -bench of internal/ipc and internal/relay; the relay path must
//     not allocate (0 allocs/op).
//   - fleet: fleet Request round trip of bench/cluster joined to an embedded
//     nats-server (agent → master → NATS → master → worker and back), 5,000
//     per run. Floor: raw nats.go request/reply between two connections of
//     this process through the same server, plus the local messenger RTT
//     divided by 1.5. Goal ≤ 1.5× floor, i.e. brood ≤ 1.5 × raw + local.
//     The note gives the breakdown (agent → worker's handler, worker's reply
//     → agent) and a reference: the same raw request/reply from a process of
//     its own (bench/floor natsrtt), out of the server's process as the
//     master is.
//   - fleetbcast: fleet SendToApp throughput of bench/cluster joined to an
//     embedded nats-server, 64-byte raw payloads, deliveries/s counted by its
//     2 workers' handlers (agent → master → NATS → master → workers); the
//     sender keeps at most 8,192 sends beyond the deliveries counted, and
//     refused or lost messages are reported. Floor: raw nats.go publish from
//     one connection to 2 subscriber connections through the same server,
//     same payload and window. Goal ≥ 0.8× floor. The note gives a reference:
//     the same raw publish from a process of its own (bench/floor natsbcast).
//
// Every process the bench starts leads its own process group and is killed
// with its group on any exit path; the bench checks at the end that none is
// left. All traffic is on 127.0.0.1, every loop is bounded in count and time.
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

type bench struct {
	root, bin, logDir string
	runs              int
	httpDur           time.Duration
	conns             int
	rttN, onewayN     int
	scrapeN           int // timed scrapes per run of the scrape figure
	scrapeWarm        int // and warm-up ones before them
	tool              string
	profDir           string
	loadBefore        string // 1-minute load average when the figures started
}

func (b *bench) exe(name string) string { return filepath.Join(b.bin, name) }

func (b *bench) toolDesc() string {
	switch b.tool {
	case "wrk":
		return "wrk"
	case "go":
		return "Go load generator (bench/load.go; wrk unavailable)"
	}
	return "none (no HTTP load figure selected)"
}

type figure struct {
	name string
	run  func(*bench) []row
}

var figures = []figure{
	{"start", (*bench).figStart},
	{"http", (*bench).figHTTP},
	{"rtt", (*bench).figRTT},
	{"oneway", (*bench).figOneway},
	{"direct", (*bench).figDirect},
	{"kill", (*bench).figKill},
	{"reload", (*bench).figReload},
	{"upgrade", (*bench).figUpgrade},
	{"stop", (*bench).figStop},
	{"rss", (*bench).figRSS},
	{"flood", (*bench).figFlood},
	{"scrape", (*bench).figScrape},
	{"rttscrape", (*bench).figRTTScrape},
	{"micro", (*bench).figMicro},
	{"fleet", (*bench).figFleet},
	{"fleetbcast", (*bench).figFleetBcast},
}

func main() { os.Exit(run()) }

func run() int {
	var b bench
	quick := flag.Bool("quick", false, "2 runs, 2 s loads, fewer messages: a smoke test")
	only := flag.String("only", "", "comma-separated figures to run: start, http, rtt, oneway, direct, kill, reload, upgrade, stop, rss, flood, scrape, rttscrape, micro, fleet, fleetbcast")
	runs := flag.Int("runs", 0, "runs per figure (default 5, or 2 with -quick)")
	flag.IntVar(&b.conns, "conns", 64, "HTTP load: connections")
	dur := flag.Duration("duration", 0, "HTTP load: duration of one run (default 5s, or 2s with -quick)")
	loadgen := flag.String("loadgen", "wrk", "HTTP load generator: wrk (installed if missing) or go")
	out := flag.String("out", "", "results file (default bench/RESULTS.md, written only by a full run)")
	flag.StringVar(&b.profDir, "cpuprofile", "", "directory: every bench-cluster process writes a CPU profile there")
	keep := flag.Bool("keep", false, "keep the temporary directory (binaries and logs)")
	flag.Parse()

	b.runs, b.httpDur, b.rttN, b.onewayN = 5, 5*time.Second, 20000, 1000000
	b.scrapeN, b.scrapeWarm = 100, 5
	if *quick {
		b.runs, b.httpDur, b.rttN, b.onewayN = 2, 2*time.Second, 5000, 200000
		b.scrapeN, b.scrapeWarm = 10, 2
	}
	if *runs > 0 {
		b.runs = *runs
	}
	if *dur > 0 {
		b.httpDur = *dur
	}
	selected, err := selectFigures(*only)
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 2
	}

	// Whatever happens from here on, the processes we started go with us.
	becomeSubreaper()
	defer killGroups()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		sig := <-sigs
		fmt.Fprintf(os.Stderr, "\nbench: %v: killing every process started\n", sig)
		killGroups()
		os.Exit(130)
	}()

	tmp, err := os.MkdirTemp("", "brood-bench-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		return 1
	}
	b.bin, b.logDir = filepath.Join(tmp, "bin"), filepath.Join(tmp, "logs")
	os.MkdirAll(b.logDir, 0o755)
	if b.profDir != "" {
		if b.profDir, err = filepath.Abs(b.profDir); err == nil {
			err = os.MkdirAll(b.profDir, 0o755)
		}
	}
	if err == nil {
		err = b.build()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.RemoveAll(tmp)
		return 1
	}
	if wantsLoad(selected) {
		b.tool = loadTool(*loadgen)
	}

	began := time.Now()
	b.loadBefore = loadAvg()
	var rows []row
	var micro []string
	failed := false
	for _, f := range selected {
		fmt.Fprintf(os.Stderr, "bench: %s ...\n", f.name)
		t0 := time.Now()
		var got []row
		if f.name == "micro" {
			got, micro = b.microRows()
		} else {
			got = f.run(&b)
		}
		for _, r := range got {
			failed = failed || r.pass == "error"
		}
		rows = append(rows, got...)
		fmt.Fprintf(os.Stderr, "bench: %s done in %v\n", f.name, time.Since(t0).Round(100*time.Millisecond))
	}
	took := time.Since(began)

	fmt.Printf("\nbrood bench — %s\nload generator: %s; %d runs per figure; took %v; load average %s before, %s after\n\n",
		machine(), b.toolDesc(), b.runs, took.Round(time.Second), b.loadBefore, loadAvg())
	printTable(os.Stdout, rows)

	path := *out
	if path == "" && *only == "" && !*quick {
		path = filepath.Join(b.root, "bench", "RESULTS.md")
	}
	if path != "" {
		if err := writeResults(path, generated(&b, rows, micro, took)); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return 1
		}
		fmt.Printf("\nwrote %s\n", path)
	}

	killGroups()
	if left := leftovers(allGroups()); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "bench: LEFTOVER processes (killed now):\n  %s\n", strings.Join(left, "\n  "))
		for pgid := range allGroups() {
			syscall.Kill(-pgid, syscall.SIGKILL)
		}
		failed = true
	} else {
		fmt.Println("no leftover processes")
	}
	if failed || *keep {
		fmt.Fprintf(os.Stderr, "bench: binaries and logs kept in %s\n", tmp)
	} else {
		os.RemoveAll(tmp)
	}
	if failed {
		return 1
	}
	return 0
}

func selectFigures(only string) ([]figure, error) {
	if only == "" {
		return figures, nil
	}
	var out []figure
	for _, name := range strings.Split(only, ",") {
		found := false
		for _, f := range figures {
			if f.name == strings.TrimSpace(name) {
				out = append(out, f)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown figure %q", name)
		}
	}
	return out, nil
}

func wantsLoad(fs []figure) bool {
	for _, f := range fs {
		if f.name == "http" || f.name == "reload" || f.name == "upgrade" {
			return true
		}
	}
	return false
}

// build compiles the programs the figures run.
func (b *bench) build() error {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	gomod := strings.TrimSpace(string(out))
	if err != nil || gomod == "" || gomod == os.DevNull {
		return errors.New("run the bench from the brood module (go run ./bench)")
	}
	b.root = filepath.Dir(gomod)
	fmt.Fprintf(os.Stderr, "bench: building into %s\n", b.bin)
	cmd := exec.Command("go", "build", "-o", b.bin+string(filepath.Separator),
		"./examples/hello", "./bench/floor", "./bench/bare", "./bench/cluster")
	cmd.Dir = b.root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	return nil
}
