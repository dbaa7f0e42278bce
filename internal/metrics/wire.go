package metrics

import (
	"errors"
	"math"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// A hand-written decoder of io.prometheus.client.MetricFamily for the hot
// path of the master: proto.Unmarshal allocates every field of every metric
// on its own (about 17 allocations per series), which made decoding a 10k
// series gather cost as much as merging eight of them. This one allocates
// the messages and their fields from slabs, and takes all strings from one
// copy of the payload. It follows proto.Unmarshal's semantics (last scalar
// wins, repeated fields append, repeated sub-messages merge, packed and
// unpacked repeated scalars both accepted, wire-type mismatches and unknown
// fields skipped); the rarely used
// sub-messages (exemplars) are handed to proto.Unmarshal.
// FuzzWireMatchesProto holds it to that.

var errWire = errors.New("malformed protobuf")

// slab hands out pointers into chunks it allocates; a chunk is never
// reallocated, so the pointers stay valid.
type slab[T any] struct {
	buf  []T
	next int
}

func (s *slab[T]) new() *T {
	if len(s.buf) == cap(s.buf) {
		s.next = min(max(2*s.next, 16), 4096)
		s.buf = make([]T, 0, s.next)
	}
	s.buf = s.buf[:len(s.buf)+1]
	return &s.buf[len(s.buf)-1]
}

// ptrs hands out cap-limited pointer slices carved from shared chunks.
type ptrs[T any] struct{ buf []*T }

func (p *ptrs[T]) take(n int) []*T {
	if n > 1024 {
		return make([]*T, 0, n)
	}
	if cap(p.buf)-len(p.buf) < n {
		p.buf = make([]*T, 0, 4096)
	}
	s := p.buf[len(p.buf) : len(p.buf) : len(p.buf)+n]
	p.buf = p.buf[:len(p.buf)+n]
	return s
}

type wireDecoder struct {
	s      string // the payload, once: strings are cut from it
	strs   slab[string]
	floats slab[float64]
	u64s   slab[uint64]
	i64s   slab[int64]
	i32s   slab[int32]
	u32s   slab[uint32]
	types  slab[dto.MetricType]
	fams   slab[dto.MetricFamily]
	ms     slab[dto.Metric]
	lps    slab[dto.LabelPair]
	cs     slab[dto.Counter]
	gs     slab[dto.Gauge]
	us     slab[dto.Untyped]
	sums   slab[dto.Summary]
	qs     slab[dto.Quantile]
	hs     slab[dto.Histogram]
	bs     slab[dto.Bucket]
	spans  slab[dto.BucketSpan]
	tss    slab[timestamppb.Timestamp]
	mptrs  ptrs[dto.Metric]
	lptrs  ptrs[dto.LabelPair]
	bptrs  ptrs[dto.Bucket]

	// Pointers collected while a message is decoded, then copied into a
	// slice carved to their number (no second pass to count them).
	mscratch []*dto.Metric
	lscratch []*dto.LabelPair
	bscratch []*dto.Bucket
}

// carve appends scratch[from:] to dst, through a slice from p sized to fit
// when dst is empty, and truncates scratch back to from.
func carve[T any](p *ptrs[T], dst []*T, scratch *[]*T, from int) []*T {
	n := len(*scratch) - from
	if n == 0 {
		return dst
	}
	if dst == nil {
		dst = p.take(n)
	}
	dst = append(dst, (*scratch)[from:]...)
	clear((*scratch)[from:])
	*scratch = (*scratch)[:from]
	return dst
}

// field is one decoded field: its number and wire type, and its value — v
// for varint and fixed types, the bytes for length-delimited ones at
// [start, end) of the payload.
type field struct {
	num        protowire.Number
	typ        protowire.Type
	v          uint64
	start, end int
}

// next decodes the field at b[off:], b being the payload; it returns the
// offset after it.
func next(b []byte, off int) (field, int, error) {
	num, typ, n := protowire.ConsumeTag(b[off:])
	if n < 0 || num > protowire.MaxValidNumber {
		return field{}, 0, errWire
	}
	f := field{num: num, typ: typ}
	off += n
	switch typ {
	case protowire.VarintType:
		f.v, n = protowire.ConsumeVarint(b[off:])
	case protowire.Fixed64Type:
		f.v, n = protowire.ConsumeFixed64(b[off:])
	case protowire.Fixed32Type:
		var v uint32
		v, n = protowire.ConsumeFixed32(b[off:])
		f.v = uint64(v)
	case protowire.BytesType:
		var l uint64
		l, n = protowire.ConsumeVarint(b[off:])
		if n >= 0 {
			if l > uint64(len(b)-off-n) {
				return field{}, 0, errWire
			}
			f.start, f.end = off+n, off+n+int(l)
			n += int(l)
		}
	default:
		n = protowire.ConsumeFieldValue(num, typ, b[off:])
	}
	if n < 0 {
		return field{}, 0, errWire
	}
	return f, off + n, nil
}

func (d *wireDecoder) str(f field) *string {
	p := d.strs.new()
	*p = d.s[f.start:f.end]
	return p
}

func (d *wireDecoder) f64(f field) *float64 {
	p := d.floats.new()
	*p = math.Float64frombits(f.v)
	return p
}

func (d *wireDecoder) u64(f field) *uint64 {
	p := d.u64s.new()
	*p = f.v
	return p
}

// family decodes one MetricFamily from b[start:end] into mf.
func (d *wireDecoder) family(b []byte, start, end int, mf *dto.MetricFamily) error {
	from := len(d.mscratch)
	defer func() { mf.Metric = carve(&d.mptrs, mf.Metric, &d.mscratch, from) }()
	b = b[:end]
	for off := start; off < end; {
		f, o, err := next(b, off)
		if err != nil {
			return err
		}
		off = o
		switch {
		case f.num == 1 && f.typ == protowire.BytesType:
			mf.Name = d.str(f)
		case f.num == 2 && f.typ == protowire.BytesType:
			mf.Help = d.str(f)
		case f.num == 5 && f.typ == protowire.BytesType:
			mf.Unit = d.str(f)
		case f.num == 3 && f.typ == protowire.VarintType:
			// Like proto.Unmarshal, any value (Decode then refuses unknown ones).
			t := d.types.new()
			*t = dto.MetricType(int32(f.v))
			mf.Type = t
		case f.num == 4 && f.typ == protowire.BytesType:
			m := d.ms.new()
			if err := d.metric(b, f.start, f.end, m); err != nil {
				return err
			}
			d.mscratch = append(d.mscratch, m)
		}
	}
	return nil
}

func (d *wireDecoder) metric(b []byte, start, end int, m *dto.Metric) error {
	from := len(d.lscratch)
	defer func() { m.Label = carve(&d.lptrs, m.Label, &d.lscratch, from) }()
	b = b[:end]
	for off := start; off < end; {
		f, o, err := next(b, off)
		if err != nil {
			return err
		}
		off = o
		if f.num == 6 && f.typ == protowire.VarintType {
			v := d.i64s.new()
			*v = int64(f.v)
			m.TimestampMs = v
			continue
		}
		if f.typ != protowire.BytesType {
			continue
		}
		switch f.num {
		case 1:
			lp := d.lps.new()
			if err := d.labelPair(b, f.start, f.end, lp); err != nil {
				return err
			}
			d.lscratch = append(d.lscratch, lp)
		case 2:
			if m.Gauge == nil {
				m.Gauge = d.gs.new()
			}
			if err := d.value(b, f.start, f.end, &m.Gauge.Value); err != nil {
				return err
			}
		case 5:
			if m.Untyped == nil {
				m.Untyped = d.us.new()
			}
			if err := d.value(b, f.start, f.end, &m.Untyped.Value); err != nil {
				return err
			}
		case 3:
			if m.Counter == nil {
				m.Counter = d.cs.new()
			}
			if err := d.counter(b, f.start, f.end, m.Counter); err != nil {
				return err
			}
		case 4:
			if m.Summary == nil {
				m.Summary = d.sums.new()
			}
			if err := d.summary(b, f.start, f.end, m.Summary); err != nil {
				return err
			}
		case 7:
			if m.Histogram == nil {
				m.Histogram = d.hs.new()
			}
			if err := d.histogram(b, f.start, f.end, m.Histogram); err != nil {
				return err
			}
		}
	}
	return nil
}

func (d *wireDecoder) labelPair(b []byte, start, end int, lp *dto.LabelPair) error {
	b = b[:end]
	for off := start; off < end; {
		f, o, err := next(b, off)
		if err != nil {
			return err
		}
		off = o
		if f.typ != protowire.BytesType {
			continue
		}
		switch f.num {
		case 1:
			lp.Name = d.str(f)
		case 2:
			lp.Value = d.str(f)
		}
	}
	return nil
}

// value decodes Gauge or Untyped: field 1, a double.
func (d *wireDecoder) value(b []byte, start, end int, v **float64) error {
	b = b[:end]
	for off := start; off < end; {
		f, o, err := next(b, off)
		if err != nil {
			return err
		}
		off = o
		if f.num == 1 && f.typ == protowire.Fixed64Type {
			*v = d.f64(f)
		}
	}
	return nil
}

// sub merges the message at b[start:end] into m with proto.Unmarshal.
func sub[M proto.Message](b []byte, start, end int, m *M, mk func() M) error {
	if any(*m) == nil || isNil(*m) {
		*m = mk()
	}
	return proto.UnmarshalOptions{Merge: true, DiscardUnknown: true}.Unmarshal(b[start:end], *m)
}

func isNil[M proto.Message](m M) bool { return !m.ProtoReflect().IsValid() }

func (d *wireDecoder) counter(b []byte, start, end int, c *dto.Counter) error {
	b = b[:end]
	for off := start; off < end; {
		f, o, err := next(b, off)
		if err != nil {
			return err
		}
		off = o
		switch {
		case f.num == 1 && f.typ == protowire.Fixed64Type:
			c.Value = d.f64(f)
		case f.num == 2 && f.typ == protowire.BytesType:
			if err := sub(b, f.start, f.end, &c.Exemplar, newExemplar); err != nil {
				return err
			}
		case f.num == 3 && f.typ == protowire.BytesType:
			if err := d.timestamp(b, f.start, f.end, &c.CreatedTimestamp); err != nil {
				return err
			}
		}
	}
	return nil
}

func (d *wireDecoder) summary(b []byte, start, end int, s *dto.Summary) error {
	b = b[:end]
	for off := start; off < end; {
		f, o, err := next(b, off)
		if err != nil {
			return err
		}
		off = o
		switch {
		case f.num == 1 && f.typ == protowire.VarintType:
			s.SampleCount = d.u64(f)
		case f.num == 2 && f.typ == protowire.Fixed64Type:
			s.SampleSum = d.f64(f)
		case f.num == 3 && f.typ == protowire.BytesType:
			q := d.qs.new()
			for qo := f.start; qo < f.end; {
				qf, o, err := next(b[:f.end], qo)
				if err != nil {
					return err
				}
				qo = o
				if qf.typ != protowire.Fixed64Type {
					continue
				}
				switch qf.num {
				case 1:
					q.Quantile = d.f64(qf)
				case 2:
					q.Value = d.f64(qf)
				}
			}
			s.Quantile = append(s.Quantile, q)
		case f.num == 4 && f.typ == protowire.BytesType:
			if err := d.timestamp(b, f.start, f.end, &s.CreatedTimestamp); err != nil {
				return err
			}
		}
	}
	return nil
}

func (d *wireDecoder) histogram(b []byte, start, end int, h *dto.Histogram) error {
	from := len(d.bscratch)
	defer func() { h.Bucket = carve(&d.bptrs, h.Bucket, &d.bscratch, from) }()
	b = b[:end]
	for off := start; off < end; {
		f, o, err := next(b, off)
		if err != nil {
			return err
		}
		off = o
		switch f.typ {
		case protowire.VarintType:
			switch f.num {
			case 1:
				h.SampleCount = d.u64(f)
			case 7:
				h.ZeroCount = d.u64(f)
			case 5:
				v := d.i32s.new()
				*v = int32(protowire.DecodeZigZag(f.v & math.MaxUint32))
				h.Schema = v
			case 10:
				h.NegativeDelta = append(h.NegativeDelta, protowire.DecodeZigZag(f.v))
			case 13:
				h.PositiveDelta = append(h.PositiveDelta, protowire.DecodeZigZag(f.v))
			}
		case protowire.Fixed64Type:
			switch f.num {
			case 4:
				h.SampleCountFloat = d.f64(f)
			case 2:
				h.SampleSum = d.f64(f)
			case 6:
				h.ZeroThreshold = d.f64(f)
			case 8:
				h.ZeroCountFloat = d.f64(f)
			case 11:
				h.NegativeCount = append(h.NegativeCount, math.Float64frombits(f.v))
			case 14:
				h.PositiveCount = append(h.PositiveCount, math.Float64frombits(f.v))
			}
		case protowire.BytesType:
			var err error
			switch f.num {
			case 3:
				bk := d.bs.new()
				err = d.bucket(b, f.start, f.end, bk)
				d.bscratch = append(d.bscratch, bk)
			case 9:
				h.NegativeSpan, err = d.span(b, f.start, f.end, h.NegativeSpan)
			case 12:
				h.PositiveSpan, err = d.span(b, f.start, f.end, h.PositiveSpan)
			case 10:
				h.NegativeDelta, err = packedZigZag(b[f.start:f.end], h.NegativeDelta)
			case 13:
				h.PositiveDelta, err = packedZigZag(b[f.start:f.end], h.PositiveDelta)
			case 11:
				h.NegativeCount, err = packedDouble(b[f.start:f.end], h.NegativeCount)
			case 14:
				h.PositiveCount, err = packedDouble(b[f.start:f.end], h.PositiveCount)
			case 15:
				err = d.timestamp(b, f.start, f.end, &h.CreatedTimestamp)
			case 16:
				ex := newExemplar()
				err = proto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b[f.start:f.end], ex)
				h.Exemplars = append(h.Exemplars, ex)
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}

func (d *wireDecoder) bucket(b []byte, start, end int, bk *dto.Bucket) error {
	b = b[:end]
	for off := start; off < end; {
		f, o, err := next(b, off)
		if err != nil {
			return err
		}
		off = o
		switch {
		case f.num == 1 && f.typ == protowire.VarintType:
			bk.CumulativeCount = d.u64(f)
		case f.num == 4 && f.typ == protowire.Fixed64Type:
			bk.CumulativeCountFloat = d.f64(f)
		case f.num == 2 && f.typ == protowire.Fixed64Type:
			bk.UpperBound = d.f64(f)
		case f.num == 3 && f.typ == protowire.BytesType:
			if err := sub(b, f.start, f.end, &bk.Exemplar, newExemplar); err != nil {
				return err
			}
		}
	}
	return nil
}

func (d *wireDecoder) span(b []byte, start, end int, dst []*dto.BucketSpan) ([]*dto.BucketSpan, error) {
	s := d.spans.new()
	b = b[:end]
	for off := start; off < end; {
		f, o, err := next(b, off)
		if err != nil {
			return dst, err
		}
		off = o
		if f.typ != protowire.VarintType {
			continue
		}
		switch f.num {
		case 1:
			v := d.i32s.new()
			*v = int32(protowire.DecodeZigZag(f.v & math.MaxUint32))
			s.Offset = v
		case 2:
			v := d.u32s.new()
			*v = uint32(f.v)
			s.Length = v
		}
	}
	return append(dst, s), nil
}

func packedZigZag(b []byte, dst []int64) ([]int64, error) {
	for len(b) > 0 {
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return dst, errWire
		}
		dst = append(dst, protowire.DecodeZigZag(v))
		b = b[n:]
	}
	return dst, nil
}

func packedDouble(b []byte, dst []float64) ([]float64, error) {
	if len(b)%8 != 0 {
		return dst, errWire
	}
	for ; len(b) > 0; b = b[8:] {
		v, _ := protowire.ConsumeFixed64(b)
		dst = append(dst, math.Float64frombits(v))
	}
	return dst, nil
}

func newExemplar() *dto.Exemplar { return new(dto.Exemplar) }

// timestamp merges a google.protobuf.Timestamp (created timestamps: one per
// counter, histogram and summary from client_golang) into *ts.
func (d *wireDecoder) timestamp(b []byte, start, end int, ts **timestamppb.Timestamp) error {
	if *ts == nil {
		*ts = d.tss.new()
	}
	b = b[:end]
	for off := start; off < end; {
		f, o, err := next(b, off)
		if err != nil {
			return err
		}
		off = o
		if f.typ != protowire.VarintType {
			continue
		}
		switch f.num {
		case 1:
			(*ts).Seconds = int64(f.v)
		case 2:
			(*ts).Nanos = int32(f.v)
		}
	}
	return nil
}
