// Package fleet is the NATS transport of a brood fleet: the one connection a
// master holds, the subjects members share, the envelope of a message, the
// members' announcements and the fleet's counters. Only the master uses it;
// children reach the fleet through the master over IPC. nats.go is imported
// here and nowhere else in brood.
//
// # Subjects
//
// For a cluster named N (every member of a fleet has the same Name):
//
//	brood.N.bcast    every master subscribes; delivered to its agent and workers
//	brood.N.app      every master subscribes; delivered to its workers
//	brood.N.agent    every master subscribes; delivered to its agent
//	brood.N.random   queue group "workers"; delivered to one ready worker
//	brood.N.request  queue group "workers"; one ready worker answers (reply inbox)
//	brood.N.members  announcements: each master publishes its Announcement every
//	                 AnnounceInterval, and one with Leaving set when it stops
//
// A master is in the queue groups only while its cluster has at least one
// ready worker, so a request is never routed to a member that cannot answer,
// and with no worker anywhere the server answers "no responders" at once.
// NATS echoes a member's own publications back to it, which is how a fleet
// broadcast reaches the sender's own cluster, exactly once.
//
// # Delivery
//
// Core NATS: at most once. While the connection is down nats.go buffers
// publications up to its ReconnectBufSize (8 MiB) and sends them on
// reconnecting; beyond that a publication fails, is counted, and the sender is
// told (Options.Refused). Messages are published from a queue of their own
// (bounded by Options.MaxPending and MaxPendingBytes), so a slow or stuck socket
// never blocks the master's router.
//
// # Leases
//
// The connection is exposed (NATS, JetStream) for the fleet's leases (leader
// election, one-in-fleet schedules): a JetStream key-value bucket whose TTL is
// Options.LeaseTTL.
package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Kind is what a fleet message is addressed to.
type Kind uint8

// Kinds, one subject each.
const (
	KindAll     Kind = iota + 1 // every process of every member
	KindApp                     // every worker of every member
	KindAgent                   // every member's agent
	KindRandom                  // one worker somewhere
	KindRequest                 // one worker somewhere answers
)

var kindSubjects = [...]string{KindAll: "bcast", KindApp: "app", KindAgent: "agent", KindRandom: "random", KindRequest: "request"}

