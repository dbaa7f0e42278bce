package ipc

import "sync"

// Pending tracks requests awaiting their reply (KindReply with Ref = the
// request's ID), each bound to the process it was sent to. Both ends use it:
// a child's Messenger for Request, the master for its own requests to
// children. A reply is taken only from the process the request went to, so a
// process cannot answer, by guessing an id, a request that was not sent to
// it. Pending is safe for concurrent use; its zero value is ready.
type Pending[T any] struct {
	mu sync.Mutex
	m  map[uint64]pendingEntry[T]
}

type pendingEntry[T any] struct {
	pid uint32
	ch  chan T
}

// Add registers request id, sent to pid, and returns the channel its outcome
// arrives on (once; buffered, so resolving never blocks).
func (p *Pending[T]) Add(id uint64, pid uint32) <-chan T {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = make(map[uint64]pendingEntry[T])
	}
	ch := make(chan T, 1)
	p.m[id] = pendingEntry[T]{pid: pid, ch: ch}
	return ch
}

// Remove forgets request id (its caller stopped waiting).
func (p *Pending[T]) Remove(id uint64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.m, id)
}

// Resolve delivers v as the outcome of request id if from is the process it
// was sent to, and reports whether it did.
func (p *Pending[T]) Resolve(id uint64, from uint32, v T) bool {
	p.mu.Lock()
	e, ok := p.m[id]
	if !ok || e.pid != from {
		p.mu.Unlock()
		return false
	}
	delete(p.m, id)
	p.mu.Unlock()
	e.ch <- v
	return true
}

// Fail delivers v as the outcome of request id whoever it was sent to: for
// what the master says about a request (a refusal), not for replies.
func (p *Pending[T]) Fail(id uint64, v T) bool {
	p.mu.Lock()
	e, ok := p.m[id]
	delete(p.m, id)
	p.mu.Unlock()
	if ok {
		e.ch <- v
	}
	return ok
}

// FailIf delivers v to every request whose receiver gone reports true for
// (nil: every request).
func (p *Pending[T]) FailIf(gone func(pid uint32) bool, v T) {
	p.mu.Lock()
	var hit []chan T
	for id, e := range p.m {
		if gone == nil || gone(e.pid) {
			hit = append(hit, e.ch)
			delete(p.m, id)
		}
	}
	p.mu.Unlock()
	for _, ch := range hit {
		ch <- v
	}
}

// Len reports how many requests are pending.
func (p *Pending[T]) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.m)
}
