package brood

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/relay"
	"github.com/brood-go/brood/internal/wire"
)

// Built-in actions, sent by the master. The "brood:" prefix is reserved: user
// messages may not use it, but handlers may listen to these.
const (
	// ActionReady: the whole cluster is up (Egg's egg-ready). Also delivered to
	// every process started later, once it is ready.
	ActionReady = wire.ActionReady
	// ActionPids: to the agent, the pids of the ready workers ([]int), whenever
	// that set changes and when the agent becomes ready (Egg's egg-pids).
	ActionPids = wire.ActionPids
	// ActionAgentExit and ActionAgentStart: to every worker when the agent dies and
	// when its replacement is ready. Data is a ProcessEvent.
	ActionAgentExit  = wire.ActionAgentExit
	ActionAgentStart = wire.ActionAgentStart
	// ActionWorkerExit and ActionWorkerStart: to the agent when a worker exits and
	// when a worker becomes ready. Data is a ProcessEvent.
	ActionWorkerExit  = wire.ActionWorkerExit
	ActionWorkerStart = wire.ActionWorkerStart
)

// ProcessEvent is the data of the brood:*-start and brood:*-exit events: the
// process's Role ("agent", "worker"), ID and PID, and for exits the Reason: the
// typed reason and what happened, e.g. "signal: killed", "panic: exit status 2
// (panic: boom)", "hang: ...", "memory: ...".
type ProcessEvent = wire.ProcessEvent

// Errors returned by the Messenger. They are wrapped with the action and
// destination; test with errors.Is.
var (
	// ErrReservedAction: user actions may not start with "brood:".
	ErrReservedAction = errors.New(`action names starting with "brood:" are reserved`)
	// ErrNoProcess: no process with that pid is in the cluster (it exited, or never was).
	ErrNoProcess = errors.New("no such process in the cluster")
	// ErrProcessExited: the process a request was sent to exited before it answered.
	ErrProcessExited = errors.New("process exited before answering")
	// ErrNotDelivered: the master refused the message (see the wrapped reason).
	ErrNotDelivered = errors.New("message not delivered")
	// ErrNotRequest: Reply was called on a message that is not a request.
	ErrNotRequest = errors.New("message is not a request")
	// ErrStopped: the process is stopping and its channel to the master is closed.
	ErrStopped = errors.New("messenger stopped")
	// ErrTooLarge: the encoded message exceeds Config.MaxFrame.
	ErrTooLarge = ipc.ErrTooLarge
)

// Message is one message received from another process (or from the master, for
// brood:* events).
type Message struct {
	Action string
	From   int    // sender pid
	Role   Role   // sender role
	Data   []byte // JSON unless raw bytes were sent
	// Node is the fleet member the message was sent from, for a message that
	// came through the fleet (Process.Fleet) — this member's own node id for
	// its own fleet messages, which come back to it too — and "" for a local
	// message. From and Role are then the sender's pid on that node and its
	// role.
	Node string

	replyTo uint32 // where a Reply goes: the sender, or the master for a fleet request
	id      uint64
	seq     uint64 // its place among the messages this process received
	size    int64  // its frame's size, as counted against Config.MaxPendingBytes
	request bool
	raw     bool
	held    bool  // the sender (the master, or the peer of src) keeps a copy until we acknowledge it
	src     *peer // the direct channel it came over; nil: from the master
	m       *Messenger
}

// Decode unmarshals the message data into v. Raw data ([]byte sent) is copied
// into a *[]byte or *json.RawMessage; anything else is decoded as JSON.
func (msg Message) Decode(v any) error {
	switch p := v.(type) {
	case *[]byte:
		*p = append((*p)[:0], msg.Data...)
		return nil
	case *json.RawMessage:
		*p = append((*p)[:0], msg.Data...)
		return nil
	}
	if len(msg.Data) == 0 {
		return fmt.Errorf("brood: decode %q from pid %d: message has no data", msg.Action, msg.From)
	}
	if err := json.Unmarshal(msg.Data, v); err != nil {
		return fmt.Errorf("brood: decode %q from pid %d: %w", msg.Action, msg.From, err)
	}
	return nil
}

// IsRequest reports whether the sender waits for a Reply.
func (msg Message) IsRequest() bool { return msg.request }