func (k Kind) String() string {
	if k >= KindAll && k <= KindRequest {
		return kindSubjects[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// QueueGroup is the queue group of the random and request subjects.
const QueueGroup = "workers"

// Defaults.
const (
	DefaultLeaseTTL         = 10 * time.Second
	DefaultAnnounceInterval = time.Second
	// A member not heard from for MemberExpiry announcement intervals is gone.
	MemberExpiry = 5
	// DefaultRequestTimeout bounds a request whose requester set no deadline.
	DefaultRequestTimeout = 30 * time.Second
	// MaxInflight bounds the requests in flight each way (from the fleet to
	// this member's workers, and from this member to the fleet).
	MaxInflight = 4096
)

// ErrNoResponders: no member of the fleet has a ready worker.
var ErrNoResponders = errors.New("no worker in the fleet is ready to answer")

// ErrRefused: the member that took a request could not have it answered
// (its worker went away, its queue was full); the reason follows.
var ErrRefused = errors.New("refused by the member that took the request")

// ErrQueueFull: the outgoing queue is at its bound.
var ErrQueueFull = errors.New("fleet send queue full")

// Auth are the credentials for the NATS server; set at most one of
// user/password, token and creds file. TLS files may go with any of them.
type Auth struct {
	User, Password string
	Token          string
	Creds          string // a .creds file (JWT and NKey seed)
	TLSCA          string // CA bundle to verify the server with
	TLSCert        string // client certificate (with TLSKey)
	TLSKey         string
}

// Announcement is what a master publishes about itself on brood.N.members.
type Announcement struct {
	Node         string    `json:"node"`
	PID          int       `json:"pid"`
	Agent        bool      `json:"agent"`
	ReadyWorkers int       `json:"ready_workers"`
	StartedAt    time.Time `json:"started_at"`
	Leaving      bool      `json:"leaving,omitempty"`
}

// Options configure Connect.
type Options struct {
	URLs     string // comma-separated NATS URLs
	Name     string // the cluster's Name (subjects)
	Node     string // this member's id
	Auth     Auth
	Optional bool          // an unreachable server at start is not an error: keep trying
	LeaseTTL time.Duration // for the lease work; DefaultLeaseTTL if zero
	Logger   *slog.Logger  // the master's (it names the node already)

	// Bounds of the outgoing queue (messages, bytes); defaults 65536 and 64 MiB.
	MaxPending, MaxPendingBytes int
	// AnnounceInterval: how often this member announces itself (default 1s).
	AnnounceInterval time.Duration

	// Deliver hands a message from the fleet to this cluster. It must not
	// block; an error (nobody to deliver to, too large) is counted and logged.
	Deliver func(k Kind, env Envelope, data []byte) error
	// Flush, if set, is called after Deliver once the subscription of kind
	// k has no further message waiting, on the same goroutine: Deliver may
	// queue what it hands on and write a whole burst at once here.
	Flush func(k Kind)
	// Serve has a request from the fleet answered by one of this cluster's
	// workers; it runs on a goroutine of its own and returns when ctx ends.
	Serve func(ctx context.Context, env Envelope, data []byte) (Envelope, []byte, error)
	// Refused is told about an outgoing message that could not be published.
	Refused func(out Outgoing, err error)
	// Self describes this member for its announcements (ready workers, agent).
	Self func() Announcement
	// OnConnState, if set, is told when the connection goes down (false) and
	// comes back (true), on nats.go's callback goroutine, in order: for the
	// lease work, which must give a lease up before it can expire elsewhere.
	OnConnState func(connected bool)
}

// Outgoing is one message queued for the fleet.
type Outgoing struct {
	Kind Kind
	Env  Envelope
	Data []byte
	// Tag is the caller's, handed back to Options.Refused.
	Tag any
}

// Conn is a master's connection to the fleet.
type Conn struct {
	opts   Options
	log    *slog.Logger
	nc     *nats.Conn
	closed chan struct{} // closed once nc's callbacks have all run, after Close
	prefix string        // "brood.<Name>."
	start  time.Time

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup // owner, publisher, and every goroutine of Go

	goMu     sync.Mutex // guards goClosed against wg.Add racing wg.Wait
	goClosed bool

	qmu    sync.Mutex
	queue  []Outgoing
	qbytes int
	qwake  chan struct{}

	workers   atomic.Int64  // ready workers, as the master last said
	workersCh chan struct{} // wakes the owner to (un)subscribe the queue groups
	inGroups  atomic.Bool

	membersMu sync.Mutex
	members   map[string]memberSeen

	inflightIn, inflightOut atomic.Int64

	sentOK, sendErrors, recvOK, recvErrors atomic.Uint64
	requestsOut, requestsIn                atomic.Uint64
	reconnects, disconnects, asyncErrors   atomic.Uint64
}

type memberSeen struct {
	a    Announcement
	seen time.Time
}

// Counters are the fleet's counters since Connect.
type Counters struct {
	SentOK      uint64 `json:"sent"`           // messages and requests published (or buffered while disconnected)
	SendErrors  uint64 `json:"send_errors"`    // not published: queue full, too large, reconnect buffer full, closed
	ReceivedOK  uint64 `json:"received"`       // messages and requests from the fleet handed to a process
	RecvErrors  uint64 `json:"receive_errors"` // from the fleet but not delivered: malformed, nobody to take it
	RequestsOut uint64 `json:"requests_out"`   // requests this member's processes sent to the fleet
	RequestsIn  uint64 `json:"requests_in"`    // requests from the fleet this member's workers took
	Reconnects  uint64 `json:"reconnects"`
	Disconnects uint64 `json:"disconnects"`
	AsyncErrors uint64 `json:"async_errors"` // errors nats.go reported asynchronously (slow consumer, permissions)
}

// SubjectPrefix is "brood.<name>.".
func SubjectPrefix(name string) string { return "brood." + name + "." }

// ValidName reports whether a cluster name makes valid subjects.
func ValidName(name string) error {
	if name == "" || strings.Contains(name, "..") || strings.HasSuffix(name, ".") || strings.HasPrefix(name, ".") ||
		strings.ContainsAny(name, " \t\r\n*>") {
		return fmt.Errorf("fleet: name %q does not make a NATS subject token (no empty parts, spaces, '*' or '>')", name)
	}
	return nil
}

// Connect connects to the fleet's NATS server and subscribes. An unreachable
// server is an error naming the URLs unless Options.Optional, in which case
// the connection keeps trying in the background.
func Connect(opts Options) (*Conn, error) {
	if err := ValidName(opts.Name); err != nil {
		return nil, err
	}
	if err := ValidNode(opts.Node); err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = DefaultLeaseTTL
	}
	if opts.AnnounceInterval <= 0 {
		opts.AnnounceInterval = DefaultAnnounceInterval
	}
	if opts.MaxPending <= 0 {
		opts.MaxPending = 65536
	}
	if opts.MaxPendingBytes <= 0 {
		opts.MaxPendingBytes = 64 << 20
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	c := &Conn{
		opts: opts, log: opts.Logger, prefix: SubjectPrefix(opts.Name), start: time.Now(),
		qwake: make(chan struct{}, 1), workersCh: make(chan struct{}, 1), members: make(map[string]memberSeen),
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	urls := RedactURLs(opts.URLs)
	// connect makes one attempt; the connection's callbacks have all run
	// once closed is closed (nats.go runs them in order on a goroutine of
	// its own, the closed handler last).
	connect := func(extra ...nats.Option) (*nats.Conn, chan struct{}, error) {
		closed := make(chan struct{})
		var once sync.Once
		no, err := c.natsOptions(func() { once.Do(func() { close(closed) }) })
		if err != nil {
			return nil, nil, err
		}
		nc, err := nats.Connect(opts.URLs, append(no, extra...)...)
		if err != nil {
			waitClosed(closed)
			return nil, nil, fmt.Errorf("fleet: connect to %s: %w", urls, err)
		}
		return nc, closed, nil
	}
	nc, closed, err := connect()
	if err != nil {
		if !opts.Optional || errors.Is(err, errBadAuth) {
			return nil, err
		}
		c.log.Warn("fleet: NATS server unreachable; starting anyway (--fleet-optional), retrying in the background", "urls", urls, "err", err)
		if nc, closed, err = connect(nats.RetryOnFailedConnect(true)); err != nil {
			return nil, err
		}
	}
	c.nc, c.closed = nc, closed
	for _, k := range []Kind{KindAll, KindApp, KindAgent} {
		if _, err := nc.Subscribe(c.Subject(k), c.onMessage(k)); err != nil {
			nc.Close()
			waitClosed(closed)
			return nil, fmt.Errorf("fleet: subscribe %s: %w", c.Subject(k), err)
		}
	}
	if _, err := nc.Subscribe(c.prefix+"members", c.onAnnouncement); err != nil {
		nc.Close()
		waitClosed(closed)
		return nil, fmt.Errorf("fleet: subscribe %smembers: %w", c.prefix, err)
	}
	if nc.IsConnected() {
		// The subscriptions are on the server when Connect returns.
		if err := nc.FlushTimeout(5 * time.Second); err != nil {
			c.log.Warn("fleet: flush subscriptions", "err", err)
		}
	}
	c.wg.Add(2)
	go c.own()
	go c.publisher()
	if nc.IsConnected() {
		c.log.Info("fleet: connected", "server", nc.ConnectedUrlRedacted(), "subjects", c.prefix+"*")
	}
	return c, nil
}

// errBadAuth: the credentials options do not make sense together.
var errBadAuth = errors.New("fleet: bad credentials")

// waitClosed waits (a bounded time) for a connection's callbacks to end.
func waitClosed(closed <-chan struct{}) {
	t := time.NewTimer(2 * time.Second)
	defer t.Stop()
	select {
	case <-closed:
	case <-t.C:
	}
}

func (c *Conn) natsOptions(onClosed func()) ([]nats.Option, error) {
	a := c.opts.Auth
	no := []nats.Option{
		nats.Name("brood " + c.opts.Name + " " + c.opts.Node),
		// nats.go's defaults otherwise, but it never gives up: losing the
		// server for longer than 60 × 2 s must not leave a member out for good.
		nats.MaxReconnects(-1),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			c.disconnects.Add(1)
			c.log.Warn("fleet: disconnected from NATS; reconnecting", "err", err)
			c.connState(false)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			c.reconnects.Add(1)
			c.log.Info("fleet: reconnected to NATS", "server", nc.ConnectedUrlRedacted())
			c.connState(true)
		}),
		nats.ConnectHandler(func(nc *nats.Conn) {
			c.log.Info("fleet: connected", "server", nc.ConnectedUrlRedacted())
			c.connState(true)
		}),
		nats.ClosedHandler(func(*nats.Conn) { onClosed() }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			c.asyncErrors.Add(1)
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			c.log.Warn("fleet: NATS error", "subject", subj, "err", err)
		}),
	}
	n := 0
	if a.User != "" || a.Password != "" {
		n++
		no = append(no, nats.UserInfo(a.User, a.Password))
	}
	if a.Token != "" {
		n++
		no = append(no, nats.Token(a.Token))
	}
	if a.Creds != "" {
		n++
		no = append(no, nats.UserCredentials(a.Creds))
	}
	if n > 1 {
		return nil, fmt.Errorf("%w: use one of user/password, token or a creds file", errBadAuth)
	}
	if a.TLSCA != "" {
		no = append(no, nats.RootCAs(a.TLSCA))
	}
	if (a.TLSCert == "") != (a.TLSKey == "") {
		return nil, fmt.Errorf("%w: a TLS client certificate needs both the cert and the key file", errBadAuth)
	}
	if a.TLSCert != "" {
		no = append(no, nats.ClientCert(a.TLSCert, a.TLSKey))
	}
	return no, nil
}

func (c *Conn) connState(up bool) {
	if c.opts.OnConnState != nil {
		c.opts.OnConnState(up)
	}
}

// RedactURLs returns the comma-separated URLs with passwords and tokens hidden.
func RedactURLs(urls string) string {
	parts := strings.Split(urls, ",")
	for i, p := range parts {
		p = strings.TrimSpace(p)
		if u, err := url.Parse(p); err == nil && u.User != nil {
			if _, hasPW := u.User.Password(); hasPW {
				p = u.Redacted()
			} else {
				u.User = url.User("xxxxx")
				p = u.String()
			}
		}
		parts[i] = p
	}
	return strings.Join(parts, ",")
}

// Subject is the subject of kind k.
func (c *Conn) Subject(k Kind) string { return c.prefix + k.String() }

// Node is this member's id.
func (c *Conn) Node() string { return c.opts.Node }

// LeaseTTL is the lease duration the fleet's leases use.
func (c *Conn) LeaseTTL() time.Duration { return c.opts.LeaseTTL }

// NATS is the connection itself, for the lease work (JetStream KV). Do not
// close it; Close does.
func (c *Conn) NATS() *nats.Conn { return c.nc }

// JetStream returns a JetStream context on the connection (leases are a KV
// bucket with TTL LeaseTTL).
func (c *Conn) JetStream(opts ...jetstream.JetStreamOpt) (jetstream.JetStream, error) {
	return jetstream.New(c.nc, opts...)
}

// Go runs f on a goroutine the Conn owns: ctx ends when Close starts, and
// Close waits for f. A panic in f is logged, never fatal. It reports false
// (and f does not run) once Close has started.
func (c *Conn) Go(what string, f func(ctx context.Context)) bool {
	c.goMu.Lock()
	defer c.goMu.Unlock()
	if c.goClosed {
		return false
	}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		defer func() {
			if r := recover(); r != nil {
				c.log.Error("bug: panic in the fleet (recovered)", "in", what, "panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			}
		}()
		f(c.ctx)
	}()
	return true
}

// Publish queues a message for the fleet. It never blocks: a full queue is
// an error (ErrQueueFull). A publication that fails later goes to
// Options.Refused.
func (c *Conn) Publish(out Outgoing) error {
	c.qmu.Lock()
	defer c.qmu.Unlock()
	if len(c.queue) >= c.opts.MaxPending || c.qbytes+len(out.Data) > c.opts.MaxPendingBytes {
		c.sendErrors.Add(1)
		return fmt.Errorf("%w (%d messages, %d bytes queued)", ErrQueueFull, len(c.queue), c.qbytes)
	}
	if c.ctx.Err() != nil {
		c.sendErrors.Add(1)
		return nats.ErrConnectionClosed
	}
	c.queue = append(c.queue, out)
	c.qbytes += len(out.Data)
	select {
	case c.qwake <- struct{}{}:
	default:
	}
	return nil
}

// publisher publishes the queue in order.
func (c *Conn) publisher() {
	defer c.wg.Done()
	var batch []Outgoing
	var lastEnv Envelope
	var lastHdr nats.Header
	for {
		select {
		case <-c.ctx.Done():
			c.qmu.Lock()
			rest := c.queue
			c.queue, c.qbytes = nil, 0
			c.qmu.Unlock()
			for _, out := range rest {
				c.refuse(out, nats.ErrConnectionClosed)
			}
			return
		case <-c.qwake:
		}
		c.qmu.Lock()
		batch, c.queue = c.queue, batch[:0]
		c.qbytes = 0
		c.qmu.Unlock()
		for i, out := range batch {
			// A burst mostly repeats one sender's envelope: its headers are
			// built once (PublishMsg only reads them).
			if out.Env != lastEnv || lastHdr == nil {
				lastEnv, lastHdr = out.Env, out.Env.Header()
			}
			msg := &nats.Msg{Subject: c.Subject(out.Kind), Header: lastHdr, Data: out.Data}
			if err := c.nc.PublishMsg(msg); err != nil {
				c.refuse(out, err)
			} else {
				c.sentOK.Add(1)
			}
			batch[i] = Outgoing{}
		}
	}
}

func (c *Conn) refuse(out Outgoing, err error) {
	c.sendErrors.Add(1)
	c.log.Warn("fleet: message not published", "action", out.Env.Action, "to", out.Kind.String(), "from_pid", out.Env.PID, "err", err)
	if c.opts.Refused != nil {
		c.opts.Refused(out, err)
	}
}

// Request sends a request to one worker somewhere in the fleet and waits
// for its answer until ctx is done. It fails with ErrNoResponders at once
// when no member has a ready worker, and with ErrRefused when the member
// that took it could not have it answered.
func (c *Conn) Request(ctx context.Context, env Envelope, data []byte) (Envelope, []byte, error) {
	if n := c.inflightOut.Add(1); n > MaxInflight {
		c.inflightOut.Add(-1)
		c.sendErrors.Add(1)
		return Envelope{}, nil, fmt.Errorf("fleet: %d requests in flight already", MaxInflight)
	}
	defer c.inflightOut.Add(-1)
	c.requestsOut.Add(1)
	if dl, ok := ctx.Deadline(); ok {
		env.Timeout = max(1, time.Until(dl).Milliseconds())
	}
	msg := &nats.Msg{Subject: c.Subject(KindRequest), Header: env.Header(), Data: data}
	resp, err := c.nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		if errors.Is(err, nats.ErrNoResponders) {
			return Envelope{}, nil, ErrNoResponders
		}
		if ctx.Err() == nil {
			c.sendErrors.Add(1)
		}
		return Envelope{}, nil, err
	}
	c.sentOK.Add(1)
	renv, err := DecodeEnvelope(resp.Header)
	if err != nil {
		c.recvErrors.Add(1)
		return Envelope{}, nil, err
	}
	if renv.Err != "" {
		return Envelope{}, nil, fmt.Errorf("%w: %s: %s", ErrRefused, renv.Node, renv.Err)
	}
	c.recvOK.Add(1)
	return renv, resp.Data, nil
}

// SetReadyWorkers tells the Conn how many ready workers the cluster has: it
// is in the queue groups (random, request) only while that is at least one.
// It never blocks.
func (c *Conn) SetReadyWorkers(n int) {
	if c.workers.Swap(int64(n)) == int64(n) {
		return
	}
	select {
	case c.workersCh <- struct{}{}:
	default:
	}
}

// own is the Conn's owner goroutine: it (un)subscribes the queue groups as
// workers come and go, and announces this member.
func (c *Conn) own() {
	defer c.wg.Done()
	var subs []*nats.Subscription
	unsubscribe := func() {
		for _, s := range subs {
			if err := s.Unsubscribe(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
				c.log.Warn("fleet: leave queue group", "subject", s.Subject, "err", err)
			}
		}
		subs = nil
		c.inGroups.Store(false)
	}
	defer unsubscribe()
	tick := time.NewTicker(c.opts.AnnounceInterval)
	defer tick.Stop()
	c.announce(false)
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-tick.C:
			c.announce(false)
			c.expire(time.Now())
		case <-c.workersCh:
			want := c.workers.Load() > 0
			switch {
			case want && subs == nil:
				for _, k := range []Kind{KindRandom, KindRequest} {
					h := c.onMessage(k)
					if k == KindRequest {
						h = c.onRequest
					}
					s, err := c.nc.QueueSubscribe(c.Subject(k), QueueGroup, h)
					if err != nil {
						c.log.Error("fleet: join queue group", "subject", c.Subject(k), "err", err)
						continue
					}
					subs = append(subs, s)
				}
				if c.nc.IsConnected() {
					_ = c.nc.FlushTimeout(2 * time.Second) // on the server before it says so
				}
				c.inGroups.Store(true)
				c.log.Info("fleet: taking random messages and requests", "ready_workers", c.workers.Load())
			case !want && subs != nil:
				unsubscribe()
				c.log.Info("fleet: no ready worker; out of the random and request queue groups")
			}
			c.announce(false)
		}
	}
}

