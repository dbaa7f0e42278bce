// Package relay is the master's message router: it takes frames read from one
// child and delivers them to others, holding what cannot be delivered yet.
//
// Guarantees (they are the messenger's, documented on brood.Messenger):
//
//   - Order: frames from one sender to one receiver are written in the order read.
//   - Role-addressed messages (agent, app, all, random) are marked FlagHeld. While
//     the receiving slot has no ready process they wait in a bounded queue and are
//     written, in order, when its process becomes ready. A copy is kept until the
//     receiver acknowledges (KindAck) that its handler finished; if the receiver
//     dies first, the message goes to the process that takes over its slot.
//   - pid-addressed messages are delivered at most once. An unknown pid, or a full
//     queue, is answered with a KindNack to the sender: never a silent drop.
//   - Bounds: per process, the frames held for it while it starts and those it
//     has not acknowledged are each at most Options.MaxPending, and their bytes
//     together at most Options.MaxPendingBytes; a slot's orphan queue (no process
//     at all) has the same two bounds. A frame beyond a bound is nacked to its
//     sender and counted in Stats.Dropped.
//   - Direct channels (ipc "Direct channels"): a DestWorker message is held for
//     worker slot To like a role-addressed copy for that slot, and written as
//     DestApp; a DestApp or DestAll message with FlagExcept goes to every slot
//     but those its list names, without the list and the flag.
//   - Replies go straight to the requester, ready or not; a reply to a pid that is
//     gone is logged and counted.
//
// The steady-state path (ready receiver, queues with spare capacity) allocates
// nothing: frames are copied from the reader's buffer into the receiver's batching
// writer and, when held, into a reused retention buffer.
//
// Memory follows what is held, not its peak: large frames (bigFrame bytes or
// more) are held off the Go heap, each in a mapping of its own that is
// unmapped the moment the frame is released (acknowledged, written from a
// queue, handed on after a Detach, discarded), so the master's RSS does not
// wait for a garbage collection, which the runtime would start only once the
// heap had doubled. Whatever the Router takes from such a frame to keep or to
// write is copied; see frameQueue for how long a frame it hands out is valid.
package relay

import (
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/wire"
)

// DefaultMaxPending is the default bound on messages queued for, or awaiting the
// acknowledgement of, one process.
const DefaultMaxPending = 65536

// DefaultMaxPendingBytes is the default bound on the bytes of the messages queued
// for, and awaiting the acknowledgement of, one process.
const DefaultMaxPendingBytes = 64 << 20

// Options configure a Router.
type Options struct {
	MasterPID  uint32
	MaxPending int // per process and per slot queue; <= 0 means DefaultMaxPending
	// MaxPendingBytes bounds the bytes held per process (its queue while starting
	// plus its unacknowledged frames) and per slot orphan queue; <= 0 means
	// DefaultMaxPendingBytes.
	MaxPendingBytes int
	Logger          *slog.Logger
	// MasterReply receives replies addressed to the master (answers to Request).
	// The frame is valid only during the call.
	MasterReply func(f ipc.Frame)
	// MasterMessage receives messages addressed to the master (DestMaster).
	// The frame is valid only during the call.
	MasterMessage func(from *Endpoint, f ipc.Frame)
	// FleetMessage receives messages for the fleet (DestFleet), with the
	// Router's lock held: it must not block or call back into the Router. An
	// error is nacked to the sender. The frame is valid only during the call.
	// Nil: a fleet message is nacked ("not in a fleet").
	FleetMessage func(from *Endpoint, f ipc.Frame) error
	// MaxFrame bounds the frames the Router builds from fleet messages
	// (<= 0: ipc.DefaultMaxFrame).
	MaxFrame int
}

// Stats are counters since the Router was made.
type Stats struct {
	Relayed     uint64 // frames written to a receiver
	Held        uint64 // frames that had to wait for a receiver to be ready
	Redelivered uint64 // frames delivered again after their receiver died
	Dropped     uint64 // frames refused (full queue, unknown pid): each one was nacked or logged
	LostReplies uint64 // replies whose requester was gone
	Unreachable uint64 // frames for a slot that was removed (scale down), or for a worker slot that does not exist (DestWorker; nacked)
}

