package master

import (
	"sync"
	"sync/atomic"
	"time"
)

// drainQueue is a bounded FIFO drained, in order, by one goroutine of its own
// that calls write for every item: what the master hands it (log records,
// output lines) never waits for the destination. push never blocks: an item
// that would take the queue past limit (counted with cost) is dropped and
// counted. After close, push writes through on the caller's goroutine (see
// writeThrough): write is never called twice at once.
type drainQueue[T any] struct {
	write func(T)
	cost  func(T) int
	limit int

	throughMu sync.Mutex // serialises writes after close

	mu      sync.Mutex
	items   []T
	size    int
	closed  bool
	wake    chan struct{}
	done    chan struct{}
	dropped atomic.Uint64
}

func newDrainQueue[T any](limit int, cost func(T) int, write func(T)) *drainQueue[T] {
	q := &drainQueue[T]{write: write, cost: cost, limit: limit, wake: make(chan struct{}, 1), done: make(chan struct{})}
	go q.run()
	return q
}

// push queues v, or drops it (and counts it) when the queue is full.
func (q *drainQueue[T]) push(v T) {
	n := q.cost(v)
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		q.writeThrough(v)
		return
	}
	if q.size+n > q.limit {
		q.mu.Unlock()
		q.dropped.Add(1)
		return
	}
	q.items = append(q.items, v)
	q.size += n
	// Under mu: close closes wake under mu too, so this never sends on a
	// closed channel. The send does not block.
	select {
	case q.wake <- struct{}{}:
	default:
	}
	q.mu.Unlock()
}

// writeThrough writes v on the caller's goroutine, after close: once the
// draining goroutine has written what was queued (so writes never overlap
// and stay in order), one caller at a time. If that goroutine is stuck in a
// write past outputFlushGrace, v is dropped and counted instead.
func (q *drainQueue[T]) writeThrough(v T) {
	select {
	case <-q.done:
	default:
		t := time.NewTimer(outputFlushGrace)
		defer t.Stop()
		select {
		case <-q.done:
		case <-t.C:
			q.dropped.Add(1)
			return
		}
	}
	q.throughMu.Lock()
	defer q.throughMu.Unlock()
	q.write(v)
}

func (q *drainQueue[T]) run() {
	defer close(q.done)
	var batch []T
	for range q.wake {
		for {
			q.mu.Lock()
			batch, q.items = q.items, batch[:0]
			q.mu.Unlock()
			if len(batch) == 0 {
				break
			}
			var zero T
			for i, v := range batch {
				q.write(v)
				q.mu.Lock()
				q.size -= q.cost(v)
				q.mu.Unlock()
				batch[i] = zero
			}
		}
	}
}

// close writes what is queued, waiting at most outputFlushGrace for a stalled
// destination (its goroutine is then left to finish the write it is in), and
// makes later pushes write through.
func (q *drainQueue[T]) close() {
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