func (c *Conn) announce(leaving bool) {
	var a Announcement
	if c.opts.Self != nil {
		a = c.opts.Self()
	}
	a.Node, a.Leaving = c.opts.Node, leaving
	if a.StartedAt.IsZero() {
		a.StartedAt = c.start
	}
	b, _ := json.Marshal(a)
	if err := c.nc.Publish(c.prefix+"members", b); err != nil && !leaving {
		c.log.Debug("fleet: announce", "err", err)
	}
}

func (c *Conn) onAnnouncement(msg *nats.Msg) {
	var a Announcement
	if len(msg.Data) > 64<<10 || json.Unmarshal(msg.Data, &a) != nil || ValidNode(a.Node) != nil {
		c.recvErrors.Add(1)
		return
	}
	c.membersMu.Lock()
	defer c.membersMu.Unlock()
	if a.Leaving {
		delete(c.members, a.Node)
		return
	}
	if _, known := c.members[a.Node]; !known && a.Node != c.opts.Node {
		c.log.Info("fleet: member joined", "member", a.Node, "member_pid", a.PID)
	}
	c.members[a.Node] = memberSeen{a: a, seen: time.Now()}
}

func (c *Conn) expire(now time.Time) {
	c.membersMu.Lock()
	defer c.membersMu.Unlock()
	for node, m := range c.members {
		if now.Sub(m.seen) > MemberExpiry*c.opts.AnnounceInterval {
			delete(c.members, node)
			c.log.Info("fleet: member gone (no announcement)", "member", node, "last_seen", m.seen)
		}
	}
}

