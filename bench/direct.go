package main

import (
	"bufio"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/brood-go/brood/bench/internal/fixture"
)

// --- direct: relay-only vs direct agent↔worker channels (issue 17)

// configs are the two settings the direct figure compares, as bench/cluster
// flags: Config.RelayOnly, and the default (direct channels).
var configs = [2]struct {
	name string
	args []string
}{
	{"relay-only", []string{"-relay-only"}},
	{"direct", nil},
}

// counters are the master's message counters after a run (start-up and
// warm-up included), from its admin /metrics; -1 when the build exports no
// such counter. They tell whether a run took the direct path.
type counters struct{ relayed, direct float64 }

// runDirectBench runs bench/cluster with one messenger bench, its admin
// listener on, and decodes the agent's result into v; then it reads the
// master's counters. For an RTT result it checks that the master the agent
// measured (its parent) is the process the bench started.
func (b *bench) runDirectBench(v any, mode string, n int, extra ...string) (counters, error) {
	admin, err := freeAddr()
	if err != nil {
		return counters{}, err
	}
	c, out, err := b.startMessengerBench(mode, n, append([]string{"-admin", admin}, extra...)...)
	if err != nil {
		return counters{}, err
	}
	defer c.stop(15 * time.Second)
	if _, err := c.ready(30 * time.Second); err != nil {
		return counters{}, err
	}
	if err := awaitMessengerResult(c, mode, out, v); err != nil {
		return counters{}, err
	}
	if r, ok := v.(*fixture.RTT); ok {
		if r.MasterPID != c.pid() {
			return counters{}, fmt.Errorf("messenger bench %s: the agent measured pid %d, the master is %d", mode, r.MasterPID, c.pid())
		}
		if r.PhaseSecs <= 0 {
			return counters{}, fmt.Errorf("messenger bench %s: no timed phase (%v s)", mode, r.PhaseSecs)
		}
	}
	return masterCounters(admin)
}

// masterCounters reads brood_messages_relayed_total and
// brood_messages_direct_total (summed over any labels) from the master's
// admin /metrics.
func masterCounters(admin string) (counters, error) {
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Get("http://" + admin + "/metrics")
	if err != nil {
		return counters{}, fmt.Errorf("admin /metrics: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return counters{}, fmt.Errorf("admin /metrics: %s", resp.Status)
	}
	c := counters{relayed: -1, direct: -1}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for name, dst := range map[string]*float64{"brood_messages_relayed_total": &c.relayed, "brood_messages_direct_total": &c.direct} {
			rest, ok := strings.CutPrefix(line, name)
			if !ok || (rest != "" && rest[0] != ' ' && rest[0] != '{') {
				continue
			}
			f := strings.Fields(rest[strings.LastIndexByte(rest, '}')+1:])
			if len(f) == 0 {
				continue
			}
			if v, err := strconv.ParseFloat(f[0], 64); err == nil {
				*dst = max(*dst, 0) + v
			}
		}
	}
	return c, sc.Err()
}

// countNote describes the master's counters of one setting's runs.
func countNote(cs []counters) string {
	var relayed, direct []float64
	for _, c := range cs {
		relayed, direct = append(relayed, c.relayed), append(direct, c.direct)
	}
	d := "no brood_messages_direct_total in this build"
	if median(direct) >= 0 {
		d = fmt.Sprintf("counted direct %.0f", median(direct))
	}
	return fmt.Sprintf("The master's counters (admin listener on in these runs, read once after the result; start-up and warm-up included), medians: relayed %.0f, %s.", median(relayed), d)
}

// infoRow is a row with a ratio to a floor and no goal of its own.
func infoRow(figure, unit string, vals, floor []float64) row {
	return row{figure: figure, unit: unit, vals: vals, floor: floor, ratio: fmt.Sprintf("%.2f×", medianRatio(vals, floor)), pass: "info"}
}

