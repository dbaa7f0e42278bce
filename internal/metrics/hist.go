package metrics

import (
	"math"
	"sort"

	dto "github.com/prometheus/client_model/go"
)

// Native histogram schemas this package can merge: the exponential ones.
// Other schemas (for instance -53, custom buckets) are left out of the
// merged native part.
const (
	minSchema = -4
	maxSchema = 8
)

// bkt is one native histogram bucket: its index at the histogram's schema and
// its (absolute) count.
type bkt struct {
	i int32
	c float64
}

// hacc accumulates histograms, classic and native parts independently. Counts
// are held as float64 (exact up to 2^53 observations); the output uses the
// integer fields unless some input used the float ones.
type hacc struct {
	count   float64
	sum     float64
	isFloat bool

	classic bool
	bounds  []float64 // ascending, finite (+Inf is implied by count)
	cum     []float64 // cumulative counts per bound

	native bool
	schema int32
	zt, zc float64
	pos    []bkt
	neg    []bkt

	// scratch, swapped with the slices above when merging
	sb  []float64
	sc  []float64
	tp  []bkt
	tn  []bkt
	tmp []bkt
}

func (a *hacc) reset() {
	a.count, a.sum, a.isFloat = 0, 0, false
	a.classic = false
	a.bounds, a.cum = a.bounds[:0], a.cum[:0]
	a.native = false
	a.schema, a.zt, a.zc = 0, 0, 0
	a.pos, a.neg = a.pos[:0], a.neg[:0]
}

func (a *hacc) copyFrom(b *hacc) {
	a.count, a.sum, a.isFloat = b.count, b.sum, b.isFloat
	a.classic = b.classic
	a.bounds = append(a.bounds[:0], b.bounds...)
	a.cum = append(a.cum[:0], b.cum...)
	a.native = b.native
	a.schema, a.zt, a.zc = b.schema, b.zt, b.zc
	a.pos = append(a.pos[:0], b.pos...)
	a.neg = append(a.neg[:0], b.neg...)
}

func isNative(h *dto.Histogram) bool {
	return h.Schema != nil || h.ZeroThreshold != nil || h.ZeroCount != nil || h.ZeroCountFloat != nil ||
		len(h.PositiveSpan) > 0 || len(h.NegativeSpan) > 0
}

func (a *hacc) add(h *dto.Histogram) {
	if h == nil {
		return
	}
	if f := h.GetSampleCountFloat(); f > 0 {
		a.count += f
		a.isFloat = true
	} else {
		a.count += float64(h.GetSampleCount())
	}
	a.sum += h.GetSampleSum()
	if len(h.Bucket) > 0 {
		a.addClassic(h.Bucket)
	}
	if isNative(h) {
		a.addNative(h)
	}
}

func bucketCount(b *dto.Bucket) (float64, bool) {
	if f := b.GetCumulativeCountFloat(); f > 0 {
		return f, true
	}
	return float64(b.GetCumulativeCount()), false
}

// addClassic adds cumulative buckets. Bounds are united: where one side has no
// bucket for a bound, its cumulative count there is taken as that of its next
// lower bound (0 below its first one) — the count of observations known to be
// at most that bound, so the merged buckets stay cumulative and never exceed
// the true count. +Inf buckets are dropped: the +Inf bucket is the sample
// count, which the encoders add.
func (a *hacc) addClassic(bs []*dto.Bucket) {
	sorted := true
	for i := 1; i < len(bs); i++ {
		if bs[i].GetUpperBound() < bs[i-1].GetUpperBound() {
			sorted = false
			break
		}
	}
	if !sorted {
		c := append([]*dto.Bucket(nil), bs...)
		sort.SliceStable(c, func(i, j int) bool { return c[i].GetUpperBound() < c[j].GetUpperBound() })
		bs = c
	}
	// Fast path: the same bounds as the accumulator (the usual case).
	if a.classic && len(a.bounds) > 0 && len(bs) >= len(a.bounds) {
		same := true
		for i, b := range a.bounds {
			if bs[i].GetUpperBound() != b {
				same = false
				break
			}
		}
		if same && (len(bs) == len(a.bounds) || skipTail(bs[len(a.bounds):])) {
			for i := range a.bounds {
				v, f := bucketCount(bs[i])
				a.cum[i] += v
				a.isFloat = a.isFloat || f
			}
			return
		}
	}
	a.classic = true
	nb, nc := a.sb[:0], a.sc[:0]
	i, j := 0, 0
	var lastA, lastB float64
	for i < len(a.bounds) || j < len(bs) {
		if j < len(bs) {
			if ub := bs[j].GetUpperBound(); math.IsInf(ub, +1) || math.IsNaN(ub) {
				j++
				continue
			}
		}
		var b float64
		switch {
		case j >= len(bs) || (i < len(a.bounds) && a.bounds[i] < bs[j].GetUpperBound()):
			b, lastA = a.bounds[i], a.cum[i]
			i++
		case i >= len(a.bounds) || bs[j].GetUpperBound() < a.bounds[i]:
			b = bs[j].GetUpperBound()
			v, f := bucketCount(bs[j])
			lastB, a.isFloat = v, a.isFloat || f
			j++
		default:
			b, lastA = a.bounds[i], a.cum[i]
			v, f := bucketCount(bs[j])
			lastB, a.isFloat = v, a.isFloat || f
			i++
			j++
		}
		if n := len(nb); n > 0 && nb[n-1] == b { // duplicate bound in the input
			nc[n-1] = lastA + lastB
			continue
		}
		nb = append(nb, b)
		nc = append(nc, lastA+lastB)
	}
	a.sb, a.sc = a.bounds, a.cum
	a.bounds, a.cum = nb, nc
}

