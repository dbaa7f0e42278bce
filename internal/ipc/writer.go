package ipc

import (
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrClosed is returned by a Writer after Close or after a write error.
var ErrClosed = errors.New("ipc: channel closed")

// ErrBufferFull is returned when a Writer already holds its limit of unsent bytes.
var ErrBufferFull = errors.New("ipc: send buffer full")

// DefaultWriteBuffer is the default limit on bytes a Writer queues before refusing.
const DefaultWriteBuffer = 256 << 20

// maxIdleWriteBuf is the capacity each of a Writer's two buffers may keep once
// everything is written. A burst grows them beyond it; they are dropped once a
// small write (at most smallWrite bytes: a heartbeat, a reply) has been written
// after it, so a run of large writes reuses them and an idle Writer holds no
// more than a steady flow needs.
const (
	maxIdleWriteBuf = 1 << 20
	smallWrite      = 64 << 10
)

// mapFrom is the size from which the Writer's pending bytes move off the Go
// heap into an anonymous mapping (grown with mremap, unmapped as soon as it is
// written out). A burst of large frames grown on the heap leaves a trail of
// outgrown buffers for the collector, which lets the heap reach twice what is
// live before it runs and returns the pages to the system later still; a
// mapping costs no garbage and its memory goes back the moment it is written.
const mapFrom = maxIdleWriteBuf

// Writer batches frames onto a connection. Append never blocks on the peer: when
// nothing is in flight it tries one non-blocking write straight away (low latency
// when idle); otherwise, or for what the kernel did not take, it queues the bytes
// for a flusher goroutine, which writes everything queued so far in one syscall
// (batching under load). Frames are written in Append order. Once everything
// queued is written, a buffer a burst grew beyond a small steady-state size is
// released.
type Writer struct {
	conn  net.Conn
	raw   syscall.RawConn // nil when conn has no file descriptor (net.Pipe)
	limit int
	max   int // frame size limit

	mu      sync.Mutex
	pending []byte // appended, not yet taken by a write
	out     []byte // being written by owner
	// The mappings pending and out live in, when they are off the heap (see
	// mapFrom); nil when on the heap. A mapped out is unmapped as soon as it
	// is written, so whenever out is empty it is on the heap. spare is the
	// heap buffer pending had before it moved to a mapping, reused after.
	pendingMem, outMem []byte
	spare              []byte
	owner              owner
	closed             bool
	err                error
	wake               chan struct{}
	done               chan struct{}

	// Scratch for the non-blocking write; used only while owner == ownerDirect.
	twBuf []byte
	twN   int
	twErr error
	twFn  func(fd uintptr) bool

	writes atomic.Uint64 // write syscalls made, for benchmarks

	lastWrite time.Time // when the last write ended (guarded by mu)
	bursts    bool      // leave bursts to the flusher (see burstWindow)
}

// burstWindow: an Append within this long of the end of the previous write
// is taken for part of a burst, and left to the flusher goroutine instead of
// written at once: the flusher then writes everything appended meanwhile in
// one syscall. A sender streaming small frames otherwise makes one write(2)
// per frame, and its receiver one read(2) (measured: half of a streaming
// agent's CPU, and a third of the throughput). Request/reply traffic, with a
// round trip between writes, keeps writing at once.
//
// Only in a process with more than one P (GOMAXPROCS), where the flusher runs
// on another one at once: with one, it would wait for the appender to block
// or be preempted, and a handler that replies and then computes would hold
// its reply back for up to the 10 ms of a preemption.
const burstWindow = 20 * time.Microsecond

// owner says who is writing out (and will write pending after it).
type owner uint8

const (
	ownerNone    owner = iota
	ownerDirect        // an Append caller, doing one non-blocking write
	ownerFlusher       // the flusher goroutine
)

// NewWriter starts a Writer on conn. queueLimit bounds the unsent bytes (<= 0 means
// DefaultWriteBuffer); frameLimit bounds one frame (<= 0 means DefaultMaxFrame).
// The Writer's goroutine runs until Close.
func NewWriter(conn net.Conn, queueLimit, frameLimit int) *Writer {
	if queueLimit <= 0 {
		queueLimit = DefaultWriteBuffer
	}
	if frameLimit <= 0 {
		frameLimit = DefaultMaxFrame
	}
	w := &Writer{conn: conn, limit: queueLimit, max: frameLimit, wake: make(chan struct{}, 1), done: make(chan struct{})}
	if sc, ok := conn.(syscall.Conn); ok {
		if raw, err := sc.SyscallConn(); err == nil {
			w.raw = raw
		}
	}
	w.twFn = w.tryWriteFd
	w.bursts = runtime.GOMAXPROCS(0) > 1
	go w.flushLoop()
	return w
}

// FrameLimit is the largest frame this Writer accepts.
func (w *Writer) FrameLimit() int { return w.max }

// Append encodes one frame and queues it.
func (w *Writer) Append(h *Header, action string, payload []byte) error {
	w.mu.Lock()
	if err := w.usable(EncodedLen(action, len(payload))); err != nil {
		w.mu.Unlock()
		return err
	}
	w.room(EncodedLen(action, len(payload)))
	var err error
	w.pending, err = AppendFrame(w.pending, h, action, payload, w.max)
	if err != nil {
		w.mu.Unlock()
		return err
	}
	w.kick()
	return nil
}

// AppendRelay queues a copy of an encoded frame with its sender and flags replaced.
func (w *Writer) AppendRelay(raw []byte, role Role, from uint32, flags Flags) error {
	w.mu.Lock()
	if err := w.usable(len(raw)); err != nil {
		w.mu.Unlock()
		return err
	}
	w.room(len(raw))
	start := len(w.pending)
	w.pending = append(w.pending, raw...)
	SetSender(w.pending[start:], role, from)
	SetFlags(w.pending[start:], flags)
	w.kick()
	return nil
}

// AppendRaw queues a copy of encoded frames as they are.
func (w *Writer) AppendRaw(raw []byte) error {
	w.mu.Lock()
	if err := w.usable(len(raw)); err != nil {
		w.mu.Unlock()
		return err
	}
	w.room(len(raw))
	w.pending = append(w.pending, raw...)
	w.kick()
	return nil
}

// Queue appends encoded frames without writing them: the next Flush (or
// Append) writes them. A relay queues every frame of a read batch and flushes
// once per destination, so a burst costs one syscall, not one per frame.
func (w *Writer) Queue(raw []byte) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.usable(len(raw)); err != nil {
		return err
	}
	w.room(len(raw))
	w.pending = append(w.pending, raw...)
	return nil
}