// Router routes frames between the processes of one cluster.
type Router struct {
	opts Options
	log  *slog.Logger

	mu      sync.RWMutex // topology: byPID, agent, workers
	byPID   map[uint32]*Endpoint
	agent   *Slot
	workers []*Slot // by ID
	rr      atomic.Uint32

	relayed, held, redelivered, dropped, lostReplies, unreachable atomic.Uint64
}

// Slot is a place in the cluster, the agent or worker N, that outlives the
// processes that fill it.
type Slot struct {
	Role ipc.Role
	ID   int

	mu       sync.Mutex
	cur      *Endpoint  // ready; receives the slot's messages
	next     *Endpoint  // starting; takes over when ready
	orphans  frameQueue // held while the slot has no process at all
	removed  bool
	hasReady atomic.Bool
}

// Endpoint is one connected child process.
type Endpoint struct {
	PID  uint32
	Role ipc.Role
	slot *Slot
	w    *ipc.Writer

	// Guarded by slot.mu.
	ready    bool
	gone     bool
	sent     uint64     // messages written
	retained frameQueue // held messages written and not yet acknowledged, by sequence
	queue    frameQueue // messages waiting for this process to be ready

	// Endpoints Handle queued frames for on behalf of this endpoint since the
	// last Flush. Used only by this endpoint's reader goroutine.
	touched []*Endpoint
	// scratch and except are reused by route for this endpoint's FlagExcept
	// messages (the frame rebuilt without its list, and the list): used
	// only by its reader goroutine, like touched.
	scratch []byte
	except  []int
}

// maxScratch bounds the scratch buffer an Endpoint keeps between messages:
// a bigger FlagExcept message is rebuilt in a buffer of its own, so that one
// burst of big broadcasts does not pin megabytes per process.
const maxScratch = 64 << 10

// Slot returns the slot the endpoint fills.
func (e *Endpoint) Slot() *Slot { return e.slot }

// Writer returns the endpoint's batching writer.
func (e *Endpoint) Writer() *ipc.Writer { return e.w }

// New returns an empty Router.
func New(opts Options) *Router {
	if opts.MaxPending <= 0 {
		opts.MaxPending = DefaultMaxPending
	}
	if opts.MaxPendingBytes <= 0 {
		opts.MaxPendingBytes = DefaultMaxPendingBytes
	}
	if opts.MaxFrame <= 0 {
		opts.MaxFrame = ipc.DefaultMaxFrame
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Router{opts: opts, log: log, byPID: make(map[uint32]*Endpoint)}
}

// Stats returns the counters.
func (r *Router) Stats() Stats {
	return Stats{
		Relayed: r.relayed.Load(), Held: r.held.Load(), Redelivered: r.redelivered.Load(),
		Dropped: r.dropped.Load(), LostReplies: r.lostReplies.Load(), Unreachable: r.unreachable.Load(),
	}
}

// AddSlot creates the agent slot (role RoleAgent, id 0) or worker slot id.
func (r *Router) AddSlot(role ipc.Role, id int) *Slot {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := &Slot{Role: role, ID: id}
	if role == ipc.RoleAgent {
		r.agent = s
		return s
	}
	i, _ := slices.BinarySearchFunc(r.workers, id, func(s *Slot, id int) int { return s.ID - id })
	r.workers = slices.Insert(r.workers, i, s)
	return s
}

// RemoveSlot takes a worker slot out of routing (scale down). Messages still held
// for it are discarded with a log line: each was a copy for every worker, and this
// worker is gone for good. Random messages are handed to another worker.
func (r *Router) RemoveSlot(s *Slot) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.workers = slices.DeleteFunc(r.workers, func(x *Slot) bool { return x == s })
	if r.agent == s {
		r.agent = nil
	}
	s.mu.Lock()
	s.removed = true
	q := s.orphans
	s.orphans = frameQueue{}
	s.mu.Unlock()
	r.redistribute(s, &q)
}

