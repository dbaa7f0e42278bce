package main

import (
	"fmt"
	"slices"
	"syscall"
	"time"
)

// --- upgrade (DESIGN §12): SIGUSR2 re-executes the master in place and rolls
// every process; measured against a plain reload (SIGHUP) of the same cluster
// in the same run, each under its own HTTP load.

func (b *bench) figUpgrade() []row {
	names := [...]string{
		"upgrade: SIGUSR2 → new master ready (restored), hello",
		"upgrade: SIGUSR2 → upgrade done (every process rolled), hello",
		"failed requests during upgrade, keep-alive",
		"failed requests during upgrade, Connection: close",
	}
	runs := min(b.runs, 3)
	var restored, upgraded, reloaded []float64
	var failed [2][]float64
	var requests int64
	for _, closeConns := range []bool{false, true} {
		for range runs {
			r, err := b.upgradeOnce(closeConns)
			if err != nil {
				rows := make([]row, len(names))
				for i, n := range names {
					rows[i] = errorRow(n, err)
				}
				return rows
			}
			restored, upgraded, reloaded = append(restored, r.restored), append(upgraded, r.upgraded), append(reloaded, r.reloaded)
			i := 0
			if closeConns {
				i = 1
			}
			failed[i] = append(failed[i], float64(r.failed))
			requests += r.requests
		}
	}
	ratio := median(upgraded) / median(reloaded)
	return []row{
		{figure: names[0], unit: "ms", vals: restored, goal: "info", pass: "info",
			note: "from the signal to the new image's `cluster ready` (restored by an upgrade): preflight of the binary on disk, freeze, state hand-off, execve, restore."},
		{figure: names[1], unit: "ms", vals: upgraded, floor: reloaded, ratio: fmt.Sprintf("%.2f×", ratio), goal: "≤ 2× reload", pass: passFail(ratio <= 2),
			note: fmt.Sprintf("floor: SIGHUP → `reload done` on the same cluster, same run (%d runs each, under load). The upgrade is the exec plus the same roll.", len(upgraded))},
		{figure: names[2], unit: "count", vals: failed[0], goal: "0 (every run)", pass: passFail(slices.Max(failed[0]) == 0),
			note: fmt.Sprintf("%d runs; each run a reload then an upgrade, each 1 s into its own %v load; failed = socket errors + non-2xx during the upgrade's load (%d requests in all, both modes).", runs, b.reloadLoad(), requests)},
		{figure: names[3], unit: "count", vals: failed[1], goal: "0 (every run)", pass: passFail(slices.Max(failed[1]) == 0)},
	}
}

type upgradeRun struct {
	restored, upgraded, reloaded float64 // ms
	failed, requests             int64
}

// upgradeOnce starts a hello cluster, reloads it under load (the floor),
// then upgrades it under load, and reports the times and the upgrade's
// failed requests.
func (b *bench) upgradeOnce(closeConns bool) (upgradeRun, error) {
	var r upgradeRun
	c, err := b.startHello()
	if err != nil {
		return r, err
	}
	defer c.stop(15 * time.Second)
	if _, err := c.ready(30 * time.Second); err != nil {
		return r, err
	}
	pid := c.pid()
	// signal sends sig 1 s into a load and waits for the master's line
	// (and the others), returning ms from the signal to each and the load.
	signal := func(sig syscall.Signal, lines ...string) ([]float64, load, error) {
		from := c.log.len()
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
		if err := syscall.Kill(pid, sig); err != nil {
			<-done
			return nil, load{}, err
		}
		var took []float64
		var werr error
		for _, l := range lines {
			at, _, err := c.log.wait(from, 20*time.Second, l)
			if err != nil {
				werr = fmt.Errorf("%v: %w; last lines:\n%s", sig, err, c.log.tail(10))
				break
			}
			took = append(took, ms(time.Since(t0)))
			from = at
		}
		res := <-done
		if werr != nil {
			return nil, load{}, werr
		}
		return took, res.l, res.err
	}
	took, _, err := signal(syscall.SIGHUP, `msg="reload done"`)
	if err != nil {
		return r, err
	}
	r.reloaded = took[0]
	took, l, err := signal(syscall.SIGUSR2, `restored by an upgrade`, `msg=upgraded`)
	if err != nil {
		return r, err
	}
	if c.pid() != pid {
		return r, fmt.Errorf("the master's pid changed: %d -> %d", pid, c.pid())
	}
	r.restored, r.upgraded, r.failed, r.requests = took[0], took[1], l.failed(), l.Requests
	return r, nil
}
