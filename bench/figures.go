package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/brood-go/brood"
	"github.com/brood-go/brood/bench/internal/fixture"
)

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// --- clusters

// cluster is a running brood program (hello or bench/cluster).
type cluster struct {
	*proc
	addr string
}

// startHello runs examples/hello with 2 workers on a free loopback port.
func (b *bench) startHello() (*cluster, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	runDir, err := os.MkdirTemp(b.logDir, "rundir-")
	if err != nil {
		return nil, err
	}
	p, err := start(b.logDir, "hello", nil, b.exe("hello"), "--listen", addr, "--workers", "2", "--run-dir", runDir)
	if err != nil {
		return nil, err
	}
	return &cluster{proc: p, addr: addr}, nil
}

// startBenchCluster runs bench/cluster with 2 workers; args select a messenger
// bench.
func (b *bench) startBenchCluster(args ...string) (*cluster, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	runDir, err := os.MkdirTemp(b.logDir, "rundir-")
	if err != nil {
		return nil, err
	}
	args = append([]string{"-listen", addr, "-workers", "2", "-rundir", runDir}, args...)
	if b.profDir != "" {
		args = append(args, "-cpuprofile", b.profDir)
	}
	p, err := start(b.logDir, "cluster", nil, b.exe("cluster"), args...)
	if err != nil {
		return nil, err
	}
	return &cluster{proc: p, addr: addr}, nil
}

// ready waits for the master's "cluster ready" line and returns it.
func (c *cluster) ready(d time.Duration) (string, error) {
	_, line, err := c.log.wait(0, d, `msg="cluster ready"`)
	if err != nil {
		return "", fmt.Errorf("%w; last lines:\n%s", err, c.log.tail(10))
	}
	return line, nil
}

// --- start

func (b *bench) figStart() []row {
	const name = "start → first HTTP 200 (hello, agent + 2 workers)"
	var vals, floor, readyTook []float64
	for range b.runs {
		addr, err := freeAddr()
		if err != nil {
			return []row{errorRow(name, err)}
		}
		t0 := time.Now()
		p, err := start(b.logDir, "floor-http", nil, b.exe("floor"), "http", "-listen", addr)
		if err != nil {
			return []row{errorRow(name, err)}
		}
		t1, err := firstOK(addr, 10*time.Second)
		p.stop(5 * time.Second)
		if err != nil {
			return []row{errorRow(name, err)}
		}
		floor = append(floor, ms(t1.Sub(t0)))

		t0 = time.Now()
		c, err := b.startHello()
		if err != nil {
			return []row{errorRow(name, err)}
		}
		t1, err = firstOK(c.addr, 30*time.Second)
		line, rerr := c.ready(10 * time.Second)
		c.stop(15 * time.Second)
		if err = errors.Join(err, rerr); err != nil {
			return []row{errorRow(name, err)}
		}
		vals = append(vals, ms(t1.Sub(t0)))
		if d, err := time.ParseDuration(logField(line, "took")); err == nil {
			readyTook = append(readyTook, ms(d))
		}
	}
	r := ratioRow(name, "ms", vals, floor, true, 3)
	r.note = fmt.Sprintf("floor: one net/http process, exec → first 200. The master's own \"cluster ready\" took (listeners open → every child ready) had median %.1f ms.", median(readyTook))
	return []row{r}
}

// --- http

