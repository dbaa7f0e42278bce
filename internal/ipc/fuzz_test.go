package ipc

import (
	"bytes"
	"errors"
	"io"
	"slices"
	"testing"
)

func seedFrames(f *testing.F) {
	h := Header{Kind: KindMessage, Dest: DestApp, Role: RoleAgent, From: 1, ID: 2}
	one, _ := AppendFrame(nil, &h, "action", []byte(`{"k":1}`), DefaultMaxFrame)
	f.Add(one)                                     // a well-formed message
	f.Add(append(one[:len(one):len(one)], one...)) // two frames back to back
	f.Add(one[:10])                                // a truncated header
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})          // a size of 4 GiB
	f.Add([]byte{0, 0, 0, 0})                      // a size of zero
	bad := bytes.Clone(one)
	bad[9] = 0xff // an action longer than the frame
	f.Add(bad)
	bad = bytes.Clone(one)
	bad[4] = 0xee // an unknown kind
	f.Add(bad)
	f.Add([]byte{})
}

// FuzzReader feeds arbitrary bytes to the stream decoder, whole and split in two at
// every reading (as nats-server's parser fuzzing does), and checks it never panics,
// agrees with itself across splits, and keeps its buffer bounded.
func FuzzReader(f *testing.F) {
	seedFrames(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		const limit = 1 << 16
		whole := decodeAll(t, bytes.NewReader(data), limit)
		split := len(data) / 2
		halves := decodeAll(t, io.MultiReader(bytes.NewReader(data[:split]), bytes.NewReader(data[split:])), limit)
		if len(whole) != len(halves) {
			t.Fatalf("whole input gave %d frames, split input %d", len(whole), len(halves))
		}
		for i := range whole {
			if !bytes.Equal(whole[i], halves[i]) {
				t.Fatalf("frame %d differs between whole and split reads", i)
			}
		}
	})
}

func decodeAll(t *testing.T, src io.Reader, limit int) [][]byte {
	r := NewReader(src, limit)
	var out [][]byte
	for {
		fr, err := r.Next()
		if len(r.buf) > 2*limit+initialReadBuf {
			t.Fatalf("reader buffer grew to %d bytes with a %d-byte limit", len(r.buf), limit)
		}
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ErrTooLarge) && !errors.Is(err, ErrMalformed) {
				t.Fatalf("unexpected error class: %v", err)
			}
			return out
		}
		if len(fr.Raw) > limit {
			t.Fatalf("decoded a %d-byte frame past the %d-byte limit", len(fr.Raw), limit)
		}
		out = append(out, bytes.Clone(fr.Raw))
	}
}

// FuzzRoundTrip encodes arbitrary fields and checks they decode to the same values.
func FuzzRoundTrip(f *testing.F) {
	f.Add(uint8(KindMessage), uint8(DestPID), uint8(RoleWorker), uint8(FlagRaw), uint32(1), uint32(2), uint64(3), uint64(4), "act", []byte("data"))
	f.Add(uint8(KindReply), uint8(DestNone), uint8(RoleAgent), uint8(0), uint32(0), uint32(0), uint64(0), uint64(9), "", []byte{})
	f.Fuzz(func(t *testing.T, kind, dest, role, flags uint8, from, to uint32, id, ref uint64, action string, payload []byte) {
		h := Header{Kind: Kind(kind), Dest: Dest(dest), Role: Role(role), Flags: Flags(flags), From: from, To: to, ID: id, Ref: ref}
		buf, err := AppendFrame(nil, &h, action, payload, DefaultMaxFrame)
		if err != nil {
			if len(action) > MaxActionLen {
				return
			}
			t.Fatal(err)
		}
		fr, err := Decode(buf)
		valid := h.Kind != KindInvalid && h.Kind < kindEnd && h.Dest < destEnd && h.Role < roleEnd && h.Flags&^flagsAll == 0
		if !valid {
			if err == nil {
				t.Fatalf("invalid header %+v decoded without error", h)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if fr.Header != h || string(fr.Action) != action || !bytes.Equal(fr.Payload, payload) {
			t.Fatalf("got %+v %q, want %+v %q", fr.Header, fr.Action, h, action)
		}
	})
}

// FuzzSplitOrigin parses arbitrary payloads as the origin of a fleet message:
// it never panics, and what it accepts re-encodes to the same bytes.
func FuzzSplitOrigin(f *testing.F) {
	f.Add(AppendOrigin(nil, "node-1", 42, RoleWorker))                // a well-formed origin, no data
	f.Add(append(AppendOrigin(nil, "n", 1, RoleAgent), `{"k":1}`...)) // with JSON data
	f.Add([]byte{0, 0})                                               // an empty node id
	f.Add([]byte{0xff, 0xff, 'a'})                                    // a node id longer than the payload
	f.Add(append(AppendOrigin(nil, "n", 1, RoleAgent)[:7], 0xee))     // an unknown role
	f.Add([]byte{})                                                   // nothing
	f.Fuzz(func(t *testing.T, payload []byte) {
		node, pid, role, data, err := SplitOrigin(payload)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		again := append(AppendOrigin(nil, node, pid, role), data...)
		if !bytes.Equal(again, payload) {
			t.Fatalf("re-encoded %x, parsed from %x", again, payload)
		}
	})
}

func FuzzSplitExcept(f *testing.F) {
	f.Add(AppendExcept(nil, []int{0, 2, 3}))                 // the agent and two workers, no data
	f.Add(append(AppendExcept(nil, []int{1}), `{"k":1}`...)) // with JSON data
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f})              // a count beyond MaxExcept
	f.Add([]byte{3, 1})                                      // a list longer than the payload
	f.Add([]byte{})                                          // nothing
	f.Fuzz(func(t *testing.T, payload []byte) {
		except, data, err := SplitExcept(payload, nil)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if len(except) > MaxExcept {
			t.Fatalf("%d slots, bound %d", len(except), MaxExcept)
		}
		// Uvarints have more than one encoding; the parse must be stable.
		again, rest, err := SplitExcept(append(AppendExcept(nil, except), data...), nil)
		if err != nil || !slices.Equal(again, except) || !bytes.Equal(rest, data) {
			t.Fatalf("re-encoded list %v parsed as %v, %q, %v", except, again, rest, err)
		}
	})
}
