package relay

import (
	"os"
	"runtime"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// bigBuf is one large frame held by a frameQueue, stored in anonymous memory
// mapped for it alone rather than on the Go heap. A heap copy would be returned
// to the operating system only after a collection, and the collector lets the
// heap grow to twice what is live before it runs: with the master holding up to
// MaxPendingBytes of large frames per process, its RSS would reach twice the
// bound. A mapping is unmapped the moment the frame is released, so RSS follows
// what is held.
//
// Ownership: a bigBuf belongs to exactly one frameQueue, which calls free when
// the frame leaves it (popped, dropped, the queue reset or drained). The bytes
// b aliases must not be used after that: they are no longer mapped, and a
// read or write of them is a fault that kills the process. Every frameQueue
// method that hands out a frame documents how long it stays valid.
type bigBuf struct {
	b       []byte // the frame: mem[:len(frame)], or a heap copy if mmap failed
	mem     []byte // the whole mapping, nil for a heap copy
	cleanup runtime.Cleanup
}

var pageSize = os.Getpagesize()

// mapped counts the bytes of live mappings, over all queues.
var mapped atomic.Int64

// poisonFreed, set by tests, makes free revoke access to a mapping instead of
// unmapping it: its address range is never handed out again, so a use after
// free faults every time instead of reading whatever was mapped there next.
var poisonFreed bool

// newBigBuf copies raw into a mapping of its own. If the mapping fails (the
// process is out of address space or over a map count limit) it falls back to
// a heap copy: the frame is still held, just without the prompt release.
func newBigBuf(raw []byte) *bigBuf {
	size := (len(raw) + pageSize - 1) &^ (pageSize - 1)
	mem, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return &bigBuf{b: append([]byte(nil), raw...)}
	}
	mapped.Add(int64(size))
	bb := &bigBuf{b: mem[:copy(mem, raw)], mem: mem}
	// A safety net, not the release path: if a queue holding frames is dropped
	// without being drained (a Router discarded whole, as when a cluster
	// running in single mode stops), its mappings go with it.
	bb.cleanup = runtime.AddCleanup(bb, unmap, mem)
	return bb
}

// free releases the frame now. It is idempotent, and does nothing on nil.
func (bb *bigBuf) free() {
	if bb == nil {
		return
	}
	if bb.mem != nil {
		bb.cleanup.Stop()
		unmap(bb.mem)
	}
	bb.b, bb.mem = nil, nil
}

func unmap(mem []byte) {
	var err error
	if poisonFreed {
		// Give the pages back but keep the range reserved and inaccessible.
		if err = unix.Madvise(mem, unix.MADV_DONTNEED); err == nil {
			err = unix.Mprotect(mem, unix.PROT_NONE)
		}
	} else {
		err = unix.Munmap(mem)
	}
	if err != nil {
		panic("relay: releasing a frame's mapping: " + err.Error())
	}
	mapped.Add(-int64(len(mem)))
}