// Reply answers a request (see Messenger.Request). data is encoded like a sent
// message's. Replying to a process that has exited is not an error here: the
// master logs and counts the lost reply.
func (msg Message) Reply(data any) error {
	if !msg.request || msg.m == nil {
		return fmt.Errorf("brood: reply to %q from pid %d: %w", msg.Action, msg.From, ErrNotRequest)
	}
	m := msg.m
	payload, raw, err := encodeData(data)
	if err != nil {
		return fmt.Errorf("brood: reply to %q: %w", msg.Action, err)
	}
	h := ipc.Header{Kind: ipc.KindReply, Dest: ipc.DestPID, Role: m.role, From: m.self, To: msg.replyTo, Ref: msg.id}
	if raw {
		h.Flags |= ipc.FlagRaw
	}
	if msg.src != nil { // answered on the channel it came over
		if err := msg.src.w.Append(&h, msg.Action, payload); err != nil {
			if errors.Is(err, ipc.ErrTooLarge) {
				return m.sendError("reply to", msg.Action, fmt.Sprintf("pid %d", msg.From), err)
			}
			m.log.Debug("reply lost: the requester's direct channel ended", "action", msg.Action, "to_pid", msg.From)
			return nil
		}
		m.directSent.Add(1)
		return nil
	}
	if err := m.w.Append(&h, msg.Action, payload); err != nil {
		return m.sendError("reply to", msg.Action, fmt.Sprintf("pid %d", msg.From), err)
	}
	return nil
}

// Member is one process of the cluster as the master last described it.
type Member struct {
	PID   int  `json:"pid"`
	Role  Role `json:"role"`
	ID    int  `json:"id"`
	Ready bool `json:"ready"`
	// Stopping: the process drains before it exits (a reload, a scale
	// down, a replacement). It still handles what it was sent and is
	// reachable by pid, but new work belongs elsewhere.
	Stopping bool `json:"stopping,omitempty"`
}