func (b *bench) figHTTP() []row {
	names := [2]string{"HTTP req/s, 2 workers, keep-alive", "HTTP req/s, 2 workers, Connection: close"}
	fail := func(err error) []row { return []row{errorRow(names[0], err), errorRow(names[1], err)} }
	addr, err := freeAddr()
	if err != nil {
		return fail(err)
	}
	fp, err := start(b.logDir, "floor-http", nil, b.exe("floor"), "http", "-listen", addr)
	if err != nil {
		return fail(err)
	}
	defer fp.stop(5 * time.Second)
	c, err := b.startBenchCluster()
	if err != nil {
		return fail(err)
	}
	defer c.stop(15 * time.Second)
	// The reference: brood without ServeHTTP's default ReadHeaderTimeout,
	// configured as the floor is, to tell the timeout's share of the gap (a
	// read-deadline timer armed and disarmed per request) from the rest.
	ref, err := b.startBenchCluster("-no-header-timeout")
	if err != nil {
		return fail(err)
	}
	defer ref.stop(15 * time.Second)
	addrs := []string{addr, c.addr, ref.addr}
	for _, a := range addrs {
		if _, err := firstOK(a, 30*time.Second); err != nil {
			return fail(err)
		}
		if _, err := b.runLoad(a, time.Second, false); err != nil { // warm-up
			return fail(err)
		}
	}
	var rows []row
	for i, closeConns := range []bool{false, true} {
		var reqs [3][]float64 // per server in addrs
		var failed [3]int64
		for run := range b.runs {
			for k := range addrs {
				j := (k + run) % len(addrs) // rotate who goes first
				l, err := b.runLoad(addrs[j], b.httpDur, closeConns)
				if err != nil {
					return fail(err)
				}
				reqs[j] = append(reqs[j], l.ReqPerSec)
				failed[j] += l.failed()
			}
		}
		r := ratioRow(names[i], "req/s", reqs[1], reqs[0], false, 0.95)
		r.note = fmt.Sprintf("floor: one net/http process, same handler (13-byte body), no header timeout. "+
			"Reference: brood with ReadHeaderTimeout -1, as the floor (ServeHTTP's default is %s): median %.0f req/s, %.2f× the floor. "+
			"Failed requests (socket errors + non-2xx) over all runs: brood %d, reference %d, floor %d.",
			brood.DefaultReadHeaderTimeout, median(reqs[2]), medianRatio(reqs[2], reqs[0]), failed[1], failed[2], failed[0])
		rows = append(rows, r)
	}
	return rows
}

// --- messenger

// runFloor runs bench/floor with args and decodes its JSON result into v.
func (b *bench) runFloor(v any, args ...string) error {
	var out bytes.Buffer
	p, err := start(b.logDir, "floor-"+args[0], &out, b.exe("floor"), args...)
	if err != nil {
		return err
	}
	if !p.exited(2 * time.Minute) {
		p.kill()
		return fmt.Errorf("floor %v did not finish", args)
	}
	p.kill()
	if p.err != nil {
		return fmt.Errorf("floor %v: %v: %s", args, p.err, p.log.tail(5))
	}
	return json.Unmarshal(out.Bytes(), v)
}

// runMessengerBench runs bench/cluster with one messenger bench (and extra
// flags) and decodes the agent's result into v.
func (b *bench) runMessengerBench(v any, mode string, n int, extra ...string) error {
	c, out, err := b.startMessengerBench(mode, n, extra...)
	if err != nil {
		return err
	}
	defer c.stop(15 * time.Second)
	if _, err := c.ready(30 * time.Second); err != nil {
		return err
	}
	return awaitMessengerResult(c, mode, out, v)
}

// startMessengerBench starts bench/cluster with one messenger bench; its
// result will be in the file out.
func (b *bench) startMessengerBench(mode string, n int, extra ...string) (c *cluster, out string, err error) {
	out = filepath.Join(b.logDir, fmt.Sprintf("msg-%s-%d.json", mode, time.Now().UnixNano()))
	c, err = b.startBenchCluster(append([]string{"-msg", mode, "-n", strconv.Itoa(n), "-out", out}, extra...)...)
	return c, out, err
}