// Attach registers a starting process in slot s. Until MarkReady it receives only
// replies; messages for it (and, if the slot has no ready process, for the slot)
// wait in its queue.
func (r *Router) Attach(s *Slot, pid uint32, w *ipc.Writer) (*Endpoint, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.next != nil {
		return nil, fmt.Errorf("relay: slot %d already has a starting process (pid %d)", s.ID, s.next.PID)
	}
	if _, dup := r.byPID[pid]; dup {
		return nil, fmt.Errorf("relay: pid %d is already attached", pid)
	}
	e := &Endpoint{PID: pid, Role: s.Role, slot: s, w: w}
	r.byPID[pid] = e
	s.next = e
	e.queue, s.orphans = s.orphans, frameQueue{}
	return e, nil
}

// MarkReady makes e a full member: what waited for it is written, in order, and if
// it was its slot's starting process it becomes the one receiving the slot's
// messages. It returns the process it took over from, if any (still attached until
// Detach, and still receiving pid-addressed messages).
func (r *Router) MarkReady(e *Endpoint) (previous *Endpoint) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	s := e.slot
	s.mu.Lock()
	defer s.mu.Unlock()
	if e.gone || e.ready {
		return nil
	}
	e.ready = true
	q := e.queue
	e.queue = frameQueue{}
	q.Drain(func(raw []byte, _ uint64) { r.send(e, raw, nil) })
	if s.next == e {
		previous = s.cur
		s.cur, s.next = e, nil
		s.hasReady.Store(true)
	}
	return previous
}

// Restore undoes a replacement that failed: prev, the process e was to take over
// from, keeps receiving the slot's messages. Used when a reload is aborted.
func (r *Router) Restore(s *Slot, prev *Endpoint) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if prev != nil && !prev.gone && prev.ready {
		s.cur = prev
		s.hasReady.Store(true)
	}
}

// Detach removes a process that exited. Held messages it had not acknowledged are
// delivered to its slot's next process; messages that waited for it by pid are
// nacked to their senders.
func (r *Router) Detach(e *Endpoint) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.byPID, e.PID)
	s := e.slot
	s.mu.Lock()
	if e.gone {
		s.mu.Unlock()
		return
	}
	e.gone = true
	if s.cur == e {
		s.cur = nil
		s.hasReady.Store(false)
	}
	if s.next == e {
		s.next = nil
	}
	// e is gone: nothing else uses its queues, so they are drained in place,
	// each big frame released as soon as it is copied on.
	var again frameQueue
	redelivered := e.retained.Len()
	e.retained.Drain(func(raw []byte, _ uint64) { again.Push(raw, 0) })
	e.queue.Drain(func(raw []byte, _ uint64) {
		if flagsOf(raw)&ipc.FlagHeld != 0 {
			again.Push(raw, 0)
			return
		}
		r.nackLocked(raw, fmt.Sprintf("pid %d exited before it was ready", e.PID))
	})
	e.retained, e.queue = frameQueue{}, frameQueue{}
	s.mu.Unlock()
	r.redelivered.Add(uint64(redelivered))
	r.redistribute(s, &again)
}

// redistribute places held frames that lost their receiver, and leaves q empty
// (its big frames released). Called with r.mu held.
func (r *Router) redistribute(s *Slot, q *frameQueue) {
	q.Drain(func(raw []byte, _ uint64) {
		if ipc.Dest(raw[5]) == ipc.DestRandom && s.Role == ipc.RoleWorker {
			s.mu.Lock()
			removed := s.removed
			s.mu.Unlock()
			if removed {
				if t := r.pickWorker(); t != nil {
					r.toSlot(t, raw, nil)
					return
				}
			}
		}
		s.mu.Lock()
		if s.removed {
			s.mu.Unlock()
			r.unreachable.Add(1)
			r.log.Info("message for a removed slot discarded", "slot", s.ID, "action", actionOf(raw), "from_pid", fromOf(raw))
			return
		}
		r.placeLocked(s, raw, nil)
		s.mu.Unlock()
	})
}

// Flush writes what Handle queued on behalf of from. The reader calls it at the
// end of each read batch (ipc.Reader.HasFrame false).
func (r *Router) Flush(from *Endpoint) {
	for i, e := range from.touched {
		e.w.Flush()
		from.touched[i] = nil
	}
	from.touched = from.touched[:0]
}

