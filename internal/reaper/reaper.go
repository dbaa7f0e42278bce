// Package reaper waits for the orphans reparented to this process, as pid 1
// of a pid namespace (a container without an init) or as a child subreaper
// (PR_SET_CHILD_SUBREAPER), without ever waiting for a child the process
// started itself: that child's exit status belongs to whoever started it
// (exec.Cmd.Wait), and a reaper that took it would make that Wait fail with
// ECHILD (the bug of wait4(-1) reapers: ramr/go-reaper #2 and #11).
//
// So the reaper never calls wait4(-1). On SIGCHLD, on Forget and on a slow
// sweep it lists the zombies among this process's children (see zombies), and waits
// with wait4(pid, WNOHANG) for each one it does not own. A pid is owned from
// before its fork until its Wait has returned: Own holds the reaper's lock
// across the start and the registration, the reaper holds the same lock from
// the ownership check to its wait4, and the owner calls Forget only after
// Wait. A child that exits between its fork and its registration, or whose
// Wait has yet to run, is therefore never reaped here. The listing itself
// runs outside the lock (forks do not wait for a scan of /proc): a zombie
// listed there stays a zombie until somebody waits for it, and the only other
// waiter is its owner, so a pid found unowned under the lock is an orphan.
//
// Caveats: a process that the program starts without Own (its own os/exec
// beside the supervisor) looks like an orphan and its Wait would fail; and
// /proc must be the one of this process's pid namespace (a container's is),
// which Start checks.
package reaper

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/brood-go/brood/internal/proc"
	"golang.org/x/sys/unix"
)

// DefaultSweep is the interval of the safety sweep. SIGCHLD and Forget
// already trigger a scan whenever there can be a new zombie; the sweep only
// bounds how long one could stay if a scan failed (a transient EMFILE).
const DefaultSweep = 10 * time.Second

// Options configure Start.
type Options struct {
	// Subreaper sets PR_SET_CHILD_SUBREAPER while the reaper runs, so that the
	// orphans of this process's descendants are reparented here instead of to
	// init. Pid 1 needs it not: it is every orphan's parent already.
	Subreaper bool
	// Logger gets a debug record for each orphan reaped. Nil discards.
	Logger *slog.Logger
	// Sweep is the interval of the safety sweep; 0 means DefaultSweep.
	Sweep time.Duration
}

// Reaper reaps orphans until Stop. A nil *Reaper is valid: Own runs start
// and Forget does nothing, so callers need not care whether reaping is on.
type Reaper struct {
	log       *slog.Logger
	self      int
	subreaper bool
	sweep     time.Duration

	mu  sync.Mutex // held across Own's start and registration, and from the ownership check to wait4
	own map[int]struct{}

	kick     chan struct{}
	sigs     chan os.Signal
	stop     chan struct{}
	done     chan struct{}
	stopOnce sync.Once
	reaped   atomic.Int64
}

// testHookListed, if set, is called with each scan's zombies (none
// included) before the reaper takes its lock to wait for them.
var testHookListed func(zombies []int)

// Start begins reaping. It fails if /proc does not show this process under
// its own pid (a /proc of another pid namespace) or if PR_SET_CHILD_SUBREAPER
// cannot be set; nothing runs then.
func Start(opts Options) (*Reaper, error) {
	self := os.Getpid()
	if link, err := os.Readlink("/proc/self"); err != nil || link != strconv.Itoa(self) {
		return nil, fmt.Errorf("reaper: /proc/self is %q (%v), not pid %d: /proc belongs to another pid namespace, so orphans cannot be found", link, err, self)
	}
	r := &Reaper{
		log: opts.Logger, self: self, subreaper: opts.Subreaper, sweep: opts.Sweep,
		own:  map[int]struct{}{},
		kick: make(chan struct{}, 1), sigs: make(chan os.Signal, 1),
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.sweep <= 0 {
		r.sweep = DefaultSweep
	}
	// Notify before anything can be reparented here, so no SIGCHLD is missed;
	// the first scan then finds whatever came before.
	signal.Notify(r.sigs, syscall.SIGCHLD)
	if r.subreaper {
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			signal.Stop(r.sigs)
			return nil, fmt.Errorf("reaper: PR_SET_CHILD_SUBREAPER: %w", err)
		}
	}
	go r.run()
	return r, nil
}

