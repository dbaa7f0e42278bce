package brood

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"sync"
	"time"
)

// Role is the part a process plays in the cluster.
type Role int

// Roles.
const (
	// Master manages the other processes and relays their messages; it runs no
	// user code. Messages from the master (the brood:* events) carry this role.
	Master Role = iota + 1
	// Agent is the single background process (Egg's agent).
	Agent
	// Worker serves requests on the shared listeners (Egg's app worker).
	Worker
)

// String returns "master", "agent" or "worker".
func (r Role) String() string {
	switch r {
	case Master:
		return "master"
	case Agent:
		return "agent"
	case Worker:
		return "worker"
	}
	return fmt.Sprintf("role(%d)", int(r))
}

// Process is the handle the user's Agent or Worker function gets: who it is, its
// listeners, its messenger, and the hooks that tie it into supervision.
type Process struct {
	role      Role
	id        int
	pid       int
	name      string
	single    bool
	listeners []net.Listener
	messenger *Messenger
	fleet     *Fleet
	log       *slog.Logger
	stopTime  time.Duration

	readyOnce sync.Once
	readyCh   chan struct{}
	onReady   func()

	ctx        context.Context
	stop       context.CancelCauseFunc
	goroutines sync.WaitGroup
	onFault    func(reason string) // a guarded panic happened

	runSchedule func(name string) error // set in the agent
	logs        *logRegistry
}

// Role reports whether this is the agent or a worker.
func (p *Process) Role() Role { return p.role }

// ID is the worker's slot, 1..Workers; 0 for the agent. A replacement process
// takes the slot of the one it replaces.
func (p *Process) ID() int { return p.id }

// PID is the address other processes use to reach this one (SendTo, Request,
// Message.From): the OS pid in a cluster. In single-process mode every role
// shares one OS process, so each gets a virtual pid above the kernel's pid_max.
func (p *Process) PID() int { return p.pid }

// Name is Config.Name.
func (p *Process) Name() string { return p.name }

// Single reports whether the process runs in single-process mode.
func (p *Process) Single() bool { return p.single }

// Listeners returns the listeners inherited from the master, in Config.Listen
// order. The agent has none. Closing one closes only this process's descriptor:
// the socket stays open in the master and the other workers.
func (p *Process) Listeners() []net.Listener { return p.listeners }

// Messenger returns the process's messenger.
func (p *Process) Messenger() *Messenger { return p.messenger }

// Logger returns a logger whose lines carry this process's role, id and pid.
func (p *Process) Logger() *slog.Logger { return p.log }

// Ready tells the master that this process has finished initialising. The master
// starts workers only once the agent is ready, and sends brood:ready to everyone
// once every process is. Messages addressed to this process are delivered to its
// handlers only after Ready, so register handlers first. Ready is idempotent.
func (p *Process) Ready() {
	p.readyOnce.Do(func() {
		close(p.readyCh)
		if p.onReady != nil {
			p.onReady()
		}
	})
}

// Go runs f in a guarded goroutine: ctx is cancelled when the process is asked to
// stop, and the process waits for f to return (up to Config.StopTimeout) before it
// exits. A panic in f is recovered and logged with its stack, as Egg's
// uncaughtException handler does; then a worker, now in an unknown state, is
// replaced gracefully (it stops accepting, a new worker starts, it drains and
// exits), while the agent keeps running.
func (p *Process) Go(f func(ctx context.Context)) {
	p.goroutines.Add(1)
	go func() {
		defer p.goroutines.Done()
		defer p.recoverGuarded("goroutine started by Process.Go", "")
		f(p.ctx)
	}()
}

// recoverGuarded is deferred (directly: recover only works there) around user
// code: a panic becomes a guarded fault.
func (p *Process) recoverGuarded(where, detail string) {
	if r := recover(); r != nil {
		if detail != "" {
			where += fmt.Sprintf(" %q", detail)
		}
		p.fault(fmt.Sprintf("panic in %s: %v", where, r), debug.Stack())
	}
}

func (p *Process) fault(reason string, stack []byte) {
	p.log.Error("guarded panic", "reason", reason, "stack", string(stack))
	if p.onFault != nil {
		p.onFault(reason)
	}
}

func newProcess(ctx context.Context, role Role, id, pid int, name string, log *slog.Logger) *Process {
	p := &Process{role: role, id: id, pid: pid, name: name, readyCh: make(chan struct{})}
	p.fleet = &Fleet{p: p}
	p.log = log.With("role", role.String(), "id", id, "pid", os.Getpid())
	p.ctx, p.stop = context.WithCancelCause(ctx)
	return p
}