// Handle routes one frame read from e. Message and reply frames are modified in
// place (sender fields) before being copied, and queued: call Flush(e) once the
// reader has no whole frame buffered.
func (r *Router) Handle(e *Endpoint, f ipc.Frame) {
	switch f.Kind {
	case ipc.KindMessage:
		ipc.SetSender(f.Raw, e.Role, e.PID)
		r.route(e, f)
	case ipc.KindReply:
		ipc.SetSender(f.Raw, e.Role, e.PID)
		f.Role, f.From = e.Role, e.PID // what the master's own requests check
		r.reply(f, e)
	case ipc.KindAck:
		r.ack(e, f.Ref)
	}
}

func (r *Router) route(from *Endpoint, f ipc.Frame) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	raw := f.Raw
	if f.Flags&ipc.FlagExcept != 0 && f.Dest != ipc.DestApp && f.Dest != ipc.DestAll {
		r.nack(from, raw, fmt.Sprintf("malformed except list: FlagExcept on a %v message", f.Dest))
		return
	}
	switch f.Dest {
	case ipc.DestPID:
		to := r.byPID[f.To]
		if to == nil {
			r.nack(from, raw, fmt.Sprintf("no process with pid %d in the cluster", f.To))
			return
		}
		ipc.SetFlags(raw, f.Flags&^ipc.FlagHeld)
		r.toEndpointLocked(to, raw, from)
	case ipc.DestAgent:
		if r.agent == nil {
			r.nack(from, raw, "this cluster has no agent")
			return
		}
		r.toSlot(r.agent, raw, from)
	case ipc.DestApp, ipc.DestAll:
		if f.Flags&ipc.FlagExcept != 0 {
			r.broadcastExcept(from, f)
			return
		}
		if f.Dest == ipc.DestAll && r.agent != nil {
			r.toSlot(r.agent, raw, from)
		}
		for _, s := range r.workers {
			r.toSlot(s, raw, from)
		}
	case ipc.DestWorker:
		r.toWorker(from, f)
	case ipc.DestMaster:
		if r.opts.MasterMessage == nil {
			r.nack(from, raw, "the master takes no messages")
			return
		}
		r.opts.MasterMessage(from, f)
	case ipc.DestFleet:
		if r.opts.FleetMessage == nil {
			r.nack(from, raw, "this cluster is not in a fleet")
			return
		}
		if err := r.opts.FleetMessage(from, f); err != nil {
			r.nack(from, raw, err.Error())
		}
	case ipc.DestRandom:
		s := r.pickWorker()
		if s == nil {
			r.nack(from, raw, "this cluster has no workers")
			return
		}
		r.toSlot(s, raw, from)
	default:
		r.nack(from, raw, fmt.Sprintf("destination %v is not routable", f.Dest))
	}
}

// workerSlot returns worker slot id, or nil. Called with r.mu held.
func (r *Router) workerSlot(id int) *Slot {
	i, ok := slices.BinarySearchFunc(r.workers, id, func(s *Slot, id int) int { return s.ID - id })
	if !ok {
		return nil
	}
	return r.workers[i]
}

// toWorker routes a DestWorker message (what a direct channel's dead peer
// did not acknowledge, handed back by its sender) to worker slot f.To, held
// for it as a role-addressed copy for that slot is. It is written as DestApp
// with to zero, which is what such a copy looks like to its receiver, and
// what one that speaks a protocol before ipc.DirectVersion can decode.
// Called with r.mu held.
func (r *Router) toWorker(from *Endpoint, f ipc.Frame) {
	s := r.workerSlot(int(f.To))
	if s == nil {
		r.unreachable.Add(1)
		r.refuse(from, f.Raw, fmt.Sprintf("no worker %d in the cluster", f.To))
		return
	}
	ipc.SetDest(f.Raw, ipc.DestApp)
	ipc.SetTo(f.Raw, 0)
	r.toSlot(s, f.Raw, from)
}