// Member is a member as this one last heard of it.
type Member struct {
	Announcement
	LastSeen time.Time `json:"last_seen"`
}

// Members returns the members heard from recently (this one included once
// its own announcement came back), ordered by node id.
func (c *Conn) Members() []Member {
	now := time.Now()
	c.membersMu.Lock()
	defer c.membersMu.Unlock()
	out := make([]Member, 0, len(c.members))
	for _, m := range c.members {
		if now.Sub(m.seen) <= MemberExpiry*c.opts.AnnounceInterval {
			out = append(out, Member{Announcement: m.a, LastSeen: m.seen})
		}
	}
	sortMembers(out)
	return out
}

func sortMembers(ms []Member) {
	slices.SortFunc(ms, func(a, b Member) int { return strings.Compare(a.Node, b.Node) })
}

// onMessage handles a fan-out or random message from the fleet.
func (c *Conn) onMessage(k Kind) nats.MsgHandler {
	return func(msg *nats.Msg) {
		if c.opts.Flush != nil {
			defer func() {
				// nats.go counts the message being handled as pending
				// until its callback returns.
				if n, _, err := msg.Sub.Pending(); err != nil || n <= 1 {
					c.opts.Flush(k)
				}
			}()
		}
		env, err := DecodeEnvelope(msg.Header)
		if err == nil {
			err = c.opts.Deliver(k, env, msg.Data)
		}
		if err != nil {
			c.recvErrors.Add(1)
			c.log.Warn("fleet: message not delivered", "subject", msg.Subject, "action", env.Action, "from_node", env.Node, "err", err)
			return
		}
		c.recvOK.Add(1)
	}
}

