package main

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/brood-go/brood/bench/internal/fixture"
	"github.com/nats-io/nats-server/v2/server"
)

// embeddedNATS starts a NATS server in this process for a fleet figure and
// returns its URL and the function that shuts it down.
func embeddedNATS() (url string, stop func(), err error) {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		return "", nil, err
	}
	ns.Start()
	stop = func() { ns.Shutdown(); ns.WaitForShutdown() }
	if !ns.ReadyForConnections(10 * time.Second) {
		stop()
		return "", nil, errors.New("embedded nats-server did not start")
	}
	return ns.ClientURL(), stop, nil
}

// fleetN is the number of fleet round trips per run.
const fleetN = 5000

// figFleet: fleet Request round trip (agent → its master → NATS → its
// master → a worker, and back), against raw nats.go request/reply between
// two connections of this process through the same embedded server in the
// same run. Goal (issue 16): brood ≤ 1.5 × raw + brood's local messenger RTT;
// the row's floor is raw + local/1.5, so the ratio's limit is 1.5.
func (b *bench) figFleet() []row {
	name := "fleet Request RTT agent→NATS→worker→agent, p50"
	url, stop, err := embeddedNATS()
	if err != nil {
		return []row{errorRow(name, err)}
	}
	defer stop()
	var rawOuts []float64
	var vals, floor, raws, locals, there, back, lthere, lback []float64
	for range b.runs {
		raw, err := fixture.RawNATSRTT(url, fleetN)
		var fl, local, rawOut fixture.RTT
		err = errors.Join(err,
			b.runFloor(&rawOut, "natsrtt", "-url", url, "-n", strconv.Itoa(fleetN)),
			b.runMessengerBench(&fl, "fleetrtt", fleetN, "-fleet", url),
			b.runMessengerBench(&local, "rtt", fleetN))
		if err != nil {
			return []row{errorRow(name, err)}
		}
		vals = append(vals, us(fl.P50))
		raws, locals = append(raws, us(raw.P50)), append(locals, us(local.P50))
		rawOuts = append(rawOuts, us(rawOut.P50))
		there, back = append(there, us(fl.ThereP50)), append(back, us(fl.BackP50))
		lthere, lback = append(lthere, us(local.ThereP50)), append(lback, us(local.BackP50))
		floor = append(floor, us(raw.P50)+us(local.P50)/1.5)
	}
	r := ratioRow(name, "µs", vals, floor, true, 1.5)
	r.note = fmt.Sprintf("%d round trips per run, 24-byte raw payload, one member answering its own requests. Floor = raw nats.go request/reply p50 (median %.0f µs, two connections of one process, same server) + brood's local messenger RTT p50 (median %.0f µs) / 1.5, so the goal reads brood ≤ 1.5 × raw + local. Breakdown (medians of per-run p50s, CLOCK_MONOTONIC): agent's Request → worker's handler %.0f µs (local: %.0f µs), worker's Reply → agent's Request returns %.0f µs (local: %.0f µs). Reference: the same raw request/reply from a process of its own (bench/floor natsrtt; both connections out of the server's process, as the master's is) p50 %.0f µs. Broadcast throughput: the fleetbcast figure.",
		fleetN, median(raws), median(locals), median(there), median(lthere), median(back), median(lback), median(rawOuts))
	return []row{r}
}

// fleetBcastWorkers is the subscriber count of the broadcast figure: the
// bench cluster's workers, and the raw floor's subscriber connections.
const fleetBcastWorkers = 2

// figFleetBcast: fleet SendToApp throughput, deliveries/s counted by the
// workers' handlers (agent → its master → NATS → the same master, the one
// member → its 2 workers), against raw nats.go publish → 2 subscriber
// connections of this process through the same embedded server, same
// payload, same deliveries per publish, same window, in the same run. Goal
// (issue 16): ≥ 0.8× raw.
func (b *bench) figFleetBcast() []row {
	name := "fleet SendToApp 64 B, 1 member × 2 workers, deliveries/s"
	url, stop, err := embeddedNATS()
	if err != nil {
		return []row{errorRow(name, err)}
	}
	defer stop()
	n := b.onewayN / 5
	var vals, floor, rawOuts []float64
	var refused uint64
	var lost, rawLost int64
	for range b.runs {
		raw, err := fixture.RawNATSBcast(url, n, fleetBcastWorkers)
		if err != nil {
			return []row{errorRow(name, err)}
		}
		var o, rawOut fixture.Oneway
		if err := errors.Join(b.runMessengerBench(&o, "fleetapp", n, "-fleet", url),
			b.runFloor(&rawOut, "natsbcast", "-url", url, "-n", strconv.Itoa(n))); err != nil {
			return []row{errorRow(name, err)}
		}
		floor = append(floor, float64(raw.Deliveries)/raw.Seconds)
		rawOuts = append(rawOuts, float64(rawOut.Deliveries)/rawOut.Seconds)
		vals = append(vals, float64(o.Deliveries)/o.Seconds)
		refused += o.Refused
		lost += o.Sends*fleetBcastWorkers - o.Deliveries
		rawLost += raw.Sends*fleetBcastWorkers - raw.Deliveries
	}
	r := ratioRow(name, "msgs/s", vals, floor, false, 0.8)
	r.note = fmt.Sprintf("%d deliveries per run (%d SendToApp calls, 2 deliveries each), counted by the workers' handlers; the sender keeps at most %d sends beyond the deliveries counted (polled with local Requests to the workers), far below the master's fleet queue bound (Config.MaxPending). Refused (sender's Messenger.Stats) %d, not delivered %d over all runs. Floor: raw nats.go, one publisher connection, %d subscriber connections (so the server delivers each message twice, as the cluster's master delivers each to its 2 workers), %d-byte payload with no headers (brood adds its envelope: 5 NATS headers), same window counted at the subscribers; not delivered %d over all runs. Reference: the same raw publish and subscribers from a process of its own (bench/floor natsbcast, out of the server's process as the master is): median %.0f k/s. Core NATS is at most once: a run ends when every delivery is counted or the count stalls for 2 s.",
		n, n/fleetBcastWorkers, fixture.FleetWindow, refused, lost, fleetBcastWorkers, fixture.OnewayPayload, rawLost, median(rawOuts)/1e3)
	return []row{r}
}
