package brood

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/brood-go/brood/internal/direct"
	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/wire"
)

// Direct channels (DESIGN §3a). The master gives the agent and each worker a
// socketpair between them (package direct); agent<->worker messages take it,
// every other message the relay. The rules that keep the Messenger's
// guarantees across the switch between the two paths:
//
//   - One path per receiver at a time. A sender opens its channel to a peer
//     the first time it has something for it while the peer is ready (in the
//     member table): it relays ActDirectOpen to the peer, by pid, and from then
//     on sends it everything over the channel, until the channel ends. The peer
//     hands the channel's messages to its handlers only once that ActDirectOpen
//     has come over the relay, behind everything the sender relayed to it
//     before: per-sender order holds across the switch.
//   - A message for several processes (Broadcast, SendToApp) goes directly to
//     each peer whose channel is open (or opens now), and once to the master
//     for the others, naming the slots it served directly (ipc.FlagExcept), so
//     that no slot gets two copies and a slot with no process right now is
//     held for, as before.
//   - The sender keeps each role-addressed message it sent directly (they
//     carry ipc.FlagHeld) until the peer acknowledges it on the channel (the
//     peer's dispatcher acknowledges as it does to the master). When the
//     channel ends (EOF: the peer died or stopped; or the peer left the
//     member table: the master saw it exit), what it did not acknowledge goes
//     to the master, in order and before anything sent after, addressed to its
//     slot (DestAgent, DestWorker) or DestRandom, and is held for the slot's
//     next process. Pid-addressed messages are not kept: lost with the process,
//     as on the relay; a Request to a peer whose channel ends fails with
//     ErrProcessExited at once.
//   - Bounds: a peer holds at most Config.MaxPending messages and
//     Config.MaxPendingBytes bytes unacknowledged; beyond, the send fails with
//     ErrNotDelivered (counted in Stats.Refused).
//   - The master counts the direct traffic: each heartbeat's pong carries the
//     count of frames this process sent over its channels.
//
// Lock order: Messenger.dmu, then Messenger.mu, then Messenger.qmu; a peer's
// rmu nests inside dmu and takes qmu.

// peer is a direct channel to one other process.
type peer struct {
	m    *Messenger
	pid  uint32
	role ipc.Role
	id   int // its slot: 0 the agent, k worker k
	conn net.Conn
	w    *ipc.Writer
	done chan struct{} // closed when its reader has returned

	// Sending side, guarded by m.dmu.
	open      bool      // ActDirectOpen sent: everything for this peer goes here
	dead      bool      // the channel ended: nothing more goes here
	draining  bool      // it is stopping (its ActDrain came): no more role-addressed messages
	listed    bool      // a member table has listed it (so leaving one means it exited)
	sent      uint64    // messages written (the sequence the peer acknowledges)
	held      []heldMsg // role-addressed messages written and not acknowledged, by seq
	heldBuf   []byte    // their frames, back to back (held[i].off into it)
	heldHead  int       // held[:heldHead] are released
	heldBytes int

	// Receiving side.
	rmu    sync.Mutex
	fenced bool        // its ActDirectOpen has arrived over the relay
	early  []ipc.Frame // messages read before that (copies)
	rseq   uint64      // messages received from it (dispatcher: handled)

	handled uint64 // seq of the last message from it handled (dispatcher only)
	needAck bool   // one of those was held (dispatcher only)
}

// heldMsg is a role-addressed message sent over a channel and not yet
// acknowledged, with where it goes if the channel ends first.
type heldMsg struct {
	seq    uint64
	off, n int
	dest   ipc.Dest
	to     uint32
}

// enableDirect starts taking the channel offers the master sends over the
// channel socket c. Called before the hello.
func (m *Messenger) enableDirect(c *net.UnixConn, maxFrame int) {
	m.dmu.Lock()
	m.chanSock = c
	m.peers = make(map[uint32]*peer)
	m.openedBy = make(map[uint32]bool)
	m.unfenced = make(map[uint32]*peer)
	m.dmu.Unlock()
	m.offersDone = make(chan struct{})
	go m.takeOffers(c, maxFrame)
}

