package relay

// frameQueue is a FIFO of encoded frames in one byte buffer, each tagged with a
// sequence number. It reuses its memory, so a steady flow allocates nothing.
type frameQueue struct {
	buf  []byte
	ends []int    // end offset of frame i in buf
	seqs []uint64 // sequence number of frame i
	head int      // first live frame
	off  int      // byte offset of the first live frame
}

func (q *frameQueue) Len() int { return len(q.ends) - q.head }

func (q *frameQueue) Push(raw []byte, seq uint64) {
	q.buf = append(q.buf, raw...)
	q.ends = append(q.ends, len(q.buf))
	q.seqs = append(q.seqs, seq)
}

// Front returns the first frame and its sequence number; the bytes alias the queue.
func (q *frameQueue) Front() ([]byte, uint64) {
	return q.buf[q.off:q.ends[q.head]], q.seqs[q.head]
}

// Pop drops the first frame.
func (q *frameQueue) Pop() {
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

// Reset empties the queue, keeping its memory.
func (q *frameQueue) Reset() {
	q.buf, q.ends, q.seqs = q.buf[:0], q.ends[:0], q.seqs[:0]
	q.head, q.off = 0, 0
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
	q.head, q.off = 0, 0
}

// Each calls f for every frame, front to back.
func (q *frameQueue) Each(f func(raw []byte, seq uint64)) {
	off := q.off
	for i := q.head; i < len(q.ends); i++ {
		f(q.buf[off:q.ends[i]], q.seqs[i])
		off = q.ends[i]
	}
}

// Bytes is the number of bytes held.
func (q *frameQueue) Bytes() int { return len(q.buf) - q.off }

// PopBack drops the last frame.
func (q *frameQueue) PopBack() {
	n := len(q.ends) - 1
	if n < q.head {
		return
	}
	start := q.off
	if n > q.head {
		start = q.ends[n-1]
	}
	q.buf = q.buf[:start]
	q.ends, q.seqs = q.ends[:n], q.seqs[:n]
	if q.head == len(q.ends) {
		q.Reset()
	}
}