// Messenger sends messages to other processes of the cluster and dispatches
// the ones it receives to handlers. Messages go through the master, except
// between the agent and a worker, which have a direct channel of their own
// once both are ready (unless Config.RelayOnly); every guarantee below holds
// on both paths and across the switch between them.
//
// Delivery guarantees:
//   - Order: messages from one sender to one receiver are handled in send order.
//   - Messages addressed by role (Broadcast, SendToApp, SendToAgent, SendRandom)
//     are never lost while the cluster runs: the master holds them for a process
//     that is starting or restarting and delivers them once it calls Ready, and
//     a copy is kept (by the master, or by the sender for a message it sent over
//     a direct channel) until the receiver's handler has returned; if the
//     receiver dies first, the process that takes its slot gets the message. A duplicate is
//     possible only if a process dies in the instant between its handler returning
//     and that acknowledgement being written.
//   - Messages addressed by pid (SendTo, Request) reach that process or fail:
//     SendTo to a pid not in the cluster returns ErrNoProcess; a Request whose
//     receiver exits fails with ErrProcessExited. A message that reached a process
//     killed before handling it is lost with the process, as a request in flight.
//   - Bounds: the master holds at most Config.MaxPending messages and
//     Config.MaxPendingBytes bytes per process; beyond that a message is refused
//     and the sender logs and counts it (Stats.Refused). A sender keeps at most
//     as many unacknowledged per direct channel; beyond, the send fails with
//     ErrNotDelivered.
//   - A receiver's handler queue is bounded by the same two numbers. A
//     pid-addressed message (SendTo, Request) that arrives while it is full is
//     not queued: it is counted (the receiver's Stats.Dropped) and logged by the
//     receiver (one line when dropping starts, then at most one a second and one
//     when its queue has drained, each with the count); a Request dropped so is
//     answered at once, and fails for its sender with ErrNotDelivered. A one-way
//     SendTo is not reported back to its sender. Role-addressed messages and
//     brood's own are always queued: the master's bounds already limit them, so
//     the queue holds at most twice the bounds. The channel's reader never waits
//     for the queue, so a flood delays neither heartbeats nor replies.
//   - Messages sent before this process's own Ready are delivered; messages for
//     this process are handed to handlers only after its Ready.
//   - These guarantees hold while the cluster runs. When the whole cluster stops,
//     workers stop first and then the agent: messages still held or in flight
//     when their receivers have stopped are dropped. So are messages still in a
//     sender's own buffer when it is SIGKILLed; a Broadcast or SendToApp it was
//     sending then, over direct channels one write per receiver, may have
//     reached some receivers and not others.
//
// Handlers run one at a time, in arrival order, on a goroutine of their own, never
// on the channel's reader: a slow handler delays later messages but not replies,
// heartbeats or the channel. Start long work with Process.Go. A panic in a handler
// is a guarded panic (see Process.Go).
type Messenger struct {
	w         *ipc.Writer
	self      uint32
	masterPID uint32 // the master's messenger address: fleet requests are answered by it
	role      ipc.Role
	maxFrame  int
	log       *slog.Logger
	p         *Process
	nextID    atomic.Uint64

	mu       sync.Mutex
	handlers map[string][]*subscription
	members  map[int]Member
	pending  ipc.Pending[requestResult] // Requests awaiting their Reply
	closed   bool
	welcomed chan struct{} // closed when the first member table arrives

	qmu         sync.Mutex
	qclosed     bool
	queue       handlerQueue
	actions     map[string]string // action names received, interned (guarded by qmu)
	lastAction  string            // the last one interned (guarded by qmu)
	qwake       chan struct{}
	qdone       chan struct{}
	rseq        uint64                   // messages received, the master's sequence for this process (guarded by qmu)
	side        map[string]func(Message) // brood's handlers that run off the dispatcher (set before the first frame)
	sideRunning sync.WaitGroup
	handled     uint64 // rseq of the last message handled (dispatcher only)

	// The handler queue's bounds and contents: messages and frame bytes queued or
	// in the dispatcher's current batch.
	maxQueue, maxQueueBytes int
	qlen, qbytes            atomic.Int64

	// Drops not yet logged, and when the last log line about them was written
	// (guarded by qmu).
	dropUnlogged uint64
	dropLogged   time.Time

	sent, received, refused, unhandled, dropped atomic.Uint64

	// Direct channels (direct.go); all guarded by dmu unless atomic.
	dmu        sync.Mutex
	chanSock   *net.UnixConn // the channel socket; nil: no direct channels
	offersDone chan struct{}
	peers      map[uint32]*peer
	openedBy   map[uint32]bool  // ActDirectOpen from pids whose channel has not arrived
	unfenced   map[uint32]*peer // ended channels whose messages wait for their ActDirectOpen
	ended      []*peer          // ended channels whose readers may still run
	dclosed    bool
	hasPeers   atomic.Bool // a channel arrived once: route sends through dmu
	directSent atomic.Uint64
	pong       []byte // scratch for the pong's payload (reader goroutine only)

	protocol int // the IPC version spoken with the master

	// The drain at stop (see drain): what has not answered yet.
	drainMu     sync.Mutex
	drainMaster bool
	masterLost  bool // the channel to the master ended before the drain
	drainPeers  map[*peer]bool
	drainDone   chan struct{} // closed when nothing is left to wait for

	// holders are the members that receive their slot's messages (ready,
	// not stopping), the agent first, then workers by id; rr picks among
	// the workers for SendRandom. Both guarded by mu.
	holders []Member
	rr      uint64
}

// actionRefused is the action of a reply that says the receiver dropped the
// request instead of handling it; the payload is the reason. Users cannot send
// brood: actions, so no genuine reply carries it.
const actionRefused = wire.ActRefused

// maxIdleQueue is the messages' worth of blocks the handler queue keeps for
// reuse once drained; a burst that grew it further gives the memory back.
const maxIdleQueue = 4096

type subscription struct {
	h    func(Message)
	once bool
}

type requestResult struct {
	msg Message
	err error
}

func newMessenger(w *ipc.Writer, self uint32, role Role, maxFrame int, log *slog.Logger) *Messenger {
	m := &Messenger{
		w: w, self: self, role: ipc.Role(role), maxFrame: maxFrame, log: log,
		handlers: make(map[string][]*subscription),
		welcomed: make(chan struct{}),
		qwake:    make(chan struct{}, 1),
		qdone:    make(chan struct{}),

		maxQueue: relay.DefaultMaxPending, maxQueueBytes: relay.DefaultMaxPendingBytes,
	}
	go m.dispatchLoop()
	return m
}