// Own runs start, which starts a process and returns its pid, and owns that
// pid until Forget: the reaper leaves its exit status to its Wait. The lock
// is held throughout, so the process cannot be reaped between its fork and
// its registration, however fast it exits.
func (r *Reaper) Own(start func() (pid int, err error)) error {
	if r == nil {
		_, err := start()
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	pid, err := start()
	if err == nil {
		r.own[pid] = struct{}{}
	}
	return err
}

// Forget gives up pid once its owner's Wait has returned (never before: the
// zombie would be reaped here and that Wait fail). A zombie the reaper skipped
// because its pid was still owned, a new process under a recycled pid, is
// found by the scan Forget triggers.
func (r *Reaper) Forget(pid int) {
	if r == nil {
		return
	}
	r.mu.Lock()
	delete(r.own, pid)
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Reaped returns how many orphans have been reaped.
func (r *Reaper) Reaped() int64 { return r.reaped.Load() }

// Stop ends reaping, clears PR_SET_CHILD_SUBREAPER if Start set it, and
// reaps the zombies left. Orphans still running stay this process's children;
// once it has stopped, nothing waits for them.
func (r *Reaper) Stop() {
	if r == nil {
		return
	}
	r.stopOnce.Do(func() {
		close(r.stop)
		<-r.done
		signal.Stop(r.sigs)
		if r.subreaper {
			if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0); err != nil {
				r.log.Warn("clear PR_SET_CHILD_SUBREAPER", "err", err)
			}
		}
		r.reap()
	})
}

func (r *Reaper) run() {
	defer close(r.done)
	t := time.NewTicker(r.sweep)
	defer t.Stop()
	for {
		r.reap()
		select {
		case <-r.stop:
			return
		case <-r.sigs:
		case <-r.kick:
		case <-t.C:
		}
	}
}

// reap waits for every zombie child of this process that is not owned.
func (r *Reaper) reap() {
	zombies, err := r.zombies()
	if err != nil {
		r.log.Warn("reaper: list processes", "err", err)
	}
	if testHookListed != nil {
		testHookListed(zombies)
	}
	if len(zombies) == 0 {
		return
	}
	type reaped struct {
		pid    int
		status syscall.WaitStatus
	}
	var done []reaped
	r.mu.Lock()
	for _, pid := range zombies {
		if _, owned := r.own[pid]; owned {
			continue
		}
		var ws syscall.WaitStatus
		got, err := syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		for errors.Is(err, syscall.EINTR) {
			got, err = syscall.Wait4(pid, &ws, syscall.WNOHANG, nil)
		}
		if err == nil && got == pid {
			done = append(done, reaped{pid, ws})
		}
	}
	r.mu.Unlock()
	r.reaped.Add(int64(len(done)))
	for _, d := range done {
		r.log.Debug("reaped an orphan", "orphan_pid", d.pid, "status", proc.DescribeStatus(d.status))
	}
}

// zombies lists the zombies whose parent is this process. It reads the
// children of each of its threads (/proc/PID/task/TID/children, where the
// kernel has CONFIG_PROC_CHILDREN), so a scan costs in proportion to this
// process's children, not to every process on the host (a subreaper outside a
// container shares /proc with the whole machine). Without those files it
// scans /proc.
//
// The kernel's children lists can miss a child while others are being
// created or reaped as they are read. A zombie missed so is found by the
// next scan: the owner's Forget after its Wait triggers one, and the sweep
// bounds the wait otherwise.
func (r *Reaper) zombies() ([]int, error) {
	pids, err := r.children()
	if errors.Is(err, errNoChildrenFiles) {
		pids, err = allProcesses()
	}
	if err != nil {
		return nil, err
	}
	var out []int
	for _, pid := range pids {
		st, err := proc.ReadStat(pid)
		if err == nil && st.State == 'Z' && st.PPID == r.self {
			out = append(out, pid)
		}
	}
	return out, nil
}

// errNoChildrenFiles: the kernel has no /proc/PID/task/TID/children.
var errNoChildrenFiles = errors.New("no /proc children files")

// children lists the children of every thread of this process.
func (r *Reaper) children() ([]int, error) {
	dir := "/proc/" + strconv.Itoa(r.self) + "/task/"
	tids, err := readNames(dir)
	if err != nil {
		return nil, err
	}
	var out []int
	found := false
	for _, tid := range tids {
		b, err := os.ReadFile(dir + tid + "/children")
		if err != nil {
			continue // the thread has exited, or the kernel has no such file
		}
		found = true
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				out = append(out, pid)
			}
		}
	}
	if !found {
		return nil, errNoChildrenFiles
	}
	return out, nil
}

// allProcesses lists the pids in /proc.
func allProcesses() ([]int, error) {
	names, err := readNames("/proc")
	if err != nil {
		return nil, err
	}
	var out []int
	for _, name := range names {
		if pid, err := strconv.Atoi(name); err == nil {
			out = append(out, pid)
		}
	}
	return out, nil
}

func readNames(dir string) ([]string, error) {
	d, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Readdirnames(-1)
}