// takeOffers receives channel offers until the channel socket closes.
func (m *Messenger) takeOffers(c *net.UnixConn, maxFrame int) {
	defer close(m.offersDone)
	for {
		o, f, err := direct.Receive(c)
		switch {
		case errors.Is(err, direct.ErrMalformed):
			m.log.Error("bad direct-channel offer from the master", "err", err)
			continue
		case err != nil:
			return // the master is gone, or this process is stopping
		}
		conn, err := net.FileConn(f)
		f.Close()
		if err != nil {
			m.log.Error("direct channel unusable", "peer_pid", o.PeerPID, "err", err)
			continue
		}
		m.addPeer(o, conn, maxFrame)
	}
}

func (m *Messenger) addPeer(o direct.Offer, conn net.Conn, maxFrame int) {
	p := &peer{m: m, pid: o.PeerPID, role: o.PeerRole, id: o.PeerID, conn: conn, done: make(chan struct{})}
	p.w = ipc.NewWriter(conn, 0, maxFrame)
	m.dmu.Lock()
	if m.dclosed || m.peers[p.pid] != nil {
		m.dmu.Unlock()
		p.w.Close(time.Now())
		conn.Close()
		return
	}
	m.peers[p.pid] = p
	p.fenced = m.openedBy[p.pid]
	delete(m.openedBy, p.pid)
	m.hasPeers.Store(true)
	m.dmu.Unlock()
	m.log.Debug("direct channel", "peer_pid", p.pid, "peer_role", Role(p.role).String(), "peer_id", p.id)
	go p.readLoop(maxFrame)
}

// readLoop reads the peer's frames until the channel ends.
func (p *peer) readLoop(maxFrame int) {
	defer close(p.done)
	m := p.m
	rd := ipc.NewReader(p.conn, maxFrame)
	for {
		f, err := rd.Next()
		if err != nil {
			m.peerGone(p, err)
			return
		}
		f.From, f.Role = p.pid, p.role // the channel says who sent it
		switch f.Kind {
		case ipc.KindMessage:
			switch string(f.Action) { // the drain's frames: not messages
			case wire.ActDrain:
				m.peerDraining(p)
				continue
			case wire.ActDrained:
				m.drainAnswered(p)
				continue
			}
			m.received.Add(1)
			p.deliver(f)
		case ipc.KindReply:
			m.resolveReply(f)
		case ipc.KindAck:
			m.peerAck(p, f.Ref)
		default:
			m.log.Warn("unexpected frame on a direct channel", "peer_pid", p.pid, "kind", f.Kind.String())
		}
	}
}

// deliver queues a message read from the channel, or keeps a copy of it until
// the peer's ActDirectOpen arrives over the relay.
func (p *peer) deliver(f ipc.Frame) {
	p.rmu.Lock()
	defer p.rmu.Unlock()
	if !p.fenced {
		c, err := ipc.Decode(append([]byte(nil), f.Raw...))
		if err == nil {
			c.From, c.Role = f.From, f.Role
			p.early = append(p.early, c)
		}
		return
	}
	p.m.enqueueFrom(p, f)
}

// opened records the ActDirectOpen from pid: what its channel brought before
// may now be handled, after everything it relayed before.
func (m *Messenger) opened(pid uint32) {
	m.dmu.Lock()
	p := m.peers[pid]
	if p == nil {
		p = m.unfenced[pid]
		delete(m.unfenced, pid)
	}
	if p == nil {
		if m.openedBy != nil && !m.dclosed {
			m.openedBy[pid] = true // its channel's offer has not arrived yet
		}
		m.dmu.Unlock()
		return
	}
	m.dmu.Unlock()
	p.rmu.Lock()
	defer p.rmu.Unlock()
	p.fenced = true
	for _, f := range p.early {
		m.enqueueFrom(p, f)
	}
	p.early = nil
}

