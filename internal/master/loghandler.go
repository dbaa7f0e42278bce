package master

import (
	"context"
	"log/slog"
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
	q     *drainQueue[queuedRecord]
}

type queuedRecord struct {
	h slog.Handler
	r slog.Record
}

func newAsyncHandler(inner slog.Handler) *asyncHandler {
	q := newDrainQueue(logQueueLen, func(queuedRecord) int { return 1 },
		func(it queuedRecord) { it.h.Handle(context.Background(), it.r) })
	return &asyncHandler{inner: inner, q: q}
}

func (h *asyncHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *asyncHandler) Handle(_ context.Context, r slog.Record) error {
	h.q.push(queuedRecord{h.inner, r.Clone()})
	return nil
}

func (h *asyncHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &asyncHandler{inner: h.inner.WithAttrs(attrs), q: h.q}
}

func (h *asyncHandler) WithGroup(name string) slog.Handler {
	return &asyncHandler{inner: h.inner.WithGroup(name), q: h.q}
}
