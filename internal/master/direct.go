package master

import (
	"github.com/brood-go/brood/internal/direct"
	"github.com/brood-go/brood/internal/ipc"
)

// Direct agent-worker channels (DESIGN §3a; packages direct and ipc,
// "Direct channels"), the master's side.
//
// Unless the cluster is relay only (Config.RelayOnly) or runs in one
// process, every child gets a channel socket from the master at spawn
// (launchProcess; wire.EnvDirectFD names its descriptor), and the master
// keeps its end on the child (child.direct) until the child has exited.
//
// When a child's KindHello says it speaks ipc.DirectVersion or later, the
// master pairs it: a worker with every live agent process that also
// qualifies (one, or two while the agent is being replaced), the agent with
// every live worker process that qualifies, starting, ready or stopping. A
// pair is a socketpair (direct.NewPair) of which each end goes, with an
// Offer naming the other process, over one of the two channel sockets. The
// master then closes both ends: it creates channels and forgets them. A
// channel ends (EOF) exactly when one of its processes does, and the
// survivor hands what the dead one did not acknowledge back to the master
// (DestWorker, DestAgent), which holds it for the slot. Nothing of a
// channel is in an upgrade's state: only the channel sockets are handed
// over, so that processes the new image starts pair with the adopted ones.
//
// Pairing runs under Master.mu, in the hello of whichever of the two
// processes says hello second (the first one's protocol is recorded, the
// second one's not yet), so each pair is made exactly once. Sending never
// blocks (direct.Send): a child that does not read its channel socket only
// misses its channels; the failure is logged and the pair dropped, and the
// two talk through the master as before.

// directQualifiesLocked says whether c takes direct channels: it has a
// channel socket, speaks a protocol with them, and has not exited.
func directQualifiesLocked(c *child) bool {
	return c.direct != nil && c.protocol >= ipc.DirectVersion && c.state != childExited
}

// pairLocked gives c, which has just said hello, a direct channel with each
// live process of the other role that qualifies. Called with m.mu held.
func (m *Master) pairLocked(c *child) {
	if !directQualifiesLocked(c) {
		return
	}
	for _, o := range m.children {
		if o == c || !directQualifiesLocked(o) {
			continue
		}
		switch {
		case c.slot.role == ipc.RoleWorker && o.slot.role == ipc.RoleAgent:
			m.pairOne(o, c)
		case c.slot.role == ipc.RoleAgent && o.slot.role == ipc.RoleWorker:
			m.pairOne(c, o)
		}
	}
}

// pairOne makes a direct channel between agent and worker and hands each
// its end. Called with m.mu held.
func (m *Master) pairOne(agent, worker *child) {
	a, b, err := direct.NewPair()
	if err != nil {
		m.log.Warn("no direct channel", "agent_pid", agent.pid, "worker_pid", worker.pid, "err", err)
		return
	}
	defer a.Close() // the master never keeps a channel: the children have their copies
	defer b.Close()
	err = direct.Send(agent.direct, direct.Offer{PeerPID: uint32(worker.pid), PeerRole: ipc.RoleWorker, PeerID: worker.slot.id}, a)
	if err == nil {
		err = direct.Send(worker.direct, direct.Offer{PeerPID: uint32(agent.pid), PeerRole: ipc.RoleAgent, PeerID: 0}, b)
	}
	if err != nil {
		// The end already sent sees EOF at once: its process forgets it.
		m.log.Warn("no direct channel", "agent_pid", agent.pid, "worker_pid", worker.pid, "err", err)
		return
	}
	m.log.Debug("direct channel", "agent_pid", agent.pid, "worker_pid", worker.pid, "worker", worker.slot.id)
}

// closeDirectLocked closes the master's end of c's channel socket, once c
// has exited. Called with m.mu held.
func (m *Master) closeDirectLocked(c *child) {
	if c.direct != nil {
		c.direct.Close()
		c.direct = nil
	}
}
