package metrics

import (
	"bytes"
	"errors"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// realGather registers one of each kind in a fresh registry (classic and
// native histograms included) and gathers it.
func realGather(t testing.TB, work float64) []*dto.MetricFamily {
	r := prometheus.NewRegistry()
	cv := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "app_requests_total", Help: "Requests."}, []string{"code"})
	g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "app_inflight_requests", Help: "In flight."})
	h := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "app_duration_seconds", Help: "Durations.",
		Buckets: prometheus.DefBuckets, NativeHistogramBucketFactor: 1.1})
	s := prometheus.NewSummary(prometheus.SummaryOpts{Name: "app_size_bytes", Help: "Sizes.", Objectives: map[float64]float64{0.5: 0.05}})
	r.MustRegister(cv, g, h, s)
	cv.WithLabelValues("200").Add(work)
	cv.WithLabelValues("500").Add(1)
	g.Set(work)
	for i := range 20 {
		h.Observe(work * float64(i) / 10)
		s.Observe(float64(i))
	}
	fams, err := r.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return fams
}

func TestCodecRoundTrip(t *testing.T) {
	fams := realGather(t, 3)
	b, err := Encode(fams)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b, len(b))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(fams) {
		t.Fatalf("%d families, want %d", len(got), len(fams))
	}
	for i := range fams {
		if !proto.Equal(got[i], fams[i]) {
			t.Errorf("family %d differs:\n%v\n%v", i, got[i], fams[i])
		}
	}
	// The same bytes as expfmt's delimited protobuf, both ways.
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeProtoDelim))
	for _, mf := range fams {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(buf.Bytes(), b) {
		t.Errorf("Encode differs from expfmt FmtProtoDelim")
	}
	dec := expfmt.NewDecoder(bytes.NewReader(b), expfmt.NewFormat(expfmt.TypeProtoDelim))
	for i := 0; ; i++ {
		var mf dto.MetricFamily
		if err := dec.Decode(&mf); err == io.EOF {
			if i != len(fams) {
				t.Fatalf("expfmt decoded %d families", i)
			}
			break
		} else if err != nil {
			t.Fatal(err)
		}
	}
	if got, err := Decode(nil, 10); err != nil || len(got) != 0 {
		t.Errorf("Decode(empty) = %v, %v", got, err)
	}
}

func TestDecodeErrors(t *testing.T) {
	b, _ := Encode([]*dto.MetricFamily{fam("x_total", C, cnt(1))})
	if _, err := Decode(b, len(b)-1); !errors.Is(err, ErrTooLarge) {
		t.Errorf("over the limit: %v", err)
	}
	if _, err := Decode(b[:len(b)-1], 0); err == nil || !strings.Contains(err.Error(), "past the end") {
		t.Errorf("truncated: %v", err)
	}
	if _, err := Decode([]byte{0xff, 0xff, 0xff}, 0); err == nil {
		t.Errorf("bad varint accepted")
	}
	bad, _ := Encode([]*dto.MetricFamily{fam("x", C, cnt(1, "l", "\xff"))})
	if _, err := Decode(bad, 0); err == nil || !strings.Contains(err.Error(), "invalid label value") {
		t.Errorf("invalid UTF-8: %v", err)
	}
	noname, _ := Encode([]*dto.MetricFamily{{Type: new(C)}})
	if _, err := Decode(noname, 0); err == nil {
		t.Errorf("nameless family accepted")
	}
}

func FuzzDecode(f *testing.F) {
	b, _ := Encode(realGather(f, 2))
	f.Add(b, 0)
	f.Add(b, len(b)/2)
	f.Add([]byte{0x05, 0x0a, 0x01, 0x61}, 3)
	f.Add([]byte{}, 1)
	f.Fuzz(func(t *testing.T, b []byte, limit int) {
		fams, err := Decode(b, limit)
		if limit > 0 && len(b) > limit && !errors.Is(err, ErrTooLarge) {
			t.Fatalf("%d bytes over limit %d accepted: %v", len(b), limit, err)
		}
		if err != nil {
			return
		}
		// Whatever decodes can be merged and encoded without a panic.
		c := New(Options{Gauges: map[string]Policy{"a": Sum}})
		c.Update(w1, fams)
		c.Update(w2, fams)
		c.Retire(w1)
		var buf bytes.Buffer
		enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeProtoDelim))
		for _, mf := range c.Families() {
			_ = enc.Encode(mf)
		}
	})
}

