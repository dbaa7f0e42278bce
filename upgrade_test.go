package brood_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/control"
	"github.com/brood-go/brood/internal/wire"
)

// buildUpgradeApps builds testdata/upgradeapp once per spec, in parallel:
// each spec is "name version [-X settings...]"; it returns the paths by name.
func buildUpgradeApps(t *testing.T, dir string, specs ...string) map[string]string {
	t.Helper()
	out := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, spec := range specs {
		f := strings.Fields(spec)
		wg.Go(func() {
			p := buildUpgradeApp(t, dir, f[0], f[1], f[2:]...)
			mu.Lock()
			out[f[0]] = p
			mu.Unlock()
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	return out
}

// buildUpgradeApp builds testdata/upgradeapp with version (main.version and
// the build label) and any extra -X settings into dir/app.<name>. It may
// run on another goroutine than the test's: it reports with Errorf.
func buildUpgradeApp(t *testing.T, dir, name, version string, extra ...string) string {
	out := filepath.Join(dir, "app."+name)
	ld := "-X main.version=" + version + " -X github.com/brood-go/brood/internal/upgrade.buildLabel=" + version
	for _, x := range extra {
		ld += " -X " + x
	}
	cmd := exec.Command("go", "build", "-ldflags", ld, "-o", out, "./testdata/upgradeapp")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("go build %s: %v\n%s", name, err, b)
	}
	return out
}

// startUpgradeApp starts testdata/upgradeapp from build, in build's folder,
// which also receives its output files.
func startUpgradeApp(t *testing.T, build string) *daemonApp {
	t.Helper()
	dir := filepath.Dir(build)
	return startDaemon(t, dir, "upgradeapp", build, "UPGRADEAPP_DIR="+dir)
}

// upgradeLoad is HTTP load in both connection modes plus a control client
// asking for the status, all counting failures.
type upgradeLoad struct {
	ok, failed, ctlOK, ctlFailed atomic.Int64
	firstErr                     atomic.Value
	stop                         chan struct{}
	wg                           sync.WaitGroup
}

func (a *daemonApp) startLoad() *upgradeLoad {
	l := &upgradeLoad{stop: make(chan struct{})}
	fail := func(err error) {
		l.failed.Add(1)
		l.firstErr.CompareAndSwap(nil, err.Error())
	}
	for i := range 4 {
		l.wg.Go(func() {
			// Keep-alive GETs, Connection: close GETs, keep-alive POSTs
			// (which net/http does not retry, so a dropped one shows).
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: i%3 == 1}}
			defer client.CloseIdleConnections()
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				var resp *http.Response
				var err error
				if i%3 == 2 {
					resp, err = client.Post("http://"+a.addr+"/", "text/plain", strings.NewReader("x"))
				} else {
					resp, err = client.Get("http://" + a.addr + "/")
				}
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if err == nil && resp.StatusCode != 200 {
						err = fmt.Errorf("status %d", resp.StatusCode)
					}
				}
				if err != nil {
					fail(err)
				} else {
					l.ok.Add(1)
				}
			}
		})
	}
	l.wg.Go(func() {
		for {
			select {
			case <-l.stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			c, err := control.Dial(a.runDir, a.name)
			if err == nil {
				var st wire.Status
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				err = c.Do(ctx, "GET", "/status", nil, &st)
				cancel()
				c.Close()
			}
			if err != nil {
				l.ctlFailed.Add(1)
				l.firstErr.CompareAndSwap(nil, "control: "+err.Error())
			} else {
				l.ctlOK.Add(1)
			}
		}
	})
	return l
}

