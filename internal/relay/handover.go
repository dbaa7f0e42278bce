package relay

import "fmt"

// Kept is a message the Router keeps for a process: its frame, and its
// sequence number among the messages written to that process.
type Kept struct {
	Seq uint64
	Raw []byte
}

// Export is what the Router keeps for e, for an in-place upgrade of the
// master: how many messages were written to it, the held ones it has not
// acknowledged (by sequence), and the ones queued and not yet written. The
// frames are copies. Call it once e's writer is closed and its reader
// stopped, so that nothing changes meanwhile.
func (r *Router) Export(e *Endpoint) (sent uint64, retained []Kept, queued [][]byte) {
	s := e.slot
	s.mu.Lock()
	defer s.mu.Unlock()
	e.retained.Each(func(raw []byte, seq uint64) {
		retained = append(retained, Kept{Seq: seq, Raw: append([]byte(nil), raw...)})
	})
	e.queue.Each(func(raw []byte, _ uint64) { queued = append(queued, append([]byte(nil), raw...)) })
	return e.sent, retained, queued
}

// Import gives a process just attached in the next image what Export
// returned in the previous one. Call it before MarkReady, which writes the
// queued messages after what was written before.
func (r *Router) Import(e *Endpoint, sent uint64, retained []Kept, queued [][]byte) error {
	s := e.slot
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.ready || e.sent != 0 || e.retained.Len() != 0 {
		return fmt.Errorf("relay: import into pid %d: it is in use already", e.PID)
	}
	e.sent = sent
	for _, k := range retained {
		if k.Seq > sent {
			return fmt.Errorf("relay: import into pid %d: message %d of %d sent", e.PID, k.Seq, sent)
		}
		e.retained.Push(k.Raw, k.Seq)
	}
	// Whatever waited in the slot's orphan queue meanwhile follows.
	var orphans frameQueue
	orphans, e.queue = e.queue, frameQueue{}
	for _, raw := range queued {
		e.queue.Push(raw, 0)
	}
	orphans.Drain(func(raw []byte, _ uint64) { e.queue.Push(raw, 0) })
	return nil
}

// Carry adds the counters of a previous image, so that they only grow.
func (r *Router) Carry(s Stats) {
	r.relayed.Add(s.Relayed)
	r.held.Add(s.Held)
	r.redelivered.Add(s.Redelivered)
	r.dropped.Add(s.Dropped)
	r.lostReplies.Add(s.LostReplies)
	r.unreachable.Add(s.Unreachable)
}