// broadcastExcept routes a DestApp or DestAll message with FlagExcept: to
// every slot of its destination but those its list names (0 the agent, k
// worker k; the sender served them over direct channels), as the message
// without the list and without the flag. The frame is rebuilt in the
// sender's scratch buffer: route runs on the sender's reader goroutine, and
// everything the router keeps or writes is copied. Called with r.mu held.
func (r *Router) broadcastExcept(from *Endpoint, f ipc.Frame) {
	except, data, err := ipc.SplitExcept(f.Payload, from.except[:0])
	if err != nil {
		r.nack(from, f.Raw, "malformed except list: "+err.Error())
		return
	}
	if cap(except) <= maxScratch/8 { // a list of thousands is not kept
		from.except = except
	}
	// The frame without the list: its header and action as they are, then
	// the data, with size and flags set anew.
	head := ipc.HeaderSize + len(f.Action)
	raw := from.scratch[:0]
	if head+len(data) > maxScratch {
		raw = make([]byte, 0, head+len(data))
	}
	raw = append(raw, f.Raw[:head]...)
	raw = append(raw, data...)
	binary.BigEndian.PutUint32(raw, uint32(len(raw)-4))
	ipc.SetFlags(raw, f.Flags&^ipc.FlagExcept)
	if cap(raw) <= maxScratch {
		from.scratch = raw
	}
	if f.Dest == ipc.DestAll && r.agent != nil && !slices.Contains(except, 0) {
		r.toSlot(r.agent, raw, from)
	}
	for _, s := range r.workers {
		if !slices.Contains(except, s.ID) {
			r.toSlot(s, raw, from)
		}
	}
}

// pickWorker chooses the next worker slot round robin over the slots with a
// ready process, or over all slots if none is ready (the message then waits).
// Called with r.mu held.
func (r *Router) pickWorker() *Slot {
	n := len(r.workers)
	if n == 0 {
		return nil
	}
	ready := 0
	for _, s := range r.workers {
		if s.hasReady.Load() {
			ready++
		}
	}
	turn := r.rr.Add(1)
	if ready == 0 {
		return r.workers[turn%uint32(n)]
	}
	k := int(turn % uint32(ready))
	for _, s := range r.workers {
		if s.hasReady.Load() {
			if k == 0 {
				return s
			}
			k--
		}
	}
	return r.workers[0] // a slot became unready meanwhile
}

func (r *Router) toSlot(s *Slot, raw []byte, by *Endpoint) {
	ipc.SetFlags(raw, flagsOf(raw)|ipc.FlagHeld)
	s.mu.Lock()
	r.placeLocked(s, raw, by)
	s.mu.Unlock()
}

// placeLocked puts a held frame where slot s takes it. Called with s.mu held.
func (r *Router) placeLocked(s *Slot, raw []byte, by *Endpoint) {
	switch {
	case s.cur != nil:
		r.send(s.cur, raw, by)
	case s.next != nil:
		r.hold(&s.next.queue, s.next.retained.Bytes(), raw)
	default:
		r.hold(&s.orphans, 0, raw)
	}
}

// hold queues a frame for a process that is not ready; also is the bytes the
// master holds for that process elsewhere (unacknowledged). Called with the slot
// locked.
func (r *Router) hold(q *frameQueue, also int, raw []byte) {
	if q.Len() >= r.opts.MaxPending {
		r.nackLocked(raw, fmt.Sprintf("receiver is not ready and already holds %d messages", q.Len()))
		return
	}
	if n := q.Bytes() + also; n+len(raw) > r.opts.MaxPendingBytes {
		r.nackLocked(raw, fmt.Sprintf("receiver is not ready and already holds %d bytes (bound %d)", n, r.opts.MaxPendingBytes))
		return
	}
	q.Push(raw, 0)
	r.held.Add(1)
}