func (l *upgradeLoad) end(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	t.Logf("load: %d requests ok, %d failed; control: %d ok, %d failed", l.ok.Load(), l.failed.Load(), l.ctlOK.Load(), l.ctlFailed.Load())
	if l.failed.Load() != 0 || l.ctlFailed.Load() != 0 {
		t.Errorf("%d requests and %d control requests failed (first: %v)", l.failed.Load(), l.ctlFailed.Load(), l.firstErr.Load())
	}
	if l.ok.Load() == 0 || l.ctlOK.Load() == 0 {
		t.Errorf("the load did not run: %d requests, %d control requests", l.ok.Load(), l.ctlOK.Load())
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, d)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// readNumbers reads a file of one integer per line.
func readNumbers(t *testing.T, path string) []int64 {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []int64
	for _, l := range strings.Fields(string(b)) {
		n, err := strconv.ParseInt(l, 10, 64)
		if err != nil {
			t.Fatalf("%s: %q", path, l)
		}
		out = append(out, n)
	}
	return out
}

// TestUpgradeInPlace: 20 upgrades back to back, alternating two builds,
// under keep-alive and one-connection-per-request load with a control client
// asking for the status throughout: no request fails, the master keeps its
// pid, every answer after an upgrade comes from the new build, the agent's
// numbered messages to the workers arrive once each, and the 200 ms
// schedule runs once per tick.
func TestUpgradeInPlace(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the test app twice and upgrades 20 times")
	}
	dir := t.TempDir()
	bs := buildUpgradeApps(t, dir, "v1 v1", "v2 v2")
	builds := []string{bs["v1"], bs["v2"]}
	a := startUpgradeApp(t, builds[0])
	if v := a.versions(10); v["v1"] != 10 {
		t.Fatalf("before the upgrades: %v", v)
	}
	// Upgrades come faster than the task's 200 ms, from before its first
	// tick: each agent continues the schedule its first predecessor started
	// (the clock is handed on from a scheduler's start), so the ticks keep
	// one grid throughout.
	ticks := filepath.Join(dir, "ticks")
	load := a.startLoad()
	const upgrades = 20
	for i := 1; i <= upgrades; i++ {
		want := "v" + strconv.Itoa(i%2+1)
		a.install(builds[i%2])
		out, err := a.run("upgrade")
		if err != nil {
			load.end(t)
			t.Fatalf("upgrade %d: %v\n%s", i, err, out)
		}
		if !strings.Contains(out, "-> "+want) || !strings.Contains(out, fmt.Sprintf("upgrade %d of this master", i)) {
			t.Errorf("upgrade %d printed:\n%s", i, out)
		}
		if pid, err := control.ReadPID(a.runDir); err != nil || pid != a.pid {
			t.Fatalf("upgrade %d: master pid %d (%v), want %d", i, pid, err, a.pid)
		}
		if v := a.versions(10); v[want] != 10 {
			t.Fatalf("after upgrade %d: %v, want every answer from %s", i, v, want)
		}
	}
	load.end(t)
	// Ten ticks at least, whatever the speed of the upgrades: the last
	// agent runs those it has to.
	waitFor(t, "ten ticks", 10*time.Second, func() bool { b, _ := os.ReadFile(ticks); return strings.Count(string(b), "\n") >= 10 })
	st := statusOf(t, a)
	if st.PID != a.pid || st.Upgrades != upgrades || st.Build.Version != "v1" {
		t.Errorf("status after %d upgrades: pid %d, upgrades %d, build %+v", upgrades, st.PID, st.Upgrades, st.Build)
	}
	if out, err := a.run("stop"); err != nil {
		t.Fatalf("stop: %v\n%s", err, out)
	}

	checkMessages(t, filepath.Join(dir, "messages"))
	checkTicks(t, ticks, 200*time.Millisecond)
}

