package admin

import (
	"context"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/helperproc"
	"github.com/brood-go/brood/internal/wire"
	"github.com/chromedp/cdproto/emulation"
	"github.com/chromedp/chromedp"
)

// cluster is a realistic cluster for the dashboard: an agent and four
// workers, with a few minutes of history, and a way to move it on.
type cluster struct {
	src   *fakeSource
	start time.Time
	mu    sync.Mutex
	step  int
}

func newCluster() *cluster {
	c := &cluster{src: newFakeSource(), start: time.Now().Add(-3*time.Hour - 12*time.Minute)}
	procs := []wire.Process{{Role: "agent", ID: 0, PID: 5001, State: "ready"}}
	for i := range 4 {
		procs = append(procs, wire.Process{Role: "worker", ID: i, PID: 5002 + i, State: "ready"})
	}
	for i := range procs {
		procs[i].StartedAt = c.start.Add(2 * time.Second)
	}
	// Worker 1 was recycled for memory an hour ago.
	procs[2].PID, procs[2].Restarts = 6120, 1
	procs[2].StartedAt = time.Now().Add(-58 * time.Minute)
	procs[2].LastKind, procs[2].LastReason = wire.ReasonMemory, "memory: RSS 412 MiB above MaxRSS 384 MiB"
	sched, _ := json.Marshal([]wire.ScheduleStatus{
		{Name: "cleanup-sessions", Type: "worker", Every: "1m0s", LastRun: time.Now().Add(-21 * time.Second), LastResult: "ok", LastDuration: 0.084, Next: time.Now().Add(39 * time.Second), Runs: 192, Skips: 1},
		{Name: "nightly-report", Type: "all", Cron: "0 3 * * *", LastRun: time.Now().Add(-9 * time.Hour), LastResult: "failed", LastDuration: 30, Next: time.Now().Add(15 * time.Hour), Runs: 12, Failures: 2},
		{Name: "warm-cache", Type: "worker", Every: "30s", Running: 1, LastRun: time.Now().Add(-2 * time.Second), LastResult: "ok", LastDuration: 1.9, Next: time.Now().Add(28 * time.Second), Runs: 384},
		{Name: "vacuum", Type: "worker", Cron: "@weekly", Disabled: true},
	})
	c.src.SetStatus(wire.Status{
		Name: "shop-api", PID: 5000, State: "running",
		Listen:    []string{"tcp://0.0.0.0:8080", "unix:///run/shop/api.sock"},
		Workers:   4,
		StartedAt: c.start, RunDir: "/run/shop",
		Processes: procs,
		Messages:  wire.Messages{Relayed: 1_284_311, Held: 3, Redelivered: 17, Refused: 2},
		Schedules: sched,
	})
	c.tick()

	at := func(ago time.Duration) time.Time { return time.Now().Add(-ago) }
	boot := time.Since(c.start)
	c.src.Publish(wire.Event{Time: at(boot), Type: wire.EventStarted, Role: "agent", PID: 5001})
	c.src.Publish(wire.Event{Time: at(boot - 300*time.Millisecond), Type: wire.EventReady, Role: "agent", PID: 5001})
	for i := range 4 {
		c.src.Publish(wire.Event{Time: at(boot - 400*time.Millisecond), Type: wire.EventStarted, Role: "worker", ID: i, PID: 5002 + i})
	}
	for i := range 4 {
		c.src.Publish(wire.Event{Time: at(boot - 900*time.Millisecond), Type: wire.EventReady, Role: "worker", ID: i, PID: 5002 + i})
	}
	c.src.Publish(wire.Event{Time: at(boot - time.Second), Type: wire.EventClusterReady})
	c.src.Publish(wire.Event{Time: at(9 * time.Hour), Type: wire.EventScheduleRun, Task: "nightly-report", Result: "failed", Detail: "context deadline exceeded", Took: 30})
	c.src.Publish(wire.Event{Time: at(58*time.Minute + 2*time.Second), Type: wire.EventExited, Role: "worker", ID: 1, PID: 5003, Reason: wire.ReasonMemory, Detail: "RSS 412 MiB above MaxRSS 384 MiB", Uptime: 2.2 * 3600})
	c.src.Publish(wire.Event{Time: at(58 * time.Minute), Type: wire.EventReplaced, Role: "worker", ID: 1, PID: 6120, OldPID: 5003, Reason: wire.ReasonMemory})
	c.src.Publish(wire.Event{Time: at(31 * time.Minute), Type: wire.EventLogsRotated, Detail: "SIGUSR1 from logrotate"})
	c.src.Publish(wire.Event{Time: at(21 * time.Second), Type: wire.EventScheduleRun, Task: "cleanup-sessions", Result: "ok", Took: 0.084})
	return c
}