// send writes a frame to a ready process, or, when routing on behalf of a
// reader (by != nil), queues it until that reader calls Flush. Called with e's
// slot locked.
func (r *Router) send(e *Endpoint, raw []byte, by *Endpoint) {
	held := flagsOf(raw)&ipc.FlagHeld != 0
	if held {
		if e.retained.Len() >= r.opts.MaxPending {
			r.nackLocked(raw, fmt.Sprintf("pid %d has %d unacknowledged messages", e.PID, e.retained.Len()))
			return
		}
		if n := e.retained.Bytes() + e.queue.Bytes(); n+len(raw) > r.opts.MaxPendingBytes {
			r.nackLocked(raw, fmt.Sprintf("pid %d has %d bytes of unacknowledged messages (bound %d)", e.PID, n, r.opts.MaxPendingBytes))
			return
		}
	}
	e.sent++
	if held {
		e.retained.Push(raw, e.sent)
	}
	var err error
	if by != nil {
		if err = e.w.Queue(raw); err == nil && !slices.Contains(by.touched, e) {
			by.touched = append(by.touched, e)
		}
	} else {
		err = e.w.AppendRaw(raw)
	}
	if err != nil {
		// Not written: keep the child's count and ours in step.
		e.sent--
		if held {
			e.retained.PopBack()
			if !e.gone && isClosed(err) {
				// The process is going away; Detach will hand this on.
				e.queue.Push(raw, 0)
				return
			}
		}
		r.nackLocked(raw, fmt.Sprintf("write to pid %d: %v", e.PID, err))
		return
	}
	r.relayed.Add(1)
}

func (r *Router) ack(e *Endpoint, n uint64) {
	s := e.slot
	s.mu.Lock()
	for e.retained.Len() > 0 {
		if _, seq := e.retained.Front(); seq > n {
			break
		}
		e.retained.Pop()
	}
	s.mu.Unlock()
}

func (r *Router) reply(f ipc.Frame, by *Endpoint) {
	if f.To == r.opts.MasterPID && r.opts.MasterReply != nil {
		r.opts.MasterReply(f)
		return
	}
	r.mu.RLock()
	to := r.byPID[f.To]
	r.mu.RUnlock()
	if to == nil {
		r.lostReplies.Add(1)
		r.log.Warn("reply dropped: the requester is gone", "action", string(f.Action), "to_pid", f.To, "from_pid", f.From)
		return
	}
	err := to.w.Queue(f.Raw)
	if err == nil && !slices.Contains(by.touched, to) {
		by.touched = append(by.touched, to)
	}
	if err != nil {
		r.lostReplies.Add(1)
		r.log.Warn("reply dropped", "action", string(f.Action), "to_pid", f.To, "err", err)
	}
}

// nack tells the sender of raw that it was not delivered, and counts it
// dropped. Called with r.mu held.
func (r *Router) nack(from *Endpoint, raw []byte, reason string) {
	r.dropped.Add(1)
	r.refuse(from, raw, reason)
}

// refuse is nack without the count: for a caller that counts the frame
// elsewhere (Stats.Unreachable).
func (r *Router) refuse(from *Endpoint, raw []byte, reason string) {
	f, err := ipc.Decode(raw)
	if err != nil {
		return
	}
	r.log.Warn("message not delivered", "action", string(f.Action), "from_pid", f.From, "reason", reason)
	if from == nil {
		return
	}
	h := ipc.Header{Kind: ipc.KindNack, Role: ipc.RoleMaster, From: r.opts.MasterPID, To: f.From, ID: f.ID}
	_ = from.w.Append(&h, string(f.Action), []byte(reason))
}

// nackLocked is nack for callers that hold r.mu but not the sender: it finds the
// sender by pid.
func (r *Router) nackLocked(raw []byte, reason string) {
	r.nack(r.byPID[fromOf(raw)], raw, reason)
}

// Event sends a message from the master to one process, by pid semantics.
func (r *Router) Event(e *Endpoint, action string, payload []byte) {
	r.toEndpoint(e, r.encodeEvent(ipc.DestPID, e.PID, action, payload))
}

// toEndpoint delivers a pid-addressed frame to e now, or when it is ready.
// Drained answers e's wire.ActDrain: the answer is written after everything
// the Router wrote to e before. Called from the MasterMessage callback, with
// the Router's lock held.
func (r *Router) Drained(e *Endpoint) {
	r.toEndpointLocked(e, r.encodeEvent(ipc.DestPID, e.PID, wire.ActDrained, nil), e)
}

func (r *Router) toEndpoint(e *Endpoint, raw []byte) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	r.toEndpointLocked(e, raw, nil)
}

// toEndpointLocked is toEndpoint for callers holding r.mu; by as for send.
func (r *Router) toEndpointLocked(e *Endpoint, raw []byte, by *Endpoint) {
	s := e.slot
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case e.gone:
	case e.ready:
		r.send(e, raw, by)
	default:
		r.hold(&e.queue, e.retained.Bytes(), raw)
	}
}

