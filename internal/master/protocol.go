package master

import (
	"fmt"
	"strconv"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/wire"
)

// The IPC protocol versions of the children (package ipc, "Handshake and
// version"): the master speaks every version of ipc.Speaks, announces them
// to each child (protocolEnv), and records the one the child says it speaks
// in its KindHello (child.protocol). A child speaking a version outside the
// range, or one without fleet messages in a cluster in a fleet, is killed
// with the reason as its exit detail: during a reload that detail is the
// reload's error, and the old process keeps its slot.

// protocolEnv is the value of wire.EnvProtocol (the lowest version this
// master speaks) or, for max, of wire.EnvProtocolMax (the highest).
func protocolEnv(max bool) string {
	lo, hi := ipc.Speaks()
	if max {
		return strconv.Itoa(hi)
	}
	return strconv.Itoa(lo)
}

// checkProtocol says whether this master can talk to a child speaking
// protocol v: nil, or why not. Adopting a child whose version was recorded
// by an earlier master image goes through it too.
func (m *Master) checkProtocol(v int) error {
	lo, hi := ipc.Speaks()
	if v < lo || v > hi {
		return fmt.Errorf("child speaks IPC protocol %d, this master speaks %s", v, ipc.RangeText(lo, hi))
	}
	if v < ipc.FleetVersion && m.cfg.Fleet.URLs != "" {
		return fmt.Errorf("child speaks IPC protocol %d, which has no fleet messages; this cluster is in a fleet and needs protocol %d or later", v, ipc.FleetVersion)
	}
	return nil
}

// onHello handles c's KindHello, the version it speaks: recorded, or c is
// killed with the reason. It reports whether c may go on.
func (m *Master) onHello(c *child, payload []byte) bool {
	v, err := strconv.Atoi(string(payload))
	if err != nil {
		err = fmt.Errorf("child announced IPC protocol %q, which is not a version", truncateText(string(payload), 32))
	} else {
		err = m.checkProtocol(v)
	}
	if err != nil {
		m.setFatal(c, err.Error())
		c.slot.kill(c, wire.ReasonExit, err.Error())
		return false
	}
	m.mu.Lock()
	first := c.protocol == 0
	c.protocol = v
	if first { // a second hello makes no second pair
		m.pairLocked(c) // direct.go
	}
	m.mu.Unlock()
	return true
}

// protocolOf is the version c speaks, 0 before its KindHello.
func (m *Master) protocolOf(c *child) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return c.protocol
}

// readyBeforeHello kills c if it reports Ready without having said which
// protocol it speaks (the master would not know which frames it decodes),
// and reports whether it did.
func (m *Master) readyBeforeHello(c *child) bool {
	if m.protocolOf(c) != 0 {
		return false
	}
	c.slot.kill(c, wire.ReasonExit, "protocol error: Ready before Hello (no IPC protocol version announced)")
	return true
}

func truncateText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