// TestPromtool runs the merged view of a realistic cluster, written as text
// by expfmt, through promtool check metrics.
func TestPromtool(t *testing.T) {
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if _, err2 := os.Stat("/usr/bin/promtool"); err2 != nil {
			t.Skip("promtool not installed (Debian: apt-get install prometheus)")
		}
		promtool = "/usr/bin/promtool"
	}
	c := New(Options{Gauges: map[string]Policy{"app_inflight_requests": Sum}})
	keys := []Key{agent, w1, w2, {"worker", 3, 103}}
	for i, k := range keys {
		fams := realGather(t, float64(i+1))
		// One family with a slot label of its own, served per slot.
		fams = append(fams, fam("app_pool_connections", G, gau(2, "slot", "primary")))
		c.Update(k, fams)
	}
	c.Retire(w2)
	var buf bytes.Buffer
	enc := expfmt.NewEncoder(&buf, expfmt.NewFormat(expfmt.TypeTextPlain))
	for _, mf := range c.Families() {
		if err := enc.Encode(mf); err != nil {
			t.Fatal(err)
		}
	}
	text := buf.String()
	for _, want := range []string{
		`app_requests_total{code="200"} 10`, // live 1+2+4, and 3 from the retired w2
		`app_inflight_requests 7`,           // Sum over the live 1+2+4
		`app_size_bytes{role="worker",slot="3",quantile="0.5"}`,
		`app_pool_connections{brood_role="agent",brood_slot="0",slot="primary"} 2`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("missing %s", want)
		}
	}
	if t.Failed() {
		t.Log(text)
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(text)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check metrics: %v\n%s\n---\n%s", err, out, text)
	}
}

// richFamilies has every field the wire decoder handles set at least once.
func richFamilies(t testing.TB) []*dto.MetricFamily {
	fams := realGather(t, 2)
	ex := &dto.Exemplar{Label: labels("trace_id", "abc"), Value: new(1.5), Timestamp: timestamppb.New(testTime)}
	c := cnt(3, "a", "b")
	c.Counter.Exemplar = ex
	c.TimestampMs = new(int64(-5))
	h := nativeH(-2, 0.5, 3, map[int32]int64{-3: 2, 1: 1, 5: 4}, map[int32]int64{0: 1, 2: 7})
	h.Histogram.Exemplars = []*dto.Exemplar{ex}
	h.Histogram.CreatedTimestamp = timestamppb.New(testTime)
	hf := &dto.Metric{Histogram: &dto.Histogram{SampleCountFloat: new(1.5), ZeroCountFloat: new(0.5), Schema: new(int32(2)),
		PositiveSpan: []*dto.BucketSpan{{Offset: new(int32(-1)), Length: new(uint32(1))}}, PositiveCount: []float64{1},
		NegativeSpan: []*dto.BucketSpan{{Offset: new(int32(3)), Length: new(uint32(1))}}, NegativeCount: []float64{0.25},
		Bucket: []*dto.Bucket{{UpperBound: new(1.0), CumulativeCountFloat: new(1.25), Exemplar: ex}}}}
	u := untyped(7, "x", "y")
	mf := fam("rich", C, c)
	mf.Unit = new("seconds")
	return append(fams, mf, fam("rich_h", H, h, hf), fam("rich_u", U, u))
}

func TestWireMatchesProto(t *testing.T) {
	fams := richFamilies(t)
	b, err := Encode(fams)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := range fams {
		if !proto.Equal(got[i], fams[i]) {
			t.Errorf("family %s differs:\n%v\n%v", fams[i].GetName(), got[i], fams[i])
		}
	}
}

// FuzzWireMatchesProto holds the hand-written decoder to proto.Unmarshal on
// any one MetricFamily message.
func FuzzWireMatchesProto(f *testing.F) {
	for _, mf := range richFamilies(f) {
		b, _ := proto.Marshal(mf)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var want dto.MetricFamily
		errP := proto.UnmarshalOptions{DiscardUnknown: true}.Unmarshal(b, &want)
		d := wireDecoder{s: string(b)}
		var got dto.MetricFamily
		errW := d.family(b, 0, len(b), &got)
		if (errP == nil) != (errW == nil) {
			t.Fatalf("proto: %v, wire: %v", errP, errW)
		}
		if errP == nil && !proto.Equal(&got, &want) {
			t.Fatalf("differ:\nwire  %v\nproto %v", &got, &want)
		}
	})
}
