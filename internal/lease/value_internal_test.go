package lease

import (
	"bytes"
	"testing"
)

// FuzzDecodeValue: the decoder never panics, and what it accepts encodes
// back to the same bytes (numbers are canonical).
func FuzzDecodeValue(f *testing.F) {
	f.Add([]byte("brood-lease/1 1 0 host-a:/run/app"))       // a create
	f.Add([]byte("brood-lease/1 18446744073709551615 42 h")) // max nonce
	f.Add([]byte("brood-lease/1 1 2 "))                      // empty holder
	f.Add([]byte("brood-lease/1 01 2 h"))                    // leading zero: refused
	f.Add([]byte("brood-lease/1 18446744073709551616 0 h"))  // overflow: refused
	f.Add([]byte("brood-lease/1 1 +2 h"))                    // sign: refused
	f.Add([]byte("brood-lease/1 1 2"))                       // no holder separator: refused
	f.Add([]byte("brood-lease/2 1 2 h"))                     // another version: refused
	f.Add([]byte("h"))                                       // a bare holder: refused
	f.Add([]byte(""))                                        //
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := decodeValue(b)
		if err != nil {
			return
		}
		if got := v.encode(); !bytes.Equal(got, b) {
			t.Fatalf("decode(%q) = %+v, which encodes as %q", b, v, got)
		}
	})
}

// FuzzValueRoundTrip: every value decodes to itself.
func FuzzValueRoundTrip(f *testing.F) {
	f.Add(uint64(0), uint64(0), "")
	f.Add(uint64(1<<63), uint64(7), "host a\nwith a newline")
	f.Fuzz(func(t *testing.T, nonce, seq uint64, holder string) {
		in := value{nonce: nonce, seq: seq, holder: holder}
		out, err := decodeValue(in.encode())
		if len(in.encode()) > maxValue {
			if err == nil {
				t.Fatalf("decoded a value of %d bytes", len(in.encode()))
			}
			return
		}
		if err != nil || out != in {
			t.Fatalf("decode(encode(%+v)) = %+v, %v", in, out, err)
		}
	})
}