// awaitMessengerResult waits for the agent's "bench done" and decodes its
// result from out into v.
func awaitMessengerResult(c *cluster, mode, out string, v any) error {
	_, line, err := c.log.wait(0, 2*time.Minute, `msg="bench `)
	if err != nil {
		return err
	}
	if !strings.Contains(line, "bench done") {
		return fmt.Errorf("messenger bench %s: %s", mode, line)
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	return json.Unmarshal(data, v)
}

func us(ns int64) float64 { return float64(ns) / 1e3 }

func (b *bench) figRTT() []row {
	names := [2]string{"messenger RTT agent→worker→agent, p50", "messenger RTT agent→worker→agent, p99"}
	n := strconv.Itoa(b.rttN)
	// refs are the references in the note: each a floor run, or the brood
	// cluster pinned to one CPU.
	refs := []struct {
		what string
		args []string // floor arguments; nil: the brood cluster with -onecpu
		p50  []float64
		p99  []float64
	}{
		{what: "the same ping-pong through Go's netpoller (net.Conn)", args: []string{"pingpong", "-net", "-n", n}},
		{what: "through a third process copying bytes both ways with blocking read(2)/write(2) on two threads, no netpoller (what a relay in C costs)", args: []string{"pingpong", "-relay", "-n", n}},
		{what: "the same relay through Go's netpoller in all three processes (the least a Go relay costs, no brood code)", args: []string{"pingpong", "-relay", "-net", "-n", n}},
		{what: "the blocking relay with every process pinned to one CPU (no cross-CPU wake-ups)", args: []string{"pingpong", "-relay", "-onecpu", "-n", n}},
		{what: "brood with every process pinned to one CPU", args: nil},
	}
	var p50, p99, f50, f99, there, back []float64
	for range b.runs {
		var raw, relayed fixture.RTT
		errs := []error{
			b.runFloor(&raw, "pingpong", "-n", n),
			b.runMessengerBench(&relayed, "rtt", b.rttN),
		}
		for i := range refs {
			var ref fixture.RTT
			if refs[i].args == nil {
				errs = append(errs, b.runMessengerBench(&ref, "rtt", b.rttN, "-onecpu"))
			} else {
				errs = append(errs, b.runFloor(&ref, refs[i].args...))
			}
			refs[i].p50, refs[i].p99 = append(refs[i].p50, us(ref.P50)), append(refs[i].p99, us(ref.P99))
		}
		if err := errors.Join(errs...); err != nil {
			return []row{errorRow(names[0], err), errorRow(names[1], err)}
		}
		f50, f99 = append(f50, us(raw.P50)), append(f99, us(raw.P99))
		p50, p99 = append(p50, us(relayed.P50)), append(p99, us(relayed.P99))
		there, back = append(there, us(relayed.ThereP50)), append(back, us(relayed.BackP50))
	}
	row50 := ratioRow(names[0], "µs", p50, f50, true, 2.5)
	row99 := ratioRow(names[1], "µs", p99, f99, true, 4)
	var refNotes []string
	for _, r := range refs {
		refNotes = append(refNotes, fmt.Sprintf("%s: p50 %.0f µs, p99 %.0f µs", r.what, median(r.p50), median(r.p99)))
	}
	row50.note = fmt.Sprintf("%d round trips per run (Request + Reply, 24-byte raw payload, workers alternately); floor: raw socketpair ping-pong of a %d-byte frame between two processes, blocking write+read per hop. "+
		"Breakdown (medians of per-run p50s): agent send → worker's handler %.0f µs, worker's Reply → agent's Request returns %.0f µs. "+
		"References, same frame and count, medians: %s.",
		b.rttN, fixture.PingFrame, median(there), median(back), strings.Join(refNotes, "; "))
	return []row{row50, row99}
}

func (b *bench) figOneway() []row {
	names := [2]string{"messenger one-way 64 B, SendRandom, deliveries/s", "messenger one-way 64 B, SendToApp, deliveries/s"}
	modes := [2]string{"random", "app"}
	var floor []float64
	vals := [2][]float64{}
	var refused [2]uint64
	var short [2]int64
	for range b.runs {
		var f fixture.Oneway
		if err := b.runFloor(&f, "oneway", "-n", strconv.Itoa(b.onewayN)); err != nil {
			return []row{errorRow(names[0], err), errorRow(names[1], err)}
		}
		floor = append(floor, float64(f.Deliveries)/f.Seconds)
		for i, mode := range modes {
			var o fixture.Oneway
			if err := b.runMessengerBench(&o, mode, b.onewayN); err != nil {
				return []row{errorRow(names[0], err), errorRow(names[1], err)}
			}
			vals[i] = append(vals[i], float64(o.Deliveries)/o.Seconds)
			refused[i] += o.Refused
			short[i] += int64(b.onewayN) - o.Deliveries
		}
	}
	var rows []row
	for i := range modes {
		r := ratioRow(names[i], "msgs/s", vals[i], floor, false, 1)
		r.goal = "≥ 1× floor and ≥ 1 M/s"
		r.pass = passFail(r.pass == "PASS" && median(vals[i]) >= 1e6)
		r.note = fmt.Sprintf("%d deliveries per run (%s), counted by the workers' handlers; refused (Messenger.Stats) %d, not delivered %d over all runs. Floor: %d-byte frames over a socketpair, one write(2) each.",
			b.onewayN, map[string]string{"random": "SendRandom: one per send", "app": "SendToApp: two per send"}[modes[i]], refused[i], short[i], fixture.OnewayFrame)
		rows = append(rows, r)
	}
	return rows
}

// --- kill

var rePID = regexp.MustCompile(`pid (\d+)`)

func (b *bench) figKill() []row {
	const name = "SIGKILL of a worker → replacement answers HTTP"
	var vals, floor, diffs []float64
	for run := range b.runs {
		took, tookFloor, err := b.killOnce(run)
		if err != nil {
			return []row{errorRow(name, err)}
		}
		vals, floor = append(vals, took), append(floor, tookFloor)
		diffs = append(diffs, took-tookFloor)
	}
	d := median(diffs)
	return []row{{figure: name, unit: "ms", vals: vals, floor: floor, ratio: fmt.Sprintf("%+.1f ms", d),
		goal: "≤ floor + 20 ms", pass: passFail(d <= 20),
		note: "a fresh hello cluster per run (a slot's first crash is restarted at once); floor: the replacement's own start → ready (\"took\" of its \"ready\" line in the master's log); ratio: median of the per-run differences."}}
}

// killOnce kills one worker of a fresh hello cluster and returns kill → a new
// pid answers, and the replacement's own start → ready, in ms.
func (b *bench) killOnce(run int) (float64, float64, error) {
	c, err := b.startHello()
	if err != nil {
		return 0, 0, err
	}
	defer c.stop(15 * time.Second)
	if _, err := c.ready(30 * time.Second); err != nil {
		return 0, 0, err
	}
	workers := roleChildren(c.pid(), "worker")
	if len(workers) != 2 {
		return 0, 0, fmt.Errorf("found %d workers under master %d, want 2", len(workers), c.pid())
	}
	slices.Sort(workers)
	victim := workers[run%2]
	t0 := time.Now()
	if err := syscall.Kill(victim, syscall.SIGKILL); err != nil {
		return 0, 0, err
	}
	var newPID int
	deadline := t0.Add(10 * time.Second)
	for newPID == 0 && time.Now().Before(deadline) {
		_, body, err := get(c.addr, time.Second)
		if m := rePID.FindStringSubmatch(body); err == nil && m != nil {
			if pid, _ := strconv.Atoi(m[1]); !slices.Contains(workers, pid) {
				newPID = pid
				break
			}
		}
		time.Sleep(100 * time.Microsecond)
	}
	if newPID == 0 {
		return 0, 0, errors.New("no new worker answered within 10s of the kill")
	}
	took := ms(time.Since(t0))
	_, line, err := c.log.wait(0, 5*time.Second, "msg=ready", fmt.Sprintf("child_pid=%d ", newPID))
	if err != nil {
		return 0, 0, err
	}
	d, err := time.ParseDuration(logField(line, "took"))
	if err != nil {
		return 0, 0, fmt.Errorf("ready line %q: %w", line, err)
	}
	return took, ms(d), nil
}

// --- reload

var reReloadCmd = regexp.MustCompile(`(?m)^\s+reload\s`)

func (b *bench) figReload() []row {
	names := [2]string{"failed requests during reload, keep-alive", "failed requests during reload, Connection: close"}
	help, _ := exec.Command(b.exe("hello"), "--help").CombinedOutput()
	if !reReloadCmd.Match(help) {
		return naRows(names, "n/a (reload not available in this build): `hello --help` lists no reload command, and SIGHUP would end the master.")
	}
	runs := min(b.runs, 3)
	var rows []row
	for i, closeConns := range []bool{false, true} {
		var vals, tookMs []float64
		var requests int64
		for range runs {
			failed, took, reqs, err := b.reloadOnce(closeConns)
			if errors.Is(err, errNoReload) {
				return naRows(names, "n/a (reload not available in this build): "+err.Error())
			}
			if err != nil {
				return []row{errorRow(names[0], err), errorRow(names[1], err)}
			}
			vals, tookMs = append(vals, float64(failed)), append(tookMs, took)
			requests += reqs
		}
		rows = append(rows, row{figure: names[i], unit: "count", vals: vals, goal: "0 (every run)", pass: passFail(slices.Max(vals) == 0),
			note: fmt.Sprintf("%d runs, SIGHUP to the master 1 s into a %v load; failed = socket errors + non-2xx (%d requests in all). Every worker replaced in a median %.0f ms.", runs, b.reloadLoad(), requests, median(tookMs))})
	}
	return rows
}

func naRows(names [2]string, why string) []row {
	return []row{{figure: names[0], goal: "0", pass: "n/a", note: why}, {figure: names[1], goal: "0", pass: "n/a"}}
}

var errNoReload = errors.New("no worker was replaced within 5s of SIGHUP")

func (b *bench) reloadLoad() time.Duration { return max(b.httpDur, 4*time.Second) }

// reloadOnce loads a fresh hello cluster, sends SIGHUP, waits until every
// worker pid has changed, and returns the failed requests, the reload time and
// the requests served.
func (b *bench) reloadOnce(closeConns bool) (int64, float64, int64, error) {
	c, err := b.startHello()
	if err != nil {
		return 0, 0, 0, err
	}
	defer c.stop(15 * time.Second)
	if _, err := c.ready(30 * time.Second); err != nil {
		return 0, 0, 0, err
	}
	before := roleChildren(c.pid(), "worker")
	type result struct {
		l   load
		err error
	}
	done := make(chan result, 1)
	go func() {
		l, err := b.runLoad(c.addr, b.reloadLoad(), closeConns)
		done <- result{l, err}
	}()
	time.Sleep(time.Second)
	t0 := time.Now()
	if err := syscall.Kill(c.pid(), syscall.SIGHUP); err != nil {
		return 0, 0, 0, err
	}
	var took float64
	for deadline := t0.Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if c.exited(0) {
			break
		}
		now := roleChildren(c.pid(), "worker")
		if len(now) == len(before) && !slices.ContainsFunc(now, func(p int) bool { return slices.Contains(before, p) }) {
			took = ms(time.Since(t0))
			break
		}
	}
	res := <-done
	if took == 0 {
		if c.exited(0) {
			return 0, 0, 0, fmt.Errorf("%w (the master exited on SIGHUP)", errNoReload)
		}
		return 0, 0, 0, errNoReload
	}
	if res.err != nil {
		return 0, 0, 0, res.err
	}
	return res.l.failed(), took, res.l.Requests, nil
}