func statusOf(t *testing.T, a *daemonApp) wire.Status {
	t.Helper()
	c, err := control.Dial(a.runDir, a.name)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var st wire.Status
	if err := c.Do(context.Background(), "GET", "/status", nil, &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// checkMessages: the file holds, per agent, its numbers 1, 2, 3, ...; none
// repeats and none is missing, but the tail of the last agent's (in flight
// at the stop).
func checkMessages(t *testing.T, path string) {
	t.Helper()
	ns := readNumbers(t, path)
	if len(ns)%2 != 0 {
		t.Fatalf("%s: odd number of fields", path)
	}
	runs := map[int64][]int64{}
	var order []int64
	for i := 0; i < len(ns); i += 2 {
		if _, ok := runs[ns[i]]; !ok {
			order = append(order, ns[i])
		}
		runs[ns[i]] = append(runs[ns[i]], ns[i+1])
	}
	total := 0
	for _, agent := range order {
		r := runs[agent]
		slices.Sort(r)
		total += len(r)
		for j, n := range r {
			if n != int64(j+1) {
				if j > 0 && n == r[j-1] {
					t.Fatalf("agent pid %d's message %d arrived twice", agent, n)
				}
				t.Fatalf("agent pid %d's messages: %d missing (got %d, up to %d)", agent, j+1, len(r), r[len(r)-1])
			}
		}
	}
	t.Logf("messages: %d agents, %d messages, each once", len(runs), total)
	if len(runs) < 2 {
		t.Errorf("the agent was never replaced: messages from %d agents", len(runs))
	}
}

// checkTicks: consecutive ticks of every, each once.
func checkTicks(t *testing.T, path string, every time.Duration) {
	t.Helper()
	ticks := readNumbers(t, path)
	if len(ticks) < 10 {
		t.Fatalf("only %d ticks ran", len(ticks))
	}
	seen := map[int64]bool{}
	slices.Sort(ticks)
	for i, tk := range ticks {
		if seen[tk] {
			t.Fatalf("tick %d ran twice", tk)
		}
		seen[tk] = true
		if i > 0 && time.Duration(tk-ticks[i-1])*time.Millisecond != every {
			t.Fatalf("ticks %d and %d: %v apart, want %v (ticks: %v)", ticks[i-1], tk, time.Duration(tk-ticks[i-1])*time.Millisecond, every, ticks)
		}
	}
	t.Logf("ticks: %d, each once, none missing", len(ticks))
}

// TestUpgradeBrokenBinary: a new binary that exits 1 at start, is not
// executable, hangs, or fails or panics while restoring never costs a
// request: the upgrade reports why, the old master keeps its pid, its
// build and its processes, and a good upgrade afterwards works.
func TestUpgradeBrokenBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the test app five times")
	}
	dir := t.TempDir()
	const restoreFault = "github.com/brood-go/brood/internal/master.restoreFault="
	bs := buildUpgradeApps(t, dir, "v1 v1", "v2 v2", "exit1 exit1", "hang hang",
		"restore-error v9 "+restoreFault+"error", "restore-panic v9 "+restoreFault+"panic")
	good := bs["v1"]
	a := startUpgradeApp(t, good)
	pidsBefore := statusOf(t, a).Processes
	load := a.startLoad()
	noExec := filepath.Join(dir, "app.noexec")
	b, _ := os.ReadFile(good)
	if err := os.WriteFile(noExec, b, 0o644); err != nil {
		t.Fatal(err)
	}
	// While an upgrade runs (here: the preflight of a binary that hangs),
	// other operations and a second upgrade are refused.
	a.install(bs["hang"])
	first := make(chan string, 1)
	go func() {
		out, _ := a.run("upgrade", "--preflight-timeout", "3s")
		first <- out
	}()
	waitFor(t, "a scale refused during the upgrade", 3*time.Second, func() bool {
		out, err := a.run("scale", "2")
		return err != nil && strings.Contains(out, "an upgrade is in progress")
	})
	if out, err := a.run("upgrade"); err == nil || !strings.Contains(out, "upgrade refused: an upgrade is in progress") {
		t.Errorf("a second upgrade during the first: %v\n%s", err, out)
	}
	if out := <-first; !strings.Contains(out, "did not finish within 3s") {
		t.Errorf("the hanging preflight: %s", out)
	}
	for _, tc := range []struct {
		name, build string
		args        []string
		want        string
	}{
		{"exits 1 at start", bs["exit1"], nil, "this build refuses to start"},
		{"not executable", noExec, nil, "not executable"},
		{"hangs", bs["hang"], []string{"--preflight-timeout", "1s"}, "did not finish within 1s"},
		{"fails while restoring", bs["restore-error"], nil, "rolled back"},
		{"panics while restoring", bs["restore-panic"], nil, "panic"},
	} {
		a.install(tc.build)
		out, err := a.run(append([]string{"upgrade"}, tc.args...)...)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("%s: upgrade: %v, want an error containing %q:\n%s", tc.name, err, tc.want, out)
		}
		st := statusOf(t, a)
		if st.PID != a.pid || st.Build.Version != "v1" || st.Upgrades != 0 {
			t.Errorf("%s: master pid %d build %q upgrades %d after the failed upgrade, want pid %d, v1, 0", tc.name, st.PID, st.Build.Version, st.Upgrades, a.pid)
		}
		if !slices.EqualFunc(st.Processes, pidsBefore, func(x, y wire.Process) bool { return x.PID == y.PID }) {
			t.Errorf("%s: the processes changed: %v -> %v", tc.name, pidsBefore, st.Processes)
		}
		if v := a.versions(10); v["v1"] != 10 {
			t.Errorf("%s: answers after the failed upgrade: %v", tc.name, v)
		}
	}
	a.install(bs["v2"])
	if out, err := a.run("upgrade"); err != nil || !strings.Contains(out, "-> v2") {
		t.Fatalf("a good upgrade after the failed ones: %v\n%s", err, out)
	}
	load.end(t)
	if v := a.versions(10); v["v2"] != 10 {
		t.Fatalf("after the good upgrade: %v", v)
	}
}