// peerAck releases the held messages the peer has handled: the first n it
// was sent.
func (m *Messenger) peerAck(p *peer, n uint64) {
	m.dmu.Lock()
	defer m.dmu.Unlock()
	i := p.heldHead
	for i < len(p.held) && p.held[i].seq <= n {
		p.heldBytes -= p.held[i].n
		i++
	}
	p.heldHead = i
	switch {
	case i == len(p.held):
		p.held, p.heldBuf, p.heldHead = p.held[:0], p.heldBuf[:0], 0
	case i > 1024 && i > len(p.held)/2:
		off := p.held[i].off
		n := copy(p.heldBuf, p.heldBuf[off:])
		p.heldBuf = p.heldBuf[:n]
		k := copy(p.held, p.held[i:])
		p.held = p.held[:k]
		for j := range p.held {
			p.held[j].off -= off
		}
		p.heldHead = 0
	}
}

// peerGone ends a channel: its held messages go to the master, requests to
// the peer fail. Safe to call more than once.
func (m *Messenger) peerGone(p *peer, why error) {
	m.dmu.Lock()
	m.retireLocked(p, why)
	m.dmu.Unlock()
}

// retireLocked is peerGone with dmu held.
func (m *Messenger) retireLocked(p *peer, why error) {
	if p.dead {
		return
	}
	p.dead = true
	if m.peers[p.pid] == p {
		delete(m.peers, p.pid)
	}
	m.ended = append(slices.DeleteFunc(m.ended, func(q *peer) bool {
		select {
		case <-q.done:
			return true
		default:
			return false
		}
	}), p)
	p.rmu.Lock()
	if !p.fenced && len(p.early) > 0 {
		// What it sent before it ended waits for its brood:direct-open,
		// which the master relays before it reports the exit.
		m.unfenced[p.pid] = p
	}
	p.rmu.Unlock()
	p.w.Close(time.Now())
	p.conn.Close() // ends its reader, if it is not the caller
	if m.dclosed {
		// This process is stopping: what the peer has not read is still in
		// the channel for it, and a copy through the master would be a
		// duplicate.
		p.held, p.heldBuf, p.heldHead, p.heldBytes = nil, nil, 0, 0
		return
	}
	handed := 0
	for _, h := range p.held[p.heldHead:] {
		f, err := ipc.Decode(p.heldBuf[h.off : h.off+h.n])
		if err != nil {
			continue // cannot happen: we encoded it
		}
		hd := f.Header
		hd.Dest, hd.To, hd.Flags = h.dest, h.to, hd.Flags&^ipc.FlagHeld
		if err := m.w.Append(&hd, string(f.Action), f.Payload); err != nil {
			m.refused.Add(1)
			m.log.Warn("message lost with a direct channel", "action", string(f.Action), "peer_pid", p.pid, "err", err)
			continue
		}
		handed++
	}
	p.held, p.heldBuf, p.heldHead, p.heldBytes = nil, nil, 0, 0
	m.drainAnswered(p)
	if handed > 0 {
		m.log.Debug("direct channel ended: unacknowledged messages handed to the master", "peer_pid", p.pid, "messages", handed, "why", why)
	}
	m.pending.FailIf(func(pid uint32) bool { return pid == p.pid }, requestResult{err: ErrProcessExited})
}

// route sends a message over direct channels where the rules above say so.
// It reports whether it took the message (err is then the send's outcome);
// if not, the caller relays it as it is.
func (m *Messenger) route(h *ipc.Header, action string, payload []byte) (bool, error) {
	m.dmu.Lock()
	defer m.dmu.Unlock()
	if len(m.peers) == 0 {
		return false, nil
	}
	switch h.Dest {
	case ipc.DestPID:
		p := m.usableLocked(h.To, false)
		if p == nil {
			return false, nil
		}
		return took(m.writeLocked(p, h, action, payload, ipc.DestNone, 0))
	case ipc.DestAgent:
		if m.role == ipc.RoleAgent {
			return false, nil
		}
		a, ok := m.holder(Agent)
		if !ok {
			return false, nil
		}
		p := m.usableLocked(uint32(a.PID), true)
		if p == nil {
			return false, nil
		}
		return took(m.writeLocked(p, h, action, payload, ipc.DestAgent, 0))
	case ipc.DestRandom:
		w, ok := m.pickWorker()
		if !ok {
			return false, nil // no ready worker: the master holds it for one
		}
		if p := m.usableLocked(uint32(w.PID), true); p != nil {
			if ok, err := took(m.writeLocked(p, h, action, payload, ipc.DestRandom, 0)); ok {
				return ok, err
			}
		}
		// Relayed to the worker chosen, not to one the master chooses,
		// which might be a peer this channel serves.
		rh := *h
		rh.Dest, rh.To = ipc.DestWorker, uint32(w.ID)
		return true, m.relay(&rh, action, payload)
	case ipc.DestApp, ipc.DestAll:
		return m.fanOutLocked(h, action, payload)
	}
	return false, nil
}