// --- stop

func (b *bench) figStop() []row {
	const name = "stop: SIGTERM → master gone, idle hello cluster"
	var vals []float64
	orphans := 0
	for range b.runs {
		c, err := b.startHello()
		if err != nil {
			return []row{errorRow(name, err)}
		}
		_, err = c.ready(30 * time.Second)
		if err == nil {
			_, err = firstOK(c.addr, 10*time.Second)
		}
		if err != nil {
			c.stop(15 * time.Second)
			return []row{errorRow(name, err)}
		}
		time.Sleep(300 * time.Millisecond)
		kids := children(c.pid())
		t0 := time.Now()
		syscall.Kill(c.pid(), syscall.SIGTERM)
		if !c.exited(15 * time.Second) {
			c.kill()
			return []row{errorRow(name, errors.New("the master did not exit within 15s of SIGTERM"))}
		}
		vals = append(vals, ms(c.exitedAt.Sub(t0)))
		for _, k := range kids {
			if alive(k) {
				orphans++
			}
		}
		c.kill()
	}
	ok := median(vals) <= 300 && orphans == 0
	return []row{{figure: name, unit: "ms", vals: vals, goal: "≤ 300 ms, no child left", pass: passFail(ok),
		note: fmt.Sprintf("time until the master has exited (and been reaped), 300 ms after the cluster's first request; children still alive when the master had exited, over all runs: %d.", orphans)}}
}

