// Command cluster is the brood program the bench measures: workers serve
// fixture.Handler (the floor's handler) with brood.ServeHTTP and answer the
// messenger bench; the agent, when -msg is given, runs one messenger bench once
// the cluster is ready and writes its result as JSON to -out:
//
//	-msg rtt     -n N  N Request/Reply round trips agent→worker→agent (workers
//	                   alternately), each timed; fixture.RTT, with the master's
//	                   CPU (utime+stime of the agent's parent, /proc/<ppid>/stat)
//	                   read just before the first timed round trip and just
//	                   after the last (the warm-up, start-up and shutdown are
//	                   outside)
//	-msg egg     -n N  Egg's method: N ping-pongs of agent SendRandom → the
//	                   worker's handler → worker SendToAgent → the agent's
//	                   handler, then the next SendRandom (24-byte raw payload,
//	                   the workers in turn); fixture.RTT, with the master's CPU
//	-msg random  -n N  N one-way 64-byte raw messages with SendRandom (N deliveries)
//	-msg app     -n N  N/2 SendToApp calls to the 2 workers (N deliveries)
//	-msg fleetrtt -n N N fleet Requests (needs -fleet), each timed; fixture.RTT
//	-msg fleetapp -n N N/2 fleet SendToApp calls of 64-byte raw messages
//	                   (needs -fleet; N deliveries to the 2 workers through
//	                   NATS), paced by a window; fixture.Oneway
//	-msg flood         worker 1 sends fixture.FloodCount messages of
//	                   fixture.FloodPayload bytes to the agent at once (SendToAgent);
//	                   the agent's handler takes fixture.FloodDelay each (a slow
//	                   agent). It logs "bench start" 1 s after the cluster is
//	                   ready (so the idle master can be measured first) and
//	                   ends once every message is handled or refused; fixture.Flood
//	-onecpu            every process on one CPU (a reference for the RTT figure)
//	-relay-only        Config.RelayOnly: every message through the master, no
//	                   direct agent↔worker channels (the direct figure's
//	                   comparison)
//	-admin ADDR        the master's admin listener (Config.Admin): GET /metrics
//	-series N          every worker registers N application series of its own
//	                   (fixture.RegisterSeries: promauto into
//	                   prometheus.DefaultRegisterer, no brood code) before it
//	                   is ready; the scrape figures
//	-msg-delay D       the agent waits D after the cluster is ready before it
//	                   runs the messenger bench (so a scrape loop is under way)
//	-no-header-timeout no http.Server.ReadHeaderTimeout, as the floor (a
//	                   reference for the HTTP figures)
//
// One-way senders are paced by a window: after every block of messages the agent
// sends a "mark" Request to every worker, and does not run more than two blocks
// ahead of the marks answered, so the master never holds more than
// Config.MaxPending (65536) unacknowledged messages for a worker.
//
// It uses brood.Run with its own flags (every process parses the same argv) so
// that, with -cpuprofile DIR, every process (master included) writes a CPU
// profile DIR/<role>-<pid>.prof when it exits, or when it gets SIGUSR2.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/brood-go/brood"
	"github.com/brood-go/brood/bench/internal/fixture"
	"github.com/prometheus/client_golang/prometheus"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "listen address")
	workers := flag.Int("workers", 2, "workers")
	runDir := flag.String("rundir", "", "run dir")
	mode := flag.String("msg", "", "messenger bench: rtt, egg, random, app, fleetrtt, fleetapp or flood")
	n := flag.Int("n", 20000, "round trips, or one-way deliveries")
	out := flag.String("out", "", "file for the messenger result (JSON)")
	profDir := flag.String("cpuprofile", "", "directory for one CPU profile per process")
	oneCPU := flag.Bool("onecpu", false, "pin the master, and so every child, to one CPU")
	relayOnly := flag.Bool("relay-only", false, "Config.RelayOnly: every message through the master")
	noHeaderTimeout := flag.Bool("no-header-timeout", false, "http.Server.ReadHeaderTimeout -1 (as the floor) instead of brood's default")
	admin := flag.String("admin", "", "admin listener address (Config.Admin)")
	series := flag.Int("series", 0, "application series each worker registers (prometheus.DefaultRegisterer)")
	msgDelay := flag.Duration("msg-delay", 0, "wait this long after the cluster is ready before the messenger bench")
	fleetURL := flag.String("fleet", "", "join this NATS server's fleet (Config.Fleet); -msg fleetrtt measures fleet requests")
	flag.Parse()
	if *oneCPU {
		if err := fixture.PinToOneCPU(); err != nil {
			fmt.Fprintln(os.Stderr, "cluster:", err)
			os.Exit(1)
		}
	}

	role := os.Getenv("BROOD_ROLE") // read before brood.Run removes it
	if role == "" {
		role = "master"
	} else if role == "worker" {
		role += os.Getenv("BROOD_ID")
	}
	if *profDir != "" {
		f, err := os.Create(filepath.Join(*profDir, fmt.Sprintf("%s-%d.prof", role, os.Getpid())))
		if err == nil && pprof.StartCPUProfile(f) == nil {
			defer func() { pprof.StopCPUProfile(); f.Close() }()
			// SIGUSR2 ends the profile at once: a process that will not exit
			// cleanly (killed after a stop timeout) still leaves one.
			usr2 := make(chan os.Signal, 1)
			signal.Notify(usr2, syscall.SIGUSR2)
			go func() { <-usr2; pprof.StopCPUProfile(); f.Close() }()
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var received, flooded atomic.Int64
	err := brood.Run(ctx, brood.Config{
		Name:      "benchcluster",
		Workers:   *workers,
		Listen:    []string{*listen},
		RunDir:    *runDir,
		Admin:     *admin,
		Fleet:     *fleetURL,
		Node:      "bench",
		RelayOnly: *relayOnly,
		Agent: func(ctx context.Context, p *brood.Process) error {
			clusterUp := make(chan struct{})
			p.Messenger().Once(brood.ActionReady, func(brood.Message) { close(clusterUp) })
			p.Messenger().On(fixture.ActionFlood, func(brood.Message) {
				time.Sleep(fixture.FloodDelay) // the slow agent the flood bench measures
				flooded.Add(1)
			})
			p.Ready()
			if *mode != "" {
				p.Go(func(ctx context.Context) {
					select {
					case <-clusterUp:
					case <-ctx.Done():
						return
					}
					select {
					case <-time.After(*msgDelay):
					case <-ctx.Done():
						return
					}
					var res any
					var err error
					switch *mode {
					case "flood":
						res, err = flood(ctx, p, &flooded)
					case "fleetrtt":
						res, err = fleetRTT(ctx, p.Fleet(), *n)
					case "fleetapp":
						res, err = fleetApp(ctx, p, *n)
					default:
						res, err = runBench(ctx, p.Messenger(), *mode, *n)
					}
					if err == nil {
						err = writeJSON(*out, res)
					}
					if err != nil {
						p.Logger().Error("bench failed", "err", err)
						return
					}
					p.Logger().Info("bench done", "file", *out)
				})
			}
			<-ctx.Done()
			return nil
		},
		Worker: func(ctx context.Context, p *brood.Process) error {
			if *series > 0 {
				fixture.RegisterSeries(prometheus.DefaultRegisterer, *series)
			}
			m := p.Messenger()
			mono := fixture.NewMono()
			m.On(fixture.ActionPing, func(msg brood.Message) {
				recv := mono.Ns(time.Now())
				b := make([]byte, fixture.PingPayload)
				copy(b, msg.Data[:8])
				binary.BigEndian.PutUint64(b[8:], uint64(recv))
				binary.BigEndian.PutUint64(b[16:], uint64(mono.Ns(time.Now())))
				msg.Reply(b)
			})
			m.On(fixture.ActionEgg, func(msg brood.Message) {
				// As the ping handler, but the answer is a message of its own
				// to the agent, as Egg's sendToAgent.
				recv := mono.Ns(time.Now())
				b := make([]byte, fixture.PingPayload)
				copy(b, msg.Data[:8])
				binary.BigEndian.PutUint64(b[8:], uint64(recv))
				binary.BigEndian.PutUint64(b[16:], uint64(mono.Ns(time.Now())))
				if err := m.SendToAgent(fixture.ActionEggBack, b); err != nil {
					p.Logger().Error("egg: SendToAgent", "err", err)
				}
			})
			m.On(fixture.ActionMsg, func(brood.Message) { received.Add(1) })
			m.On(fixture.ActionFloodGo, func(msg brood.Message) {
				payload := make([]byte, fixture.FloodPayload)
				sent := 0
				for range fixture.FloodCount {
					if m.SendToAgent(fixture.ActionFlood, payload) == nil {
						sent++
					}
				}
				msg.Reply(binary.BigEndian.AppendUint64(nil, uint64(sent)))
			})
			m.On(fixture.ActionFloodStats, func(msg brood.Message) {
				msg.Reply(binary.BigEndian.AppendUint64(nil, m.Stats().Refused))
			})
			m.On(fixture.ActionMark, func(msg brood.Message) {
				msg.Reply(binary.BigEndian.AppendUint64(nil, uint64(received.Load())))
			})
			srv := &http.Server{Handler: fixture.Handler()}
			if *noHeaderTimeout {
				srv.ReadHeaderTimeout = -1
			}
			return brood.ServeHTTP(ctx, p, srv)
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		pprof.StopCPUProfile()
		os.Exit(1)
	}
}

// fleetRTT times n fleet requests (after 200 warm-up ones) answered by this
// cluster's workers through the NATS server: agent → master → NATS → master
// → worker and back.
func fleetRTT(ctx context.Context, f *brood.Fleet, n int) (fixture.RTT, error) {
	const warmup = 200
	payload := make([]byte, fixture.PingPayload)
	// The member joins the request queue group just after its workers are
	// ready: until then the server answers "no responders".
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := f.Request(ctx, fixture.ActionPing, payload)
		if err == nil {
			break
		}
		if !errors.Is(err, brood.ErrNoResponders) || time.Now().After(deadline) {
			return fixture.RTT{}, err
		}
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			return fixture.RTT{}, ctx.Err()
		}
	}
	// The worker stamps when its handler ran and when it replied (as for the
	// local rtt), for the breakdown there and back.
	return pingLoop(warmup, n, nil, func(_ int, payload []byte) (brood.Message, error) {
		return f.Request(ctx, fixture.ActionPing, payload)
	})
}

// fleetApp sends n deliveries' worth of 64-byte raw fleet SendToApp messages
// (one member: each send reaches this cluster's workers through NATS). The
// workers count deliveries; a poller asks them their counts (local marks) and
// the sender keeps at most fixture.FleetWindow sends beyond what was delivered, so
// neither the master's fleet queue (Config.MaxPending) nor a worker's is ever
// near its bound. Core NATS is at most once: the run ends when every delivery
// has been counted, or when the count has not moved for 2 s (the rest lost).
func fleetApp(ctx context.Context, p *brood.Process, n int) (fixture.Oneway, error) {
	m, f := p.Messenger(), p.Fleet()
	pids := m.WorkerPIDs()
	if len(pids) == 0 {
		return fixture.Oneway{}, errors.New("no workers")
	}
	payload := make([]byte, fixture.OnewayPayload)
	count := func() (int64, error) {
		var sum int64
		for _, pid := range pids {
			r, err := m.Request(ctx, pid, fixture.ActionMark, nil)
			if err != nil {
				return 0, err
			}
			sum += int64(binary.BigEndian.Uint64(r.Data))
		}
		return sum, nil
	}
	sends := n / len(pids)
	var delivered atomic.Int64
	var pollErr atomic.Value
	stop := make(chan struct{})
	polled := make(chan struct{})
	go func() {
		defer close(polled)
		for {
			select {
			case <-stop:
				return
			default:
			}
			d, err := count()
			if err != nil {
				pollErr.Store(err)
				return
			}
			delivered.Store(d)
			time.Sleep(100 * time.Microsecond)
		}
	}()
	defer func() { close(stop); <-polled }()
	t0 := time.Now()
	want := int64(sends * len(pids))
	for i := range sends {
		for int64(i-fixture.FleetWindow)*int64(len(pids)) > delivered.Load() {
			if e := pollErr.Load(); e != nil {
				return fixture.Oneway{}, e.(error)
			}
			if time.Since(t0) > time.Minute {
				return fixture.Oneway{}, fmt.Errorf("fleetapp: %d of %d deliveries after a minute", delivered.Load(), want)
			}
			time.Sleep(50 * time.Microsecond)
		}
		if err := f.SendToApp(fixture.ActionMsg, payload); err != nil {
			return fixture.Oneway{}, err
		}
	}
	// Wait for the last deliveries, or for the count to stall (losses).
	last, end, err := fixture.AwaitDeliveries(&delivered, want, func() error {
		if e := pollErr.Load(); e != nil {
			return e.(error)
		}
		return nil
	})
	if err != nil {
		return fixture.Oneway{}, err
	}
	return fixture.Oneway{Mode: "fleetapp", Sends: int64(sends), Deliveries: last, Seconds: end.Sub(t0).Seconds(), Refused: m.Stats().Refused}, nil
}

func runBench(ctx context.Context, m *brood.Messenger, mode string, n int) (any, error) {
	pids := m.WorkerPIDs()
	if len(pids) == 0 {
		return nil, errors.New("no workers")
	}
	switch mode {
	case "rtt":
		return rtt(ctx, m, pids, n)
	case "egg":
		return egg(ctx, m, n)
	case "random", "app":
		return oneway(ctx, m, pids, mode, n)
	}
	return nil, fmt.Errorf("unknown -msg %q", mode)
}

func rtt(ctx context.Context, m *brood.Messenger, pids []int, n int) (fixture.RTT, error) {
	cpu := newMasterCPU()
	r, err := pingLoop(1000, n, cpu.phase, func(i int, payload []byte) (brood.Message, error) {
		return m.Request(ctx, pids[i%len(pids)], fixture.ActionPing, payload)
	})
	return cpu.fill(r, err)
}

// egg times n ping-pongs the way Egg's own benchmark does: the agent's
// SendRandom reaches a worker (the master's round robin), whose handler
// answers with SendToAgent; the agent's handler hands the answer to the loop,
// which sends the next one.
func egg(ctx context.Context, m *brood.Messenger, n int) (fixture.RTT, error) {
	back := make(chan []byte, 1)
	off := m.On(fixture.ActionEggBack, func(msg brood.Message) {
		select {
		case back <- slices.Clone(msg.Data):
		default: // an answer nobody waits for (not sent by this loop)
		}
	})
	defer off()
	cpu := newMasterCPU()
	r, err := pingLoop(1000, n, cpu.phase, func(i int, payload []byte) (brood.Message, error) {
		if err := m.SendRandom(fixture.ActionEgg, payload); err != nil {
			return brood.Message{}, err
		}
		t := time.NewTimer(10 * time.Second)
		defer t.Stop()
		select {
		case data := <-back:
			return brood.Message{Data: data}, nil
		case <-t.C:
			return brood.Message{}, fmt.Errorf("egg: no answer to ping-pong %d within 10s", i)
		case <-ctx.Done():
			return brood.Message{}, ctx.Err()
		}
	})
	return cpu.fill(r, err)
}

// masterCPU reads the master's utime+stime at the two ends of a timed phase.
// The master is the agent's parent (it starts every child itself).
type masterCPU struct {
	pid    int
	t0, t1 time.Time
	c0, c1 int64
	calls  int
	err    error
}

func newMasterCPU() *masterCPU { return &masterCPU{pid: os.Getppid()} }

// phase is called just before the first timed round trip and just after the
// last.
func (c *masterCPU) phase() {
	ticks, err := fixture.ProcCPUTicks(c.pid)
	now := time.Now()
	if err != nil && c.err == nil {
		c.err = err
	}
	if c.calls == 0 {
		c.t0, c.c0 = now, ticks
	} else {
		c.t1, c.c1 = now, ticks
	}
	c.calls++
}

func (c *masterCPU) fill(r fixture.RTT, err error) (fixture.RTT, error) {
	if err != nil {
		return r, err
	}
	if c.err != nil {
		return r, fmt.Errorf("master CPU: %w", c.err)
	}
	if c.calls != 2 {
		return r, fmt.Errorf("master CPU: %d phase marks, want 2", c.calls)
	}
	r.MasterPID, r.MasterTicks, r.PhaseSecs = c.pid, c.c1-c.c0, c.t1.Sub(c.t0).Seconds()
	return r, nil
}

// pingLoop times warmup+n round trips of request (the i-th with a payload
// stamped with its send time) and keeps the last n: the whole round trip,
// and, from the stamps the worker's ping handler adds, there and back.
// phase, if set, is called just before the first timed round trip and just
// after the last.
func pingLoop(warmup, n int, phase func(), request func(i int, payload []byte) (brood.Message, error)) (fixture.RTT, error) {
	mono := fixture.NewMono()
	all := make([]int64, 0, n)
	there := make([]int64, 0, n)
	back := make([]int64, 0, n)
	payload := make([]byte, fixture.PingPayload)
	for i := range warmup + n {
		if i == warmup && phase != nil {
			phase()
		}
		t0 := time.Now()
		binary.BigEndian.PutUint64(payload, uint64(mono.Ns(t0)))
		reply, err := request(i, payload)
		t3 := time.Now()
		if err != nil {
			return fixture.RTT{}, err
		}
		if i < warmup {
			continue
		}
		all = append(all, int64(t3.Sub(t0)))
		if len(reply.Data) == fixture.PingPayload {
			sent := int64(binary.BigEndian.Uint64(reply.Data))
			recv := int64(binary.BigEndian.Uint64(reply.Data[8:]))
			replied := int64(binary.BigEndian.Uint64(reply.Data[16:]))
			there = append(there, recv-sent)
			back = append(back, mono.Ns(t3)-replied)
		}
	}
	if phase != nil {
		phase()
	}
	r := fixture.RTTOf(all)
	r.ThereP50, r.BackP50 = fixture.RTTOf(there).P50, fixture.RTTOf(back).P50
	return r, nil
}

// oneway sends n deliveries' worth of 64-byte raw messages, paced by marks.
func oneway(ctx context.Context, m *brood.Messenger, pids []int, mode string, n int) (fixture.Oneway, error) {
	payload := make([]byte, fixture.OnewayPayload)
	sends, block := n, 16384
	send := m.SendRandom
	if mode == "app" {
		sends, block = n/len(pids), 16384/len(pids)
		send = m.SendToApp
	}
	mark := func() <-chan error {
		done := make(chan error, 1)
		go func() {
			for _, pid := range pids {
				if _, err := m.Request(ctx, pid, fixture.ActionMark, nil); err != nil {
					done <- err
					return
				}
			}
			done <- nil
		}()
		return done
	}
	t0 := time.Now()
	var marks []<-chan error
	for i := range sends {
		if err := send(fixture.ActionMsg, payload); err != nil {
			return fixture.Oneway{}, err
		}
		if (i+1)%block == 0 {
			marks = append(marks, mark())
			if len(marks) > 2 {
				if err := <-marks[0]; err != nil {
					return fixture.Oneway{}, err
				}
				marks = marks[1:]
			}
		}
	}
	var delivered int64
	for _, pid := range pids {
		reply, err := m.Request(ctx, pid, fixture.ActionMark, nil)
		if err != nil {
			return fixture.Oneway{}, err
		}
		delivered += int64(binary.BigEndian.Uint64(reply.Data))
	}
	secs := time.Since(t0).Seconds()
	for _, c := range marks {
		<-c
	}
	return fixture.Oneway{Mode: mode, Sends: int64(sends), Deliveries: delivered, Seconds: secs, Refused: m.Stats().Refused}, nil
}

// flood runs the flood bench from the agent: worker 1 sends, the agent's slow
// handler counts (handled); it ends when every message sent was handled or
// refused by the master (the worker's Refused count, asked every 20 ms).
func flood(ctx context.Context, p *brood.Process, handled *atomic.Int64) (fixture.Flood, error) {
	m := p.Messenger()
	select {
	case <-time.After(time.Second):
	case <-ctx.Done():
		return fixture.Flood{}, ctx.Err()
	}
	pids := m.WorkerPIDs()
	if len(pids) == 0 {
		return fixture.Flood{}, errors.New("no workers")
	}
	p.Logger().Info("bench start")
	t0 := time.Now()
	reply, err := m.Request(ctx, pids[0], fixture.ActionFloodGo, nil)
	if err != nil {
		return fixture.Flood{}, err
	}
	sent := int(binary.BigEndian.Uint64(reply.Data))
	deadline := time.Now().Add(2 * time.Minute)
	for {
		r, err := m.Request(ctx, pids[0], fixture.ActionFloodStats, nil)
		if err != nil {
			return fixture.Flood{}, err
		}
		refused := binary.BigEndian.Uint64(r.Data)
		if h := int(handled.Load()); h+int(refused) >= sent {
			return fixture.Flood{Sent: sent, Handled: h, Refused: refused, Seconds: time.Since(t0).Seconds()}, nil
		}
		if time.Now().After(deadline) {
			return fixture.Flood{}, fmt.Errorf("flood: %d handled and %d refused of %d after 2 minutes", handled.Load(), refused, sent)
		}
		select {
		case <-time.After(20 * time.Millisecond):
		case <-ctx.Done():
			return fixture.Flood{}, ctx.Err()
		}
	}
}

func writeJSON(path string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