// MessengerStats counts a process's messages since it started.
type MessengerStats struct {
	Sent      uint64 // messages and replies sent, through the master or directly
	Direct    uint64 // of those, the ones (and the replies) sent over a direct channel to the agent or a worker
	Received  uint64 // messages received (handled, unhandled or dropped)
	Refused   uint64 // messages the master could not deliver (logged when they happened), and requests the receiver dropped
	Unhandled uint64 // received messages no handler was registered for
	Dropped   uint64 // received pid-addressed messages not handled because the handler queue was full (logged)
}

// Stats returns the counters.
func (m *Messenger) Stats() MessengerStats {
	return MessengerStats{
		Sent: m.sent.Load(), Direct: m.directSent.Load(), Received: m.received.Load(), Refused: m.refused.Load(),
		Unhandled: m.unhandled.Load(), Dropped: m.dropped.Load(),
	}
}

// Broadcast sends to the agent and every worker, the sender included.
func (m *Messenger) Broadcast(action string, data any) error {
	return m.send(ipc.DestAll, 0, action, data, "all processes")
}

// SendToApp sends to every worker; a worker calling it receives its own message.
func (m *Messenger) SendToApp(action string, data any) error {
	return m.send(ipc.DestApp, 0, action, data, "all workers")
}

// SendToAgent sends to the agent (to itself, when the agent calls it).
func (m *Messenger) SendToAgent(action string, data any) error {
	return m.send(ipc.DestAgent, 0, action, data, "the agent")
}

// SendRandom, called by the agent, sends to one worker chosen by the master (round
// robin over the ready workers). Called by a worker it is SendToAgent, as in Egg.
func (m *Messenger) SendRandom(action string, data any) error {
	if m.role == ipc.RoleWorker {
		return m.SendToAgent(action, data)
	}
	return m.send(ipc.DestRandom, 0, action, data, "a worker")
}

// SendTo sends to the process with the given pid (agent or worker, itself
// included). A pid that is not in the cluster is ErrNoProcess.
func (m *Messenger) SendTo(pid int, action string, data any) error {
	if !m.known(pid) {
		return fmt.Errorf("brood: send %q to pid %d: %w", action, pid, ErrNoProcess)
	}
	return m.send(ipc.DestPID, uint32(pid), action, data, fmt.Sprintf("pid %d", pid))
}

// Request sends a message to one process and waits for its Reply, until ctx is
// done. It fails with ErrNoProcess if the pid is not in the cluster and with
// ErrProcessExited if the process exits before replying.
func (m *Messenger) Request(ctx context.Context, pid int, action string, data any) (Message, error) {
	if strings.HasPrefix(action, "brood:") {
		return Message{}, fmt.Errorf("brood: request %q to pid %d: %w", action, pid, ErrReservedAction)
	}
	return m.request(ctx, pid, action, data)
}

// request is Request without the reserved-name check.
func (m *Messenger) request(ctx context.Context, pid int, action string, data any) (Message, error) {
	if !m.known(pid) {
		return Message{}, fmt.Errorf("brood: request %q to pid %d: %w", action, pid, ErrNoProcess)
	}
	id := m.nextID.Add(1)
	outcome := m.pending.Add(id, uint32(pid))
	defer m.pending.Remove(id)
	if err := m.post(ipc.DestPID, uint32(pid), id, ipc.FlagRequest, action, data, fmt.Sprintf("pid %d", pid)); err != nil {
		return Message{}, err
	}
	// The process may have left between the check above and the registration.
	if !m.known(pid) {
		return Message{}, fmt.Errorf("brood: request %q to pid %d: %w", action, pid, ErrProcessExited)
	}
	select {
	case r := <-outcome:
		if r.err != nil {
			return Message{}, fmt.Errorf("brood: request %q to pid %d: %w", action, pid, r.err)
		}
		return r.msg, nil
	case <-ctx.Done():
		return Message{}, fmt.Errorf("brood: request %q to pid %d: %w", action, pid, context.Cause(ctx))
	}
}

// On registers h for messages with the given action and returns a function that
// unregisters it. Several handlers for one action run in registration order.
func (m *Messenger) On(action string, h func(Message)) (off func()) {
	s := &subscription{h: h}
	m.subscribe(action, s)
	return func() { m.unsubscribe(action, s) }
}

// Once registers h for the next message with the given action only.
func (m *Messenger) Once(action string, h func(Message)) {
	m.subscribe(action, &subscription{h: h, once: true})
}

// Handler lists are copy-on-write: a list in m.handlers is never modified in
// place, so dispatch can run one it read under the lock without copying it.

