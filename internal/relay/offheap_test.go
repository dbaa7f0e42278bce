package relay

import (
	"bytes"
	"os"
	"testing"

	"github.com/brood-go/brood/internal/ipc"
)

// Every test of the package runs with released mappings made inaccessible
// rather than unmapped: a frame slice used after its release faults (the
// test binary dies) instead of reading memory mapped there since.
func TestMain(m *testing.M) {
	poisonFreed = true
	os.Exit(m.Run())
}

// mappedBytes is what q holds in mappings, from its own bookkeeping.
func (q *frameQueue) mappedBytes() int {
	n := 0
	for _, bb := range q.big[q.bigHead:] {
		n += len(bb.mem)
	}
	return n
}

func pages(n int) int { return (n + pageSize - 1) &^ (pageSize - 1) }

// Big frames are stored in mappings, one each, and every way a frame leaves
// the queue (Pop, PopBack, Drain, Reset) unmaps it; small frames stay in the
// shared buffer.
func TestFrameQueueBigFramesAreMappedAndUnmapped(t *testing.T) {
	sizes := []int{bigFrame, 100, bigFrame + 1, 3 << 20, 60, 1<<20 + 36}
	push := func(q *frameQueue) (want int, bufs []*bigBuf) {
		for i, n := range sizes {
			q.Push(frameOf(n, byte(i+1)), uint64(i))
			if n >= bigFrame {
				want += pages(n)
				bufs = append(bufs, q.big[len(q.big)-1])
			}
		}
		return want, bufs
	}
	released := func(t *testing.T, q *frameQueue, bufs []*bigBuf) {
		t.Helper()
		for i, bb := range bufs {
			if bb.mem != nil || bb.b != nil {
				t.Fatalf("big frame %d still mapped", i)
			}
		}
		if n := q.mappedBytes(); n != 0 {
			t.Fatalf("queue still maps %d bytes", n)
		}
	}
	// Only what this test releases is checked against the global count:
	// another test's dropped queue may be unmapped by its cleanup (after a GC)
	// at any moment, so the count can fall while this test maps.
	base := mapped.Load()

	var q frameQueue
	want, bufs := push(&q)
	if got := q.mappedBytes(); got != want {
		t.Fatalf("queue maps %d bytes, want %d", got, want)
	}
	for _, bb := range bufs {
		if bb.mem == nil {
			t.Fatal("a big frame is on the heap")
		}
	}
	if cap(q.buf) >= bigFrame {
		t.Fatalf("big frames went to the shared buffer (capacity %d)", cap(q.buf))
	}

	t.Run("Pop", func(t *testing.T) {
		var q frameQueue
		_, bufs := push(&q)
		for i, n := range sizes {
			raw, seq := q.Front()
			if seq != uint64(i) || !bytes.Equal(raw, frameOf(n, byte(i+1))) {
				t.Fatalf("front %d: seq %d, %d bytes", i, seq, len(raw))
			}
			q.Pop()
		}
		released(t, &q, bufs)
	})
	t.Run("PopBack", func(t *testing.T) {
		var q frameQueue
		_, bufs := push(&q)
		for q.Len() > 0 {
			q.PopBack()
		}
		released(t, &q, bufs)
	})
	t.Run("Drain", func(t *testing.T) {
		var q frameQueue
		_, bufs := push(&q)
		i := 0
		q.Drain(func(raw []byte, seq uint64) {
			if seq != uint64(i) || !bytes.Equal(raw, frameOf(sizes[i], byte(i+1))) {
				t.Fatalf("frame %d: seq %d, %d bytes", i, seq, len(raw))
			}
			// Frames already handed on are released while the rest wait.
			for _, bb := range bufs[:i/2] {
				if bb.mem != nil {
					t.Fatalf("frame %d: an earlier big frame is still mapped", i)
				}
			}
			i++
		})
		if i != len(sizes) || q.Len() != 0 || q.Bytes() != 0 {
			t.Fatalf("drained %d frames, %d left, %d bytes", i, q.Len(), q.Bytes())
		}
		released(t, &q, bufs)
	})
	t.Run("Reset", func(t *testing.T) {
		var q frameQueue
		_, bufs := push(&q)
		q.Pop() // a big frame first, then a mix
		q.Reset()
		released(t, &q, bufs)
	})

	q.Reset()
	released(t, &q, bufs)
	// Other tests' leftovers may be collected meanwhile: at most where it was.
	if got := mapped.Load(); got > base {
		t.Fatalf("%d bytes still mapped after every frame was released", got-base)
	}
}

// bigMsg is a message frame of n bytes whose payload is the byte fill.
func bigMsg(t testing.TB, dest ipc.Dest, to uint32, id uint64, n int, fill byte) ipc.Frame {
	f := sized(t, dest, to, id, n)
	for i := range f.Payload {
		f.Payload[i] = fill
	}
	return f
}

