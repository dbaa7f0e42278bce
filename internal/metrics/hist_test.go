package metrics

import (
	"maps"
	"math"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

func TestTargetIdx(t *testing.T) {
	// Schema 1 bucket i is (2^((i-1)/2), 2^(i/2)]; at schema 0 bucket j is
	// (2^(j-1), 2^j]. So -1 (0.5, 0.707] and 0 (0.707, 1] go to 0; 1 and 2 to
	// 1; 3 and 4 to 2.
	for _, c := range []struct{ i, from, to, want int32 }{
		{-2, 1, 0, -1}, {-1, 1, 0, 0}, {0, 1, 0, 0}, {1, 1, 0, 1}, {2, 1, 0, 1}, {3, 1, 0, 2}, {4, 1, 0, 2},
		{5, 3, 0, 1}, {8, 3, 0, 1}, {9, 3, 0, 2}, {0, 3, 0, 0}, {-7, 3, 0, 0}, {-8, 3, 0, -1},
		{3, 0, -2, 1}, {4, 0, -2, 1}, {5, 0, -2, 2},
	} {
		if got := targetIdx(c.i, c.from, c.to); got != c.want {
			t.Errorf("targetIdx(%d, %d, %d) = %d, want %d", c.i, c.from, c.to, got, c.want)
		}
		// The target bucket contains the origin bucket.
		lo, hi := upperBound(c.i-1, c.from), upperBound(c.i, c.from)
		tlo, thi := upperBound(c.want-1, c.to), upperBound(c.want, c.to)
		if lo < tlo*(1-1e-12) || hi > thi*(1+1e-12) {
			t.Errorf("bucket %d@%d (%g, %g] not inside %d@%d (%g, %g]", c.i, c.from, lo, hi, c.want, c.to, tlo, thi)
		}
	}
}

func TestNativeHistograms(t *testing.T) {
	// A at schema 1: buckets -1:5 0:1 1:2 2:3 3:1 4:4; negative 2:1.
	// At schema 0 that is 0:6 1:5 2:5; negative 1:1.
	a := func(kv ...string) *dto.Metric {
		return nativeH(1, 0.001, 2, map[int32]int64{-1: 5, 0: 1, 1: 2, 2: 3, 3: 1, 4: 4}, map[int32]int64{2: 1}, kv...)
	}
	b := func(zt float64) *dto.Metric {
		return nativeH(0, zt, 3, map[int32]int64{1: 10, 3: 7}, nil)
	}
	tests := []struct {
		name       string
		first, sec *dto.Metric
		schema     int32
		zt         float64
		zc         float64
		pos, neg   map[int32]float64
	}{
		{
			name: "finer second, reduced to the first's schema", first: b(0.001), sec: a(),
			schema: 0, zt: 0.001, zc: 5,
			pos: map[int32]float64{0: 6, 1: 15, 2: 5, 3: 7}, neg: map[int32]float64{1: 1},
		},
		{
			name: "finer first, the accumulator is reduced", first: a(), sec: b(0.001),
			schema: 0, zt: 0.001, zc: 5,
			pos: map[int32]float64{0: 6, 1: 15, 2: 5, 3: 7}, neg: map[int32]float64{1: 1},
		},
		{
			// 0.6 falls inside bucket 0 (0.5, 1], populated: the zero bucket
			// widens to 1 and takes its 6.
			name: "larger zero threshold inside a bucket widens to its upper bound", first: a(), sec: b(0.6),
			schema: 0, zt: 1, zc: 2 + 3 + 6,
			pos: map[int32]float64{1: 15, 2: 5, 3: 7}, neg: map[int32]float64{1: 1},
		},
		{
			// 2 is a bucket boundary: buckets 0 and 1 (and negative 1) fold in.
			name: "larger zero threshold on a boundary", first: a(), sec: b(2),
			schema: 0, zt: 2, zc: 2 + 3 + 6 + 15 + 1,
			pos: map[int32]float64{2: 5, 3: 7}, neg: map[int32]float64{},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(Options{})
			c.Update(w1, []*dto.MetricFamily{fam("nh", H, tt.first)})
			c.Update(w2, []*dto.MetricFamily{fam("nh", H, tt.sec)})
			for _, retire := range []bool{false, true} {
				if retire { // the same through the base
					c.Retire(w1)
				}
				h := c.Families()[0].Metric[0].GetHistogram()
				if h.GetSchema() != tt.schema || h.GetZeroThreshold() != tt.zt || float64(h.GetZeroCount()) != tt.zc {
					t.Errorf("retire=%v: schema %d zt %g zc %d, want %d %g %g", retire, h.GetSchema(), h.GetZeroThreshold(), h.GetZeroCount(), tt.schema, tt.zt, tt.zc)
				}
				if got := bucketsOf(h, true); !maps.Equal(got, tt.pos) {
					t.Errorf("retire=%v: positive %v, want %v", retire, got, tt.pos)
				}
				if got := bucketsOf(h, false); !maps.Equal(got, tt.neg) {
					t.Errorf("retire=%v: negative %v, want %v", retire, got, tt.neg)
				}
				if want := tt.first.GetHistogram().GetSampleCount() + tt.sec.GetHistogram().GetSampleCount(); h.GetSampleCount() != want {
					t.Errorf("count %d, want %d", h.GetSampleCount(), want)
				}
			}
		})
	}
}

