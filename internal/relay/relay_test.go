package relay

import (
	"io"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/proc"
)

// peer is the child side of an endpoint: it collects what the router writes.
type peer struct {
	frames chan ipc.Frame
	conn   net.Conn
}

func socketpair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	a, f, err := proc.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	b, err := net.FileConn(f)
	f.Close()
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	return a, b
}

// attach adds a process to slot s; its peer reads what it is sent.
func attach(t testing.TB, r *Router, s *Slot, pid uint32) (*Endpoint, *peer) {
	t.Helper()
	a, b := socketpair(t)
	w := ipc.NewWriter(a, 0, 0)
	e, err := r.Attach(s, pid, w)
	if err != nil {
		t.Fatal(err)
	}
	p := &peer{frames: make(chan ipc.Frame, 100000), conn: b}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		rd := ipc.NewReader(b, 0)
		for {
			f, err := rd.Next()
			if err != nil {
				return
			}
			f.Action = append([]byte(nil), f.Action...)
			f.Payload = append([]byte(nil), f.Payload...)
			f.Raw = nil
			p.frames <- f
		}
	}()
	t.Cleanup(func() {
		w.Close(time.Now().Add(time.Second))
		a.Close()
		b.Close()
		wg.Wait()
	})
	return e, p
}

func (p *peer) next(t *testing.T) ipc.Frame {
	t.Helper()
	select {
	case f := <-p.frames:
		return f
	case <-time.After(5 * time.Second):
		t.Fatal("no frame within 5s")
		return ipc.Frame{}
	}
}