// Request sends a request from the master to one process (pid semantics: held
// until it is ready). Its reply comes back through Options.MasterReply.
func (r *Router) Request(e *Endpoint, id uint64, action string, payload []byte) {
	raw := r.encodeEvent(ipc.DestPID, e.PID, action, payload)
	ipc.SetFlags(raw, ipc.FlagRequest)
	binary.BigEndian.PutUint64(raw[20:], id)
	r.toEndpoint(e, raw)
}

// EventToSlot sends a message from the master to a slot, with held semantics: it
// reaches whichever process fills the slot, once ready.
func (r *Router) EventToSlot(s *Slot, action string, payload []byte) {
	dest := ipc.DestApp
	if s.Role == ipc.RoleAgent {
		dest = ipc.DestAgent
	}
	raw := r.encodeEvent(dest, 0, action, payload)
	r.mu.RLock()
	defer r.mu.RUnlock()
	r.toSlot(s, raw, nil)
}

func (r *Router) encodeEvent(dest ipc.Dest, to uint32, action string, payload []byte) []byte {
	h := ipc.Header{Kind: ipc.KindMessage, Dest: dest, Role: ipc.RoleMaster, From: r.opts.MasterPID, To: to}
	raw, err := ipc.AppendFrame(nil, &h, action, payload, ipc.DefaultMaxFrame)
	if err != nil {
		panic("relay: event does not encode: " + err.Error()) // master-built events are small
	}
	return raw
}

// Pending reports the messages an endpoint has queued and unacknowledged.
func (r *Router) Pending(e *Endpoint) (queued, unacked int) {
	e.slot.mu.Lock()
	defer e.slot.mu.Unlock()
	return e.queue.Len(), e.retained.Len()
}

// PendingBytes reports the bytes of the messages an endpoint has queued and
// unacknowledged: what Options.MaxPendingBytes bounds.
func (r *Router) PendingBytes(e *Endpoint) int {
	e.slot.mu.Lock()
	defer e.slot.mu.Unlock()
	return e.queue.Bytes() + e.retained.Bytes()
}

func flagsOf(raw []byte) ipc.Flags { return ipc.Flags(raw[7]) }
func fromOf(raw []byte) uint32     { return binary.BigEndian.Uint32(raw[12:]) }
func actionOf(raw []byte) string {
	f, err := ipc.Decode(raw)
	if err != nil {
		return ""
	}
	return string(f.Action)
}

func isClosed(err error) bool { return errors.Is(err, ipc.ErrClosed) }

// NackTo tells process pid that its message id (action) was not delivered.
// Not from FleetMessage (which returns the error instead).
func (r *Router) NackTo(pid uint32, id uint64, action, reason string) {
	r.dropped.Add(1)
	r.log.Warn("message not delivered", "action", action, "from_pid", pid, "reason", reason)
	r.mu.RLock()
	e := r.byPID[pid]
	r.mu.RUnlock()
	if e == nil {
		return
	}
	h := ipc.Header{Kind: ipc.KindNack, Role: ipc.RoleMaster, From: r.opts.MasterPID, To: pid, ID: id}
	if len(action) > ipc.MaxActionLen {
		action = action[:ipc.MaxActionLen]
	}
	_ = e.w.Append(&h, action, []byte(reason))
}

// ErrUndeliverable: a fleet message found nobody in this cluster to take it.
var ErrUndeliverable = errors.New("nobody in this cluster to deliver to")