func (b *bench) figDirect() []row {
	names := []string{
		"direct RTT agent→worker→agent (Request/Reply), p50",
		"direct RTT agent→worker→agent (Request/Reply), p99",
		"relay-only RTT agent→worker→agent (Request/Reply), p50",
		"relay-only RTT agent→worker→agent (Request/Reply), p99",
		"master CPU during the direct RTT run",
		"master CPU during the relay-only RTT run",
		"direct one-way 64 B, SendRandom, deliveries/s",
		"relay-only one-way 64 B, SendRandom, deliveries/s",
		"Egg's method (SendRandom → SendToAgent), direct, p50",
		"Egg's method (SendRandom → SendToAgent), direct, p99",
		"Egg's method (SendRandom → SendToAgent), relay-only, p50",
		"Egg's method (SendRandom → SendToAgent), relay-only, p99",
	}
	fail := func(err error) []row {
		rows := make([]row, len(names))
		for i, name := range names {
			rows[i] = errorRow(name, err)
		}
		return rows
	}
	n := strconv.Itoa(b.rttN)
	// Per config (index into configs): one value per run.
	var rtt50, rtt99, cpu, eggs50, eggs99, eggCPU, oneway [2][]float64
	var there, back, phase, eggThere, eggBack [2][]float64
	var rttCount, eggCount, onewayCount [2][]counters
	var refused [2]uint64
	var short [2]int64
	var f50, f99, batched []float64
	for run := range b.runs {
		var raw fixture.RTT
		var bf fixture.Oneway
		if err := errors.Join(
			b.runFloor(&raw, "pingpong", "-n", n),
			b.runFloor(&bf, "oneway", "-batch", "-n", strconv.Itoa(b.onewayN)),
		); err != nil {
			return fail(err)
		}
		f50, f99 = append(f50, us(raw.P50)), append(f99, us(raw.P99))
		batched = append(batched, float64(bf.Deliveries)/bf.Seconds)
		// Relay-only first in even runs, direct first in odd ones.
		for k := range configs {
			i := (k + run) % len(configs)
			args := configs[i].args
			var r, e fixture.RTT
			var o fixture.Oneway
			rc, err := b.runDirectBench(&r, "rtt", b.rttN, args...)
			if err != nil {
				return fail(fmt.Errorf("%s: %w", configs[i].name, err))
			}
			ec, err := b.runDirectBench(&e, "egg", b.rttN, args...)
			if err != nil {
				return fail(fmt.Errorf("%s: %w", configs[i].name, err))
			}
			oc, err := b.runDirectBench(&o, "random", b.onewayN, args...)
			if err != nil {
				return fail(fmt.Errorf("%s: %w", configs[i].name, err))
			}
			rttCount[i], eggCount[i], onewayCount[i] = append(rttCount[i], rc), append(eggCount[i], ec), append(onewayCount[i], oc)
			rtt50[i], rtt99[i] = append(rtt50[i], us(r.P50)), append(rtt99[i], us(r.P99))
			there[i], back[i] = append(there[i], us(r.ThereP50)), append(back[i], us(r.BackP50))
			cpu[i], phase[i] = append(cpu[i], r.MasterCPUPercent()), append(phase[i], r.PhaseSecs)
			eggs50[i], eggs99[i] = append(eggs50[i], us(e.P50)), append(eggs99[i], us(e.P99))
			eggCPU[i] = append(eggCPU[i], e.MasterCPUPercent())
			eggThere[i], eggBack[i] = append(eggThere[i], us(e.ThereP50)), append(eggBack[i], us(e.BackP50))
			oneway[i] = append(oneway[i], float64(o.Deliveries)/o.Seconds)
			refused[i] += o.Refused
			short[i] += int64(b.onewayN) - o.Deliveries
		}
	}
	const relay, direct = 0, 1
	floorNote := fmt.Sprintf("floor: raw socketpair ping-pong of a %d-byte frame between two processes, blocking write+read per hop, %d round trips, run next to it (bench/floor pingpong)", fixture.PingFrame, b.rttN)
	rttNote := func(cfg int) string {
		return fmt.Sprintf("bench/cluster -msg rtt%s: %d round trips per run after 1,000 warm-up ones, agent Request → worker's handler → Reply, 24-byte raw payload, the 2 workers alternately; %s. "+
			"Breakdown (medians of per-run p50s): agent send → worker's handler %.0f µs, worker's Reply → agent's Request returns %.0f µs. %s",
			map[int]string{relay: " -relay-only (Config.RelayOnly)", direct: " (default config: direct channels)"}[cfg], b.rttN, floorNote, median(there[cfg]), median(back[cfg]), countNote(rttCount[cfg]))
	}
	cpuNote := func(cfg int) string {
		return fmt.Sprintf("utime+stime of the master (the agent's parent, checked to be the process the bench started) from /proc/<pid>/stat, read by the agent just before the first and just after the last timed round trip of the %s RTT run above (warm-up, start-up and shutdown outside), over that phase's wall time; %% of one core. Clock ticks of 1/%d s, so one tick is %.1f%% of a %.2f s phase (median). The same during Egg's method: median %.1f%%.",
			configs[cfg].name, fixture.ClockTicks, 100/float64(fixture.ClockTicks)/median(phase[cfg]), median(phase[cfg]), median(eggCPU[cfg]))
	}
	eggNote := func(cfg int) string {
		return fmt.Sprintf("bench/cluster -msg egg%s: %d ping-pongs per run after 1,000 warm-up ones: the agent's SendRandom (24-byte raw payload; the workers in turn) → the worker's handler → the worker's SendToAgent → the agent's handler → the next SendRandom, as Egg's own benchmark; %s. "+
			"Breakdown (medians of per-run p50s): agent's SendRandom → worker's handler %.0f µs, worker's SendToAgent → agent's handler hands it to the loop %.0f µs. %s",
			map[int]string{relay: " -relay-only", direct: " (default config)"}[cfg], b.rttN, floorNote, median(eggThere[cfg]), median(eggBack[cfg]), countNote(eggCount[cfg]))
	}

	rows := []row{
		ratioRow(names[0], "µs", rtt50[direct], f50, true, 2.5),
		ratioRow(names[1], "µs", rtt99[direct], f99, true, 3),
		infoRow(names[2], "µs", rtt50[relay], f50),
		infoRow(names[3], "µs", rtt99[relay], f99),
	}
	rows[0].note = rttNote(direct)
	rows[1].note = "the same runs' p99; floor: the raw ping-pong's p99."
	rows[2].note = rttNote(relay)
	rows[3].note = "the same runs' p99; floor: the raw ping-pong's p99."

	c := row{figure: names[4], unit: "%", vals: cpu[direct], goal: "≤ 10% of one core", pass: passFail(median(cpu[direct]) <= 10), note: cpuNote(direct)}
	cr := row{figure: names[5], unit: "%", vals: cpu[relay], pass: "info", note: cpuNote(relay)}
	rows = append(rows, c, cr)

	ow := ratioRow(names[6], "msgs/s", oneway[direct], batched, false, 0.5)
	ow.goal = "≥ 0.5× floor and ≥ 3 M/s"
	ow.pass = passFail(ow.pass == "PASS" && median(oneway[direct]) >= 3e6)
	onewayNote := func(cfg int) string {
		return fmt.Sprintf("bench/cluster -msg random%s: %d SendRandom of 64-byte raw payloads per run (one delivery each), counted by the 2 workers' handlers, the sender paced by a window of marks (at most 2 blocks of 16,384 beyond the marks answered, under Config.MaxPending); refused (Messenger.Stats) %d, not delivered %d over all runs. "+
			"Floor: %d %d-byte frames over a socketpair between two processes, written in batches of %d frames (%d KiB) per write(2), read and counted by the other (bench/floor oneway -batch), run next to it. %s",
			map[int]string{relay: " -relay-only", direct: " (default config)"}[cfg], b.onewayN, refused[cfg], short[cfg],
			b.onewayN, fixture.OnewayFrame, fixture.OnewayBatch/fixture.OnewayFrame, fixture.OnewayBatch>>10, countNote(onewayCount[cfg]))
	}
	ow.note = onewayNote(direct)
	owr := infoRow(names[7], "msgs/s", oneway[relay], batched)
	owr.note = onewayNote(relay)
	rows = append(rows, ow, owr)

	e50, e99 := infoRow(names[8], "µs", eggs50[direct], f50), infoRow(names[9], "µs", eggs99[direct], f99)
	e50.note = eggNote(direct)
	er50, er99 := infoRow(names[10], "µs", eggs50[relay], f50), infoRow(names[11], "µs", eggs99[relay], f99)
	er50.note = eggNote(relay)
	return append(rows, e50, e99, er50, er99)
}