func (m *Messenger) subscribe(action string, s *subscription) {
	m.mu.Lock()
	defer m.mu.Unlock()
	list := m.handlers[action]
	m.handlers[action] = append(list[:len(list):len(list)], s)
}

func (m *Messenger) unsubscribe(action string, s *subscription) {
	m.mu.Lock()
	defer m.mu.Unlock()
	list := m.handlers[action]
	for i, x := range list {
		if x == s {
			m.handlers[action] = append(list[:i:i], list[i+1:]...)
			break
		}
	}
	if len(m.handlers[action]) == 0 {
		delete(m.handlers, action)
	}
}

// Members returns the processes of the cluster, as the master last reported them.
func (m *Messenger) Members() []Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Member, 0, len(m.members))
	for _, x := range m.members {
		out = append(out, x)
	}
	sortMembers(out)
	return out
}

// AgentPID returns the agent's pid, or 0 if there is no agent right now.
func (m *Messenger) AgentPID() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, x := range m.members {
		if x.Role == Agent {
			return x.PID
		}
	}
	return 0
}

// WorkerPIDs returns the pids of the workers, ordered by worker id.
func (m *Messenger) WorkerPIDs() []int {
	var out []int
	for _, x := range m.Members() {
		if x.Role == Worker {
			out = append(out, x.PID)
		}
	}
	return out
}

func (m *Messenger) known(pid int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.members[pid]
	return ok
}

func (m *Messenger) send(dest ipc.Dest, to uint32, action string, data any, where string) error {
	return m.sendID(dest, to, m.nextID.Add(1), 0, action, data, where)
}

func (m *Messenger) sendID(dest ipc.Dest, to uint32, id uint64, flags ipc.Flags, action string, data any, where string) error {
	if strings.HasPrefix(action, "brood:") {
		return fmt.Errorf("brood: send %q to %s: %w", action, where, ErrReservedAction)
	}
	return m.post(dest, to, id, flags, action, data, where)
}

// tell sends one of brood's own messages (a reserved action) to dest: the
// master, the agent, or pid to.
func (m *Messenger) tell(dest ipc.Dest, to uint32, action string, data any) error {
	where := "the " + dest.String()
	if dest == ipc.DestPID {
		where = fmt.Sprintf("pid %d", to)
	}
	return m.post(dest, to, m.nextID.Add(1), 0, action, data, where)
}

// post sends a message without the reserved-name check: brood's own messages.
func (m *Messenger) post(dest ipc.Dest, to uint32, id uint64, flags ipc.Flags, action string, data any, where string) error {
	payload, raw, err := encodeData(data)
	if err != nil {
		return fmt.Errorf("brood: send %q to %s: %w", action, where, err)
	}
	if raw {
		flags |= ipc.FlagRaw
	}
	h := ipc.Header{Kind: ipc.KindMessage, Dest: dest, Role: m.role, Flags: flags, From: m.self, To: to, ID: id}
	if m.hasPeers.Load() {
		if took, err := m.route(&h, action, payload); took {
			if err != nil {
				return m.sendError("send", action, where, err)
			}
			m.sent.Add(1)
			return nil
		}
	}
	if err := m.w.Append(&h, action, payload); err != nil {
		return m.sendError("send", action, where, err)
	}
	m.sent.Add(1)
	return nil
}

func (m *Messenger) sendError(verb, action, where string, err error) error {
	switch {
	case errors.Is(err, ipc.ErrClosed):
		err = fmt.Errorf("%w: %w", ErrStopped, err)
	case errors.Is(err, ipc.ErrTooLarge):
		err = fmt.Errorf("%w (Config.MaxFrame)", err)
	}
	return fmt.Errorf("brood: %s %q to %s: %w", verb, action, where, err)
}

// encodeData turns message data into a payload: []byte goes as raw bytes,
// json.RawMessage as given, nil as no data, anything else as JSON.
func encodeData(data any) (payload []byte, raw bool, err error) {
	switch d := data.(type) {
	case nil:
		return nil, false, nil
	case []byte:
		return d, true, nil
	case json.RawMessage:
		return d, false, nil
	}
	b, err := json.Marshal(data)
	return b, false, err
}

