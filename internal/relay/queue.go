package relay

// frameQueue is a FIFO of encoded frames, each tagged with a sequence number.
//
// Small frames share one byte buffer that is reused, so a steady flow of them
// allocates nothing. A frame of bigFrame bytes or more is stored off the Go
// heap in a mapping of its own (see bigBuf), unmapped as soon as the frame
// leaves the queue: appending it to the shared buffer would make the buffer
// grow (and copy) to the peak of a burst and keep that capacity, and a heap
// allocation of its own would be returned to the system only after the next
// collection. Once the queue is empty, a shared buffer grown far beyond a
// steady-state size is dropped too (see Reset), so the memory a queue holds
// follows what it holds, not its peak.
//
// A frameQueue owns its big frames: a queue that is discarded must be Reset
// (or drained with Drain) first, or its mappings live until the garbage
// collector finds them unreachable. Copying a frameQueue value moves that
// ownership; the copy left behind must be zeroed, never used.
//
// Frames a queue hands out (Front, Each, Drain) alias its memory: for a big
// frame, a mapping that is unmapped when the frame is released. They are valid
// only until the frame leaves the queue (Pop, PopBack, Reset, the end of its
// Drain callback); whoever needs them longer copies them (every Push, and the
// ipc.Writer's Queue, Append* do).
type frameQueue struct {
	buf   []byte
	ends  []int     // end offset in buf of frame i; a big frame adds no bytes to buf
	seqs  []uint64  // sequence number of frame i
	big   []*bigBuf // big frames, in order; big[bigHead:] are live
	head  int       // first live frame
	off   int       // byte offset of the first live frame
	bytes int       // bytes held, small and big frames

	bigHead int
}

const (
	// bigFrame is the size from which a frame is stored in an allocation of its own.
	bigFrame = 64 << 10
	// maxIdleBuf and maxIdleEntries bound the capacity an empty queue keeps.
	// Above them the memory was grown by a burst, and is given back.
	maxIdleBuf     = 1 << 20
	maxIdleEntries = 16 << 10
)

func (q *frameQueue) Len() int { return len(q.ends) - q.head }

// Bytes is the number of frame bytes held.
func (q *frameQueue) Bytes() int { return q.bytes }

// isBig reports whether frame i (absolute index) is stored in q.big: it takes no
// bytes of buf, which no frame in buf can do (frames are never empty).
func (q *frameQueue) isBig(i int) bool {
	start := q.off
	if i > q.head {
		start = q.ends[i-1]
	}
	return q.ends[i] == start
}

func (q *frameQueue) Push(raw []byte, seq uint64) {
	if len(raw) >= bigFrame {
		q.big = append(q.big, newBigBuf(raw))
	} else {
		q.buf = append(q.buf, raw...)
	}
	q.ends = append(q.ends, len(q.buf))
	q.seqs = append(q.seqs, seq)
	q.bytes += len(raw)
}

// Front returns the first frame and its sequence number. The bytes alias the
// queue and are valid until the frame is popped.
func (q *frameQueue) Front() ([]byte, uint64) {
	if q.isBig(q.head) {
		return q.big[q.bigHead].b, q.seqs[q.head]
	}
	return q.buf[q.off:q.ends[q.head]], q.seqs[q.head]
}

// Pop drops the first frame.
func (q *frameQueue) Pop() {
	if q.isBig(q.head) {
		q.bytes -= len(q.big[q.bigHead].b)
		q.big[q.bigHead].free() // release it now, not when the queue drains
		q.big[q.bigHead] = nil
		q.bigHead++
	} else {
		q.bytes -= q.ends[q.head] - q.off
	}
	q.off = q.ends[q.head]
	q.head++
	if q.head == len(q.ends) {
		q.Reset()
		return
	}
	if q.head >= 1024 && q.head*2 >= len(q.ends) {
		q.compact()
	}
}

// Reset empties the queue, releasing the big frames it holds. It keeps its
// memory for reuse unless a burst grew it beyond maxIdleBuf bytes or
// maxIdleEntries frames: then it lets it go, so an idle queue holds no more
// than a small steady-state buffer.
func (q *frameQueue) Reset() {
	for _, bb := range q.big[q.bigHead:] {
		bb.free()
	}
	q.buf, q.ends, q.seqs = q.buf[:0], q.ends[:0], q.seqs[:0]
	clear(q.big)
	q.big = q.big[:0]
	q.head, q.off, q.bigHead, q.bytes = 0, 0, 0, 0
	if cap(q.buf) > maxIdleBuf {
		q.buf = nil
	}
	if cap(q.ends) > maxIdleEntries {
		q.ends, q.seqs = nil, nil
	}
	if cap(q.big) > maxIdleEntries {
		q.big = nil
	}
}

func (q *frameQueue) compact() {
	n := copy(q.buf, q.buf[q.off:])
	q.buf = q.buf[:n]
	live := copy(q.ends, q.ends[q.head:])
	for i := range live {
		q.ends[i] -= q.off
	}
	q.ends = q.ends[:live]
	q.seqs = q.seqs[:copy(q.seqs, q.seqs[q.head:])]
	nb := copy(q.big, q.big[q.bigHead:])
	clear(q.big[nb:])
	q.big = q.big[:nb]
	q.head, q.off, q.bigHead = 0, 0, 0
}

// Each calls f for every frame, front to back. raw is valid only during the
// call, and f must not modify the queue.
func (q *frameQueue) Each(f func(raw []byte, seq uint64)) {
	off, b := q.off, q.bigHead
	for i := q.head; i < len(q.ends); i++ {
		if q.ends[i] == off {
			f(q.big[b].b, q.seqs[i])
			b++
		} else {
			f(q.buf[off:q.ends[i]], q.seqs[i])
		}
		off = q.ends[i]
	}
}

// Drain calls f for every frame, front to back, releasing each big frame as
// soon as f returns, and leaves the queue empty. raw is valid only during the
// call. It is for a queue its owner has let go of (moved out of an endpoint
// or slot): f may modify other queues, never this one. Handing frames on one
// by one, the master holds one extra copy of a frame at a time, not of the
// whole queue.
func (q *frameQueue) Drain(f func(raw []byte, seq uint64)) {
	off, b := q.off, q.bigHead
	for i := q.head; i < len(q.ends); i++ {
		if q.ends[i] == off {
			bb := q.big[b]
			f(bb.b, q.seqs[i])
			q.bytes -= len(bb.b)
			bb.free()
			q.big[b] = nil
			b++
		} else {
			f(q.buf[off:q.ends[i]], q.seqs[i])
		}
		off = q.ends[i]
	}
	q.Reset() // the big frames are freed already: q.big holds only nils
}

// PopBack drops the last frame.
func (q *frameQueue) PopBack() {
	n := len(q.ends) - 1
	if n < q.head {
		return
	}
	if q.isBig(n) {
		last := len(q.big) - 1
		q.bytes -= len(q.big[last].b)
		q.big[last].free()
		q.big[last] = nil
		q.big = q.big[:last]
	} else {
		start := q.off
		if n > q.head {
			start = q.ends[n-1]
		}
		q.bytes -= q.ends[n] - start
		q.buf = q.buf[:start]
	}
	q.ends, q.seqs = q.ends[:n], q.seqs[:n]
	if q.head == len(q.ends) {
		q.Reset()
	}
}
