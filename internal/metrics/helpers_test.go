package metrics

import (
	"fmt"
	"sort"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func labels(kv ...string) []*dto.LabelPair {
	var out []*dto.LabelPair
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, &dto.LabelPair{Name: new(kv[i]), Value: new(kv[i+1])})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].GetName() < out[j].GetName() })
	return out
}

func fam(name string, typ dto.MetricType, ms ...*dto.Metric) *dto.MetricFamily {
	return &dto.MetricFamily{Name: new(name), Help: new("help for " + name), Type: new(typ), Metric: ms}
}

func cnt(v float64, kv ...string) *dto.Metric {
	return &dto.Metric{Label: labels(kv...), Counter: &dto.Counter{Value: new(v), CreatedTimestamp: timestamppb.New(testTime)}}
}

func gau(v float64, kv ...string) *dto.Metric {
	return &dto.Metric{Label: labels(kv...), Gauge: &dto.Gauge{Value: new(v)}}
}

func untyped(v float64, kv ...string) *dto.Metric {
	return &dto.Metric{Label: labels(kv...), Untyped: &dto.Untyped{Value: new(v)}}
}

func summ(count uint64, sum float64, kv ...string) *dto.Metric {
	return &dto.Metric{Label: labels(kv...), Summary: &dto.Summary{
		SampleCount: new(count), SampleSum: new(sum),
		Quantile:         []*dto.Quantile{{Quantile: new(0.5), Value: new(sum / float64(max(count, 1)))}},
		CreatedTimestamp: timestamppb.New(testTime),
	}}
}

// classic builds a classic histogram from upper bounds and cumulative counts.
func classic(count uint64, sum float64, bounds []float64, cum []uint64, kv ...string) *dto.Metric {
	h := &dto.Histogram{SampleCount: new(count), SampleSum: new(sum), CreatedTimestamp: timestamppb.New(testTime)}
	for i, b := range bounds {
		h.Bucket = append(h.Bucket, &dto.Bucket{UpperBound: new(b), CumulativeCount: new(cum[i])})
	}
	return &dto.Metric{Label: labels(kv...), Histogram: h}
}

// nativeH builds an integer native histogram from absolute bucket counts by
// index.
func nativeH(schema int32, zt float64, zc uint64, pos, neg map[int32]int64, kv ...string) *dto.Metric {
	h := &dto.Histogram{Schema: new(schema), ZeroThreshold: new(zt), ZeroCount: new(zc), SampleSum: new(1.0)}
	total := zc
	h.PositiveSpan, h.PositiveDelta, total = spansOf(pos, total)
	h.NegativeSpan, h.NegativeDelta, total = spansOf(neg, total)
	h.SampleCount = new(total)
	return &dto.Metric{Label: labels(kv...), Histogram: h}
}

func spansOf(m map[int32]int64, total uint64) ([]*dto.BucketSpan, []int64, uint64) {
	var bs []bkt
	for i, c := range m {
		bs = append(bs, bkt{i, float64(c)})
		total += uint64(c)
	}
	sort.Slice(bs, func(i, j int) bool { return bs[i].i < bs[j].i })
	// One span per bucket, to exercise offsets (Families re-encodes anyway).
	var spans []*dto.BucketSpan
	var deltas []int64
	var prev int64
	next := int32(0)
	for _, b := range bs {
		spans = append(spans, &dto.BucketSpan{Offset: new(b.i - next), Length: new(uint32(1))})
		deltas = append(deltas, int64(b.c)-prev)
		prev = int64(b.c)
		next = b.i + 1
	}
	return spans, deltas, total
}

// bucketsOf decodes a native histogram's positive or negative side into
// absolute counts by index, leaving out empty buckets.
func bucketsOf(h *dto.Histogram, positive bool) map[int32]float64 {
	var bs []bkt
	if positive {
		bs = decodeBuckets(nil, h.PositiveSpan, h.PositiveDelta, h.PositiveCount)
	} else {
		bs = decodeBuckets(nil, h.NegativeSpan, h.NegativeDelta, h.NegativeCount)
	}
	out := map[int32]float64{}
	for _, b := range bs {
		if b.c != 0 {
			out[b.i] = b.c
		}
	}
	return out
}

// flat renders families as "name{labels} value" lines, one per series, for
// comparisons.
func flat(fams []*dto.MetricFamily) map[string]string {
	out := map[string]string{}
	for _, mf := range fams {
		for _, m := range mf.Metric {
			var ls []string
			for _, lp := range m.Label {
				ls = append(ls, lp.GetName()+"="+lp.GetValue())
			}
			k := mf.GetName() + "{" + strings.Join(ls, ",") + "}"
			var v string
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				v = fmt.Sprint(m.GetCounter().GetValue())
			case dto.MetricType_GAUGE:
				v = fmt.Sprint(m.GetGauge().GetValue())
			case dto.MetricType_UNTYPED:
				v = fmt.Sprint(m.GetUntyped().GetValue())
			case dto.MetricType_SUMMARY:
				v = fmt.Sprintf("count=%d sum=%v", m.GetSummary().GetSampleCount(), m.GetSummary().GetSampleSum())
			case dto.MetricType_HISTOGRAM:
				h := m.GetHistogram()
				v = fmt.Sprintf("count=%d sum=%v", h.GetSampleCount(), h.GetSampleSum())
				for _, b := range h.Bucket {
					v += fmt.Sprintf(" le%v=%d", b.GetUpperBound(), b.GetCumulativeCount())
				}
			}
			if _, dup := out[k]; dup {
				panic("duplicate series " + k)
			}
			out[k] = v
		}
	}
	return out
}

func equalMaps(t *testing.T, got, want map[string]string) {
	t.Helper()
	for k, w := range want {
		if g, ok := got[k]; !ok {
			t.Errorf("missing %s (want %s)", k, w)
		} else if g != w {
			t.Errorf("%s = %s, want %s", k, g, w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected %s = %s", k, g)
		}
	}
}