// FromFleet delivers a message from the fleet to this cluster, with held
// semantics (as a role-addressed message from a child): dest is DestAll,
// DestApp, DestAgent or DestRandom. payload starts with the origin
// (ipc.AppendOrigin); flags may add FlagRaw. With a batch b, the frames are
// queued on the receivers' writers and written by FlushFleet(b), so a burst
// from NATS costs one write per receiver, not one per message; b nil writes
// them at once.
func (r *Router) FromFleet(b *FleetBatch, dest ipc.Dest, action string, flags ipc.Flags, payload []byte) error {
	h := ipc.Header{Kind: ipc.KindMessage, Dest: dest, Role: ipc.RoleMaster, Flags: flags | ipc.FlagFleet, From: r.opts.MasterPID}
	raw, err := ipc.AppendFrame(nil, &h, action, payload, r.opts.MaxFrame)
	if err != nil {
		return err
	}
	var by *Endpoint
	if b != nil {
		b.mu.Lock()
		defer b.mu.Unlock()
		by = &b.by
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	switch dest {
	case ipc.DestAgent:
		if r.agent == nil {
			return fmt.Errorf("%w: no agent", ErrUndeliverable)
		}
		r.toSlot(r.agent, raw, by)
	case ipc.DestApp, ipc.DestAll:
		if dest == ipc.DestAll && r.agent != nil {
			r.toSlot(r.agent, raw, by)
		}
		if len(r.workers) == 0 && (dest == ipc.DestApp || r.agent == nil) {
			return fmt.Errorf("%w: no processes", ErrUndeliverable)
		}
		for _, s := range r.workers {
			r.toSlot(s, raw, by)
		}
	case ipc.DestRandom:
		s := r.pickWorker()
		if s == nil {
			return fmt.Errorf("%w: no workers", ErrUndeliverable)
		}
		r.toSlot(s, raw, by)
	default:
		return fmt.Errorf("relay: fleet destination %v", dest)
	}
	return nil
}

// FleetBatch collects the receivers FromFleet queued frames for since the
// last FlushFleet: one per fleet subscription. Its zero value is ready.
type FleetBatch struct {
	mu sync.Mutex
	by Endpoint // only its touched list is used
}

// FlushFleet writes what FromFleet queued with b.
func (r *Router) FlushFleet(b *FleetBatch) {
	b.mu.Lock()
	defer b.mu.Unlock()
	r.Flush(&b.by)
}

// PickReady returns a ready worker, round robin, or nil if none is ready.
func (r *Router) PickReady() *Endpoint {
	r.mu.RLock()
	defer r.mu.RUnlock()
	n := len(r.workers)
	turn := int(r.rr.Add(1))
	for i := range n {
		s := r.workers[(turn+i)%n]
		s.mu.Lock()
		e := s.cur
		s.mu.Unlock()
		if e != nil {
			return e
		}
	}
	return nil
}

// FleetRequest sends a request from the fleet to process e (pid semantics);
// its reply comes back through Options.MasterReply with Ref id. payload
// starts with the origin.
func (r *Router) FleetRequest(e *Endpoint, id uint64, action string, flags ipc.Flags, payload []byte) error {
	h := ipc.Header{Kind: ipc.KindMessage, Dest: ipc.DestPID, Role: ipc.RoleMaster, Flags: flags | ipc.FlagFleet | ipc.FlagRequest,
		From: r.opts.MasterPID, To: e.PID, ID: id}
	raw, err := ipc.AppendFrame(nil, &h, action, payload, r.opts.MaxFrame)
	if err != nil {
		return err
	}
	r.toEndpoint(e, raw)
	return nil
}

// FleetReply answers process pid's fleet request ref. Unless action is one
// of brood's own (a refusal), payload starts with the origin of the answer.
func (r *Router) FleetReply(pid uint32, ref uint64, action string, flags ipc.Flags, payload []byte) error {
	if len(action) > ipc.MaxActionLen {
		action = action[:ipc.MaxActionLen]
	}
	h := ipc.Header{Kind: ipc.KindReply, Dest: ipc.DestPID, Role: ipc.RoleMaster, Flags: flags, From: r.opts.MasterPID, To: pid, Ref: ref}
	raw, err := ipc.AppendFrame(nil, &h, action, payload, r.opts.MaxFrame)
	if err != nil {
		h.Flags = 0
		raw, _ = ipc.AppendFrame(nil, &h, "brood:refused", []byte(err.Error()), r.opts.MaxFrame)
	}
	r.mu.RLock()
	e := r.byPID[pid]
	r.mu.RUnlock()
	if e == nil {
		r.lostReplies.Add(1)
		return fmt.Errorf("relay: reply to pid %d: the requester is gone", pid)
	}
	if err := e.w.AppendRaw(raw); err != nil {
		r.lostReplies.Add(1)
		return fmt.Errorf("relay: reply to pid %d: %w", pid, err)
	}
	return nil
}