// tick moves the cluster on by one sample: uptimes, memory and CPU.
func (c *cluster) tick() {
	c.mu.Lock()
	c.step++
	n := float64(c.step)
	c.mu.Unlock()
	c.src.UpdateStatus(func(s *wire.Status) {
		s.RSSBytes = uint64((31 + 1.5*math.Sin(n/23)) * (1 << 20))
		s.CPUPercent = 0.8 + 0.3*math.Sin(n/13) + 0.1*math.Sin(n/3)
		s.Messages.Relayed += uint64(40 + 30*math.Abs(math.Sin(n/5)))
		for i := range s.Processes {
			p := &s.Processes[i]
			if p.PID == 0 {
				continue
			}
			p.Uptime = time.Since(p.StartedAt).Seconds()
			f := float64(i + 1)
			base := 58.0 + 9*f
			if p.Role == "agent" {
				base = 34
			}
			p.RSSBytes = uint64((base + 4*math.Sin(n/(11+f)) + 2*math.Sin(n/(3.3+f/2)) + n/60) * (1 << 20))
			p.CPUPercent = math.Max(0.2, 6+5*math.Sin(n/(9+2*f))+1.5*math.Sin(n/(2.3+f/3)))
			if p.Role == "agent" {
				p.CPUPercent /= 4
			}
		}
	})
}

// crash kills worker id's process (reason, detail) and returns a function that
// brings the slot back with newPID.
func (c *cluster) crash(id int, reason wire.Reason, detail string, newPID int) (restart func()) {
	var oldPID int
	c.src.UpdateStatus(func(s *wire.Status) {
		for i := range s.Processes {
			if p := &s.Processes[i]; p.Role == "worker" && p.ID == id {
				oldPID = p.PID
				p.PID, p.State, p.RSSBytes, p.CPUPercent, p.Uptime = 0, "restarting", 0, 0, 0
			}
		}
	})
	c.src.Publish(wire.Event{Type: wire.EventExited, Role: "worker", ID: id, PID: oldPID, Reason: reason, Detail: detail, Result: "crashed", Uptime: time.Since(c.start).Seconds()})
	c.src.Publish(wire.Event{Type: wire.EventRestarting, Role: "worker", ID: id, Reason: reason, Detail: detail, Backoff: 0.5, Restarts: 1})
	return func() {
		var restarts int
		c.src.UpdateStatus(func(s *wire.Status) {
			for i := range s.Processes {
				if p := &s.Processes[i]; p.Role == "worker" && p.ID == id {
					p.Restarts++
					restarts = p.Restarts
					p.PID, p.State, p.StartedAt = newPID, "ready", time.Now()
					p.LastKind, p.LastReason = reason, wire.ReasonText(reason, detail)
				}
			}
		})
		c.tick()
		c.src.Publish(wire.Event{Type: wire.EventStarted, Role: "worker", ID: id, PID: newPID})
		c.src.Publish(wire.Event{Type: wire.EventRestarted, Role: "worker", ID: id, PID: newPID, OldPID: oldPID, Reason: reason, Restarts: restarts})
	}
}

// waitJS polls expr in the page until it is true, for at most d.
func waitJS(ctx context.Context, expr string, d time.Duration) error {
	_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(d), chromedp.WithPollingInterval(25*time.Millisecond)))
	return err
}