// fanOutLocked sends a message for every worker (and the agent, for DestAll)
// directly to the peers it can, and once to the master for the rest.
func (m *Messenger) fanOutLocked(h *ipc.Header, action string, payload []byte) (bool, error) {
	var except []int
	var errs []error
	for _, mb := range m.slotHolders(h.Dest == ipc.DestAll) {
		p := m.usableLocked(uint32(mb.PID), true)
		if p == nil {
			continue
		}
		dest, to := ipc.DestWorker, uint32(mb.ID)
		if mb.Role == Agent {
			dest, to = ipc.DestAgent, 0
		}
		ph := *h
		ph.Dest, ph.To = ipc.DestPID, p.pid
		if err := m.writeLocked(p, &ph, action, payload, dest, to); err != nil {
			if !errors.Is(err, errRetry) {
				errs = append(errs, err)
			}
			continue // not excepted: the master's copy serves it
		}
		except = append(except, mb.ID)
	}
	if len(except) == 0 {
		return false, errors.Join(errs...)
	}
	rh := *h
	rh.Flags |= ipc.FlagExcept
	buf := ipc.AppendExcept(make([]byte, 0, 8+len(except)*2+len(payload)), except)
	return true, errors.Join(append(errs, m.relay(&rh, action, append(buf, payload...)))...)
}

// relay writes a frame to the master.
func (m *Messenger) relay(h *ipc.Header, action string, payload []byte) error {
	return m.w.Append(h, action, payload)
}

// usableLocked returns the open channel to pid, opening it if pid is ready,
// or nil: the relay then serves pid. For a role-addressed message (forSlot),
// a peer that is draining (it is stopping) is not used: the master serves
// its slot.
func (m *Messenger) usableLocked(pid uint32, forSlot bool) *peer {
	p := m.peers[pid]
	if p == nil || p.dead || (forSlot && p.draining) {
		return nil
	}
	if p.open {
		return p
	}
	if !m.isReady(int(pid)) {
		return nil
	}
	h := ipc.Header{Kind: ipc.KindMessage, Dest: ipc.DestPID, Role: m.role, From: m.self, To: pid, ID: m.nextID.Add(1)}
	if err := m.w.Append(&h, wire.ActDirectOpen, nil); err != nil {
		return nil
	}
	p.open = true
	return p
}

// writeLocked writes one frame to a peer. A role-addressed one (dest !=
// DestNone) is kept until acknowledged, to go to the master addressed dest/to
// if the channel ends first.
func (m *Messenger) writeLocked(p *peer, h *ipc.Header, action string, payload []byte, dest ipc.Dest, to uint32) error {
	held := dest != ipc.DestNone
	hd := *h
	hd.Dest, hd.To = ipc.DestPID, p.pid
	hd.Flags &^= ipc.FlagExcept
	if held {
		hd.Flags |= ipc.FlagHeld
		n := ipc.EncodedLen(action, len(payload))
		if k := len(p.held) - p.heldHead; k >= m.maxQueue || p.heldBytes+n > m.maxQueueBytes {
			m.refused.Add(1)
			return fmt.Errorf("%w: pid %d has not acknowledged %d messages (%d bytes) sent over its direct channel (bounds %d and %d)",
				ErrNotDelivered, p.pid, k, p.heldBytes, m.maxQueue, m.maxQueueBytes)
		}
		off := len(p.heldBuf)
		var err error
		if p.heldBuf, err = ipc.AppendFrame(p.heldBuf, &hd, action, payload, m.maxFrame); err != nil {
			return err
		}
		if err := p.w.AppendRaw(p.heldBuf[off:]); err != nil {
			p.heldBuf = p.heldBuf[:off]
			return m.writeFailedLocked(p, err)
		}
		p.sent++
		p.held = append(p.held, heldMsg{seq: p.sent, off: off, n: len(p.heldBuf) - off, dest: dest, to: to})
		p.heldBytes += len(p.heldBuf) - off
	} else {
		if err := p.w.Append(&hd, action, payload); err != nil {
			return m.writeFailedLocked(p, err)
		}
		p.sent++
	}
	m.directSent.Add(1)
	return nil
}

