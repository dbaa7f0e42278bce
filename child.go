package brood

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"syscall"
	"time"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/listener"
	"github.com/brood-go/brood/internal/proc"
	"github.com/brood-go/brood/internal/wire"
)

// The environment contract between the master and a child is defined in
// package wire (wire.Env*): the child reads the variables and removes them
// from its environment, so programs it starts are not mistaken for brood
// children.

// isChild reports whether this process was started by a brood master.
func isChild() bool { return os.Getenv(wire.EnvRole) != "" }

// childSpec says which child to run and how it is connected.
type childSpec struct {
	role      Role
	id        int
	pid       uint32 // messenger address
	conn      net.Conn
	listeners []net.Listener
	single    bool
	metrics   bool // the master serves /metrics: answer gathers, send the last one at exit
	masterPID uint32
	fleetNode string        // this member's node id, if the cluster is in a fleet
	protocol  int           // the IPC protocol version spoken with the master (0: this build's newest)
	direct    *net.UnixConn // the channel socket the master offers direct channels on; nil: none
}

// childFromEnv reads (and removes) the contract variables and opens the
// inherited descriptors.
func childFromEnv(cfg *Config) (childSpec, error) {
	get := func(k string) string {
		v := os.Getenv(k)
		os.Unsetenv(k)
		return v
	}
	var cs childSpec
	switch r := get(wire.EnvRole); r {
	case "agent":
		cs.role = Agent
	case "worker":
		cs.role = Worker
	default:
		return cs, fmt.Errorf("brood: %s=%q: want agent or worker", wire.EnvRole, r)
	}
	var err error
	if cs.id, err = strconv.Atoi(get(wire.EnvID)); err != nil {
		return cs, fmt.Errorf("brood: %s: %w", wire.EnvID, err)
	}
	var protoErr error
	cs.protocol, protoErr = negotiateProtocol(get(wire.EnvProtocol), get(wire.EnvProtocolMax))
	if pid, err := strconv.ParseUint(get(wire.EnvMasterPID), 10, 32); err == nil {
		cs.masterPID = uint32(pid)
	}
	cs.fleetNode = get(wire.EnvFleetNode)
	directFD := get(wire.EnvDirectFD)
	cs.metrics = get(wire.EnvMetrics) == "1"
	if v := os.Getenv(wire.EnvName); v != "" {
		cfg.Name = v
	}
	if v := os.Getenv(wire.EnvStopTimeout); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			cfg.StopTimeout = d
		}
	}
	fd, err := strconv.Atoi(get(wire.EnvIPCFD))
	if err != nil {
		return cs, fmt.Errorf("brood: %s: %w", wire.EnvIPCFD, err)
	}
	n, err := strconv.Atoi(get(wire.EnvListenFDs))
	if err != nil {
		return cs, fmt.Errorf("brood: %s: %w", wire.EnvListenFDs, err)
	}
	cs.pid = uint32(os.Getpid())
	if cs.conn, err = proc.ConnFromFD(fd, "brood ipc"); err != nil {
		return cs, fmt.Errorf("brood: %w", err)
	}
	if protoErr != nil {
		refuseProtocol(cs, protoErr)
		cs.conn.Close()
		return cs, protoErr
	}
	if directFD != "" {
		if cs.direct, err = directConn(directFD); err != nil {
			cs.conn.Close()
			return cs, err
		}
		if cs.protocol < ipc.DirectVersion {
			cs.direct.Close() // this master makes no channels for a protocol this old
			cs.direct = nil
		}
	}
	if cs.protocol < ipc.FleetVersion {
		cs.fleetNode = "" // the fleet needs a newer protocol than this master's: fleet sends fail with ErrNoFleet
	}
	fds := make([]int, n)
	for i := range fds {
		fds[i] = fd + 1 + i
	}
	if cs.listeners, err = listener.Inherit(fds); err != nil {
		cs.conn.Close()
		return cs, fmt.Errorf("brood: %w", err)
	}
	return cs, nil
}

