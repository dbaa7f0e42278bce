package brood_test

import (
	"fmt"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/helperproc"
	"github.com/chromedp/chromedp"
)

// The dashboard of a real cluster in a real headless Chromium: it loads with
// no console error, shows one row per process, and a SIGKILLed worker's
// restart appears in the table and the event list within 3 seconds.
func TestDashboardShowsARestart(t *testing.T) {
	c, _, admin := startMetrics(t)
	ctx, problems := helperproc.Browser(t)
	wait := func(what, js string, d time.Duration) {
		t.Helper()
		_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](js, chromedp.WithPollingTimeout(max(d, time.Millisecond)), chromedp.WithPollingInterval(25*time.Millisecond)))
		if err != nil {
			html, _ := chromedp.Run(ctx, chromedp.Evaluate[string](`document.querySelector('#procs-body').outerHTML`))
			t.Fatalf("%s: %v\nprocess table: %s\nconsole: %v", what, err, html, problems())
		}
	}
	if _, err := chromedp.Run(ctx, chromedp.Navigate("http://"+admin+"/")); err != nil {
		t.Fatal(err)
	}
	wait("one row per process", `document.querySelectorAll('#procs-body tr[data-slot]').length === 2`, 10*time.Second)
	victim := c.ChildPIDs("worker")[0]
	wait("the victim's row", fmt.Sprintf(`!!document.querySelector('#procs-body tr[data-pid="%d"]')`, victim), 5*time.Second)
	syscall.Kill(victim, syscall.SIGKILL)
	killed := time.Now()
	l := c.WaitFor(10*time.Second, "the restart", func(l helperproc.Line) bool {
		return helperproc.MasterMsg("restarted")(l) && l.Int("old_pid") == victim
	})
	slot, pid := l.Int("child_id"), l.Int("child_pid")
	wait("the restart in the table and the event list", fmt.Sprintf(`
		!!document.querySelector('#procs-body tr[data-slot="worker/%d"][data-pid="%d"][data-restarts="1"]') &&
		!!document.querySelector('#events-body tr[data-type="exited"][data-reason="signal"]') &&
		!!document.querySelector('#events-body tr[data-type="restarted"]')`, slot, pid), 3*time.Second-time.Since(killed))
	if p := problems(); len(p) > 0 {
		t.Errorf("the page reported problems: %v", p)
	}
	if path := os.Getenv("BROOD_DASHBOARD_SCREENSHOT"); path != "" {
		if png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100)); err == nil {
			os.WriteFile(path, png, 0o644)
		}
	}
	stopCluster(t, c)
}