// TestUpgradeKeepWorkers: --keep-workers re-executes the master only: the
// children keep their pids and their old binary, adopted by the new master,
// through two upgrades in a row (the second execs from the main thread,
// their parent). A child that crashes meanwhile is restarted from the new
// binary; with adopted and new children mixed, an upgrade is refused until
// a reload; then a plain upgrade rolls everything.
func TestUpgradeKeepWorkers(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the test app twice")
	}
	dir := t.TempDir()
	bs := buildUpgradeApps(t, dir, "v1 v1", "v2 v2")
	a := startUpgradeApp(t, bs["v1"])
	pids := func() []int {
		var out []int
		for _, p := range statusOf(t, a).Processes {
			out = append(out, p.PID)
		}
		slices.Sort(out)
		return out
	}
	before := pids()
	load := a.startLoad()
	for i, build := range []string{"v2", "v1"} {
		a.install(bs[build])
		out, err := a.run("upgrade", "--keep-workers")
		if err != nil || !strings.Contains(out, "-> "+build) || !strings.Contains(out, "0 processes replaced") {
			load.end(t)
			t.Fatalf("upgrade %d --keep-workers: %v\n%s", i+1, err, out)
		}
		if got := pids(); !slices.Equal(got, before) {
			t.Fatalf("upgrade %d --keep-workers changed the processes: %v -> %v", i+1, before, got)
		}
		if st := statusOf(t, a); st.PID != a.pid || st.Build.Version != build {
			t.Fatalf("upgrade %d: master pid %d build %q", i+1, st.PID, st.Build.Version)
		}
		if v := a.versions(10); v["v1"] != 10 {
			t.Fatalf("upgrade %d --keep-workers: answers %v, want the old workers' v1", i+1, v)
		}
	}
	// A kept worker crashes: its replacement comes from the binary on disk.
	// (Requests on its connections fail: the load pauses.)
	load.end(t)
	a.install(bs["v2"])
	victim := 0
	for _, p := range statusOf(t, a).Processes {
		if p.Role == "worker" {
			victim = p.PID
		}
	}
	syscall.Kill(victim, syscall.SIGKILL)
	waitFor(t, "the crashed worker replaced", 10*time.Second, func() bool {
		for _, p := range statusOf(t, a).Processes {
			if p.Role == "worker" && p.PID != victim && !slices.Contains(before, p.PID) && p.State == "ready" {
				return true
			}
		}
		return false
	})
	load = a.startLoad()
	out, err := a.run("upgrade")
	if err == nil || !strings.Contains(out, "adopted from the previous image") || !strings.Contains(out, "reload them first") {
		t.Fatalf("upgrade with adopted and new processes mixed: %v, want a refusal\n%s", err, out)
	}
	if out, err := a.run("reload"); err != nil {
		t.Fatalf("reload: %v\n%s", err, out)
	}
	if out, err := a.run("upgrade"); err != nil || !strings.Contains(out, "3 processes replaced") {
		t.Fatalf("upgrade after the reload: %v\n%s", err, out)
	}
	load.end(t)
	if v := a.versions(10); v["v2"] != 10 {
		t.Fatalf("after the last upgrade: %v", v)
	}
}

// TestUpgradeProtocolVersions: a cluster whose binary speaks only IPC
// protocol 1 is upgraded, keeping its workers, to a build that speaks only
// 2: the new master cannot talk to the adopted processes, so it replaces
// each at once from its own binary (never a wedged slot), with no failed
// request. A build speaking its whole range (1 to ipc.Version) then adopts and rolls them as usual.
func TestUpgradeProtocolVersions(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the test app three times")
	}
	const override = "github.com/brood-go/brood/internal/ipc.versionOverride="
	dir := t.TempDir()
	bs := buildUpgradeApps(t, dir, "p1 p1 "+override+"1", "p2 p2 "+override+"2", "v2 v2")
	a := startUpgradeApp(t, bs["p1"])
	before := statusOf(t, a).Processes
	a.install(bs["p2"])
	out, err := a.run("upgrade", "--keep-workers")
	if err != nil {
		t.Fatalf("upgrade to a build that speaks only protocol 2: %v\n%s", err, out)
	}
	waitFor(t, "every process replaced from the p2 build", 20*time.Second, func() bool {
		st := statusOf(t, a)
		if len(st.Processes) != len(before) {
			return false
		}
		for _, p := range st.Processes {
			if p.State != "ready" || slices.ContainsFunc(before, func(q wire.Process) bool { return q.PID == p.PID }) {
				return false
			}
		}
		return true
	})
	if v := a.versions(10); v["p2"] != 10 {
		t.Fatalf("after the protocol change: answers %v, want p2", v)
	}
	load := a.startLoad()
	a.install(bs["v2"])
	if out, err := a.run("upgrade"); err != nil || !strings.Contains(out, "3 processes replaced") {
		t.Fatalf("upgrade to a build that speaks its whole range: %v\n%s", err, out)
	}
	load.end(t)
	if v := a.versions(10); v["v2"] != 10 {
		t.Fatalf("after the last upgrade: %v", v)
	}
}
