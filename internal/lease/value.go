package lease

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
)

// valuePrefix starts every value this package writes; the number is the
// format's version.
const valuePrefix = "brood-lease/1 "

// maxValue bounds the value decodeValue accepts (a holder is a node id).
const maxValue = 4096

// value is what a lease or tick key holds: one line of text,
//
//	"brood-lease/1 " nonce " " seq " " holder
//
// nonce (decimal uint64) is drawn at random once per Campaign or ClaimTick
// call; seq (decimal uint64) numbers that caller's writes (Creates and
// Updates alike), so an entry read back after a write whose reply was lost
// says which write it is and when that write was sent; holder is the rest of
// the value, free text for logs (the member's node id). Numbers are canonical
// (no sign, no leading zeros), so decode and encode are inverse.
type value struct {
	nonce, seq uint64
	holder     string
}

var errValue = errors.New("not a brood lease value")

func (v value) encode() []byte {
	b := make([]byte, 0, len(valuePrefix)+42+len(v.holder))
	b = append(b, valuePrefix...)
	b = strconv.AppendUint(b, v.nonce, 10)
	b = append(b, ' ')
	b = strconv.AppendUint(b, v.seq, 10)
	b = append(b, ' ')
	return append(b, v.holder...)
}

func decodeValue(b []byte) (value, error) {
	if len(b) > maxValue {
		return value{}, fmt.Errorf("%w: %d bytes, more than %d", errValue, len(b), maxValue)
	}
	rest, ok := bytes.CutPrefix(b, []byte(valuePrefix))
	if !ok {
		return value{}, fmt.Errorf("%w: no %q prefix", errValue, valuePrefix)
	}
	nonce, rest, err := cutUint(rest)
	if err != nil {
		return value{}, fmt.Errorf("%w: nonce: %w", errValue, err)
	}
	seq, rest, err := cutUint(rest)
	if err != nil {
		return value{}, fmt.Errorf("%w: seq: %w", errValue, err)
	}
	return value{nonce: nonce, seq: seq, holder: string(rest)}, nil
}

// cutUint reads a canonical decimal uint64 followed by one space.
func cutUint(b []byte) (uint64, []byte, error) {
	field, rest, ok := bytes.Cut(b, []byte{' '})
	if !ok {
		return 0, nil, errors.New("no space after the number")
	}
	if len(field) > 1 && field[0] == '0' {
		return 0, nil, fmt.Errorf("leading zero in %q", field)
	}
	n, err := strconv.ParseUint(string(field), 10, 64)
	if err != nil {
		return 0, nil, err
	}
	return n, rest, nil
}
