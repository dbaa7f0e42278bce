package master

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// logQueueLen bounds the master's log records waiting to be written.
const logQueueLen = 4096

// asyncHandler hands the master's log records to one goroutine that writes
// them, in order, through the handler the program configured (or the default
// one). The master logs while it holds its lock (every lifecycle event is a
// log line); a handler that blocks there (a stderr nobody reads) would stop
// restarts, heartbeats and the control socket. Handle never blocks: when the
// queue is full the record is dropped and counted.
type asyncHandler struct {
	inner slog.Handler
	q     *logQueue
}

type logQueue struct {
	mu      sync.Mutex
	items   []queuedRecord
	closed  bool
	wake    chan struct{}
	done    chan struct{}
	dropped atomic.Uint64
}

type queuedRecord struct {
	h slog.Handler
	r slog.Record
}

func newAsyncHandler(inner slog.Handler) *asyncHandler {
	q := &logQueue{wake: make(chan struct{}, 1), done: make(chan struct{})}
	go q.run()
	return &asyncHandler{inner: inner, q: q}
}

func (h *asyncHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *asyncHandler) Handle(_ context.Context, r slog.Record) error {
	q := h.q
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return h.inner.Handle(context.Background(), r) // after close: write through
	}
	if len(q.items) >= logQueueLen {
		q.mu.Unlock()
		q.dropped.Add(1)
		return nil
	}
	q.items = append(q.items, queuedRecord{h.inner, r.Clone()})
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
	return nil
}

func (h *asyncHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &asyncHandler{inner: h.inner.WithAttrs(attrs), q: h.q}
}

func (h *asyncHandler) WithGroup(name string) slog.Handler {
	return &asyncHandler{inner: h.inner.WithGroup(name), q: h.q}
}

func (q *logQueue) run() {
	defer close(q.done)
	var batch []queuedRecord
	for range q.wake {
		for {
			q.mu.Lock()
			batch, q.items = q.items, batch[:0]
			q.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			for i, it := range batch {
				it.h.Handle(context.Background(), it.r)
				batch[i] = queuedRecord{}
			}
		}
	}
}

// close writes what is queued (waiting at most outputFlushGrace for a stalled
// handler) and stops the goroutine; later records are written through.
func (q *logQueue) close() {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return
	}
	q.closed = true
	close(q.wake)
	q.mu.Unlock()
	t := time.NewTimer(outputFlushGrace)
	defer t.Stop()
	select {
	case <-q.done:
	case <-t.C:
	}
}