func msg(t testing.TB, dest ipc.Dest, to uint32, action string, id uint64) ipc.Frame {
	raw, err := ipc.AppendFrame(nil, &ipc.Header{Kind: ipc.KindMessage, Dest: dest, To: to, ID: id}, action, []byte("{}"), ipc.DefaultMaxFrame)
	if err != nil {
		t.Fatal(err)
	}
	f, err := ipc.Decode(raw)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// handle routes one frame and flushes, as the master's reader does at the end
// of a batch of one.
func handle(r *Router, e *Endpoint, f ipc.Frame) {
	r.Handle(e, f)
	r.Flush(e)
}

func newRouter(maxPending int) *Router {
	return New(Options{MasterPID: 1, MaxPending: maxPending})
}

func TestHeldUntilReady(t *testing.T) {
	r := newRouter(0)
	agentSlot := r.AddSlot(ipc.RoleAgent, 0)
	ws := r.AddSlot(ipc.RoleWorker, 1)
	agent, _ := attach(t, r, agentSlot, 10)
	r.MarkReady(agent)
	w, wp := attach(t, r, ws, 20)
	handle(r, agent, msg(t, ipc.DestApp, 0, "early", 1))
	handle(r, agent, msg(t, ipc.DestPID, 20, "early-pid", 2))
	if q, _ := r.Pending(w); q != 2 {
		t.Fatalf("held %d, want 2 while the worker starts", q)
	}
	r.MarkReady(w)
	for _, want := range []string{"early", "early-pid"} {
		f := wp.next(t)
		if string(f.Action) != want || f.From != 10 || f.Role != ipc.RoleAgent {
			t.Fatalf("got %q from %d role %d, want %q from the agent", f.Action, f.From, f.Role, want)
		}
	}
	if s := r.Stats(); s.Held != 2 || s.Relayed != 2 {
		t.Fatalf("stats %+v, want 2 held and 2 relayed", s)
	}
}

func TestUnacknowledgedRedeliveredToReplacement(t *testing.T) {
	r := newRouter(0)
	as := r.AddSlot(ipc.RoleAgent, 0)
	ws := r.AddSlot(ipc.RoleWorker, 1)
	agent, _ := attach(t, r, as, 10)
	r.MarkReady(agent)
	old, oldp := attach(t, r, ws, 20)
	r.MarkReady(old)
	for i := range 5 {
		handle(r, agent, msg(t, ipc.DestApp, 0, "m", uint64(i)))
	}
	handle(r, agent, msg(t, ipc.DestPID, 20, "by-pid", 9))
	for range 6 {
		oldp.next(t)
	}
	handle(r, old, ipc.Frame{Header: ipc.Header{Kind: ipc.KindAck, Ref: 2}}) // handled 2 of them
	if _, un := r.Pending(old); un != 3 {
		t.Fatalf("unacknowledged %d, want 3", un)
	}
	r.Detach(old)
	handle(r, agent, msg(t, ipc.DestApp, 0, "m", 5)) // while the slot is empty: held
	nw, np := attach(t, r, ws, 21)
	r.MarkReady(nw)
	var got []uint64
	for range 4 {
		f := np.next(t)
		if string(f.Action) != "m" {
			t.Fatalf("replacement got %q; the pid-addressed message must not be redelivered", f.Action)
		}
		got = append(got, f.ID)
	}
	if want := []uint64{2, 3, 4, 5}; !equal(got, want) {
		t.Fatalf("replacement got %v, want %v", got, want)
	}
	if s := r.Stats(); s.Redelivered != 3 {
		t.Fatalf("redelivered %d, want 3", s.Redelivered)
	}
}

func equal(a, b []uint64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestUnknownPIDIsNacked(t *testing.T) {
	r := newRouter(0)
	ws := r.AddSlot(ipc.RoleWorker, 1)
	w, wp := attach(t, r, ws, 20)
	r.MarkReady(w)
	handle(r, w, msg(t, ipc.DestPID, 4242, "lost?", 77))
	f := wp.next(t)
	if f.Kind != ipc.KindNack || f.ID != 77 || string(f.Action) != "lost?" || !strings.Contains(string(f.Payload), "no process with pid 4242") {
		t.Fatalf("got %s id %d %q %q, want a nack for message 77", f.Kind, f.ID, f.Action, f.Payload)
	}
	if r.Stats().Dropped != 1 {
		t.Fatalf("dropped %d, want 1", r.Stats().Dropped)
	}
}

func TestHoldBoundNacksTheSender(t *testing.T) {
	r := newRouter(2)
	as := r.AddSlot(ipc.RoleAgent, 0)
	ws := r.AddSlot(ipc.RoleWorker, 1)
	agent, ap := attach(t, r, as, 10)
	r.MarkReady(agent)
	attach(t, r, ws, 20) // starting, never ready
	for i := range 3 {
		handle(r, agent, msg(t, ipc.DestApp, 0, "m", uint64(i)))
	}
	f := ap.next(t)
	if f.Kind != ipc.KindNack || f.ID != 2 || !strings.Contains(string(f.Payload), "already holds 2 messages") {
		t.Fatalf("got %s id %d %q, want a nack for the third message", f.Kind, f.ID, f.Payload)
	}
}

func TestRandomIsRoundRobinOverReadyWorkers(t *testing.T) {
	r := newRouter(0)
	as := r.AddSlot(ipc.RoleAgent, 0)
	agent, _ := attach(t, r, as, 10)
	r.MarkReady(agent)
	var peers []*peer
	for id := 1; id <= 3; id++ {
		s := r.AddSlot(ipc.RoleWorker, id)
		e, p := attach(t, r, s, uint32(20+id))
		if id != 2 { // worker 2 is still starting
			r.MarkReady(e)
		}
		peers = append(peers, p)
	}
	for i := range 10 {
		handle(r, agent, msg(t, ipc.DestRandom, 0, "r", uint64(i)))
	}
	got := make([]int, 3)
	deadline := time.After(5 * time.Second)
	for range 10 {
		select {
		case <-peers[0].frames:
			got[0]++
		case <-peers[1].frames:
			got[1]++
		case <-peers[2].frames:
			got[2]++
		case <-deadline:
			t.Fatalf("only %v of 10 arrived within 5s", got)
		}
	}
	if q, _ := r.Pending(r.byPID[22]); q != 0 {
		t.Fatalf("%d random messages wait for the worker that is not ready", q)
	}
	if got[0] != 5 || got[1] != 0 || got[2] != 5 {
		t.Fatalf("random spread %v, want 5/0/5 over the two ready workers", got)
	}
}

func TestReplyToGoneRequesterIsCounted(t *testing.T) {
	r := newRouter(0)
	ws := r.AddSlot(ipc.RoleWorker, 1)
	w, _ := attach(t, r, ws, 20)
	r.MarkReady(w)
	raw, _ := ipc.AppendFrame(nil, &ipc.Header{Kind: ipc.KindReply, Dest: ipc.DestPID, To: 99, Ref: 5}, "q", nil, ipc.DefaultMaxFrame)
	f, _ := ipc.Decode(raw)
	handle(r, w, f)
	if r.Stats().LostReplies != 1 {
		t.Fatalf("lost replies %d, want 1", r.Stats().LostReplies)
	}
}

// BenchmarkRelay measures the master's path for one relayed message to a ready
// worker (pid-addressed) and to every worker (app), acknowledgements included,
// with one flush per batch of 64 frames as the master's reader does under load;
// and the direct channels' paths: a message handed back for worker slot 2
// (worker), and an app message whose except list skips worker 1 (except).
// It must not allocate in steady state.
func BenchmarkRelay(b *testing.B) {
	for _, bc := range []struct {
		name   string
		dest   ipc.Dest
		to     uint32
		except []int
	}{{"pid", ipc.DestPID, 21, nil}, {"app3", ipc.DestApp, 0, nil}, {"worker", ipc.DestWorker, 2, nil}, {"except", ipc.DestApp, 0, []int{1}}} {
		b.Run(bc.name, func(b *testing.B) {
			r := newRouter(1 << 20)
			as := r.AddSlot(ipc.RoleAgent, 0)
			agent, _ := attachDiscard(b, r, as, 10)
			r.MarkReady(agent)
			var ws []*Endpoint
			for id := 1; id <= 3; id++ {
				e, _ := attachDiscard(b, r, r.AddSlot(ipc.RoleWorker, id), uint32(20+id))
				r.MarkReady(e)
				ws = append(ws, e)
			}
			h := ipc.Header{Kind: ipc.KindMessage, Dest: bc.dest, To: bc.to}
			payload := make([]byte, 64)
			if bc.except != nil {
				h.Flags = ipc.FlagExcept
				payload = append(ipc.AppendExcept(nil, bc.except), payload...)
			}
			raw, _ := ipc.AppendFrame(nil, &h, "bench", payload, ipc.DefaultMaxFrame)
			f, _ := ipc.Decode(raw)
			var acked uint64
			ack := ipc.Frame{Header: ipc.Header{Kind: ipc.KindAck}}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				r.Handle(agent, f)
				if i%64 == 63 { // a read batch of 64 frames, as under load
					r.Flush(agent)
				}
				if i%256 == 255 {
					acked += 256
					ack.Ref = acked
					for _, w := range ws {
						handle(r, w, ack)
						for w.Writer().Buffered() > 256<<10 {
							runtime.Gosched() // the consumer sets the pace, as a child would
						}
					}
				}
			}
		})
	}
}

// attachDiscard attaches an endpoint whose peer discards everything it reads.
func attachDiscard(b *testing.B, r *Router, s *Slot, pid uint32) (*Endpoint, net.Conn) {
	a, c := socketpair(b)
	w := ipc.NewWriter(a, 0, 0)
	e, err := r.Attach(s, pid, w)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); io.Copy(io.Discard, c) }()
	b.Cleanup(func() {
		w.Close(time.Now().Add(time.Second))
		a.Close()
		<-done
		c.Close()
	})
	return e, c
}