// --- rss

func (b *bench) figRSS() []row {
	names := [4]string{"RSS master (hello, idle)", "RSS agent", "RSS worker (mean of 2)", "RSS cluster of 4 (master + agent + 2 workers)"}
	fail := func(err error) []row {
		return []row{errorRow(names[0], err), errorRow(names[1], err), errorRow(names[2], err), errorRow(names[3], err)}
	}
	var master, agent, worker, total, floor, pss []float64
	for range min(b.runs, 3) {
		c, err := b.startHello()
		if err != nil {
			return fail(err)
		}
		_, err = c.ready(30 * time.Second)
		if err == nil {
			_, err = firstOK(c.addr, 10*time.Second)
		}
		time.Sleep(500 * time.Millisecond)
		var m, a float64
		var ws []float64
		if err == nil {
			m, err = rssMiB(c.pid())
		}
		as, wids := roleChildren(c.pid(), "agent"), roleChildren(c.pid(), "worker")
		if err == nil && (len(as) != 1 || len(wids) != 2) {
			err = fmt.Errorf("found %d agents and %d workers, want 1 and 2", len(as), len(wids))
		}
		if err == nil {
			a, err = rssMiB(as[0])
		}
		for _, w := range wids {
			if err == nil {
				var v float64
				v, err = rssMiB(w)
				ws = append(ws, v)
			}
		}
		p := pssMiB(c.pid())
		for _, k := range append(as, wids...) {
			p += pssMiB(k)
		}
		c.stop(15 * time.Second)
		if err != nil {
			return fail(err)
		}
		master, agent, worker = append(master, m), append(agent, a), append(worker, (ws[0]+ws[1])/2)
		total, pss = append(total, m+a+ws[0]+ws[1]), append(pss, p)

		bp, err := start(b.logDir, "bare", nil, b.exe("bare"))
		if err != nil {
			return fail(err)
		}
		time.Sleep(300 * time.Millisecond)
		v, err := rssMiB(bp.pid())
		bp.kill()
		if err != nil {
			return fail(err)
		}
		floor = append(floor, v)
	}
	x := func(vals []float64) string { return fmt.Sprintf("%.1f×", median(vals)/median(floor)) }
	return []row{
		{figure: names[0], unit: "MiB", vals: master, floor: floor, ratio: x(master), goal: "≤ 15 MiB", pass: passFail(median(master) <= 15),
			note: "VmRSS from /proc/<pid>/status, 500 ms after the first request; floor: a Go program that only sleeps (bench/bare)."},
		{figure: names[1], unit: "MiB", vals: agent, floor: floor, ratio: x(agent), pass: "info"},
		{figure: names[2], unit: "MiB", vals: worker, floor: floor, ratio: x(worker), pass: "info"},
		{figure: names[3], unit: "MiB", vals: total, goal: "≤ 50 MiB", pass: passFail(median(total) <= 50),
			note: fmt.Sprintf("sum of the four VmRSS (each counts the shared executable pages again); the proportional set size (Pss, shared pages divided) of the four is %.1f MiB.", median(pss))},
	}
}