// onRequest hands a request from the fleet to Options.Serve, on a goroutine
// of its own, and answers it on its reply subject.
func (c *Conn) onRequest(msg *nats.Msg) {
	env, err := DecodeEnvelope(msg.Header)
	if err != nil || msg.Reply == "" {
		c.recvErrors.Add(1)
		c.log.Warn("fleet: bad request", "subject", msg.Subject, "err", err, "reply", msg.Reply)
		return
	}
	c.requestsIn.Add(1)
	refuse := func(why string) {
		c.recvErrors.Add(1)
		e := Envelope{Node: c.opts.Node, PID: uint32(0), Role: "master", Action: env.Action, Err: why}
		if err := msg.RespondMsg(&nats.Msg{Header: e.Header()}); err != nil {
			c.log.Warn("fleet: refuse request", "action", env.Action, "err", err)
		}
	}
	if n := c.inflightIn.Add(1); n > MaxInflight {
		c.inflightIn.Add(-1)
		refuse(fmt.Sprintf("%d requests in flight already", MaxInflight))
		return
	}
	started := c.Go("fleet request", func(ctx context.Context) {
		defer c.inflightIn.Add(-1)
		d := DefaultRequestTimeout
		if env.Timeout > 0 {
			d = min(time.Duration(env.Timeout)*time.Millisecond, 10*DefaultRequestTimeout)
		}
		ctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		renv, data, err := c.opts.Serve(ctx, env, msg.Data)
		if err != nil {
			refuse(err.Error())
			return
		}
		c.recvOK.Add(1)
		if err := msg.RespondMsg(&nats.Msg{Header: renv.Header(), Data: data}); err != nil {
			c.sendErrors.Add(1)
			c.log.Warn("fleet: answer request", "action", env.Action, "err", err)
			return
		}
		c.sentOK.Add(1)
	})
	if !started {
		c.inflightIn.Add(-1)
		refuse("member is stopping")
	}
}