// writeFailedLocked says what a failed write to a peer means: a frame too
// large, or a peer that has not read the writer's whole buffer, is the
// send's error (the channel stays: what it holds may still be read); a
// closed channel ends it, and the caller relays the message (errRetry).
func (m *Messenger) writeFailedLocked(p *peer, err error) error {
	if errors.Is(err, ipc.ErrTooLarge) || errors.Is(err, ipc.ErrBufferFull) {
		return err
	}
	m.retireLocked(p, err)
	return errRetry
}

// errRetry says a channel ended under a write: the caller relays the message.
var errRetry = errors.New("direct channel ended")

// took turns a direct write's outcome into route's: a channel that ended
// under the write leaves the message to the relay.
func took(err error) (bool, error) {
	if errors.Is(err, errRetry) {
		return false, nil
	}
	return true, err
}

// slotHolders returns, per slot, the process that receives the slot's
// messages as far as the member table says: ready and not stopping. The
// agent is included when withAgent. The slice is shared: read only.
func (m *Messenger) slotHolders(withAgent bool) []Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !withAgent && len(m.holders) > 0 && m.holders[0].Role == Agent {
		return m.holders[1:]
	}
	return m.holders
}

// holder returns the process holding the agent slot (role Agent), if any.
func (m *Messenger) holder(role Role) (Member, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.holders) > 0 && m.holders[0].Role == role {
		return m.holders[0], true
	}
	return Member{}, false
}

// pickWorker chooses, round robin, a ready worker that is not stopping.
func (m *Messenger) pickWorker() (Member, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	ws := m.holders
	if len(ws) > 0 && ws[0].Role == Agent {
		ws = ws[1:]
	}
	if len(ws) == 0 {
		return Member{}, false
	}
	m.rr++
	return ws[m.rr%uint64(len(ws))], true
}

func (m *Messenger) isReady(pid int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	mb, ok := m.members[pid]
	return ok && mb.Ready
}

// retireGoneLocked ends the channels of peers the member table no longer
// lists: the master saw them exit. Called with dmu held, after the table
// changed, so a send that sees the new table sees these channels ended.
//
// A peer no table has listed yet is not retired: its offer came over the
// channel socket ahead of the table that lists it (a table sent before it was
// started may arrive after its channel); if it dies first, its channel's EOF
// ends it.
func (m *Messenger) retireGoneLocked(table map[int]Member) {
	for pid, p := range m.peers {
		if _, ok := table[int(pid)]; ok {
			p.listed = true
		} else if p.listed {
			m.retireLocked(p, errors.New("left the member table"))
		}
	}
	for pid, p := range m.unfenced {
		if _, ok := table[int(pid)]; !ok {
			delete(m.unfenced, pid)
			m.log.Warn("direct messages dropped: their sender exited and its brood:direct-open never came", "peer_pid", pid, "messages", len(p.early))
		}
	}
}

// ackPeers acknowledges to each peer what the dispatcher handled from it.
func (m *Messenger) ackPeers(ps []*peer) {
	for _, p := range ps {
		if !p.needAck {
			continue
		}
		p.needAck = false
		h := ipc.Header{Kind: ipc.KindAck, Role: m.role, From: m.self, Ref: p.handled}
		_ = p.w.Append(&h, "", nil)
	}
}

