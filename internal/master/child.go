package master

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/relay"
	"github.com/brood-go/brood/internal/wire"
)

// childState is the phase of one child process.
type childState int

const (
	childStarting childState = iota
	childReady
	childStopping
	childExited
)

func (s childState) String() string {
	return [...]string{"starting", "ready", "stopping", "exited"}[s]
}

// child is one process started by the master. Its fields under "Guarded by
// Master.mu" change only in the methods of its slot (slot.go).
type child struct {
	slot      *slot
	pid       int
	proc      childProc
	conn      net.Conn
	ep        *relay.Endpoint
	startedAt time.Time
	lastSeen  atomic.Int64 // unix nanos of the last frame received
	pingAt    atomic.Int64 // unix nanos the last heartbeat ping was sent
	pingSeq   atomic.Uint64
	// Metrics gathers (see gatherChildren): one asked and not yet answered;
	// its last one missed a scrape's deadline or failed; one has succeeded.
	gathering, gatherLate, gathered atomic.Bool
	// stdout and stderr are the read ends of its output pipes (nil in
	// single-process mode); an upgrade hands them on.
	stdout, stderr *os.File
	// pausing: an upgrade is stopping the channel's reader and the output
	// pumps (without closing anything); unread is what the reader had read
	// of a frame it had not decoded yet when it stopped.
	pausing atomic.Bool
	unread  []byte

	// Guarded by Master.mu.
	state      childState
	readyAt    time.Time
	held       bool        // started, but not yet sent the member table (see slot.spawn)
	stopWhy    wire.Reason // the master means to end it, and why: its exit is expected
	killReason wire.Reason // why the master killed it, if it did
	killDetail string
	abandoned  bool   // killed because its start was given up: never the cause of a failure
	fatal      string // the error the child reported before exiting
	panicLine  string // the first "panic:" / "fatal error:" line on its stderr
	exitReason wire.Reason
	exitDetail string
	usage      usage
	protocol   int // the IPC protocol version it speaks, from its KindHello (0 before it); see protocol.go
	// direct is the master's end of its channel socket (direct.go): nil in
	// a relay-only cluster, in single-process mode, and once it has exited.
	direct *net.UnixConn
	// directSent is the count of messages it reported at its last pong as
	// sent over direct channels (metrics.go). Used only by its reader, and
	// by an upgrade once the reader has stopped.
	directSent uint64
	inherited  bool // adopted from the previous image of the master by an upgrade, with the binary it ran then

	ready    chan struct{} // closed when it reports Ready
	exited   chan struct{} // closed once its exit is recorded
	readDone chan struct{}
	outDone  chan struct{} // both output pumps are done
}

func (c *child) String() string { return fmt.Sprintf("%s (pid %d)", c.slot, c.pid) }

// event is a lifecycle event about c.
func (c *child) event(t wire.EventType) wire.Event {
	return wire.Event{Type: t, Role: wire.RoleName(c.slot.role), ID: c.slot.id, PID: c.pid}
}

// classifyLocked says why c ended, from how it ended and what the master knows.
func (c *child) classifyLocked(how string, code int, signaled bool) (wire.Reason, string) {
	detail := how
	switch {
	case c.killDetail != "":
		detail += " (" + c.killDetail + ")"
	case c.panicLine != "":
		detail += " (" + c.panicLine + ")"
	case c.fatal != "":
		detail += " (" + c.fatal + ")"
	}
	switch {
	case c.killReason != wire.ReasonNone:
		return c.killReason, detail
	case c.panicLine != "" || strings.HasPrefix(c.fatal, "panic:"):
		return wire.ReasonPanic, detail
	case signaled:
		return wire.ReasonSignal, detail
	}
	_ = code
	return wire.ReasonExit, detail
}

// startError is why a process did not become ready.
type startError struct {
	pid    int
	reason wire.Reason
	detail string
}