// handleFrame processes one frame from the master. It runs on the reader
// goroutine and never blocks on handlers.
func (m *Messenger) handleFrame(f ipc.Frame) {
	switch f.Kind {
	case ipc.KindPing:
		h := ipc.Header{Kind: ipc.KindPong, Role: m.role, From: m.self, ID: f.ID}
		m.pong = m.pongPayload(m.pong)
		_ = m.w.Append(&h, "", m.pong)
	case ipc.KindMessage:
		m.received.Add(1)
		m.enqueueFrom(nil, f)
	case ipc.KindReply:
		if f.From == m.masterPID && (f.Flags&ipc.FlagFleet != 0 || string(f.Action) == wire.ActFleetNoResponders) {
			m.fleetReply(f)
			return
		}
		m.resolveReply(f)
	case ipc.KindNack:
		m.refused.Add(1)
		reason := string(f.Payload)
		m.log.Warn("message not delivered", "action", string(f.Action), "reason", reason)
		m.pending.Fail(f.ID, requestResult{err: fmt.Errorf("%w: %s", ErrNotDelivered, reason)})
	case ipc.KindMembers:
		m.setMembers(f.Payload)
	}
}

// resolveReply hands a reply, from the master or a direct channel, to the
// Request waiting for it.
func (m *Messenger) resolveReply(f ipc.Frame) {
	if string(f.Action) == actionRefused {
		m.refused.Add(1)
		m.pending.Resolve(f.Ref, f.From, requestResult{err: fmt.Errorf("%w: %s", ErrNotDelivered, f.Payload)})
		return
	}
	m.pending.Resolve(f.Ref, f.From, requestResult{msg: m.toMessage(f, string(f.Action))})
}

// toMessage makes the Message for f, whose action is action, with a copy of
// its data: f's bytes belong to the reader.
func (m *Messenger) toMessage(f ipc.Frame, action string) Message {
	msg := Message{
		Action:  action,
		From:    int(f.From),
		Role:    Role(f.Role),
		replyTo: f.From,
		id:      f.ID,
		request: f.Flags&ipc.FlagRequest != 0,
		raw:     f.Flags&ipc.FlagRaw != 0,
		held:    f.Flags&ipc.FlagHeld != 0,
		m:       m,
	}
	data := f.Payload
	if f.Flags&ipc.FlagFleet != 0 {
		node, pid, role, rest, err := ipc.SplitOrigin(data)
		if err != nil {
			m.log.Error("bad fleet message from the master", "action", msg.Action, "err", err)
		} else {
			msg.Node, msg.From, msg.Role, data = node, int(pid), Role(role), rest
		}
	}
	if len(data) > 0 {
		msg.Data = make([]byte, len(data)) // not append: growslice costs more per message
		copy(msg.Data, data)
	}
	return msg
}

// intern returns action as a string, the same string for every message with
// that name, so a stream of messages allocates no name per message. It keeps
// at most maxInterned names of at most maxInternedLen bytes; others are
// allocated per message. Called with qmu held.
func (m *Messenger) intern(action []byte) string {
	if string(action) == m.lastAction { // a stream repeats one name: no hashing
		return m.lastAction
	}
	if s, ok := m.actions[string(action)]; ok { // the lookup allocates nothing
		m.lastAction = s
		return s
	}
	s := string(action)
	if len(s) <= maxInternedLen && len(m.actions) < maxInterned {
		if m.actions == nil {
			m.actions = make(map[string]string)
		}
		m.actions[s] = s
		m.lastAction = s
	}
	return s
}

// The bounds of a Messenger's interned action names (see intern).
const (
	maxInterned    = 256
	maxInternedLen = 64
)

func (m *Messenger) setMembers(payload []byte) {
	var list []Member
	if err := json.Unmarshal(payload, &list); err != nil {
		m.log.Error("bad member table from the master", "err", err)
		return
	}
	table := make(map[int]Member, len(list))
	var holders []Member
	for _, x := range list {
		table[x.PID] = x
		if x.Ready && !x.Stopping {
			holders = append(holders, x)
		}
	}
	sortMembers(holders)
	// Under dmu, so that a send sees either the old table and the channels
	// as they were, or the new one and the channels of departed peers ended
	// (their unacknowledged messages handed to the master first).
	m.dmu.Lock()
	m.mu.Lock()
	m.members, m.holders = table, holders
	select {
	case <-m.welcomed:
	default:
		close(m.welcomed)
	}
	m.mu.Unlock()
	m.retireGoneLocked(table)
	m.dmu.Unlock()
	// A request whose receiver left the table fails at once.
	// (Fleet requests wait for the master, which is in no table.)
	m.pending.FailIf(func(pid uint32) bool { _, ok := table[int(pid)]; return !ok && pid != m.masterPID }, requestResult{err: ErrProcessExited})
}