// skipTail reports whether the buckets are only ones addClassic drops.
func skipTail(bs []*dto.Bucket) bool {
	for _, b := range bs {
		if ub := b.GetUpperBound(); !math.IsInf(ub, +1) && !math.IsNaN(ub) {
			return false
		}
	}
	return true
}

// decodeBuckets appends the buckets described by spans and deltas (integer
// histograms) or counts (float histograms) to dst. Malformed input (more
// buckets in the spans than counts) is cut short, never read out of range.
func decodeBuckets(dst []bkt, spans []*dto.BucketSpan, deltas []int64, counts []float64) []bkt {
	var idx int32
	k := 0
	var cur int64
	useCounts := len(counts) > 0
	for _, s := range spans {
		idx += s.GetOffset()
		for l := uint32(0); l < s.GetLength(); l++ {
			var c float64
			if useCounts {
				if k >= len(counts) {
					return dst
				}
				c = counts[k]
			} else {
				if k >= len(deltas) {
					return dst
				}
				cur += deltas[k]
				c = float64(cur)
			}
			dst = append(dst, bkt{idx, c})
			idx++
			k++
		}
	}
	return dst
}

// targetIdx maps bucket index idx at schema from to its index at the coarser
// schema to (from > to): ceil(idx / 2^(from-to)), as prometheus/prometheus
// model/histogram targetIdx and client_golang's doubleBucketWidth do.
func targetIdx(idx, from, to int32) int32 {
	return ((idx - 1) >> (from - to)) + 1
}

// reduceResolution rewrites sorted buckets from schema from to the coarser
// schema to, adding up buckets that fall together. It works in place.
func reduceResolution(bs []bkt, from, to int32) []bkt {
	if from <= to {
		return bs
	}
	out := bs[:0]
	for _, b := range bs {
		t := targetIdx(b.i, from, to)
		if n := len(out); n > 0 && out[n-1].i == t {
			out[n-1].c += b.c
			continue
		}
		out = append(out, bkt{t, b.c})
	}
	return out
}

// upperBound is the upper bound (absolute value) of bucket idx at schema:
// 2^(idx·2^-schema).
func upperBound(idx, schema int32) float64 {
	if schema <= 0 {
		return math.Ldexp(1, int(idx)<<uint(-schema))
	}
	frac := idx & (1<<uint(schema) - 1)
	exp := idx >> uint(schema)
	return math.Ldexp(math.Exp2(float64(frac)/float64(int32(1)<<uint(schema))), int(exp))
}

// widen returns the zero threshold t raised, where it falls inside a populated
// bucket of any of the lists, to that bucket's upper bound, repeatedly, as
// prometheus/prometheus FloatHistogram.zeroCountForLargerThreshold does.
func widen(t float64, schema int32, lists ...[]bkt) float64 {
	for changed := true; changed; {
		changed = false
		for _, l := range lists {
			for _, b := range l {
				if upperBound(b.i-1, schema) >= t {
					break
				}
				if b.c != 0 {
					if u := upperBound(b.i, schema); u > t {
						t, changed = u, true
					}
				}
			}
		}
	}
	return t
}

// foldBelow removes the buckets whose lower bound is below t and returns their
// total count.
func foldBelow(bs []bkt, t float64, schema int32) ([]bkt, float64) {
	n := 0
	var sum float64
	for n < len(bs) && upperBound(bs[n].i-1, schema) < t {
		sum += bs[n].c
		n++
	}
	if n == 0 {
		return bs, 0
	}
	return append(bs[:0], bs[n:]...), sum
}

// mergeAdd adds the sorted bucket lists a and b into dst (reset), sorted.
func mergeAdd(dst, a, b []bkt) []bkt {
	dst = dst[:0]
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		switch {
		case a[i].i < b[j].i:
			dst = append(dst, a[i])
			i++
		case b[j].i < a[i].i:
			dst = append(dst, b[j])
			j++
		default:
			dst = append(dst, bkt{a[i].i, a[i].c + b[j].c})
			i++
			j++
		}
	}
	dst = append(dst, a[i:]...)
	return append(dst, b[j:]...)
}

