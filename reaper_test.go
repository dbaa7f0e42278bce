package brood_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/brood-go/brood"
	"github.com/brood-go/brood/internal/helperproc"
	"github.com/brood-go/brood/internal/proc"
)

// orphanScript runs under sh -c with a report directory and its first
// parent's pid as $1 and $2: once that parent has exited and it has been
// reparented, it writes its new parent's pid (as its pid namespace sees it)
// to $1/<its pid>, and exits. ($PPID would not do: sh may read it after the
// first parent is gone.)
const orphanScript = `while [ "$(cut -d" " -f4 /proc/$$/stat)" = "$2" ]; do sleep 0.01; done; cut -d" " -f4 /proc/$$/stat > "$1/.$$" && mv "$1/.$$" "$1/$$"`

// orphansMain is a cluster whose workers leave orphans: GET /orphans?n=N runs
// N shells that each start a grandchild (orphanScript, reporting to
// ORPHANS_DIR) and exit at once; GET /zombie starts a child that exits with
// status 4 and is never waited for, and answers its pid. ORPHANS_SUBREAPER=1
// sets Config.Subreaper.
func orphansMain() {
	dir := os.Getenv("ORPHANS_DIR")
	brood.Main(brood.Config{
		Name:        "orphans",
		Listen:      []string{"127.0.0.1:0"},
		Logger:      helperproc.Logger(),
		StopTimeout: 5 * time.Second,
		Subreaper:   os.Getenv("ORPHANS_SUBREAPER") == "1",
		Worker: func(ctx context.Context, p *brood.Process) error {
			mux := http.NewServeMux()
			mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, "worker %d pid %d\n", p.ID(), os.Getpid())
			})
			mux.HandleFunc("/orphans", func(w http.ResponseWriter, r *http.Request) {
				n, _ := strconv.Atoi(r.URL.Query().Get("n"))
				for range n {
					sh := exec.Command("sh", "-c", `sh -c '`+orphanScript+`' orphan "$1" $$ & exit 0`, "child", dir)
					if err := sh.Run(); err != nil {
						http.Error(w, err.Error(), 500)
						return
					}
				}
				fmt.Fprintln(w, "left", n)
			})
			mux.HandleFunc("/zombie", func(w http.ResponseWriter, r *http.Request) {
				z := exec.Command("sh", "-c", "exit 4")
				if err := z.Start(); err != nil { // and never Wait
					http.Error(w, err.Error(), 500)
					return
				}
				fmt.Fprintln(w, z.Process.Pid)
			})
			return brood.ServeHTTP(ctx, p, &http.Server{Handler: mux})
		},
	})
}

// requirePIDNamespace skips the test where unshare cannot make a pid
// namespace (not root, no unshare, a sandbox that forbids it).
func requirePIDNamespace(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: unshare --pid makes a new pid namespace")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("needs unshare (util-linux)")
	}
	out, err := exec.Command("unshare", "--pid", "--fork", "--mount-proc", "true").CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "Operation not permitted") {
			t.Skipf("unshare cannot make a pid namespace here: %s", strings.TrimSpace(string(out)))
		}
		t.Fatalf("unshare --pid --fork --mount-proc true: %v: %s", err, out)
	}
}

// processes returns every process's stat, by pid, as this test sees them.
func processes(t *testing.T) map[int]proc.Stat {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	out := map[int]proc.Stat{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := proc.ReadStat(pid); err == nil {
			out[pid] = st
		}
	}
	return out
}

// childOf returns the one child of pid.
func childOf(t *testing.T, pid int) int {
	t.Helper()
	var kids []int
	for p, st := range processes(t) {
		if st.PPID == pid {
			kids = append(kids, p)
		}
	}
	if len(kids) != 1 {
		t.Fatalf("children of %d: %v, want one", pid, kids)
	}
	return kids[0]
}

// outerPID returns the pid, as this test sees it, of the child of parent
// whose pid in its own namespace is inner (NSpid in /proc/<pid>/status).
func outerPID(t *testing.T, parent, inner int) int {
	t.Helper()
	for p, st := range processes(t) {
		if st.PPID != parent {
			continue
		}
		b, _ := os.ReadFile("/proc/" + strconv.Itoa(p) + "/status")
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 2 && f[0] == "NSpid:" && f[len(f)-1] == strconv.Itoa(inner) {
				return p
			}
		}
	}
	t.Fatalf("no child of %d is pid %d in its namespace", parent, inner)
	return 0
}

// zombiesOf returns the zombies whose parent is pid.
func zombiesOf(t *testing.T, pid int) []int {
	t.Helper()
	var out []int
	for p, st := range processes(t) {
		if st.PPID == pid && st.State == 'Z' {
			out = append(out, p)
		}
	}
	return out
}

