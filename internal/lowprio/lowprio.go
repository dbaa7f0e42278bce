// Package lowprio runs work that must not take the CPU from the application,
// such as gathering and merging metrics for a scrape, on an OS thread of its
// own at the lowest CPU priority Linux has (SCHED_IDLE).
package lowprio

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"

	"golang.org/x/sys/unix"
)

// one is held by the Run under way: one at a time per process (see Run).
var one sync.Mutex

// Run runs f on a goroutine locked to an OS thread of its own whose
// scheduling policy is SCHED_IDLE, and returns once f has returned. The kernel
// gives that thread the CPU only when no other thread wants it, and any
// other thread that wakes preempts it at once. The thread ends with the
// goroutine (Go terminates a thread whose locked goroutine exits, or parks
// it for good if it is the main thread), so the priority never reaches
// other goroutines. Where SCHED_IDLE is refused the thread gets nice 19.
//
// A thread that may wait for the CPU must not hold anything the rest of the
// process needs, or everything would wait with it (priority inversion). Run
// sees to what Go would make others wait for:
//   - A P. Run adds one while f runs if the process has a single one
//     (GOMAXPROCS=1, as brood's workers have when there are as many workers
//     as CPUs), and takes it back after: f never holds the only P. Runs are
//     one at a time per process, so f holds at most one. (A program that
//     calls runtime.GOMAXPROCS itself while a Run is under way may see its
//     value replaced by 1.)
//   - A stop of the world, which waits for every running goroutine, f's
//     included. The collector's are the ones a process cannot avoid, so the
//     collector is paused while f runs (debug.SetGCPercent(-1)) and resumed
//     after: what f allocates is collected once f is done, at normal
//     priority. The pause is bounded: a memory limit of twice what the
//     runtime holds when f starts (at least 64 MiB more; lower if the
//     program set one) still makes the collector run if the rest of the
//     process allocates that much meanwhile. Changes of GOMAXPROCS are made
//     before f starts and after it ends, by the goroutine calling Run.
//
// So f must be bounded work, and must not wait for another Run (it would
// wait forever). A panic in f is raised again in the caller.
func Run(f func()) {
	one.Lock()
	defer one.Unlock()
	restore := prepare()
	defer restore()
	var panicked any
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer func() { panicked = recover() }()
		runtime.LockOSThread() // never unlocked: the thread ends with this goroutine
		setIdle()
		f()
	}()
	<-done
	if panicked != nil {
		panic(panicked)
	}
}

// prepare adds a P if there is only one and pauses the collector, and
// returns what undoes both.
func prepare() (restore func()) {
	bumped := runtime.GOMAXPROCS(0) == 1
	if bumped {
		runtime.GOMAXPROCS(2)
	}
	gc, limit := pauseGC()
	return func() {
		debug.SetGCPercent(gc)
		debug.SetMemoryLimit(limit)
		if bumped {
			runtime.GOMAXPROCS(1)
		}
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

// setIdle gives the calling thread SCHED_IDLE, or nice 19 where that is
// refused. Best effort: the work runs either way.
func setIdle() {
	attr := unix.SchedAttr{Size: unix.SizeofSchedAttr, Policy: unix.SCHED_IDLE}
	if err := unix.SchedSetAttr(0, &attr, 0); err != nil {
		_ = unix.Setpriority(unix.PRIO_PROCESS, unix.Gettid(), 19)
	}
}
