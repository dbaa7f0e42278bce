package brood_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/brood-go/brood"
	"github.com/brood-go/brood/internal/helperproc"
)

// schedConfig: 3 workers and schedules that record every run:
// "run <task> <seq-ish start ns> <pid> start|end".
func schedConfig() brood.Config {
	record := func(task string) func(ctx context.Context, p *brood.Process) error {
		return func(ctx context.Context, p *brood.Process) error {
			helperproc.Event("run %s %d start %d", task, os.Getpid(), time.Now().UnixNano())
			if task == "slow" {
				select { // longer than its interval: the next ticks must be skipped
				case <-time.After(350 * time.Millisecond):
				case <-ctx.Done():
				}
			}
			helperproc.Event("run %s %d end %d", task, os.Getpid(), time.Now().UnixNano())
			return nil
		}
	}
	return brood.Config{
		Name:        "sched",
		Workers:     3,
		Logger:      helperproc.Logger(),
		StopTimeout: 5 * time.Second,
		Schedules: []brood.Schedule{
			{Name: "one", Every: 100 * time.Millisecond, Type: brood.OneWorker, Task: record("one")},
			{Name: "all", Every: 200 * time.Millisecond, Type: brood.AllWorkers, Task: record("all")},
			{Name: "slow", Every: 100 * time.Millisecond, Type: brood.OneWorker, Task: record("slow")},
			{Name: "agent", Every: 250 * time.Millisecond, Type: brood.InAgent, Task: record("agent")},
			{Name: "manual", Every: time.Hour, Disable: true, Task: record("manual")},
			{Name: "fails", Every: time.Hour, Disable: true, Task: func(context.Context, *brood.Process) error {
				return fmt.Errorf("fails on purpose")
			}},
		},
		Listen: []string{"127.0.0.1:0"},
		Worker: func(ctx context.Context, p *brood.Process) error {
			if d, err := time.ParseDuration(os.Getenv("SCHED_START_DELAY")); err == nil {
				time.Sleep(d) // a slow initialisation, so a restart takes a while
			}
			mux := http.NewServeMux()
			mux.HandleFunc("/run-schedule", func(w http.ResponseWriter, r *http.Request) {
				if err := p.RunSchedule(r.URL.Query().Get("name")); err != nil {
					fmt.Fprintln(w, err)
					return
				}
				fmt.Fprintln(w, "ok")
			})
			return brood.ServeHTTP(ctx, p, &http.Server{Handler: mux})
		},
	}
}

func schedMain() { brood.Main(schedConfig()) }

type run struct {
	task       string
	pid        int
	start, end int64
}

// runs pairs the start and end events of every completed run.
func runs(events []string) []run {
	open := map[string]run{}
	var out []run
	for _, ev := range events {
		var r run
		var phase string
		var at int64
		if n, _ := fmt.Sscanf(ev, "run %s %d %s %d", &r.task, &r.pid, &phase, &at); n != 4 {
			continue
		}
		key := fmt.Sprintf("%s/%d", r.task, r.pid)
		if phase == "start" {
			r.start = at
			open[key] = r
		} else if s, ok := open[key]; ok {
			s.end = at
			out = append(out, s)
			delete(open, key)
		}
	}
	return out
}