func TestDashboardBrowser(t *testing.T) {
	ctx, problems := helperproc.Browser(t)
	c := newCluster()
	srv := serve(t, c.src, Options{Name: "shop-api"}, 0)
	defer c.src.Stop() // ends the page's event stream before the server closes

	run := func(what string, actions ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(ctx, actions...); err != nil {
			t.Fatalf("%s: %v (page problems: %q)", what, err, problems())
		}
	}
	wait := func(what, expr string, d time.Duration) {
		t.Helper()
		if err := waitJS(ctx, expr, d); err != nil {
			state, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('main').innerText.slice(0, 3000)`))
			t.Fatalf("%s: %v\npage problems: %q\npage: %s", what, err, problems(), state)
		}
	}

	run("load", chromedp.Navigate(srv.URL+"/"))
	wait("one row per process", `document.querySelectorAll('#procs-body tr[data-slot]').length === 5 &&
		['agent/0','worker/0','worker/1','worker/2','worker/3'].every(k => document.querySelector('#procs-body tr[data-slot="'+k+'"]'))`, 10*time.Second)
	wait("the kept events", `document.querySelectorAll('#events-body tr[data-seq]').length === 16`, 5*time.Second)
	wait("the stream is live", `document.getElementById('conn').dataset.conn === 'live'`, 5*time.Second)
	title, err := chromedp.Run(ctx, chromedp.Title())
	if err != nil {
		t.Fatal(err)
	}
	header, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS(".title")))
	if err != nil {
		t.Fatal(err)
	}
	if title != "shop-api · brood" || !strings.Contains(header, "shop-api") || !strings.Contains(header, "running") {
		t.Errorf("title %q, header %q", title, header)
	}

	// Worker 2 is killed by a signal and restarted.
	restart := c.crash(2, wire.ReasonSignal, "killed by SIGKILL", 7301)
	restart()
	wait("the restart in the table and the event list", `(() => {
		const row = document.querySelector('#procs-body tr[data-slot="worker/2"][data-pid="7301"][data-restarts="1"]');
		const first = document.querySelector('#events-body tr');
		return !!row && row.querySelector('td.pid').textContent === '7301' &&
			row.querySelector('td.reason').textContent.includes('killed by SIGKILL') &&
			!!document.querySelector('#events-body tr[data-type="exited"][data-reason="signal"][data-result="crashed"][data-tone="bad"]') &&
			first && first.dataset.type === 'restarted' && first.dataset.pid === '7301';
	})()`, 3*time.Second)

	cells, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll('#procs-body tr[data-slot="worker/2"] td')).map(td => td.textContent)`))
	if err != nil {
		t.Fatal(err)
	}
	if len(cells) < 7 || cells[0] != "worker" || cells[1] != "2" || cells[2] != "7301" || cells[5] != "1" || !strings.HasPrefix(cells[6], "signal") {
		t.Errorf("worker 2's row: %q", cells)
	}

	if p := problems(); len(p) > 0 {
		t.Fatalf("the page reported problems: %q", p)
	}

	if out := os.Getenv("BROOD_DASHBOARD_SCREENSHOT"); out != "" {
		screenshot(t, ctx, srv.URL, c, out, problems)
	}
}

// screenshot loads the page with a fast poll so that its sparklines fill a
// whole window in seconds, lets the cluster run (worker 3 panics on the way),
// and saves a full-page PNG to out, and a dark one beside it.
func screenshot(t *testing.T, ctx context.Context, url string, c *cluster, out string, problems func() []string) {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tk := time.NewTicker(50 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tk.C:
				c.tick()
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	if err := chromedp.Do(ctx, chromedp.Navigate(url+"/?poll=50")); err != nil {
		t.Fatal(err)
	}
	// span: how much of the sparkline window the page's samples cover.
	span := `(+(document.querySelector('#procs-body tr[data-slot="worker/0"] .spark.rss[data-span]') || {dataset: {span: 0}}).dataset.span) / +document.body.dataset.window`
	if err := waitJS(ctx, span+` >= 0.6`, 60*time.Second); err != nil {
		t.Fatalf("history: %v (%q)", err, problems())
	}
	restart := c.crash(3, wire.ReasonPanic, "panic: runtime error: index out of range [7] with length 7", 7388)
	if err := waitJS(ctx, `!!document.querySelector('#procs-body tr[data-slot="worker/3"][data-state="restarting"] .spark.rss[data-samples]') &&
		+document.querySelector('#procs-body tr[data-slot="worker/3"] .spark.rss').dataset.gap >= 8`, 10*time.Second); err != nil {
		t.Fatalf("crash: %v (%q)", err, problems())
	}
	restart()
	if err := waitJS(ctx, span+` >= 0.97 && !!document.querySelector('#procs-body tr[data-slot="worker/3"][data-pid="7388"]')`, 60*time.Second); err != nil {
		t.Fatalf("history: %v (%q)", err, problems())
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(out, png, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := chromedp.Call(ctx, emulation.SetEmulatedMedia, emulation.SetEmulatedMediaParams{
		Features: []*emulation.MediaFeature{{Name: "prefers-color-scheme", Value: "dark"}},
	}); err != nil {
		t.Fatal(err)
	}
	dark, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	darkOut := strings.TrimSuffix(out, filepath.Ext(out)) + "-dark" + filepath.Ext(out)
	if err := os.WriteFile(darkOut, dark, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshots: %s, %s", out, darkOut)
	if p := problems(); len(p) > 0 {
		t.Fatalf("the page reported problems: %q", p)
	}
}
