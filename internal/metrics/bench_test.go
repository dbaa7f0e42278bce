package metrics

import (
	"strconv"
	"testing"

	dto "github.com/prometheus/client_model/go"
)

var benchBounds = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// benchGather builds one child's gather of about n series: 60% counters
// (two labels), 10% classic histograms with 10 buckets (each counted as one
// series here; they expand to 13 text lines), 30% gauges (one label).
func benchGather(n, seed int) []*dto.MetricFamily {
	const perFam = 100
	var fams []*dto.MetricFamily
	nc, nh := n*6/10, n/10
	ng := n - nc - nh
	for f := 0; f*perFam < nc; f++ {
		mf := fam("bench_c"+strconv.Itoa(f)+"_total", C)
		for i := 0; i < perFam && f*perFam+i < nc; i++ {
			mf.Metric = append(mf.Metric, cnt(float64(seed*1000+i), "method", "GET", "path", "/p"+strconv.Itoa(i)))
		}
		fams = append(fams, mf)
	}
	for f := 0; f*perFam < nh; f++ {
		mf := fam("bench_h"+strconv.Itoa(f)+"_seconds", H)
		for i := 0; i < perFam && f*perFam+i < nh; i++ {
			cum := make([]uint64, len(benchBounds))
			for j := range cum {
				cum[j] = uint64((j + 1) * (seed + i))
			}
			mf.Metric = append(mf.Metric, classic(uint64(11*(seed+i)), float64(i), benchBounds, cum, "route", "/r"+strconv.Itoa(i)))
		}
		fams = append(fams, mf)
	}
	for f := 0; f*perFam < ng; f++ {
		mf := fam("bench_g"+strconv.Itoa(f), G)
		for i := 0; i < perFam && f*perFam+i < ng; i++ {
			mf.Metric = append(mf.Metric, gau(float64(i), "queue", "q"+strconv.Itoa(i)))
		}
		fams = append(fams, mf)
	}
	return fams
}

// BenchmarkScrape is the master's merge work for one scrape of 8 workers ×
// 10,000 series: 8 Updates with fresh gathers, then Families.
func BenchmarkScrape(b *testing.B) {
	const children, series = 8, 10000
	// Two sets of gathers, alternated, so that every Update gets objects it
	// has not seen (as decoded IPC payloads are).
	var gathers [2][children][]*dto.MetricFamily
	for s := range gathers {
		for i := range children {
			gathers[s][i] = benchGather(series, i+s)
		}
	}
	c := New(Options{})
	keys := make([]Key, children)
	for i := range keys {
		keys[i] = Key{"worker", i + 1, 1000 + i}
	}
	for i := range children {
		c.Update(keys[i], gathers[1][i])
	}
	c.Families()
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; b.Loop(); n++ {
		for i := range children {
			c.Update(keys[i], gathers[n%2][i])
		}
		if fams := c.Families(); len(fams) == 0 {
			b.Fatal("empty")
		}
	}
}

func BenchmarkEncode(b *testing.B) {
	fams := benchGather(10000, 1)
	p, _ := Encode(fams)
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Encode(fams); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	p, _ := Encode(benchGather(10000, 1))
	b.SetBytes(int64(len(p)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(p, 64<<20); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkScrapeDecoded is the master's whole share of a scrape, serially:
// Decode eight 10k-series payloads, Update, Families.
func BenchmarkScrapeDecoded(b *testing.B) {
	const children = 8
	var payloads [children][]byte
	keys := make([]Key, children)
	for i := range children {
		payloads[i], _ = Encode(benchGather(10000, i))
		keys[i] = Key{"worker", i + 1, 1000 + i}
	}
	c := New(Options{})
	b.ReportAllocs()
	for b.Loop() {
		for i := range children {
			fams, err := Decode(payloads[i], 16<<20)
			if err != nil {
				b.Fatal(err)
			}
			c.Update(keys[i], fams)
		}
		c.Families()
	}
}
