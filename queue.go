package brood

// handlerQueue is the FIFO of received messages between the readers (the
// master's channel and each direct channel) and the dispatcher, which runs the
// handlers. It holds messages in fixed blocks chained head to tail, so a burst
// grows it a block at a time without copying what it holds (a slice grown by
// append copies every queued Message, each with pointers, at every doubling:
// measured, over a third of a streaming receiver's CPU), and the blocks a burst
// needed are reused by the next one, up to maxIdleQueue messages' worth; the
// rest are left to the collector.
//
// A handlerQueue is not safe for concurrent use: the Messenger guards it with
// qmu. The dispatcher takes the whole chain at once (take) and handles it
// without the lock, then gives the blocks back (recycle).
type handlerQueue struct {
	head, tail *queueBlock
	free       *queueBlock // emptied blocks kept for reuse
	nfree      int
}

// queueBlockLen is the messages a block holds: ~16 KiB of Message values.
const queueBlockLen = 128

// queueBlock is one block of a handlerQueue: msgs[:n] are queued, in order.
type queueBlock struct {
	msgs [queueBlockLen]Message
	n    int
	next *queueBlock
}

// push appends msg at the tail.
func (q *handlerQueue) push(msg Message) {
	b := q.tail
	if b == nil || b.n == queueBlockLen {
		b = q.block()
		if q.tail == nil {
			q.head = b
		} else {
			q.tail.next = b
		}
		q.tail = b
	}
	b.msgs[b.n] = msg
	b.n++
}

// block returns an empty block, a kept one if there is one.
func (q *handlerQueue) block() *queueBlock {
	b := q.free
	if b == nil {
		return new(queueBlock)
	}
	q.free, b.next = b.next, nil
	q.nfree--
	return b
}

// empty reports whether nothing is queued (a block exists only once pushed to).
func (q *handlerQueue) empty() bool { return q.head == nil }

// take removes everything queued and returns it as a chain of blocks, the
// oldest first (nil when empty). The caller owns the chain until recycle.
func (q *handlerQueue) take() *queueBlock {
	b := q.head
	q.head, q.tail = nil, nil
	return b
}

// recycle takes back a chain from take, whose messages the caller has
// cleared (they would otherwise keep their Data alive), and keeps up to
// maxIdleQueue messages' worth of blocks for reuse.
func (q *handlerQueue) recycle(b *queueBlock) {
	for b != nil {
		next := b.next
		if q.nfree < maxIdleQueue/queueBlockLen {
			b.n, b.next = 0, q.free
			q.free = b
			q.nfree++
		}
		b = next
	}
}
