package aside

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// policy is the calling thread's scheduling policy.
func policy(t *testing.T) uint32 {
	t.Helper()
	attr, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		t.Fatalf("sched_getattr: %v", err)
	}
	return attr.Policy
}

// nice is the calling thread's nice value.
func nice(t *testing.T) int {
	t.Helper()
	attr, err := unix.SchedGetAttr(0, 0)
	if err != nil {
		t.Fatalf("sched_getattr: %v", err)
	}
	return int(int32(attr.Nice))
}

// f runs at nice 19 on a thread of its own, and the caller's thread keeps
// its priority.
func TestRunIsIdleOnItsOwnThread(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	caller, callerNice := unix.Gettid(), nice(t)
	var tid, got int
	Idle(func() { tid, got = unix.Gettid(), nice(t) })
	if got != 19 {
		t.Errorf("nice inside Idle = %d, want 19", got)
	}
	if tid == caller {
		t.Errorf("f ran on the caller's thread %d", tid)
	}
	if n := nice(t); n != callerNice {
		t.Errorf("the caller's nice changed: %d, was %d", n, callerNice)
	}
}

// The thread f ran on ends with it: no other goroutine ever runs at the low
// priority. (The main thread cannot end: the runtime parks it for good
// instead, which is as safe.)
func TestRunThreadEnds(t *testing.T) {
	var tid int
	Idle(func() { tid = unix.Gettid() })
	if tid == unix.Getpid() {
		t.Skip("f ran on the main thread, which the runtime parks for good")
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) { // the runtime ends it just after the goroutine
		if _, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", tid)); os.IsNotExist(err) {
			return
		}
		runtime.Gosched()
	}
	t.Errorf("thread %d of Idle's goroutine is still alive", tid)
}

// With one P, f gets a second one (it never holds the only P), and the
// process has one again after; the collector is off while f runs, bounded
// by a memory limit, and both settings are back after.
func TestRunSettingsRestored(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	defer debug.SetGCPercent(debug.SetGCPercent(150))
	var procs, gc int
	var limit int64
	Idle(func() {
		procs = runtime.GOMAXPROCS(0)
		gc = debug.SetGCPercent(-1)
		limit = debug.SetMemoryLimit(-1)
	})
	if procs != 2 {
		t.Errorf("GOMAXPROCS inside Idle = %d, want 2 (one added to the process's 1)", procs)
	}
	if gc != -1 {
		t.Errorf("GC percent inside Idle = %d, want -1 (paused)", gc)
	}
	if limit == math.MaxInt64 || limit < minHeadroom {
		t.Errorf("memory limit inside Idle = %d, want a bound of at least %d", limit, minHeadroom)
	}
	if p := runtime.GOMAXPROCS(0); p != 1 {
		t.Errorf("GOMAXPROCS after Idle = %d, want 1", p)
	}
	if g := debug.SetGCPercent(150); g != 150 {
		t.Errorf("GC percent after Idle = %d, want 150", g)
	}
	if l := debug.SetMemoryLimit(-1); l != math.MaxInt64 {
		t.Errorf("memory limit after Idle = %d, want none", l)
	}
}

// A program's own lower memory limit is kept while f runs.
func TestRunKeepsLowerMemoryLimit(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(32 << 20))
	var limit int64
	Idle(func() { limit = debug.SetMemoryLimit(-1) })
	if limit != 32<<20 {
		t.Errorf("memory limit inside Idle = %d, want the program's 32 MiB", limit)
	}
}

// With more than one P nothing is added.
func TestRunNoExtraP(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(3))
	var procs int
	Idle(func() { procs = runtime.GOMAXPROCS(0) })
	if procs != 3 {
		t.Errorf("GOMAXPROCS inside Idle = %d, want the process's 3", procs)
	}
}

// Runs are one at a time; a panic in f reaches the caller, and the settings
// are restored all the same.
func TestRunOneAtATimeAndPanics(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var mu sync.Mutex
	inside, most := 0, 0
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			Idle(func() {
				mu.Lock()
				inside++
				most = max(most, inside)
				mu.Unlock()
				runtime.Gosched()
				mu.Lock()
				inside--
				mu.Unlock()
			})
		})
	}
	wg.Wait()
	if most != 1 {
		t.Errorf("%d Idles were under way at once, want 1", most)
	}
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Errorf("recovered %v, want the panic from f", r)
			}
		}()
		Idle(func() { panic("boom") })
	}()
	if p := runtime.GOMAXPROCS(0); p != 1 {
		t.Errorf("GOMAXPROCS after a panicking Idle = %d, want 1", p)
	}
	Idle(func() {}) // not left locked
}

// Run sets things as Idle does, but leaves the thread's priority alone.
func TestRunNormal(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var procs, n int
	var pol uint32
	Run(func() { procs, pol, n = runtime.GOMAXPROCS(0), policy(t), nice(t) })
	if procs != 2 {
		t.Errorf("GOMAXPROCS inside Run = %d, want 2", procs)
	}
	if pol != unix.SCHED_NORMAL || n != 0 {
		t.Errorf("policy inside Run = %d nice %d, want SCHED_NORMAL nice 0", pol, n)
	}
	if p := runtime.GOMAXPROCS(0); p != 1 {
		t.Errorf("GOMAXPROCS after Run = %d, want 1", p)
	}
}

// IdleBy returns the idle run's result when it is done in time, and the
// caller's own run's when it is not.
func TestIdleBy(t *testing.T) {
	got := IdleBy(time.Now().Add(time.Minute), func() int { return nice(t) })
	if got != 19 {
		t.Errorf("IdleBy with time to spare ran f at nice %d, want 19", got)
	}
	release := make(chan struct{})
	got = IdleBy(time.Now().Add(10*time.Millisecond), func() int {
		n := nice(t)
		if n == 19 {
			<-release // the idle run: late
		}
		return n
	})
	if got == 19 {
		t.Errorf("IdleBy past its deadline returned the idle run's result")
	}
	close(release)  // the idle run ends: goleak checks it
	Idle(func() {}) // and waits for it: work set aside runs one at a time
}