// Flush writes what Queue left, or makes sure the write in flight will.
func (w *Writer) Flush() {
	w.mu.Lock()
	if len(w.pending) == 0 {
		w.mu.Unlock()
		return
	}
	w.kick()
}

// usable reports why n more bytes cannot be queued. Called with mu held.
func (w *Writer) usable(n int) error {
	switch {
	case w.err != nil:
		return w.err
	case w.closed:
		return ErrClosed
	case len(w.pending)+len(w.out)+n > w.limit:
		return fmt.Errorf("%w: %d bytes queued, limit %d", ErrBufferFull, len(w.pending)+len(w.out), w.limit)
	}
	return nil
}

// kick makes sure the pending bytes get written, and releases mu.
func (w *Writer) kick() {
	if w.owner != ownerNone {
		w.mu.Unlock()
		return
	}
	w.swap()
	if w.raw == nil || (w.bursts && time.Since(w.lastWrite) < burstWindow) {
		w.owner = ownerFlusher
		w.mu.Unlock()
		w.signal()
		return
	}
	w.owner = ownerDirect
	buf := w.out
	w.mu.Unlock()

	n, err := w.tryWrite(buf)

	w.mu.Lock()
	w.lastWrite = time.Now()
	if err != nil {
		w.fail(err)
	} else {
		w.out = w.out[:copy(w.out, w.out[n:])]
		if len(w.out) == 0 {
			w.releaseOut()
		}
		if len(w.out) == 0 && len(w.pending) == 0 {
			w.owner = ownerNone
			w.shrink(len(buf))
		} else {
			w.owner = ownerFlusher
		}
	}
	handOff := w.owner == ownerFlusher || w.closed
	w.mu.Unlock()
	if handOff {
		w.signal()
	}
}

// shrink drops buffers grown beyond maxIdleWriteBuf, if the write that emptied
// them, of last bytes, was small. Called with mu held, when both are empty and
// nobody is writing.
func (w *Writer) shrink(last int) {
	if last > smallWrite {
		return
	}
	if cap(w.out) > maxIdleWriteBuf {
		w.out = nil
	}
	if cap(w.pending) > maxIdleWriteBuf {
		w.pending = nil
	}
}

// Capacity reports the bytes the Writer's buffers hold allocated, written or
// not: their capacity on the heap, the size of their mappings off it.
func (w *Writer) Capacity() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return cap(w.pending) + cap(w.out) + cap(w.spare)
}

// swap hands pending to the writer as out, and out's (empty, heap) buffer to
// appenders as pending. Called with mu held, out empty.
func (w *Writer) swap() {
	w.out, w.pending = w.pending, w.out[:0]
	w.outMem, w.pendingMem = w.pendingMem, w.outMem
}

// room makes pending able to take n more bytes without append reallocating
// it. Up to mapFrom it doubles pending on the heap; past it, it moves pending
// to a mapping, or grows the mapping it is in. If mapping fails, append grows
// it on the heap. Called with mu held.
func (w *Writer) room(n int) {
	need := len(w.pending) + n
	if need <= cap(w.pending) {
		return
	}
	if w.pendingMem == nil && need <= mapFrom {
		// On the heap, doubling: append grows a slice this large by a
		// quarter at a time, copying all of it each time (measured: a fifth
		// of a streaming sender's CPU).
		heap := make([]byte, len(w.pending), min(max(need, 2*cap(w.pending), 4<<10), mapFrom))
		copy(heap, w.pending)
		w.pending = heap
		return
	}
	size := max(pageRound(need), 2*len(w.pendingMem), 4*mapFrom)
	if w.pendingMem != nil {
		mem, err := unix.Mremap(w.pendingMem, size, unix.MREMAP_MAYMOVE)
		if err == nil {
			w.pending, w.pendingMem = mem[:len(w.pending)], mem
			return
		}
		// Back to the heap: append will grow it.
		heap := make([]byte, len(w.pending), need)
		copy(heap, w.pending)
		unmapBuf(w.pendingMem)
		w.pending, w.pendingMem = heap, nil
		return
	}
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return
	}
	copy(mem, w.pending)
	if w.spare == nil && cap(w.pending) > 0 {
		w.spare = w.pending[:0]
	}
	w.pending, w.pendingMem = mem[:len(w.pending)], mem
}

