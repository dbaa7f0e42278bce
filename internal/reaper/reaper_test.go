package reaper

import (
	"errors"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"github.com/brood-go/brood/internal/proc"
	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

// The tests make the test process a subreaper: the orphans of the shells
// they start come back to it, as they come to a master.

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func start(t *testing.T, opts Options) *Reaper {
	t.Helper()
	r, err := Start(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

// zombieChildren lists the zombies whose parent is this process.
func zombieChildren(t *testing.T) []int {
	t.Helper()
	z, err := (&Reaper{self: os.Getpid()}).zombies()
	if err != nil {
		t.Fatal(err)
	}
	return z
}

// waitFor polls cond until it holds or the deadline passes: reaping has no
// event of its own to wait on.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// orphanScript is run by sh -c with the report directory and its first
// parent's pid as $1 and $2: once reparented, it writes its new parent's pid
// to $1/<its pid> and exits. ($PPID would not do: the first parent may be
// gone already when sh reads it.)
const orphanScript = `while [ "$(cut -d" " -f4 /proc/$$/stat)" = "$2" ]; do sleep 0.01; done; cut -d" " -f4 /proc/$$/stat > "$1/$$"`

// Many children, each leaving an orphan behind and exiting with its own
// code: every orphan is reparented here and reaped, and every child's Wait
// still gets its status.
func TestReapsOrphansNotOwnChildren(t *testing.T) {
	r := start(t, Options{Subreaper: true})
	const n = 40
	dir := t.TempDir()
	cmds := make([]*exec.Cmd, n)
	for i := range cmds {
		script := `sh -c '` + orphanScript + `' orphan "$1" $$ & exit ` + strconv.Itoa(i%7)
		cmd := exec.Command("sh", "-c", script, "child", dir)
		if err := r.Own(func() (int, error) {
			if err := cmd.Start(); err != nil {
				return 0, err
			}
			return cmd.Process.Pid, nil
		}); err != nil {
			t.Fatal(err)
		}
		cmds[i] = cmd
	}
	for i, cmd := range cmds {
		err := cmd.Wait()
		r.Forget(cmd.Process.Pid)
		var ee *exec.ExitError
		if got := cmd.ProcessState.ExitCode(); got != i%7 || (err != nil && !errors.As(err, &ee)) {
			t.Errorf("child %d: Wait: %v, exit code %d, want %d", i, err, got, i%7)
		}
	}
	waitFor(t, 20*time.Second, "every orphan reaped", func() bool { return r.Reaped() >= n })
	if z := zombieChildren(t); len(z) > 0 {
		t.Errorf("zombies left: %v", z)
	}
	ents, err := os.ReadDir(dir)
	if err != nil || len(ents) != n {
		t.Fatalf("%d orphans reported (%v), want %d", len(ents), err, n)
	}
	for _, e := range ents {
		b, _ := os.ReadFile(dir + "/" + e.Name())
		if ppid, _ := strconv.Atoi(string(b[:len(b)-1])); ppid != os.Getpid() {
			t.Errorf("orphan %s was reparented to %s, want this process (%d)", e.Name(), b, os.Getpid())
		}
	}
}

// A child that exits before Own has registered it is a zombie the reaper
// sees, and must leave alone: here the scan lists it while Own still runs.
func TestOwnedBeforeRegistered(t *testing.T) {
	listed, quit := make(chan []int), make(chan struct{})
	testHookListed = func(z []int) {
		select {
		case listed <- z:
		case <-quit:
		}
	}
	t.Cleanup(func() { testHookListed = nil }) // after Stop
	r := start(t, Options{Sweep: time.Millisecond})
	t.Cleanup(func() { close(quit) }) // before Stop
	for range 5 {
		// An empty scan first: the reaper holds no listing of an earlier
		// child, on which it would wait for the lock that Own holds.
		for z := range listed {
			if len(z) == 0 {
				break
			}
		}
		cmd := exec.Command("sh", "-c", "exit 3")
		err := r.Own(func() (int, error) {
			if err := cmd.Start(); err != nil {
				return 0, err
			}
			pid := cmd.Process.Pid
			deadline := time.After(10 * time.Second)
			for { // until the reaper has listed it as a zombie
				select {
				case z := <-listed:
					for _, p := range z {
						if p == pid {
							return pid, nil
						}
					}
				case <-deadline:
					t.Errorf("the reaper never listed zombie %d", pid)
					return pid, nil
				}
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		err = cmd.Wait()
		r.Forget(cmd.Process.Pid)
		if code := cmd.ProcessState.ExitCode(); code != 3 {
			t.Fatalf("Wait: %v, exit code %d, want 3 (the reaper took the status?)", err, code)
		}
	}
	if n := r.Reaped(); n != 0 {
		t.Errorf("reaped %d, want 0: only owned children exited", n)
	}
}

// A zombie that was already one when it was reparented (its parent never
// waited) is reaped too: here the test's own child leaves it and dies.
func TestReapsZombieReparented(t *testing.T) {
	r := start(t, Options{Subreaper: true})
	// sh starts a child and execs sleep, which never waits for it; the kill
	// then reparents the zombie.
	cmd := exec.Command("sh", "-c", `sh -c 'exit 5' & exec sleep 100`)
	if err := r.Own(func() (int, error) {
		if err := cmd.Start(); err != nil {
			return 0, err
		}
		return cmd.Process.Pid, nil
	}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the grandchild to become a zombie of sleep", func() bool {
		for _, name := range mustChildren(t, cmd.Process.Pid) {
			if st, err := proc.ReadStat(name); err == nil && st.State == 'Z' {
				return true
			}
		}
		return false
	})
	cmd.Process.Kill()
	cmd.Wait()
	r.Forget(cmd.Process.Pid)
	waitFor(t, 10*time.Second, "the reparented zombie reaped", func() bool { return r.Reaped() == 1 })
	if z := zombieChildren(t); len(z) > 0 {
		t.Errorf("zombies left: %v", z)
	}
}

func mustChildren(t *testing.T, pid int) []int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if st, err := proc.ReadStat(p); err == nil && st.PPID == pid {
			out = append(out, p)
		}
	}
	return out
}

func TestStopClearsSubreaper(t *testing.T) {
	r, err := Start(Options{Subreaper: true})
	if err != nil {
		t.Fatal(err)
	}
	if v := subreaper(t); v != 1 {
		t.Fatalf("PR_GET_CHILD_SUBREAPER %d while running, want 1", v)
	}
	r.Stop()
	r.Stop() // idempotent
	if v := subreaper(t); v != 0 {
		t.Fatalf("PR_GET_CHILD_SUBREAPER %d after Stop, want 0", v)
	}
}

func subreaper(t *testing.T) int32 {
	t.Helper()
	var v int32
	if err := unix.Prctl(unix.PR_GET_CHILD_SUBREAPER, uintptr(unsafe.Pointer(&v)), 0, 0, 0); err != nil {
		t.Fatal(err)
	}
	return v
}

// A nil Reaper (reaping off) still starts processes.
func TestNilReaper(t *testing.T) {
	var r *Reaper
	cmd := exec.Command("true")
	if err := r.Own(func() (int, error) { return 0, cmd.Start() }); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	r.Forget(cmd.Process.Pid)
	r.Stop()
}

// The threads' children lists and a scan of /proc find the same children:
// running ones and zombies alike.
func TestChildrenListsMatchProcScan(t *testing.T) {
	var cmds []*exec.Cmd
	for range 3 {
		c := exec.Command("sleep", "30")
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, c)
	}
	exited := exec.Command("true")
	if err := exited.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, c := range cmds {
			c.Process.Kill()
			c.Wait()
		}
		exited.Wait()
	})
	want := []int{exited.Process.Pid}
	for _, c := range cmds {
		want = append(want, c.Process.Pid)
	}
	slices.Sort(want)
	r := &Reaper{self: os.Getpid()}
	kids, err := r.children()
	if errors.Is(err, errNoChildrenFiles) {
		t.Skip("this kernel has no /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN)")
	}
	if err != nil {
		t.Fatal(err)
	}
	all, err := allProcesses()
	if err != nil {
		t.Fatal(err)
	}
	var scanned []int
	for _, pid := range all {
		if st, err := proc.ReadStat(pid); err == nil && st.PPID == r.self {
			scanned = append(scanned, pid)
		}
	}
	slices.Sort(kids)
	slices.Sort(scanned)
	if !slices.Equal(kids, want) || !slices.Equal(scanned, want) {
		t.Fatalf("children lists %v, /proc scan %v, want %v", kids, scanned, want)
	}
	waitFor(t, 5*time.Second, "the exited child to be a zombie", func() bool {
		return slices.Contains(zombieChildren(t), exited.Process.Pid)
	})
}

// A scan of this process's children against one of all of /proc (what the
// reaper did before): the first grows with the children, the second with the
// host's processes.
func BenchmarkZombies(b *testing.B) {
	r := &Reaper{self: os.Getpid()}
	if _, err := r.children(); err != nil {
		b.Skip(err)
	}
	procs, _ := allProcesses()
	b.Logf("%d processes on this host", len(procs))
	b.Run("children", func(b *testing.B) {
		for b.Loop() {
			if _, err := r.zombies(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("proc-scan", func(b *testing.B) {
		for b.Loop() {
			pids, err := allProcesses()
			if err != nil {
				b.Fatal(err)
			}
			for _, pid := range pids {
				proc.ReadStat(pid)
			}
		}
	})
}