// --- micro

var reAllocs = regexp.MustCompile(`(\d+) allocs/op`)

func (b *bench) figMicro() []row { r, _ := b.microRows(); return r }

// microRows runs the ipc and relay microbenchmarks and returns the row and the
// benchmark lines.
func (b *bench) microRows() ([]row, []string) {
	const name = "relay path allocs/op (BenchmarkRelay)"
	args := []string{"test", "-run", "^$", "-bench", ".", "-benchmem"}
	if b.runs < 5 {
		args = append(args, "-benchtime", "300ms")
	}
	cmd := exec.Command("go", append(args, "./internal/ipc", "./internal/relay")...)
	cmd.Dir = b.root
	out, err := cmd.CombinedOutput()
	if err != nil {
		return []row{errorRow(name, fmt.Errorf("%v: %s", err, lastLines(out, 10)))}, nil
	}
	var lines []string
	var allocs []float64
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "Benchmark") && !strings.HasPrefix(line, "pkg:") {
			continue
		}
		lines = append(lines, line)
		if m := reAllocs.FindStringSubmatch(line); m != nil && strings.HasPrefix(line, "BenchmarkRelay") {
			v, _ := strconv.ParseFloat(m[1], 64)
			allocs = append(allocs, v)
		}
	}
	if len(allocs) == 0 {
		return []row{errorRow(name, errors.New("no BenchmarkRelay line"))}, lines
	}
	return []row{{figure: name, unit: "count", vals: allocs, goal: "0", pass: passFail(slices.Max(allocs) == 0),
		note: "one value per BenchmarkRelay case (pid, app3); bench/RESULTS.md has the benchmark lines after the table."}}, lines
}

