package main

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/brood-go/brood/bench/internal/fixture"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// fleetN is the number of fleet round trips per run.
const fleetN = 5000

// figFleet: fleet Request round trip (agent → its master → NATS → its
// master → a worker, and back), against raw nats.go request/reply between
// two connections of this process through the same embedded server in the
// same run. Goal (issue 16): brood ≤ 1.5 × raw + brood's local messenger RTT;
// the row's floor is raw + local/1.5, so the ratio's limit is 1.5.
func (b *bench) figFleet() []row {
	name := "fleet Request RTT agent→NATS→worker→agent, p50"
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true})
	if err != nil {
		return []row{errorRow(name, err)}
	}
	ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(10 * time.Second) {
		return []row{errorRow(name, errors.New("embedded nats-server did not start"))}
	}
	url := ns.ClientURL()
	var vals, floor, raws, locals []float64
	for range b.runs {
		raw, err := rawNATSRTT(url, fleetN)
		var fl, local fixture.RTT
		err = errors.Join(err,
			b.runMessengerBench(&fl, "fleetrtt", fleetN, "-fleet", url),
			b.runMessengerBench(&local, "rtt", fleetN))
		if err != nil {
			return []row{errorRow(name, err)}
		}
		vals = append(vals, us(fl.P50))
		raws, locals = append(raws, us(raw.P50)), append(locals, us(local.P50))
		floor = append(floor, us(raw.P50)+us(local.P50)/1.5)
	}
	r := ratioRow(name, "µs", vals, floor, true, 1.5)
	r.note = fmt.Sprintf("%d round trips per run, 24-byte raw payload, one member answering its own requests. Floor = raw nats.go request/reply p50 (median %.0f µs, two connections of one process, same server) + brood's local messenger RTT p50 (median %.0f µs) / 1.5, so the goal reads brood ≤ 1.5 × raw + local. Broadcast throughput is not measured yet.",
		fleetN, median(raws), median(locals))
	return []row{r}
}

// rawNATSRTT times n request/reply round trips of a 24-byte payload through
// the server at url, responder and requester on connections of their own.
func rawNATSRTT(url string, n int) (fixture.RTT, error) {
	resp, err := nats.Connect(url)
	if err != nil {
		return fixture.RTT{}, err
	}
	defer resp.Close()
	req, err := nats.Connect(url)
	if err != nil {
		return fixture.RTT{}, err
	}
	defer req.Close()
	subj := "bench.raw." + strconv.FormatInt(time.Now().UnixNano(), 10)
	if _, err := resp.Subscribe(subj, func(m *nats.Msg) { _ = m.Respond(m.Data) }); err != nil {
		return fixture.RTT{}, err
	}
	if err := resp.Flush(); err != nil {
		return fixture.RTT{}, err
	}
	payload := make([]byte, fixture.PingPayload)
	all := make([]int64, 0, n)
	for i := range 200 + n {
		t0 := time.Now()
		if _, err := req.Request(subj, payload, 5*time.Second); err != nil {
			return fixture.RTT{}, err
		}
		if i >= 200 {
			all = append(all, int64(time.Since(t0)))
		}
	}
	return fixture.RTTOf(all), nil
}