// requireNoZombies fails unless pid has no zombie child within d. Reaping
// has no event to wait on from outside, so this polls /proc.
func requireNoZombies(t *testing.T, pid int, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		z := zombiesOf(t, pid)
		if len(z) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("zombie children of pid %d after %v: %v", pid, d, z)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitReaped waits until the master has logged n orphans reaped and
// returns their pids and statuses.
func waitReaped(t *testing.T, c *helperproc.Cluster, n int) map[int]string {
	t.Helper()
	seen := 0
	c.WaitFor(20*time.Second, fmt.Sprintf("%d orphans reaped", n), func(l helperproc.Line) bool {
		if helperproc.MasterMsg("reaped an orphan")(l) {
			seen++
		}
		return seen >= n
	})
	out := map[int]string{}
	for _, l := range c.Lines() {
		if helperproc.MasterMsg("reaped an orphan")(l) {
			out[l.Int("orphan_pid")] = l.Str("status")
		}
	}
	return out
}

// requireOrphansReported checks that each of the n orphans reported being
// reparented to ppid, and that the master reaped each one.
func requireOrphansReported(t *testing.T, dir string, n, ppid int, reaped map[int]string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".") {
			got = append(got, e.Name())
		}
	}
	if len(got) != n {
		t.Fatalf("orphans reported %v, want %d", got, n)
	}
	for _, name := range got {
		b, _ := os.ReadFile(dir + "/" + name)
		if parent := strings.TrimSpace(string(b)); parent != strconv.Itoa(ppid) {
			t.Errorf("orphan %s was reparented to pid %s, want %d", name, parent, ppid)
		}
		if st, ok := reaped[atoi(name)]; !ok || st != "exit status 0" {
			t.Errorf("orphan %s: reaped %v with %q, want reaped with exit status 0 (reaped: %v)", name, ok, st, reaped)
		}
	}
}

// The master as pid 1 of a pid namespace (a container without an init): it
// reaps the orphans its workers leave, the zombie a killed worker leaves
// too, still reports its own children's exits (a kill -9 is "signal:
// killed", and the slot is restarted), and SIGTERM ends it with status 0.
func TestPID1ReapsOrphans(t *testing.T) {
	requirePIDNamespace(t)
	dir := t.TempDir()
	c := helperproc.Start(t, "orphans", []string{"--workers", "2"}, helperproc.Options{
		Wrap: []string{"unshare", "--pid", "--fork", "--mount-proc"},
		Env:  []string{"ORPHANS_DIR=" + dir},
	})
	addr := c.WaitReady(startTimeout)
	if l := c.WaitFor(time.Second, "the reaper's start", helperproc.MasterMsg("reaping orphans")); l.Int("pid") != 1 || l.Str("as") != "pid 1" {
		t.Fatalf("reaper line %s: want pid 1 reaping as pid 1", l.Raw)
	}
	pid1 := childOf(t, c.Cmd.Process.Pid) // the master, as this test sees it

	client, worker := onWorker(t, addr)
	get(t, client, "http://"+addr+"/orphans?n=3")
	reaped := waitReaped(t, c, 3)
	requireOrphansReported(t, dir, 3, 1, reaped)
	requireNoZombies(t, pid1, time.Second)

	// The worker leaves a zombie of its own and is killed: the zombie is
	// reparented to pid 1 and reaped; the worker's exit is still the
	// master's to report.
	zombie := atoi(strings.TrimSpace(get(t, client, "http://"+addr+"/zombie")))
	if err := syscall.Kill(outerPID(t, pid1, worker), syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	l := waitMaster(t, c, "crashed", worker)
	if l.Str("reason") != "signal" || l.Str("detail") != "signal: killed" {
		t.Errorf("crash of worker pid %d: reason %q detail %q, want signal, \"signal: killed\"", worker, l.Str("reason"), l.Str("detail"))
	}
	c.WaitFor(10*time.Second, "the restart", func(l helperproc.Line) bool {
		return helperproc.MasterMsg("restarted")(l) && l.Int("old_pid") == worker
	})
	if st := waitReaped(t, c, 4)[zombie]; st != "exit status 4" {
		t.Errorf("the killed worker's zombie %d: reaped with %q, want exit status 4", zombie, st)
	}
	for range 4 { // both workers serve, the replacement included
		get(t, newConnClient(), "http://"+addr+"/")
	}
	requireNoZombies(t, pid1, time.Second)

	everyone := []int{pid1}
	for p, st := range processes(t) {
		if st.PPID == pid1 {
			everyone = append(everyone, p)
		}
	}
	if err := syscall.Kill(pid1, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := c.Wait(20 * time.Second); code != 0 {
		t.Fatalf("exit status %d (unshare passes on pid 1's), want 0", code)
	}
	requireAllGone(t, everyone, 2*time.Second)
	for _, l := range c.Lines() {
		if l.Str("role") == "master" && strings.Contains(l.Raw, "no child processes") {
			t.Errorf("a wait of the master lost its child: %s", l.Raw)
		}
	}
}

// Config.Subreaper without a pid namespace: the orphans a worker leaves are
// reparented to the master, not to init, and the master reaps them.
func TestSubreaperReapsOrphans(t *testing.T) {
	dir := t.TempDir()
	c := helperproc.Start(t, "orphans", []string{"--workers", "1"}, helperproc.Options{
		Env: []string{"ORPHANS_DIR=" + dir, "ORPHANS_SUBREAPER=1"},
	})
	addr := c.WaitReady(startTimeout)
	if l := c.WaitFor(time.Second, "the reaper's start", helperproc.MasterMsg("reaping orphans")); l.Str("as") != "subreaper" {
		t.Fatalf("reaper line %s: want a subreaper", l.Raw)
	}
	get(t, newConnClient(), "http://"+addr+"/orphans?n=2")
	reaped := waitReaped(t, c, 2)
	requireOrphansReported(t, dir, 2, c.Cmd.Process.Pid, reaped)
	requireNoZombies(t, c.Cmd.Process.Pid, time.Second)
	stopCluster(t, c)
}