// releaseOut unmaps out once it is written, if it is mapped, and gives out the
// spare heap buffer instead. Called with mu held by the owner, out empty.
func (w *Writer) releaseOut() {
	if w.outMem == nil {
		return
	}
	unmapBuf(w.outMem)
	w.out, w.outMem, w.spare = w.spare, nil, nil
}

func pageRound(n int) int {
	p := pageSize - 1
	return (n + p) &^ p
}

var pageSize = syscall.Getpagesize()

func unmapBuf(mem []byte) {
	if err := unix.Munmap(mem); err != nil {
		panic("ipc: unmapping a write buffer: " + err.Error())
	}
}

func (w *Writer) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// tryWrite writes as much of buf as the kernel takes without blocking.
func (w *Writer) tryWrite(buf []byte) (int, error) {
	w.twBuf, w.twN, w.twErr = buf, 0, nil
	if err := w.raw.Write(w.twFn); err != nil {
		return 0, err
	}
	n, err := w.twN, w.twErr
	w.twBuf = nil
	return n, err
}

func (w *Writer) tryWriteFd(fd uintptr) bool {
	for w.twN < len(w.twBuf) {
		n, err := unix.Write(int(fd), w.twBuf[w.twN:])
		w.writes.Add(1)
		if n > 0 {
			w.twN += n
		}
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return true
		case err != nil:
			w.twErr = err
			return true
		case n <= 0:
			w.twErr = io.ErrShortWrite
			return true
		}
	}
	return true
}

// fail records a write error and drops what is queued. Called with mu held.
func (w *Writer) fail(err error) {
	if w.err == nil {
		w.err = fmt.Errorf("%w: %w", ErrClosed, err)
	}
	w.releaseOut()
	if w.pendingMem != nil {
		unmapBuf(w.pendingMem)
	}
	w.pending, w.out, w.pendingMem, w.spare = nil, nil, nil, nil // nothing more is written: let the memory go
	w.owner = ownerNone
}

func (w *Writer) flushLoop() {
	defer close(w.done)
	for range w.wake {
		w.mu.Lock()
		last := 0 // bytes of the last write
		for w.owner == ownerFlusher {
			if len(w.out) == 0 {
				if len(w.pending) == 0 {
					w.owner = ownerNone
					w.shrink(last)
					break
				}
				w.swap()
			}
			buf, mapped := w.out, w.outMem != nil
			w.mu.Unlock()
			var err error
			if mapped {
				err = w.writeReleasing(buf)
			} else {
				_, err = w.conn.Write(buf)
				w.writes.Add(1)
			}
			w.mu.Lock()
			w.lastWrite = time.Now()
			if err != nil {
				w.fail(err)
				break
			}
			last = len(buf)
			w.out = w.out[:0]
			w.releaseOut()
		}
		stop := w.closed && w.owner == ownerNone
		w.mu.Unlock()
		if stop {
			return
		}
	}
}

// writeChunk is how much of a mapped buffer the flusher writes at a time.
const writeChunk = 1 << 20

// writeReleasing writes buf, the whole of a mapped out, a chunk at a time,
// giving the pages already written back to the system as it goes: to a slow
// reader a large batch takes a while, and what it has taken need not stay
// resident until the rest is written. Called by the flusher, which owns out.
func (w *Writer) writeReleasing(buf []byte) error {
	done := 0 // bytes of buf given back, whole pages from its start
	for off := 0; off < len(buf); {
		n, err := w.conn.Write(buf[off:min(off+writeChunk, len(buf))])
		w.writes.Add(1)
		off += n
		if err != nil {
			return err
		}
		if end := off &^ (pageSize - 1); end > done {
			_ = unix.Madvise(buf[done:end], unix.MADV_DONTNEED) // advice: an error costs only memory
			done = end
		}
	}
	return nil
}

// Close stops accepting frames, writes what is queued (giving up at deadline, if
// non-zero) and stops the flusher. It does not close the connection. It returns the
// first write error, if any.
func (w *Writer) Close(deadline time.Time) error {
	w.mu.Lock()
	if !w.closed {
		w.closed = true
		if !deadline.IsZero() {
			_ = w.conn.SetWriteDeadline(deadline)
		}
		if w.owner == ownerNone {
			w.signal()
		}
		// Otherwise the owner signals the flusher when it is done.
	}
	w.mu.Unlock()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Buffered reports the bytes queued and not yet written.
func (w *Writer) Buffered() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.pending) + len(w.out)
}
