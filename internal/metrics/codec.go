package metrics

import (
	"errors"
	"fmt"
	"unicode/utf8"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// ErrTooLarge is returned (wrapped) by Decode for a payload over its limit.
var ErrTooLarge = errors.New("metrics: payload over the size limit")

// Encode returns the IPC payload of one child's gather: each family as a
// varint length followed by its protobuf encoding, the bytes that
// expfmt.NewEncoder(w, expfmt.FmtProtoDelim) writes, except that names are
// not escaped (UTF-8 names reach the master as they are; escaping is the
// business of whoever serves the exposition). Nil families are skipped.
func Encode(fams []*dto.MetricFamily) ([]byte, error) {
	size := 0
	for _, mf := range fams {
		if mf == nil {
			continue
		}
		n := proto.Size(mf)
		size += protowire.SizeVarint(uint64(n)) + n
	}
	b := make([]byte, 0, size)
	opts := proto.MarshalOptions{UseCachedSize: true}
	for _, mf := range fams {
		if mf == nil {
			continue
		}
		b = protowire.AppendVarint(b, uint64(opts.Size(mf)))
		var err error
		if b, err = opts.MarshalAppend(b, mf); err != nil {
			return nil, fmt.Errorf("metrics: encoding family %q: %w", mf.GetName(), err)
		}
	}
	return b, nil
}

// Decode parses a payload written by Encode (or by expfmt's FmtProtoDelim
// encoder). A payload longer than limit bytes is refused before anything is
// parsed, with an error wrapping ErrTooLarge; limit ≤ 0 means no limit.
// Metric and label names must be non-empty valid UTF-8, label values valid
// UTF-8 (what expfmt's decoder checks under UTF-8 validation), so that a
// payload never yields an exposition that cannot be written.
func Decode(b []byte, limit int) ([]*dto.MetricFamily, error) {
	if limit > 0 && len(b) > limit {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(b), limit)
	}
	var fams []*dto.MetricFamily
	d := wireDecoder{s: string(b)}
	for off := 0; off < len(b); {
		n, k := protowire.ConsumeVarint(b[off:])
		if k < 0 {
			return nil, fmt.Errorf("metrics: family %d at byte %d: bad length prefix", len(fams), off)
		}
		off += k
		if n > uint64(len(b)-off) {
			return nil, fmt.Errorf("metrics: family %d at byte %d: length %d past the end of the %d-byte payload", len(fams), off, n, len(b))
		}
		mf := d.fams.new()
		if err := d.family(b, off, off+int(n), mf); err != nil {
			return nil, fmt.Errorf("metrics: family %d at byte %d: %w", len(fams), off, err)
		}
		off += int(n)
		if err := validate(mf); err != nil {
			return nil, fmt.Errorf("metrics: family %d: %w", len(fams), err)
		}
		fams = append(fams, mf)
	}
	return fams, nil
}

func validate(mf *dto.MetricFamily) error {
	name := mf.GetName()
	if name == "" || !utf8.ValidString(name) {
		return fmt.Errorf("invalid metric name %q", name)
	}
	if !utf8.ValidString(mf.GetHelp()) || !utf8.ValidString(mf.GetUnit()) {
		return fmt.Errorf("family %q: invalid help text or unit", name)
	}
	if _, ok := dto.MetricType_name[int32(mf.GetType())]; !ok {
		return fmt.Errorf("family %q: unknown type %d", name, mf.GetType())
	}
	for _, m := range mf.Metric {
		for _, lp := range m.Label {
			if n := lp.GetName(); n == "" || !utf8.ValidString(n) {
				return fmt.Errorf("family %q: invalid label name %q", name, n)
			}
			if v := lp.GetValue(); !utf8.ValidString(v) {
				return fmt.Errorf("family %q: invalid label value %q", name, v)
			}
		}
	}
	return nil
}
