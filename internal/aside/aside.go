// Package aside runs work beside the application's, such as gathering
// metrics for a scrape, on an OS thread and a P of its own: at the lowest CPU
// priority (Idle), so that it takes little CPU anything else wants, or at
// normal priority (Run), for such work that has waited too long.
package aside

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// one is held by the work under way: one at a time per process (see Idle).
var one sync.Mutex

// Idle runs f on a goroutine locked to an OS thread of its own at the lowest
// priority of the normal policy (nice 19), and returns once f has returned.
// The kernel gives that thread about 1.5% of a CPU against a busy thread of
// nice 0, and another thread that wakes preempts it. The thread ends with
// the goroutine (Go terminates a thread whose locked goroutine exits, or
// parks it for good if it is the main thread), so the priority never
// reaches other goroutines.
//
// A thread that may wait for the CPU must not hold anything the rest of the
// process needs, or everything would wait with it (priority inversion). Idle
// sees to what Go would make others wait for:
//   - A P. One is added while work set aside is pending (waiting for its
//     turn or running) if the process has a single one (GOMAXPROCS=1, as
//     brood's workers have when there are as many workers as CPUs), and
//     taken back after: f never holds the only P. Work set aside runs one f
//     at a time per process, so f holds at most one. (A program that calls
//     runtime.GOMAXPROCS itself meanwhile may see its value replaced by 1.)
//   - A stop of the world, which waits for every running goroutine, f's
//     included. The collector's are the ones a process cannot avoid, so the
//     collector is paused while work set aside is pending
//     (debug.SetGCPercent(-1)) and resumed after: what f allocates is
//     collected once it is done, at normal priority. The pause is bounded: a
//     memory limit of twice what the runtime holds when it starts (at least
//     64 MiB more; lower if the program set one) still makes the collector
//     run if the process allocates that much meanwhile. These settings
//     change only while no f runs, by a goroutine calling Idle.
//
// So f must be bounded work, and must not wait for other work set aside (it
// would wait forever). On a machine with no CPU to spare f may wait long:
// callers with a deadline use IdleBy, or Run for work that has been late
// before. A panic in f is raised again in the caller.
func Idle(f func()) { run(f, true, nil) }

// Run runs f as Idle does (on an OS thread of its own, in its turn, with the
// extra P a single-P process needs and the collector paused) but at normal
// priority: f never holds the P the rest of the process runs on, and
// competes for the CPU as any thread does.
func Run(f func()) { run(f, false, nil) }

// IdleBy returns f's result, computed at idle priority (as Idle does) if
// that is done by deadline, or else by the caller at its own priority: a
// hedge, so that work set aside for idle CPU is never late because a
// machine has none to spare. The idle run is not stopped (it uses only CPU
// nothing else wants) and its result is then dropped; an idle run still
// waiting for its turn then never begins. So f must be safe to run twice at
// once, have no effect but its result, and give the same result either way.
func IdleBy[T any](deadline time.Time, f func() T) T {
	res := make(chan T, 1) // the idle run never waits for a reader
	var late atomic.Bool   // an idle run that has not begun by then is dropped
	go run(func() { res <- f() }, true, &late)
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case r := <-res:
		return r
	case <-t.C:
		late.Store(true)
		return f()
	}
}

// run is Idle or Run; it does nothing if skip is set once it is f's turn.
func run(f func(), idle bool, skip *atomic.Bool) {
	hold()
	defer release()
	one.Lock()
	defer one.Unlock()
	if skip != nil && skip.Load() {
		return
	}
	var panicked any
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() { panicked = recover() }()
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		if idle {
			setIdle()
		}
		f()
	}()
	<-done
	if panicked != nil {
		panic(panicked)
	}
}

// The process's settings while work set aside is pending (waiting for its
// turn or running): one more P if it had one, the collector paused. They
// change only when nothing set aside is running, so the goroutine changing
// them (and the stop of the world GOMAXPROCS makes) never waits for an idle
// thread.
var (
	mu      sync.Mutex
	pending int    // run calls not yet returned
	restore func() // undoes the settings, once pending is back to 0
)

func hold() {
	mu.Lock()
	defer mu.Unlock()
	if pending++; pending > 1 {
		return
	}
	bumped := runtime.GOMAXPROCS(0) == 1
	if bumped {
		runtime.GOMAXPROCS(2)
	}
	gc, limit := pauseGC()
	restore = func() {
		debug.SetGCPercent(gc)
		debug.SetMemoryLimit(limit)
		if bumped {
			runtime.GOMAXPROCS(1)
		}
	}
}

func release() {
	mu.Lock()
	defer mu.Unlock()
	if pending--; pending == 0 {
		restore()
		restore = nil
	}
}

// pauseGC turns the collector off but for a memory limit of what the Go
// runtime holds now plus as much again (at least minHeadroom), or the
// program's own limit if that is lower: the rest of the process may go on
// allocating while f runs, and a pause must not let its heap grow without
// bound. It returns the settings to restore.
func pauseGC() (gcPercent int, limit int64) {
	samples := []metrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	metrics.Read(samples)
	held := int64(samples[0].Value.Uint64() - samples[1].Value.Uint64())
	limit = debug.SetMemoryLimit(-1) // reads it
	debug.SetMemoryLimit(min(limit, held+max(held, minHeadroom)))
	return debug.SetGCPercent(-1), limit
}

// minHeadroom is the least a paused collector lets the process allocate.
const minHeadroom = 64 << 20

// setIdle gives the calling thread the lowest nice value, 19.
//
// Not SCHED_IDLE, though it yields better still (the messenger's tail while
// scraping was about half of nice 19's): a thread cannot leave SCHED_IDLE
// without CAP_SYS_NICE, and a process does not end until each of its threads
// has run once more to exit. With every CPU busy a SCHED_IDLE thread waits
// seconds for that (measured: 5 s with three busy loops on two CPUs, against
// 0.4-0.7 s at nice 19 and 0.25 s at nice 0), so a stop would overrun its
// timeout. Best effort: if refused, the work runs at normal priority.
func setIdle() {
	_ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19)
}