// enqueueFrom hands a message from the master (src nil) or the direct channel
// src to the dispatcher, or drops it if it is pid-addressed and the handler
// queue is full (see the Messenger's guarantees). It runs on a reader
// goroutine and never waits for handlers.
func (m *Messenger) enqueueFrom(src *peer, f ipc.Frame) {
	m.qmu.Lock()
	defer m.qmu.Unlock()
	if m.qclosed {
		m.log.Warn("message arrived while stopping; not handled", "action", string(f.Action), "from_pid", f.From)
		return
	}
	seq := &m.rseq
	if src != nil {
		seq = &src.rseq
	}
	*seq++
	if src == nil && string(f.Action) == wire.ActDirectOpen {
		// Not for handlers: the sender's channel may now be read (direct.go).
		// Counted above: it is one of the master's messages.
		m.qmu.Unlock()
		m.opened(f.From)
		m.qmu.Lock()
		return
	}
	if src == nil && string(f.Action) == wire.ActDrained && f.From == m.masterPID {
		m.drainAnswered(nil) // counted above, as ActDirectOpen
		return
	}
	if h := m.sideHandler(src, f); h != nil {
		// brood's own request that must not wait behind the handlers (a
		// metrics gather would delay every Request queued after it): on a
		// goroutine of its own, which close waits for.
		msg := m.toMessage(f, m.intern(f.Action))
		m.sideRunning.Go(func() { m.call(h, msg) })
		return
	}
	bounded := f.Flags&ipc.FlagHeld == 0 && !strings.HasPrefix(string(f.Action), "brood:")
	size := int64(len(f.Raw)) // counted as the master counts: whole frames
	if n, b := m.qlen.Load(), m.qbytes.Load(); bounded && (n >= int64(m.maxQueue) || b+size > int64(m.maxQueueBytes)) {
		m.drop(src, f, n, b)
		return
	}
	msg := m.toMessage(f, m.intern(f.Action))
	msg.seq, msg.size, msg.src = *seq, size, src
	m.qlen.Add(1)
	m.qbytes.Add(size)
	m.queue.push(msg)
	select {
	case m.qwake <- struct{}{}:
	default:
	}
}

// sideHandler returns the handler of brood's own request f that runs off the
// dispatcher (m.side), or nil. Those come from the master only, not held.
func (m *Messenger) sideHandler(src *peer, f ipc.Frame) func(Message) {
	if src != nil || len(m.side) == 0 || f.Flags&ipc.FlagHeld != 0 {
		return nil
	}
	return m.side[string(f.Action)]
}

// drop refuses a message the full handler queue cannot take: it counts it,
// answers it if it is a request, and logs at most one line a second. Called
// with qmu held.
func (m *Messenger) drop(src *peer, f ipc.Frame, n, b int64) {
	m.dropped.Add(1)
	m.dropUnlogged++
	if f.Flags&ipc.FlagRequest != 0 {
		reason := fmt.Sprintf("pid %d dropped the request: its handler queue is full (%d messages, %d bytes queued; bounds %d and %d)", m.self, n, b, m.maxQueue, m.maxQueueBytes)
		h := ipc.Header{Kind: ipc.KindReply, Dest: ipc.DestPID, Role: m.role, From: m.self, To: f.From, Ref: f.ID}
		w := m.w
		if src != nil {
			w = src.w
		}
		if err := w.Append(&h, actionRefused, []byte(reason)); err == nil {
			m.sent.Add(1)
		}
	}
	if now := time.Now(); now.Sub(m.dropLogged) >= time.Second {
		m.log.Warn("handler queue full: dropping pid-addressed messages",
			"dropped", m.dropUnlogged, "dropped_total", m.dropped.Load(), "queued", n, "queued_bytes", b,
			"max_pending", m.maxQueue, "max_pending_bytes", m.maxQueueBytes,
			"action", string(f.Action), "from_pid", f.From)
		m.dropUnlogged, m.dropLogged = 0, now
	}
}

