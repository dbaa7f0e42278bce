package schedule

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Catch-up bounds of Scheduler.Resume: the ticks a resumed task missed while
// no scheduler ran are run late only if they came due within the catch-up
// window before Run started, max(2 × the task's interval, CatchUpWindow), and
// at most MaxCatchUp of them (the earliest in that window); older or further
// ones are skipped and logged. The task's interval is Every, or for a cron
// task the gap between the first two times after its last tick.
const (
	CatchUpWindow = 5 * time.Second
	MaxCatchUp    = 100
)

// Mark is where one task's schedule stood: the nominal time of the latest tick
// the scheduler made from it (dispatched, or skipped because a run was in
// flight), or before the first tick the schedule's origin (when it started, on
// the epoch's grid for an Aligned task), and the timing of the spec it was
// made for, so that a scheduler whose spec differs does not resume from it.
// A successor resumes from the origin as from a tick: the first tick stays
// due when it was, however often the agent is replaced before it.
type Mark struct {
	Task    string
	Every   time.Duration // Spec.Every
	Cron    string        // Spec.Cron
	Aligned bool          // Spec.Aligned
	Last    time.Time     // nominal time of the latest tick made
}

// Clock is a scheduler's position on every schedule it has ticked, sorted by
// task name; see Options.Clock and Scheduler.Resume. Its binary encoding
// (AppendBinary, ParseClock) is what the agent hands to its successor.
type Clock []Mark

// matches reports whether m was made for a spec with the timing of spec.
func (m Mark) matches(spec Spec) bool {
	return m.Every == spec.Every && m.Cron == spec.Cron && m.Aligned == spec.Aligned
}

// clockVersion is the first byte of an encoded Clock.
const clockVersion = 1

// Limits of ParseClock: a name is at most maxNameLen bytes (Spec.Name has no
// limit of its own, but a longer one is not resumed), a cron expression at most
// maxCronLen, and a Clock at most maxMarks marks.
const (
	maxNameLen = 255
	maxCronLen = 1024
	maxMarks   = 1 << 16
	minMarkLen = 6 // name length, name, flags, every, cron length, last: at least a byte each
)

// ErrBadClock is wrapped by ParseClock's errors.
var ErrBadClock = errors.New("bad schedule clock")

// AppendBinary appends the encoding of c to dst:
//
//	version  1 byte (1)
//	count    uvarint
//	per mark, in name order:
//	  name    uvarint length, bytes
//	  flags   1 byte: 1 = Aligned
//	  every   varint nanoseconds
//	  cron    uvarint length, bytes
//	  last    varint Unix nanoseconds
//
// Marks whose name or cron expression is too long for ParseClock are left out.
func (c Clock) AppendBinary(dst []byte) ([]byte, error) {
	dst = append(dst, clockVersion)
	n := 0
	for _, m := range c {
		if m.encodable() {
			n++
		}
	}
	dst = binary.AppendUvarint(dst, uint64(n))
	for _, m := range c {
		if !m.encodable() {
			continue
		}
		dst = binary.AppendUvarint(dst, uint64(len(m.Task)))
		dst = append(dst, m.Task...)
		var flags byte
		if m.Aligned {
			flags = 1
		}
		dst = append(dst, flags)
		dst = binary.AppendVarint(dst, int64(m.Every))
		dst = binary.AppendUvarint(dst, uint64(len(m.Cron)))
		dst = append(dst, m.Cron...)
		dst = binary.AppendVarint(dst, m.Last.UnixNano())
	}
	return dst, nil
}

func (m Mark) encodable() bool {
	return m.Task != "" && len(m.Task) <= maxNameLen && len(m.Cron) <= maxCronLen
}

// ParseClock decodes what AppendBinary encoded. It never panics and allocates
// in proportion to len(b); any inconsistency (unknown version, truncation,
// trailing bytes, a name that is not a valid Spec.Name, names out of order or
// repeated, a mark with both or neither of Every and Cron) is an error
// wrapping ErrBadClock. An empty b is an empty Clock.
func ParseClock(b []byte) (Clock, error) {
	if len(b) == 0 {
		return nil, nil
	}
	bad := func(format string, args ...any) (Clock, error) {
		return nil, fmt.Errorf("schedule: %w: %s", ErrBadClock, fmt.Sprintf(format, args...))
	}
	if b[0] != clockVersion {
		return bad("version %d, want %d", b[0], clockVersion)
	}
	r := clockReader{b: b[1:]}
	n, ok := r.uvarint()
	if !ok || n > maxMarks || n > uint64(len(r.b)/minMarkLen) {
		return bad("mark count")
	}
	c := make(Clock, 0, n)
	for i := range n {
		name, ok := r.bytes(maxNameLen)
		if !ok || len(name) == 0 || !validName.Match(name) {
			return bad("mark %d: name", i)
		}
		if i > 0 && string(name) <= c[i-1].Task {
			return bad("mark %d: name %q out of order", i, name)
		}
		flags, ok := r.byte()
		if !ok || flags&^1 != 0 {
			return bad("mark %d (%s): flags", i, name)
		}
		every, ok := r.varint()
		if !ok || every < 0 {
			return bad("mark %d (%s): every", i, name)
		}
		cronText, ok := r.bytes(maxCronLen)
		if !ok || (every > 0) == (len(cronText) > 0) {
			return bad("mark %d (%s): set exactly one of every and cron", i, name)
		}
		last, ok := r.varint()
		if !ok {
			return bad("mark %d (%s): last", i, name)
		}
		c = append(c, Mark{Task: string(name), Every: time.Duration(every), Cron: string(cronText),
			Aligned: flags&1 != 0, Last: time.Unix(0, last).UTC()})
	}
	if len(r.b) != 0 {
		return bad("%d trailing bytes", len(r.b))
	}
	return c, nil
}

type clockReader struct{ b []byte }

func (r *clockReader) uvarint() (uint64, bool) {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		return 0, false
	}
	r.b = r.b[n:]
	return v, true
}

func (r *clockReader) varint() (int64, bool) {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		return 0, false
	}
	r.b = r.b[n:]
	return v, true
}

func (r *clockReader) byte() (byte, bool) {
	if len(r.b) == 0 {
		return 0, false
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v, true
}

func (r *clockReader) bytes(limit int) ([]byte, bool) {
	n, ok := r.uvarint()
	if !ok || n > uint64(limit) || n > uint64(len(r.b)) {
		return nil, false
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v, true
}