func expectBig(t *testing.T, p *peer, id uint64, n int, fill byte) {
	t.Helper()
	f := p.next(t)
	if f.Kind != ipc.KindMessage || f.ID != id {
		t.Fatalf("got %s id %d, want message %d", f.Kind, f.ID, id)
	}
	if want := n - ipc.EncodedLen("m", 0); len(f.Payload) != want || !bytes.Equal(f.Payload, bytes.Repeat([]byte{fill}, want)) {
		t.Fatalf("message %d: payload of %d bytes is not %d bytes of %d", id, len(f.Payload), want, fill)
	}
}

// Large held frames go through every path that keeps or hands them on: held
// for a starting process, written from its queue, retained unacknowledged,
// redistributed to the replacement after a Detach, held as orphans, handed to
// another worker when their slot is removed, discarded, acknowledged. Each
// must arrive intact (a write from a released mapping would fault, or send
// garbage), and once everything is delivered and acknowledged nothing stays
// mapped.
func TestLargeFramesThroughDetachAndRedistribution(t *testing.T) {
	const n = 1<<20 + 100
	base := mapped.Load()
	r := newRouter(0)
	as := r.AddSlot(ipc.RoleAgent, 0)
	ws1 := r.AddSlot(ipc.RoleWorker, 1)
	ws2 := r.AddSlot(ipc.RoleWorker, 2)
	agent, ap := attach(t, r, as, 10)
	r.MarkReady(agent)
	a, apeer := attach(t, r, ws1, 20)
	r.MarkReady(a)
	w2, w2p := attach(t, r, ws2, 30) // starting: random messages go to slot 1 only

	// 0–3 to slot 1's ready process a, written and retained.
	for id := range uint64(4) {
		handle(r, agent, bigMsg(t, ipc.DestApp, 0, id, n, byte(id+1)))
	}
	for id := range uint64(4) {
		expectBig(t, apeer, id, n, byte(id+1))
	}
	// Only ws2's starting process queues its copies of 0–3 (DestApp).
	if got := ws2.next.queue.Len(); got != 4 {
		t.Fatalf("starting worker 2 queues %d, want 4", got)
	}
	handle(r, a, ipc.Frame{Header: ipc.Header{Kind: ipc.KindAck, Ref: 1}}) // 0 done

	// b starts in slot 1 (a still serves it) and holds 5 (pid) until ready;
	// 4 (random) goes to a, the only ready worker.
	b, bpeer := attach(t, r, ws1, 21)
	handle(r, agent, bigMsg(t, ipc.DestRandom, 0, 4, n, 5))
	handle(r, agent, bigMsg(t, ipc.DestPID, 21, 5, n, 6))
	expectBig(t, apeer, 4, n, 5)
	if q, un := b.queue.Len(), a.retained.Len(); q != 1 || un != 4 {
		t.Fatalf("b queues %d and a retains %d frames, want 1 and 4", q, un)
	}

	// a dies: its unacknowledged 1–4 go to b's queue, after 5.
	r.Detach(a)
	if got := a.retained.mappedBytes() + a.queue.mappedBytes(); got != 0 {
		t.Fatalf("a detached still maps %d bytes", got)
	}
	r.MarkReady(b)
	expectBig(t, bpeer, 5, n, 6)
	for id := uint64(1); id < 5; id++ {
		expectBig(t, bpeer, id, n, byte(id+1))
	}
	if got := b.queue.mappedBytes(); got != 0 {
		t.Fatalf("b's written queue still maps %d bytes", got)
	}

	// b dies too, with nothing in slot 1: its four held frames become orphans.
	r.Detach(b)
	if got := ws1.orphans.Len(); got != 4 {
		t.Fatalf("slot 1 holds %d orphans, want 4", got)
	}
	// Worker 2 becomes ready, then slot 1 is removed: the random frame 4 goes
	// to worker 2 (after its queued copies of 0–3), the others are discarded.
	r.MarkReady(w2)
	for id := range uint64(4) {
		expectBig(t, w2p, id, n, byte(id+1))
	}
	r.RemoveSlot(ws1)
	expectBig(t, w2p, 4, n, 5)
	if s := r.Stats(); s.Unreachable != 3 {
		t.Fatalf("unreachable %d, want 3", s.Unreachable)
	}
	if got := ws1.orphans.mappedBytes(); got != 0 {
		t.Fatalf("removed slot still maps %d bytes", got)
	}

	// Worker 2 acknowledges all five: nothing is held any more.
	handle(r, w2, ipc.Frame{Header: ipc.Header{Kind: ipc.KindAck, Ref: 5}})
	if q, un := r.Pending(w2); q != 0 || un != 0 {
		t.Fatalf("worker 2: %d queued, %d unacknowledged", q, un)
	}
	if got := mapped.Load(); got > base {
		t.Fatalf("%d bytes still mapped after every frame was delivered and acknowledged", got-base)
	}
	noMoreFrames(t, ap)
}