// drained is called by the dispatcher when the queue is empty: it logs the drops
// not logged yet and releases a queue a burst grew.
func (m *Messenger) drained() {
	m.qmu.Lock()
	defer m.qmu.Unlock()
	if !m.queue.empty() {
		return
	}
	if m.dropUnlogged > 0 {
		m.log.Warn("handler queue drained after dropping pid-addressed messages",
			"dropped", m.dropUnlogged, "dropped_total", m.dropped.Load())
		m.dropUnlogged, m.dropLogged = 0, time.Now()
	}
}

// ackEvery bounds how many messages a long batch handles before it acknowledges
// the held ones among them.
const ackEvery = 256

// dispatchLoop runs handlers, one message at a time in arrival order, and
// acknowledges handled messages to the master: after each batch and every
// ackEvery messages, and only when the master holds a copy of one of them
// (FlagHeld). The acknowledgement carries the count of every message handled,
// which is the master's sequence for this process, so skipping it when only
// pid-addressed messages were handled changes nothing it releases, and saves a
// write on the request/reply path.
func (m *Messenger) dispatchLoop() {
	defer close(m.qdone)
	sinceAck := 0     // messages handled since the last ack
	needAck := false  // one of them was held (from the master)
	var peers []*peer // direct channels messages were handled from since the last ack
	ack := func() {
		if needAck {
			m.ack()
		}
		m.ackPeers(peers)
		clear(peers)
		sinceAck, needAck, peers = 0, false, peers[:0]
	}
	var done *queueBlock // the chain handled last, to give back
	for range m.qwake {
		for {
			m.qmu.Lock()
			m.queue.recycle(done)
			chain := m.queue.take()
			m.qmu.Unlock()
			if done = chain; chain == nil {
				m.drained()
				break
			}
			for b := chain; b != nil; b = b.next {
				for i := range b.msgs[:b.n] {
					msg := &b.msgs[i]
					m.dispatch(*msg)
					if p := msg.src; p != nil {
						p.handled = msg.seq
						if msg.held && !p.needAck {
							p.needAck = true
							peers = append(peers, p)
						}
					} else {
						needAck = needAck || msg.held
						m.handled = msg.seq
					}
					m.qlen.Add(-1)
					m.qbytes.Add(-msg.size)
					*msg = Message{}
					if sinceAck++; sinceAck >= ackEvery && (needAck || len(peers) > 0) {
						ack()
					}
				}
			}
		}
		if needAck || len(peers) > 0 {
			ack()
		}
	}
}

func (m *Messenger) ack() {
	h := ipc.Header{Kind: ipc.KindAck, Role: m.role, From: m.self, Ref: m.handled}
	_ = m.w.Append(&h, "", nil)
}

func (m *Messenger) dispatch(msg Message) {
	m.mu.Lock()
	run := m.handlers[msg.Action] // copy-on-write: safe to use after unlocking
	if slices.ContainsFunc(run, func(s *subscription) bool { return s.once }) {
		kept := slices.DeleteFunc(slices.Clone(run), func(s *subscription) bool { return s.once })
		if len(kept) == 0 {
			delete(m.handlers, msg.Action)
		} else {
			m.handlers[msg.Action] = kept
		}
	}
	m.mu.Unlock()
	if len(run) == 0 {
		m.unhandled.Add(1)
		m.log.Debug("no handler for message", "action", msg.Action, "from_pid", msg.From)
		return
	}
	for _, s := range run {
		m.call(s.h, msg)
	}
}

func (m *Messenger) call(h func(Message), msg Message) {
	defer m.p.recoverGuarded("handler for", msg.Action)
	h(msg)
}

// close stops the dispatcher after the messages already queued (waiting at most
// d for a handler that is still running), and fails pending requests.
func (m *Messenger) close(d time.Duration) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return
	}
	m.closed = true
	m.mu.Unlock()
	m.pending.FailIf(nil, requestResult{err: ErrStopped})
	m.qmu.Lock()
	m.qclosed = true
	close(m.qwake)
	m.qmu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-m.qdone:
	case <-t.C:
		m.log.Warn("a message handler is still running at exit", "waited", d)
	}
	if !waitTimeout(&m.sideRunning, time.Second) {
		m.log.Warn("a metrics gather is still running at exit")
	}
}

func sortMembers(list []Member) {
	slices.SortFunc(list, func(a, b Member) int {
		if a.Role != b.Role {
			return int(a.Role) - int(b.Role)
		}
		if a.ID != b.ID {
			return a.ID - b.ID
		}
		return a.PID - b.PID
	})
}