// --- flood

// figFlood measures the master's memory while a worker floods a slow agent
// with large role-addressed messages, and once the flood is over: the master
// holds at most Config.MaxPendingBytes for the agent (the rest is refused), and
// gives the memory back after it.
func (b *bench) figFlood() []row {
	names := [2]string{"RSS master, flood of 300 × 1 MiB to a slow agent (peak)", "RSS master, 10 s after that flood"}
	fail := func(err error) []row { return []row{errorRow(names[0], err), errorRow(names[1], err)} }
	const bound = 64 // MiB, Config.MaxPendingBytes's default
	var peak, after, idle []float64
	var handled, refused []float64
	for range b.runs {
		out := filepath.Join(b.logDir, fmt.Sprintf("msg-flood-%d.json", time.Now().UnixNano()))
		c, err := b.startBenchCluster("-msg", "flood", "-out", out)
		if err != nil {
			return fail(err)
		}
		p, i, a, f, err := b.floodOnce(c, out)
		c.stop(15 * time.Second)
		if err != nil {
			return fail(err)
		}
		peak, idle, after = append(peak, p), append(idle, i), append(after, a)
		handled, refused = append(handled, float64(f.Handled)), append(refused, float64(f.Refused))
	}
	r0 := row{figure: names[0], unit: "MiB", vals: peak, floor: idle, ratio: fmt.Sprintf("%.1f×", median(peak)/median(idle)),
		goal: fmt.Sprintf("≤ %d MiB (bound + 20)", bound+20), pass: passFail(median(peak) <= bound+20),
		note: fmt.Sprintf("bench/cluster -msg flood: worker 1 sends %d SendToAgent of %d bytes at once; the agent's handler takes %v each. Peak VmRSS of the master sampled every 5 ms from the first send until every message is handled or refused; floor: the same master idle, before the flood. Per run: %.0f handled, %.0f refused (median); Config.MaxPendingBytes %d MiB (default).",
			fixture.FloodCount, fixture.FloodPayload, fixture.FloodDelay, median(handled), median(refused), bound)}
	r1 := row{figure: names[1], unit: "MiB", vals: after, floor: idle, ratio: fmt.Sprintf("%.1f×", median(after)/median(idle)),
		goal: "≤ 2× idle", pass: passFail(median(after) <= 2*median(idle)),
		note: "VmRSS of the master 10 s after the flood ended; floor: the same master idle, before the flood."}
	return []row{r0, r1}
}

// floodOnce runs one flood on a started cluster: the master's idle RSS, its
// peak during the flood and its RSS 10 s after.
func (b *bench) floodOnce(c *cluster, out string) (peak, idle, after float64, res fixture.Flood, err error) {
	if _, err = c.ready(30 * time.Second); err != nil {
		return
	}
	// The agent starts the flood 1 s after the cluster is ready.
	time.Sleep(300 * time.Millisecond)
	if idle, err = rssMiB(c.pid()); err != nil {
		return
	}
	from, _, err := c.log.wait(0, 30*time.Second, `msg="bench start"`)
	if err != nil {
		return
	}
	type result struct {
		line string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		_, line, err := c.log.wait(from, 2*time.Minute, `msg="bench `, "file=")
		if err == nil && !strings.Contains(line, "bench done") {
			_, line, err = c.log.wait(from, time.Second, `msg="bench failed"`)
		}
		done <- result{line, err}
	}()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for finished := false; !finished; {
		select {
		case r := <-done:
			if r.err != nil {
				err = r.err
				return
			}
			finished = true
		case <-tick.C:
		}
		if v, e := rssMiB(c.pid()); e == nil {
			peak = max(peak, v)
		}
	}
	data, err := os.ReadFile(out)
	if err != nil {
		return
	}
	if err = json.Unmarshal(data, &res); err != nil {
		return
	}
	time.Sleep(10 * time.Second)
	after, err = rssMiB(c.pid())
	return
}