func (e *startError) Error() string {
	return fmt.Sprintf("pid %d exited before it was ready: %s", e.pid, e.detail)
}

// readLoop reads one child's frames until its channel closes.
func (m *Master) readLoop(c *child) {
	m.readFrames(c, ipc.NewReader(c.conn, m.cfg.MaxFrame))
}

// readFrames is readLoop with its reader: an adopted child's starts with
// the bytes the previous image had read.
func (m *Master) readFrames(c *child, rd *ipc.Reader) {
	defer close(c.readDone)
	for {
		fresh := !rd.HasFrame() // Next will read: a new batch from the child
		f, err := rd.Next()
		if err != nil {
			if c.pausing.Load() && errors.Is(err, os.ErrDeadlineExceeded) {
				c.unread = rd.Unread() // an upgrade stopped the reader between two reads
				return
			}
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) && !errors.Is(err, syscall.ECONNRESET) {
				c.slot.kill(c, wire.ReasonExit, "protocol error: "+err.Error())
			}
			return
		}
		if fresh {
			c.lastSeen.Store(time.Now().UnixNano())
		}
		switch f.Kind {
		case ipc.KindMessage, ipc.KindReply, ipc.KindAck:
			m.router.Handle(c.ep, f)
		case ipc.KindPong:
			m.observePong(c, f.ID, f.Payload)
		case ipc.KindHello:
			if !m.onHello(c, f.Payload) { // protocol.go
				return
			}
		case ipc.KindReady:
			if m.readyBeforeHello(c) {
				return
			}
			c.slot.markReady(c)
		case ipc.KindFatal:
			m.setFatal(c, string(f.Payload))
		case ipc.KindReplaceMe:
			m.onReplaceMe(c, string(f.Payload))
		default:
			m.log.Warn("unexpected frame from child", "child_pid", c.pid, "kind", f.Kind.String())
		}
		if !rd.HasFrame() { // end of this read's batch: one write per destination
			m.router.Flush(c.ep)
		}
	}
}

func (m *Master) setFatal(c *child, msg string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if c.fatal == "" {
		c.fatal = msg
	}
}

// pumpOutput copies a child's stdout or stderr to the master's, whole lines at
// a time, until the child and its descendants close it. On stderr it
// remembers the first panic line for the exit reason.
func (m *Master) pumpOutput(c *child, r *os.File, dst *output, stderr bool) {
	defer func() {
		if !c.pausing.Load() { // an upgrade hands the pipe on
			r.Close()
		}
	}()
	var inspect func([]byte)
	if stderr {
		inspect = func(line []byte) {
			if bytes.HasPrefix(line, []byte("panic: ")) || bytes.HasPrefix(line, []byte("fatal error: ")) {
				m.mu.Lock()
				if c.panicLine == "" {
					c.panicLine = string(bytes.TrimSpace(line))
				}
				m.mu.Unlock()
			}
		}
	}
	pumpLines(r, dst, inspect)
}

// waitChild reaps a child and has its slot record the exit.
func (m *Master) waitChild(c *child) {
	if p, ok := c.proc.(exitAwaiter); ok {
		p.awaitExit() // ended, not yet reaped
	}
	// An upgrade that froze the cluster meanwhile leaves this exit to the
	// next image, which reaps it (the lock is never released then).
	m.freezeMu.RLock()
	defer m.freezeMu.RUnlock()
	how, code, signaled := c.proc.Wait()
	// Relay what it sent before dying, and collect its last words, within one
	// bound for both: a grandchild holding its stderr must not hold up the
	// restart.
	deadline := time.Now().Add(time.Second)
	waitBounded(c.readDone, deadline)
	c.conn.Close()
	<-c.readDone
	waitBounded(c.outDone, deadline)
	c.slot.recordExit(c, how, code, signaled)
}

// waitBounded waits until ch is closed or deadline passes.
func waitBounded(ch <-chan struct{}, deadline time.Time) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	}
}