// sized is a message frame of exactly n bytes.
func sized(t testing.TB, dest ipc.Dest, to uint32, id uint64, n int) ipc.Frame {
	payload := make([]byte, n-ipc.EncodedLen("m", 0))
	raw, err := ipc.AppendFrame(nil, &ipc.Header{Kind: ipc.KindMessage, Dest: dest, To: to, ID: id}, "m", payload, ipc.DefaultMaxFrame)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != n {
		t.Fatalf("frame of %d bytes, want %d", len(raw), n)
	}
	f, err := ipc.Decode(raw)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// expectNack reads the sender's frames until a nack for id, failing on a nack
// for another message.
func expectNack(t *testing.T, p *peer, id uint64, reason string) {
	t.Helper()
	f := p.next(t)
	if f.Kind != ipc.KindNack || f.ID != id || !strings.Contains(string(f.Payload), reason) {
		t.Fatalf("got %s id %d %q, want a nack for message %d containing %q", f.Kind, f.ID, f.Payload, id, reason)
	}
}

func noMoreFrames(t *testing.T, p *peer) {
	t.Helper()
	select {
	case f := <-p.frames:
		t.Fatalf("unexpected %s id %d %q", f.Kind, f.ID, f.Payload)
	default:
	}
}

func newByteRouter(maxBytes int) *Router {
	return New(Options{MasterPID: 1, MaxPendingBytes: maxBytes})
}

// The bytes held for a starting process are bounded, for pid-addressed and
// role-addressed messages alike; the message count bound is far away.
func TestHoldByteBoundNacksTheSender(t *testing.T) {
	const frame = 100 << 10
	r := newByteRouter(3 * frame)
	as := r.AddSlot(ipc.RoleAgent, 0)
	ws := r.AddSlot(ipc.RoleWorker, 1)
	agent, ap := attach(t, r, as, 10)
	r.MarkReady(agent)
	w, _ := attach(t, r, ws, 20) // starting, never ready
	handle(r, agent, sized(t, ipc.DestApp, 0, 1, frame))
	handle(r, agent, sized(t, ipc.DestPID, 20, 2, frame))
	handle(r, agent, sized(t, ipc.DestApp, 0, 3, frame))
	handle(r, agent, sized(t, ipc.DestPID, 20, 4, frame))
	handle(r, agent, sized(t, ipc.DestApp, 0, 5, frame))
	expectNack(t, ap, 4, "already holds 307200 bytes")
	expectNack(t, ap, 5, "already holds 307200 bytes")
	noMoreFrames(t, ap)
	if got := r.PendingBytes(w); got != 3*frame {
		t.Fatalf("holding %d bytes, want %d", got, 3*frame)
	}
	if s := r.Stats(); s.Dropped != 2 || s.Held != 3 {
		t.Fatalf("stats %+v, want 3 held and 2 dropped", s)
	}
}

// A slot with no process at all (between a crash and the replacement's start)
// holds at most MaxPendingBytes too, and hands them to the next process.
func TestOrphanByteBound(t *testing.T) {
	const frame = 100 << 10
	r := newByteRouter(2*frame + frame/2)
	as := r.AddSlot(ipc.RoleAgent, 0)
	ws := r.AddSlot(ipc.RoleWorker, 1)
	agent, ap := attach(t, r, as, 10)
	r.MarkReady(agent)
	for i := range 3 {
		handle(r, agent, sized(t, ipc.DestApp, 0, uint64(i), frame))
	}
	expectNack(t, ap, 2, "already holds 204800 bytes")
	if got := ws.orphans.Bytes(); got != 2*frame {
		t.Fatalf("orphans hold %d bytes, want %d", got, 2*frame)
	}
	w, wp := attach(t, r, ws, 20)
	r.MarkReady(w)
	for i := range 2 {
		if f := wp.next(t); f.ID != uint64(i) {
			t.Fatalf("replacement got message %d, want %d", f.ID, i)
		}
	}
}

// The unacknowledged messages of a ready process are bounded in bytes; an
// acknowledgement makes room again.
func TestRetainedByteBound(t *testing.T) {
	const frame = 200 << 10
	r := newByteRouter(4 * frame)
	as := r.AddSlot(ipc.RoleAgent, 0)
	ws := r.AddSlot(ipc.RoleWorker, 1)
	agent, ap := attach(t, r, as, 10)
	r.MarkReady(agent)
	w, wp := attach(t, r, ws, 20)
	r.MarkReady(w)
	for i := range 6 {
		handle(r, agent, sized(t, ipc.DestApp, 0, uint64(i), frame))
	}
	expectNack(t, ap, 4, "has 819200 bytes of unacknowledged messages")
	expectNack(t, ap, 5, "has 819200 bytes of unacknowledged messages")
	for range 4 {
		wp.next(t)
	}
	if _, un := r.Pending(w); un != 4 {
		t.Fatalf("unacknowledged %d, want 4", un)
	}
	// pid-addressed messages are not retained, and not bounded by it.
	handle(r, agent, sized(t, ipc.DestPID, 20, 6, frame))
	if f := wp.next(t); f.ID != 6 {
		t.Fatalf("got message %d, want the pid-addressed 6", f.ID)
	}
	handle(r, w, ipc.Frame{Header: ipc.Header{Kind: ipc.KindAck, Ref: 2}})
	handle(r, agent, sized(t, ipc.DestApp, 0, 7, frame))
	handle(r, agent, sized(t, ipc.DestApp, 0, 8, frame))
	handle(r, agent, sized(t, ipc.DestApp, 0, 9, frame))
	expectNack(t, ap, 9, "unacknowledged")
	for _, want := range []uint64{7, 8} {
		if f := wp.next(t); f.ID != want {
			t.Fatalf("got message %d, want %d", f.ID, want)
		}
	}
	if got := r.PendingBytes(w); got != 4*frame {
		t.Fatalf("retaining %d bytes, want %d", got, 4*frame)
	}
	if s := r.Stats(); s.Dropped != 3 {
		t.Fatalf("dropped %d, want 3", s.Dropped)
	}
}
