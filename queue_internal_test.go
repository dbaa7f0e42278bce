package brood

import (
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/ipc"
)

// TestHandlerQueueCountBound drives one Messenger directly, its handler blocked:
// beyond MaxPending queued messages, pid-addressed ones are dropped and counted,
// a dropped request is answered with a refusal, a ping is still answered, and
// role-addressed and brood: messages are still queued. The acknowledgement
// sent once the handler returns counts the dropped messages too: it is the
// master's sequence of messages written to this process.
func TestHandlerQueueCountBound(t *testing.T) {
	ours, master := net.Pipe()
	defer master.Close()
	w := ipc.NewWriter(ours, 0, 0)
	m := newMessenger(w, 42, Worker, 0, slog.New(slog.DiscardHandler))
	m.maxQueue = 4
	gate := make(chan struct{})
	handled := make(chan string, 64)
	m.On("x", func(msg Message) { <-gate; handled <- msg.Action })
	m.On("brood:event", func(msg Message) { handled <- msg.Action })

	deliver := func(kind ipc.Kind, action string, flags ipc.Flags, id uint64) {
		t.Helper()
		h := ipc.Header{Kind: kind, Dest: ipc.DestPID, Role: ipc.RoleAgent, Flags: flags, From: 7, To: 42, ID: id}
		raw, err := ipc.AppendFrame(nil, &h, action, []byte(`1`), ipc.DefaultMaxFrame)
		if err != nil {
			t.Fatal(err)
		}
		f, err := ipc.Decode(raw)
		if err != nil {
			t.Fatal(err)
		}
		m.handleFrame(f)
	}
	for i := range 10 {
		deliver(ipc.KindMessage, "x", 0, uint64(i)) // 4 queued (one in the handler), 6 dropped
	}
	deliver(ipc.KindMessage, "x", ipc.FlagRequest, 100) // dropped: answered with a refusal
	deliver(ipc.KindPing, "", 0, 5)
	deliver(ipc.KindMessage, "x", ipc.FlagHeld, 11) // role-addressed: queued anyway
	deliver(ipc.KindMessage, "brood:event", 0, 12)  // brood's own: queued anyway

	rd := ipc.NewReader(master, 0)
	master.SetReadDeadline(time.Now().Add(10 * time.Second))
	next := func() ipc.Frame {
		t.Helper()
		f, err := rd.Next()
		if err != nil {
			t.Fatalf("reading what the worker wrote: %v", err)
		}
		return f
	}
	if f := next(); f.Kind != ipc.KindReply || f.Ref != 100 || string(f.Action) != actionRefused || !strings.Contains(string(f.Payload), "handler queue is full") {
		t.Fatalf("first frame: %v ref %d %q %q; want the refusal of request 100", f.Kind, f.Ref, f.Action, f.Payload)
	}
	if f := next(); f.Kind != ipc.KindPong || f.ID != 5 {
		t.Fatalf("second frame: %v id %d; want the pong, while the handler is blocked", f.Kind, f.ID)
	}
	if s := m.Stats(); s.Dropped != 7 || s.Received != 13 {
		t.Fatalf("stats %+v; want 7 dropped of 13 received", s)
	}
	close(gate)
	for range 6 {
		select {
		case <-handled:
		case <-time.After(10 * time.Second):
			t.Fatal("queued messages were not handled")
		}
	}
	if f := next(); f.Kind != ipc.KindAck || f.Ref != 13 {
		t.Fatalf("then: %v ref %d; want the ack of all 13 messages, dropped ones included", f.Kind, f.Ref)
	}
	if n, b := m.qlen.Load(), m.qbytes.Load(); n != 0 || b != 0 {
		t.Fatalf("drained queue counts %d messages, %d bytes", n, b)
	}
	m.close(10 * time.Second)
	w.Close(time.Now().Add(time.Second))
}

// BenchmarkReceive measures a receiver's path for one message from the reader
// to its handler: the handler queue, the Message and the dispatcher (one op =
// one message handled). Frames come from a buffer decoded in the loop, as a
// channel's reader does, in batches of 512.
func BenchmarkReceive(b *testing.B) {
	ours, master := net.Pipe()
	defer master.Close()
	go func() { _, _ = io.Copy(io.Discard, master) }()
	w := ipc.NewWriter(ours, 0, 0)
	m := newMessenger(w, 42, Worker, 0, slog.New(slog.DiscardHandler))
	var handled atomic.Int64
	m.On("msg", func(Message) { handled.Add(1) })
	const batch = 512
	var raw []byte
	for i := range batch {
		h := ipc.Header{Kind: ipc.KindMessage, Dest: ipc.DestPID, Role: ipc.RoleAgent, From: 7, To: 42, ID: uint64(i + 1), Flags: ipc.FlagRaw}
		var err error
		if raw, err = ipc.AppendFrame(raw, &h, "msg", make([]byte, 64), ipc.DefaultMaxFrame); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	b.ResetTimer()
	rd := ipc.NewReader(&repeat{b: raw}, 0)
	sent := 0
	for sent < b.N {
		for i := 0; i < batch && sent < b.N; i++ {
			f, err := rd.Next()
			if err != nil {
				b.Fatal(err)
			}
			m.handleFrame(f)
			sent++
		}
		for handled.Load() < int64(sent)-32*batch { // at most 16k queued, as behind a streaming sender
			runtime.Gosched()
		}
	}
	for handled.Load() < int64(b.N) {
		runtime.Gosched()
	}
	b.StopTimer()
	m.close(10 * time.Second)
	w.Close(time.Now().Add(time.Second))
}

// repeat reads b over and over, as one endless stream.
type repeat struct {
	b   []byte
	off int
}

func (r *repeat) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		c := copy(p[n:], r.b[r.off:])
		n += c
		r.off = (r.off + c) % len(r.b)
	}
	return n, nil
}

// TestHandlerQueueBlocks checks the block chain: FIFO across block
// boundaries and across takes, and at most maxIdleQueue messages' worth of
// blocks kept after a burst.
func TestHandlerQueueBlocks(t *testing.T) {
	var q handlerQueue
	next, want := 0, 0
	check := func(chain *queueBlock) {
		t.Helper()
		for b := chain; b != nil; b = b.next {
			for i := range b.msgs[:b.n] {
				if got := int(b.msgs[i].id); got != want {
					t.Fatalf("message %d came out as %d", want, got)
				}
				want++
				b.msgs[i] = Message{}
			}
		}
		q.recycle(chain)
	}
	for _, burst := range []int{1, queueBlockLen - 1, queueBlockLen, 3*queueBlockLen + 5, 2 * maxIdleQueue} {
		for range burst {
			q.push(Message{id: uint64(next)})
			next++
		}
		if q.empty() {
			t.Fatalf("empty after pushing %d", burst)
		}
		check(q.take())
		if !q.empty() || q.take() != nil {
			t.Fatal("not empty after take")
		}
		if q.nfree > maxIdleQueue/queueBlockLen {
			t.Fatalf("%d blocks kept; at most %d", q.nfree, maxIdleQueue/queueBlockLen)
		}
	}
	if want != next {
		t.Fatalf("%d of %d messages came out", want, next)
	}
	if q.nfree != maxIdleQueue/queueBlockLen {
		t.Fatalf("%d blocks kept after a burst of %d; want %d", q.nfree, 2*maxIdleQueue, maxIdleQueue/queueBlockLen)
	}
}