// runChildProcess is the whole life of a child process started by the master:
// it returns when the process should exit. ctx, SIGTERM and the loss of the
// master each start a graceful stop.
func runChildProcess(ctx context.Context, cfg Config) error {
	cs, err := childFromEnv(&cfg)
	if err != nil {
		// Nothing of the child runs: say why here, as the master may not
		// have heard it (its log is where this line goes).
		cfg.Logger.Error("cannot run as a child of this master", "err", err)
		return err
	}
	// The master orchestrates stops: it alone reacts to Ctrl-C (SIGINT reaches the
	// whole foreground process group) and to SIGHUP. SIGPIPE is ignored so that a
	// write to a dead master's stderr pipe fails instead of killing the process
	// before it drains.
	signal.Ignore(syscall.SIGINT, syscall.SIGHUP, syscall.SIGPIPE)
	name := cfg.Name + " " + cs.role.String()
	if cs.role == Worker {
		name += " " + strconv.Itoa(cs.id)
	}
	setProcessName(name)
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM)
	defer stop()
	return runChild(ctx, cfg, cs)
}

// childExitCode reports a child's end the way the master reads it: 0 after a
// clean stop, 2 after a panic (printed as the Go runtime would), 1 otherwise.
func childExitCode(err error) int {
	var pe *panicError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &pe):
		fmt.Fprintf(os.Stderr, "panic: %v\n\n%s", pe.value, pe.stack)
		return 2
	default:
		return 1
	}
}

// panicError is a panic that escaped the user's Agent or Worker function.
type panicError struct {
	value any
	stack []byte
}

func (e *panicError) Error() string { return fmt.Sprintf("panic: %v", e.value) }

var errMasterGone = errors.New("the master is gone (IPC channel closed)")