// closeDirect ends every channel and the channel socket, after the
// dispatcher has stopped (its acknowledgements are written first).
func (m *Messenger) closeDirect(deadline time.Time) {
	m.dmu.Lock()
	if m.chanSock == nil || m.dclosed {
		m.dmu.Unlock()
		return
	}
	m.dclosed = true
	ps := slices.Clone(m.ended)
	for _, p := range m.peers {
		ps = append(ps, p)
	}
	m.dmu.Unlock()
	m.chanSock.Close()
	<-m.offersDone
	for _, p := range ps {
		p.w.Close(deadline)
		p.conn.Close()
		<-p.done
	}
}

// pongPayload is what a pong carries: the count of frames sent over direct
// channels, for the master's counters.
func (m *Messenger) pongPayload(buf []byte) []byte {
	if m.chanSock == nil {
		return nil
	}
	return binary.AppendUvarint(buf[:0], m.directSent.Load())
}

// directConn opens the channel socket the master passed, if any.
func directConn(v string) (*net.UnixConn, error) {
	if v == "" {
		return nil, nil
	}
	var fd int
	if _, err := fmt.Sscanf(v, "%d", &fd); err != nil || fd < 3 {
		return nil, fmt.Errorf("brood: %s=%q: not a descriptor", wire.EnvDirectFD, v)
	}
	return direct.Conn(fd, "brood direct")
}

// peerDraining answers a stopping peer's ActDrain: after everything written
// to it so far, and nothing role-addressed after (usableLocked).
func (m *Messenger) peerDraining(p *peer) {
	m.dmu.Lock()
	defer m.dmu.Unlock()
	p.draining = true
	h := ipc.Header{Kind: ipc.KindMessage, Dest: ipc.DestPID, Role: m.role, From: m.self, To: p.pid}
	_ = p.w.Append(&h, wire.ActDrained, nil)
}

// drain is the first step of this process's stop: it asks the master and
// every peer for what they have on its way here (wire.ActDrain) and waits, at
// most d, until each has answered, ended, or the master is gone. What came
// before the answers is then in the handler queue, which close drains.
func (m *Messenger) drain(d time.Duration) {
	if m.protocol < ipc.DirectVersion {
		return // an older master does not answer
	}
	m.dmu.Lock()
	m.drainMu.Lock()
	m.drainDone = make(chan struct{})
	m.drainMaster = !m.masterLost
	m.drainPeers = make(map[*peer]bool, len(m.peers))
	var ps []*peer
	for _, p := range m.peers {
		if !p.dead {
			m.drainPeers[p] = true
			ps = append(ps, p)
		}
	}
	m.drainMu.Unlock()
	h := ipc.Header{Kind: ipc.KindMessage, Dest: ipc.DestMaster, Role: m.role, From: m.self}
	if m.drainMaster {
		if err := m.w.Append(&h, wire.ActDrain, nil); err != nil {
			m.drainAnswered(nil)
		}
	}
	for _, p := range ps {
		ph := ipc.Header{Kind: ipc.KindMessage, Dest: ipc.DestPID, Role: m.role, From: m.self, To: p.pid}
		if err := p.w.Append(&ph, wire.ActDrain, nil); err != nil {
			m.drainAnswered(p)
		}
	}
	m.dmu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-m.drainDone:
	case <-t.C:
		m.log.Debug("drain: not every answer came", "waited", d)
	}
}

// drainAnswered records an answer to the drain (from p, or the master when
// p is nil), or the end of whoever would have answered.
func (m *Messenger) drainAnswered(p *peer) {
	m.drainMu.Lock()
	defer m.drainMu.Unlock()
	if m.drainDone == nil {
		m.masterLost = m.masterLost || p == nil
		return
	}
	if p == nil {
		m.drainMaster = false
	} else {
		delete(m.drainPeers, p)
	}
	if !m.drainMaster && len(m.drainPeers) == 0 {
		select {
		case <-m.drainDone:
		default:
			close(m.drainDone)
		}
	}
}