func TestSchedules(t *testing.T) {
	c := helperproc.Start(t, "sched", nil)
	addr := c.WaitReady(startTimeout)
	c.WaitEvents(20*time.Second, "3 runs of the slow task", 3, func(ev string) bool { return strings.HasPrefix(ev, "run slow ") && strings.Contains(ev, " end ") })
	c.WaitEvents(20*time.Second, "12 runs of 'one'", 12, func(ev string) bool { return strings.HasPrefix(ev, "run one ") && strings.Contains(ev, " end ") })
	c.WaitEvents(20*time.Second, "3 ticks of 'all' in 3 workers", 9, func(ev string) bool { return strings.HasPrefix(ev, "run all ") && strings.Contains(ev, " end ") })
	workers := c.ChildPIDs("worker")
	agent := c.ChildPIDs("agent")[0]
	rs := runs(c.ReadEvents())

	// OneWorker: each tick ran in exactly one worker, and the ticks were spread.
	onePids := map[int]int{}
	for _, r := range rs {
		if r.task == "one" {
			onePids[r.pid]++
		}
	}
	if len(onePids) != 3 {
		t.Errorf("'one' ran in %d workers %v, want its ticks spread over all 3", len(onePids), onePids)
	}
	// AllWorkers: every tick ran in every worker. Group runs by start time.
	allPids := map[int]int{}
	for _, r := range rs {
		if r.task == "all" {
			allPids[r.pid]++
		}
	}
	for _, w := range workers {
		if allPids[w] < 3 {
			t.Errorf("'all' ran %d times in worker %d, want every tick in every worker (%v)", allPids[w], w, allPids)
		}
	}
	// InAgent: in the agent only.
	for _, r := range rs {
		if r.task == "agent" && r.pid != agent {
			t.Errorf("'agent' ran in pid %d, not in the agent %d", r.pid, agent)
		}
	}
	// No overlap: runs of "slow" never overlap, so ticks were skipped.
	var slow []run
	for _, r := range rs {
		if r.task == "slow" {
			slow = append(slow, r)
		}
	}
	for i := 1; i < len(slow); i++ {
		if slow[i].start < slow[i-1].end {
			t.Errorf("runs of 'slow' overlap: %+v and %+v", slow[i-1], slow[i])
		}
	}

	// Manual runs: from the CLI, and from a worker's code.
	if code, out, _ := cli(t, c.RunDir, "schedule", "run", "manual"); code != 0 {
		t.Fatalf("schedule run manual: exit %d %s", code, out)
	}
	c.WaitEvents(10*time.Second, "the manual run", 1, hasPrefix("run manual "))
	// From code: a worker calls p.RunSchedule.
	if body := get(t, newConnClient(), "http://"+addr+"/run-schedule?name=manual"); body != "ok\n" {
		t.Fatalf("RunSchedule from a worker: %q", body)
	}
	c.WaitEvents(10*time.Second, "the second manual run", 2, hasPrefix("run manual "))
	if body := get(t, newConnClient(), "http://"+addr+"/run-schedule?name=nope"); !strings.Contains(body, "unknown schedule") {
		t.Errorf("RunSchedule(nope) from a worker: %q", body)
	}
	if code, _, s := cli(t, c.RunDir, "schedule", "run", "nope"); code != 1 || !strings.Contains(s.Stderr(), `schedule "nope": unknown schedule (known: agent, all, fails, manual, one, slow)`) {
		t.Errorf("schedule run nope: exit %d\n%s", code, s.Stderr())
	}
	cli(t, c.RunDir, "schedule", "run", "fails")
	c.WaitFor(10*time.Second, "the failing task's log", func(l helperproc.Line) bool {
		return l.Str("role") == "agent" && strings.Contains(l.Raw, "fails on purpose")
	})
	code, out, _ := cli(t, c.RunDir, "schedule", "list", "--json")
	if code != 0 {
		t.Fatalf("schedule list: exit %d", code)
	}
	var list []brood.ScheduleStatus
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("schedule list --json: %v\n%s", err, out)
	}
	byName := map[string]brood.ScheduleStatus{}
	for _, s := range list {
		byName[s.Name] = s
	}
	if s := byName["slow"]; s.Skips == 0 || s.Runs == 0 || s.LastDuration < 0.3 {
		t.Errorf("slow: %+v; want runs, skips and a last duration over 0.3s", s)
	}
	if s := byName["one"]; s.LastResult != "ok" && s.LastResult != "running" || s.LastRun.IsZero() || s.Next.IsZero() {
		t.Errorf("one: %+v; want a last run, result ok and a next time", s)
	}
	if s := byName["fails"]; s.Failures != 1 || !strings.Contains(s.LastResult, "fails on purpose") {
		t.Errorf("fails: %+v; want 1 failure with the error", s)
	}
	if _, text, _ := cli(t, c.RunDir, "schedule", "list"); !strings.Contains(text, "LAST RUN") || !strings.Contains(text, "slow") {
		t.Errorf("schedule list table:\n%s", text)
	}
	var inStatus []brood.ScheduleStatus
	if err := json.Unmarshal(statusJSON(t, c.RunDir).Schedules, &inStatus); err != nil || len(inStatus) != 6 {
		t.Errorf("status --json schedules: %v %+v", err, inStatus)
	}
	stopCluster(t, c)
}

// A tick due while the only worker restarts is not lost: it waits for the
// replacement. A run cut short by the kill is reported as failed.
func TestScheduleTickDuringWorkerRestart(t *testing.T) {
	c := helperproc.Start(t, "sched", []string{"--workers", "1"}, helperproc.Options{Env: []string{"SCHED_START_DELAY=300ms"}})
	c.WaitReady(startTimeout)
	c.WaitEvents(10*time.Second, "a few runs", 3, func(ev string) bool { return strings.HasPrefix(ev, "run one ") && strings.Contains(ev, " end ") })
	victim := c.ChildPIDs("worker")[0]
	syscall.Kill(victim, syscall.SIGKILL)
	replacement := c.WaitFor(10*time.Second, "the restart", helperproc.MasterMsg("restarted")).Int("child_pid")
	c.WaitFor(10*time.Second, "a run in the replacement", helperproc.IsEvent(func(ev string) bool {
		return strings.HasPrefix(ev, fmt.Sprintf("run one %d end", replacement))
	}))
	// The ticks due meanwhile waited: logged, and then run, not failed.
	waited := c.Count(func(l helperproc.Line) bool {
		return l.Str("role") == "agent" && l.Msg() == "no worker ready; the tick waits"
	})
	_, out, _ := cli(t, c.RunDir, "schedule", "list", "--json")
	var list []brood.ScheduleStatus
	json.Unmarshal([]byte(out), &list)
	for _, s := range list {
		if s.Name == "one" && (s.Failures > 1 || strings.Contains(s.LastResult, "no worker became ready")) {
			t.Errorf("one: %+v; want at most the killed run failed", s)
		}
	}
	t.Logf("ticks that waited for the replacement: %d", waited)
	if waited == 0 {
		t.Error("no tick waited for a worker during the restart")
	}
	stopCluster(t, c)
}
