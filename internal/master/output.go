package master

import (
	"bufio"
	"bytes"
	"io"
	"time"
)

const (
	// outputBuffer bounds the bytes waiting to be written to one of the
	// master's output streams; beyond it whole writes are dropped and counted.
	outputBuffer = 4 << 20
	// maxLine bounds one line of a child's output: the rest of a longer line
	// is dropped (and counted) and the line ends with truncatedMark.
	maxLine = 1 << 20
	// outputFlushGrace bounds how long close waits for a stalled destination.
	outputFlushGrace = 2 * time.Second
)

var truncatedMark = []byte(" [brood: line truncated]\n")

// output is one of the master's output streams (its stdout or stderr). The
// master's log lines and its children's output lines are written to it, each
// Write as one unit, and one goroutine copies the units to the destination in
// order. Write never blocks on the destination: a master whose stderr reader
// stalls keeps supervising, and what does not fit in outputBuffer is dropped
// and counted (Dropped) instead.
type output struct {
	q *drainQueue[[]byte]
}

func newOutput(dst io.Writer) *output {
	return &output{q: newDrainQueue(outputBuffer, func(b []byte) int { return len(b) }, func(b []byte) { dst.Write(b) })}
}

// Write queues a copy of p to be written as one unit. It reports success even
// when p is dropped: the caller is a logger or a pump that could do nothing
// else with an error.
func (o *output) Write(p []byte) (int, error) {
	o.q.push(bytes.Clone(p))
	return len(p), nil
}

// Dropped returns how many writes were dropped because the destination did not
// keep up, or a line was truncated.
func (o *output) Dropped() uint64 { return o.q.dropped.Load() }

// close writes what is queued and stops the goroutine (see drainQueue.close).
func (o *output) close() { o.q.close() }

// pumpLines copies r to o, one whole line per Write, until r ends; each line
// is passed to inspect first. A line longer than maxLine is cut there and
// marked, the rest of it dropped.
func pumpLines(r io.Reader, o *output, inspect func(line []byte)) {
	br := bufio.NewReaderSize(r, 64<<10)
	var long []byte // a line longer than the reader's buffer, being assembled
	truncated := false
	for {
		chunk, err := br.ReadSlice('\n')
		if err == bufio.ErrBufferFull {
			if len(long)+len(chunk) <= maxLine {
				long = append(long, chunk...)
			} else if !truncated {
				long = append(long, chunk[:maxLine-len(long)]...)
				truncated = true
			}
			continue
		}
		line := chunk
		if long != nil {
			if !truncated && len(long)+len(chunk) <= maxLine {
				long = append(long, chunk...)
			} else {
				truncated = true
			}
			line = long
		}
		if truncated {
			line = append(bytes.TrimRight(line, "\n"), truncatedMark...)
			o.q.dropped.Add(1)
		}
		if len(line) > 0 {
			if inspect != nil {
				inspect(line)
			}
			o.Write(line)
		}
		long, truncated = nil, false
		if err != nil {
			return
		}
	}
}