// State is the connection's state: connected, connecting, reconnecting,
// disconnected, closed, draining.
func (c *Conn) State() string {
	switch c.nc.Status() {
	case nats.CONNECTED:
		return "connected"
	case nats.CONNECTING:
		return "connecting"
	case nats.RECONNECTING:
		return "reconnecting"
	case nats.DISCONNECTED:
		return "disconnected"
	case nats.CLOSED:
		return "closed"
	default:
		return "draining"
	}
}

// Connected reports whether the connection is up.
func (c *Conn) Connected() bool { return c.nc.IsConnected() }

// Server is the redacted URL of the server connected to ("" if none).
func (c *Conn) Server() string { return c.nc.ConnectedUrlRedacted() }

// URLs are the configured URLs, redacted.
func (c *Conn) URLs() string { return RedactURLs(c.opts.URLs) }

// InQueueGroups reports whether this member takes random messages and requests.
func (c *Conn) InQueueGroups() bool { return c.inGroups.Load() }

// Counters returns the counters.
func (c *Conn) Counters() Counters {
	return Counters{
		SentOK: c.sentOK.Load(), SendErrors: c.sendErrors.Load(), ReceivedOK: c.recvOK.Load(), RecvErrors: c.recvErrors.Load(),
		RequestsOut: c.requestsOut.Load(), RequestsIn: c.requestsIn.Load(),
		Reconnects: c.reconnects.Load(), Disconnects: c.disconnects.Load(), AsyncErrors: c.asyncErrors.Load(),
	}
}

// Close leaves the fleet: it announces that this member is leaving, ends
// every goroutine it owns (requests in flight fail), flushes what is buffered
// for at most a second and closes the connection.
func (c *Conn) Close() {
	c.goMu.Lock()
	if c.goClosed {
		c.goMu.Unlock()
		return
	}
	c.goClosed = true
	c.goMu.Unlock()
	c.announce(true)
	c.cancel()
	c.wg.Wait()
	if c.nc.IsConnected() {
		_ = c.nc.FlushTimeout(time.Second)
	}
	c.nc.Close()
	waitClosed(c.closed)
	c.log.Info("fleet: left the fleet; NATS connection closed")
}
