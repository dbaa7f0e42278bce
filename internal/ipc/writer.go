package ipc

import (
	"errors"
	"fmt"
	"io"
	"net"
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
	owner   owner
	closed  bool
	err     error
	wake    chan struct{}
	done    chan struct{}

	// Scratch for the non-blocking write; used only while owner == ownerDirect.
	twBuf []byte
	twN   int
	twErr error
	twFn  func(fd uintptr) bool

	writes atomic.Uint64 // write syscalls made, for benchmarks
}

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
	w.out, w.pending = w.pending, w.out[:0]
	if w.raw == nil {
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
	if err != nil {
		w.fail(err)
	} else {
		w.out = w.out[:copy(w.out, w.out[n:])]
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

// Capacity reports the bytes the Writer's buffers hold allocated, written or not.
func (w *Writer) Capacity() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return cap(w.pending) + cap(w.out)
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
	w.pending, w.out = nil, nil // nothing more is written: let the memory go
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
				w.out, w.pending = w.pending, w.out[:0]
			}
			buf := w.out
			w.mu.Unlock()
			_, err := w.conn.Write(buf)
			w.writes.Add(1)
			w.mu.Lock()
			if err != nil {
				w.fail(err)
				break
			}
			last = len(buf)
			w.out = w.out[:0]
		}
		stop := w.closed && w.owner == ownerNone
		w.mu.Unlock()
		if stop {
			return
		}
	}
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
