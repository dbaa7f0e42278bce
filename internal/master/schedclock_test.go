package master

import (
	"bytes"
	"testing"
)

// The master keeps its own copy of the clock: neither the frame it came in
// (the reader's buffer) nor what the upgrade does with a saved copy can
// change it.
func TestScheduleClockIsCopied(t *testing.T) {
	var m Master
	if b := m.scheduleClock(); b != nil {
		t.Fatalf("a new master has clock %x, want none", b)
	}
	in := []byte{1, 2, 3}
	m.setScheduleClock(in)
	in[0] = 9
	out := m.scheduleClock()
	if !bytes.Equal(out, []byte{1, 2, 3}) {
		t.Fatalf("clock %x after the caller changed its bytes, want 010203", out)
	}
	out[1] = 9
	if got := m.scheduleClock(); !bytes.Equal(got, []byte{1, 2, 3}) {
		t.Fatalf("clock %x after a reader changed its copy, want 010203", got)
	}
	m.setScheduleClock([]byte{4})
	if got := m.scheduleClock(); !bytes.Equal(got, []byte{4}) {
		t.Fatalf("clock %x, want 04", got)
	}
	m.setScheduleClock(nil)
	if got := m.scheduleClock(); got != nil {
		t.Fatalf("clock %x after setting none, want none", got)
	}
}