func TestNativeEncoding(t *testing.T) {
	// Hand-encoded: buckets 0:6 1:15 2:5 3:7 are one span at 0 with deltas
	// 6 9 -10 2; a gap of 3 opens a new span, a gap of 2 is filled.
	spans, deltas, _ := encodeBuckets([]bkt{{0, 6}, {1, 15}, {2, 5}, {3, 7}, {7, 1}, {10, 2}}, false)
	type sp struct {
		o int32
		l uint32
	}
	var got []sp
	for _, s := range spans {
		got = append(got, sp{s.GetOffset(), s.GetLength()})
	}
	want := []sp{{0, 4}, {3, 4}}
	wantD := []int64{6, 9, -10, 2, -6, -1, 0, 2}
	if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("spans %v, want %v", got, want)
	}
	if len(deltas) != len(wantD) {
		t.Fatalf("deltas %v, want %v", deltas, wantD)
	}
	for i := range deltas {
		if deltas[i] != wantD[i] {
			t.Fatalf("deltas %v, want %v", deltas, wantD)
		}
	}
}

func TestNativeFloatAndEmpty(t *testing.T) {
	c := New(Options{})
	f := &dto.Histogram{
		SampleCountFloat: new(2.5), SampleSum: new(3.0), Schema: new(int32(0)), ZeroThreshold: new(0.0), ZeroCountFloat: new(0.5),
		PositiveSpan: []*dto.BucketSpan{{Offset: new(int32(1)), Length: new(uint32(1))}}, PositiveCount: []float64{2},
	}
	empty := &dto.Histogram{SampleCount: new(uint64(0)), SampleSum: new(0.0), Schema: new(int32(3)), ZeroThreshold: new(0.0),
		ZeroCount: new(uint64(0)), PositiveSpan: []*dto.BucketSpan{{Offset: new(int32(0)), Length: new(uint32(0))}}}
	c.Update(w1, []*dto.MetricFamily{fam("nh", H, &dto.Metric{Histogram: f})})
	c.Update(w2, []*dto.MetricFamily{fam("nh", H, &dto.Metric{Histogram: empty}), fam("ne", H, &dto.Metric{Histogram: empty})})
	fams := c.Families()
	ne, nh := fams[0].Metric[0].GetHistogram(), fams[1].Metric[0].GetHistogram()
	if nh.GetSampleCountFloat() != 2.5 || nh.GetZeroCountFloat() != 0.5 || len(nh.PositiveCount) != 1 || nh.PositiveCount[0] != 2 {
		t.Errorf("float histogram: %v", nh)
	}
	if len(ne.PositiveSpan) != 1 || ne.GetSchema() != 3 || ne.SampleCount == nil {
		t.Errorf("empty native histogram lost its no-op span: %v", ne)
	}
	// An unknown schema is left out of the native part, never panics.
	c.Update(w1, []*dto.MetricFamily{fam("nh", H, &dto.Metric{Histogram: &dto.Histogram{Schema: new(int32(-53)), SampleCount: new(uint64(1))}})})
	c.Families()
}

func TestClassicUnsortedAndInf(t *testing.T) {
	var a hacc
	a.add(classic(4, 1, []float64{2, 1, math.Inf(1)}, []uint64{3, 1, 4}).Histogram)
	a.add(classic(4, 1, []float64{1, 2}, []uint64{2, 2}).Histogram)
	if len(a.bounds) != 2 || a.cum[0] != 3 || a.cum[1] != 5 || a.count != 8 {
		t.Fatalf("bounds %v cum %v count %v", a.bounds, a.cum, a.count)
	}
}