// runChild runs the user's function for one child, real or in single-process
// mode, and returns when the child has stopped.
func runChild(ctx context.Context, cfg Config, cs childSpec) error {
	defer cs.conn.Close()
	w := ipc.NewWriter(cs.conn, 0, cfg.MaxFrame)
	p := newProcess(ctx, cs.role, cs.id, int(cs.pid), cfg.Name, cfg.Logger)
	p.single, p.listeners, p.stopTime = cs.single, cs.listeners, cfg.StopTimeout
	if cs.fleetNode != "" {
		p.log = p.log.With("node", cs.fleetNode) // in a fleet, every line names the member
	}
	defer func() {
		for _, l := range p.listeners {
			l.Close()
		}
	}()
	m := newMessenger(w, cs.pid, cs.role, cfg.MaxFrame, p.log)
	m.maxQueue, m.maxQueueBytes = cfg.MaxPending, cfg.MaxPendingBytes
	m.masterPID = cs.masterPID
	m.protocol = cs.protocol
	if m.protocol == 0 {
		_, m.protocol = ipc.Speaks()
	}
	m.p = p
	p.messenger = m
	p.fleet = &Fleet{m: m, node: cs.fleetNode, p: p}
	if cs.direct != nil {
		m.enableDirect(cs.direct, cfg.MaxFrame)
	}
	header := func(k ipc.Kind) *ipc.Header {
		return &ipc.Header{Kind: k, Role: ipc.Role(cs.role), From: cs.pid}
	}
	p.onReady = func() { _ = w.Append(header(ipc.KindReady), "", nil) }
	p.onFault = func(reason string) {
		switch {
		case cs.role == Agent:
			p.log.Warn("the agent keeps running after a guarded panic")
		default:
			_ = w.Append(header(ipc.KindReplaceMe), "", []byte(reason))
			p.stop(fmt.Errorf("replaced after a guarded %s", reason))
		}
	}

	// brood's own handlers, registered before the user's code runs.
	installLogReopen(p)
	if cs.metrics {
		installMetrics(p)
	}
	var setupErr error
	switch cs.role {
	case Worker:
		installWorkerSchedules(p, cfg.Schedules)
	case Agent:
		setupErr = errors.Join(installAgentSchedules(p, cfg.Schedules), installAgentRotation(p, cfg.LogRotation))
	}

	protocol := cs.protocol
	if protocol == 0 {
		_, protocol = ipc.Speaks()
	}
	if err := w.Append(header(ipc.KindHello), "", []byte(strconv.Itoa(protocol))); err != nil {
		w.Close(time.Now())
		m.close(0)
		m.closeDirect(time.Now())
		return fmt.Errorf("brood: %s %d: hello: %w", cs.role, cs.id, err)
	}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		rd := ipc.NewReader(cs.conn, cfg.MaxFrame)
		for {
			f, err := rd.Next()
			if err != nil {
				p.stop(errMasterGone)
				m.drainAnswered(nil) // no answer will come
				return
			}
			m.handleFrame(f)
		}
	}()
	finish := func(runErr error) error {
		p.log.Debug("stopping", "err", runErr)
		deadline := time.Now().Add(cfg.StopTimeout)
		if !waitTimeout(&p.goroutines, time.Until(deadline)) && runErr == nil {
			runErr = errors.New("goroutines started with Process.Go did not return within StopTimeout")
		}
		if runErr != nil {
			var pe *panicError
			msg := runErr.Error()
			if errors.As(runErr, &pe) {
				msg = pe.Error()
			} else {
				p.log.Error("exiting with an error", "err", runErr)
			}
			_ = w.Append(header(ipc.KindFatal), "", []byte(msg))
		}
		m.drain(min(time.Second, max(time.Until(deadline), 0)))
		m.close(max(time.Until(deadline), 0))
		m.closeDirect(time.Now().Add(time.Second)) // after the handlers' last acknowledgements
		if cs.metrics {
			sendFinalMetrics(p) // after the handlers: all they counted is in
		}
		w.Close(time.Now().Add(time.Second))
		cs.conn.Close()
		<-readDone
		p.log.Debug("stopped")
		return runErr
	}

	// Wait for the master's first member table, so SendTo and AgentPID work from
	// the first line of user code.
	select {
	case <-m.welcomed:
	case <-p.ctx.Done():
		// Stopped while held (the start was aborted): nothing of the user's ran.
		p.log.Debug("stopped before the handshake", "cause", context.Cause(p.ctx))
		return finish(nil)
	}

	if setupErr != nil {
		return finish(setupErr)
	}
	fn := cfg.Worker
	if cs.role == Agent {
		fn = cfg.Agent
	}
	result := make(chan error, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				result <- &panicError{value: r, stack: debug.Stack()}
			}
		}()
		result <- fn(p.ctx, p)
	}()

	var err error
	select {
	case err = <-result:
		if err == nil && p.ctx.Err() == nil {
			// Egg style: the function set things up and returned; stay alive.
			p.Ready()
			<-p.ctx.Done()
		}
	case <-p.ctx.Done():
		t := time.NewTimer(cfg.StopTimeout)
		select {
		case err = <-result:
		case <-t.C:
			err = fmt.Errorf("brood: %s %d did not return within StopTimeout (%v) of being asked to stop", cs.role, cs.id, cfg.StopTimeout)
		}
		t.Stop()
	}
	if err != nil && !errors.As(err, new(*panicError)) {
		err = fmt.Errorf("brood: %s %d: %w", cs.role, cs.id, err)
	}
	return finish(err)
}

// waitTimeout waits for wg up to d and reports whether it finished. On a
// timeout the goroutine blocked in wg.Wait stays until wg finishes: the
// Process.Go goroutines it waits for are stuck already, and the child process
// exits right after (with "run --single" the goroutines of the stuck process
// outlive its stop, which the error returned then says).
func waitTimeout(wg interface{ Wait() }, d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
		return true
	case <-t.C:
		return false
	}
}