func (a *hacc) addNative(h *dto.Histogram) {
	schema := h.GetSchema()
	if schema < minSchema || schema > maxSchema {
		return
	}
	if len(h.PositiveCount) > 0 || len(h.NegativeCount) > 0 || h.GetZeroCountFloat() > 0 {
		a.isFloat = true
	}
	zc := float64(h.GetZeroCount())
	if f := h.GetZeroCountFloat(); f > 0 {
		zc = f
	}
	zt := h.GetZeroThreshold()
	if !a.native {
		a.native = true
		a.schema, a.zt, a.zc = schema, zt, zc
		a.pos = decodeBuckets(a.pos[:0], h.PositiveSpan, h.PositiveDelta, h.PositiveCount)
		a.neg = decodeBuckets(a.neg[:0], h.NegativeSpan, h.NegativeDelta, h.NegativeCount)
		return
	}
	p := decodeBuckets(a.tp[:0], h.PositiveSpan, h.PositiveDelta, h.PositiveCount)
	n := decodeBuckets(a.tn[:0], h.NegativeSpan, h.NegativeDelta, h.NegativeCount)
	switch {
	case schema > a.schema:
		p = reduceResolution(p, schema, a.schema)
		n = reduceResolution(n, schema, a.schema)
	case schema < a.schema:
		a.pos = reduceResolution(a.pos, a.schema, schema)
		a.neg = reduceResolution(a.neg, a.schema, schema)
		a.schema = schema
	}
	t := max(a.zt, zt)
	if t > 0 {
		t = widen(t, a.schema, a.pos, a.neg, p, n)
	}
	var f float64
	a.zc += zc
	a.pos, f = foldBelow(a.pos, t, a.schema)
	a.zc += f
	a.neg, f = foldBelow(a.neg, t, a.schema)
	a.zc += f
	p, f = foldBelow(p, t, a.schema)
	a.zc += f
	n, f = foldBelow(n, t, a.schema)
	a.zc += f
	a.zt = t
	a.tmp = mergeAdd(a.tmp, a.pos, p)
	a.pos, a.tmp = a.tmp, a.pos
	a.tmp = mergeAdd(a.tmp, a.neg, n)
	a.neg, a.tmp = a.tmp, a.neg
	a.tp, a.tn = p, n
}

// encodeBuckets writes sorted buckets as spans plus deltas (integer) or
// counts (float). Gaps of up to two buckets are filled with empty buckets
// rather than opening a span, as client_golang does.
func encodeBuckets(bs []bkt, float bool) ([]*dto.BucketSpan, []int64, []float64) {
	if len(bs) == 0 {
		return nil, nil, nil
	}
	var (
		spans  []*dto.BucketSpan
		deltas []int64
		counts []float64
		prev   int64
		next   int32
	)
	if float {
		counts = make([]float64, 0, len(bs))
	} else {
		deltas = make([]int64, 0, len(bs))
	}
	push := func(c float64) {
		*spans[len(spans)-1].Length++
		if float {
			counts = append(counts, c)
		} else {
			v := int64(math.Round(c))
			deltas = append(deltas, v-prev)
			prev = v
		}
	}
	for n, b := range bs {
		gap := b.i - next
		if n == 0 || gap > 2 {
			off, l := gap, uint32(0)
			spans = append(spans, &dto.BucketSpan{Offset: &off, Length: &l})
		} else {
			for range gap {
				push(0)
			}
		}
		push(b.c)
		next = b.i + 1
	}
	return spans, deltas, counts
}

// histogram renders the accumulator.
func (a *hacc) histogram() *dto.Histogram {
	h := &dto.Histogram{SampleSum: new(a.sum)}
	if a.isFloat {
		h.SampleCountFloat = new(a.count)
	} else {
		h.SampleCount = new(uint64(a.count))
	}
	if a.classic && len(a.bounds) > 0 {
		bs := make([]dto.Bucket, len(a.bounds))
		h.Bucket = make([]*dto.Bucket, len(a.bounds))
		for i, ub := range a.bounds {
			bs[i].UpperBound = new(ub)
			if a.isFloat {
				bs[i].CumulativeCountFloat = new(a.cum[i])
			} else {
				bs[i].CumulativeCount = new(uint64(a.cum[i]))
			}
			h.Bucket[i] = &bs[i]
		}
	}
	if a.native {
		h.Schema = new(a.schema)
		h.ZeroThreshold = new(a.zt)
		if a.isFloat {
			h.ZeroCountFloat = new(a.zc)
		} else {
			h.ZeroCount = new(uint64(a.zc))
		}
		h.PositiveSpan, h.PositiveDelta, h.PositiveCount = encodeBuckets(a.pos, a.isFloat)
		h.NegativeSpan, h.NegativeDelta, h.NegativeCount = encodeBuckets(a.neg, a.isFloat)
		if len(h.PositiveSpan) == 0 && len(h.NegativeSpan) == 0 {
			// A no-op span marks the histogram as native, as client_golang does.
			off, l := int32(0), uint32(0)
			h.PositiveSpan = []*dto.BucketSpan{{Offset: &off, Length: &l}}
		}
	}
	return h
}
