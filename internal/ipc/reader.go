package ipc

import (
	"encoding/binary"
	"fmt"
	"io"
)

const initialReadBuf = 64 << 10

// Reader reads frames from a stream. One read syscall typically brings many frames;
// Next hands them out one by one without copying.
type Reader struct {
	r          io.Reader
	buf        []byte
	start, end int // unread bytes are buf[start:end]
	limit      int
	lastBig    bool // the last frame returned did not fit the initial buffer
}

// NewReader returns a Reader that rejects frames larger than limit bytes (header
// included); limit <= 0 means DefaultMaxFrame.
func NewReader(r io.Reader, limit int) *Reader {
	if limit <= 0 {
		limit = DefaultMaxFrame
	}
	return &Reader{r: r, limit: limit}
}

// Next returns the next frame. The frame aliases the Reader's buffer and is valid
// until the next call. At a clean end of stream between frames Next returns io.EOF;
// in the middle of a frame, io.ErrUnexpectedEOF. A frame over the limit or a
// malformed header is an error, after which the stream is unusable.
func (r *Reader) Next() (Frame, error) {
	for {
		avail := r.end - r.start
		if avail >= 4 {
			size := int(binary.BigEndian.Uint32(r.buf[r.start:])) + 4
			if size > r.limit || size < 4 {
				return Frame{}, &SizeError{Size: size, Limit: r.limit}
			}
			if size < HeaderSize {
				return Frame{}, fmt.Errorf("ipc: frame of %d bytes is shorter than the %d-byte header: %w", size, HeaderSize, ErrMalformed)
			}
			if avail >= size {
				raw := r.buf[r.start : r.start+size : r.start+size]
				r.start += size
				r.lastBig = size > initialReadBuf
				return Decode(raw)
			}
			r.makeRoom(size)
		} else {
			r.makeRoom(4)
		}
		if err := r.fill(); err != nil {
			return Frame{}, err
		}
	}
}

// HasFrame reports whether a whole frame is already buffered, so that the next
// Next returns without reading: false marks the end of a read batch.
func (r *Reader) HasFrame() bool {
	avail := r.end - r.start
	if avail < 4 {
		return false
	}
	return avail >= int(binary.BigEndian.Uint32(r.buf[r.start:]))+4
}

// makeRoom ensures buf can hold need bytes from r.start, growing in proportion to
// the data already received so that a header claiming a huge body costs nothing
// until the body arrives.
func (r *Reader) makeRoom(need int) {
	if r.start == r.end && len(r.buf) > 4*initialReadBuf && !r.lastBig {
		// Large frames came and went, and a small one followed: give the
		// memory back. (A run of large frames reuses the buffer.)
		r.buf = nil
		r.start, r.end = 0, 0
	}
	if r.buf == nil {
		r.buf = make([]byte, initialReadBuf)
	}
	if len(r.buf)-r.start >= need && r.end < len(r.buf) {
		return
	}
	n := copy(r.buf, r.buf[r.start:r.end])
	r.start, r.end = 0, n
	if len(r.buf) >= need && r.end < len(r.buf) {
		return
	}
	// Grow by doubling what is already buffered, capped at what the frame needs.
	size := max(2*len(r.buf), 2*r.end)
	size = min(size, max(need, len(r.buf)))
	nb := make([]byte, size)
	copy(nb, r.buf[:r.end])
	r.buf = nb
}

func (r *Reader) fill() error {
	n, err := r.r.Read(r.buf[r.end:])
	r.end += n
	if n > 0 {
		return nil
	}
	if err == io.EOF && r.end > r.start {
		return io.ErrUnexpectedEOF
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// Unread returns a copy of the bytes read from the stream and not yet
// returned as frames: at most the start of one frame once HasFrame is
// false. An in-place upgrade of the master hands them to the next image.
func (r *Reader) Unread() []byte { return append([]byte(nil), r.buf[r.start:r.end]...) }

// NewReaderWith is NewReader for a stream of which unread (see Unread) was
// already read: those bytes come first.
func NewReaderWith(r io.Reader, limit int, unread []byte) *Reader {
	rd := NewReader(r, limit)
	if len(unread) > 0 {
		rd.buf = make([]byte, max(initialReadBuf, len(unread)))
		rd.end = copy(rd.buf, unread)
	}
	return rd
}
