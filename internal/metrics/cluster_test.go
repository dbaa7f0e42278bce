package metrics

import (
	"math"
	"math/rand/v2"
	"strconv"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
)

var testTime = time.Unix(1700000000, 0)

var (
	agent = Key{"agent", 0, 100}
	w1    = Key{"worker", 1, 101}
	w2    = Key{"worker", 2, 102}
	w1b   = Key{"worker", 1, 201} // replacement of w1
)

const (
	C = dto.MetricType_COUNTER
	G = dto.MetricType_GAUGE
	S = dto.MetricType_SUMMARY
	U = dto.MetricType_UNTYPED
	H = dto.MetricType_HISTOGRAM
)

type upd struct {
	k    Key
	fams []*dto.MetricFamily
}

func TestMerge(t *testing.T) {
	tests := []struct {
		name   string
		opts   Options
		steps  []upd
		retire []Key
		want   map[string]string
	}{
		{
			name: "counters summed per label set, no role/slot",
			steps: []upd{
				{w1, []*dto.MetricFamily{fam("req_total", C, cnt(3, "code", "200"), cnt(1, "code", "500"))}},
				{w2, []*dto.MetricFamily{fam("req_total", C, cnt(4, "code", "200"), cnt(2, "code", "404"))}},
				{agent, []*dto.MetricFamily{fam("req_total", C, cnt(10))}},
			},
			want: map[string]string{
				"req_total{code=200}": "7", "req_total{code=404}": "2", "req_total{code=500}": "1", "req_total{}": "10",
			},
		},
		{
			name: "gauges per slot by default",
			steps: []upd{
				{w1, []*dto.MetricFamily{fam("inflight", G, gau(3, "pool", "a"))}},
				{w2, []*dto.MetricFamily{fam("inflight", G, gau(4, "pool", "a"))}},
				{agent, []*dto.MetricFamily{fam("inflight", G, gau(1, "pool", "b"))}},
			},
			want: map[string]string{
				"inflight{pool=a,role=worker,slot=1}": "3",
				"inflight{pool=a,role=worker,slot=2}": "4",
				"inflight{pool=b,role=agent,slot=0}":  "1",
			},
		},
		{
			name: "gauge sum, min, max",
			opts: Options{Gauges: map[string]Policy{"g_sum": Sum, "g_min": Min, "g_max": Max, "req_total": Max}},
			steps: []upd{
				{w1, []*dto.MetricFamily{fam("g_sum", G, gau(3, "x", "1"), gau(1, "x", "2")), fam("g_min", G, gau(5)), fam("g_max", G, gau(math.NaN())), fam("req_total", C, cnt(1))}},
				{w2, []*dto.MetricFamily{fam("g_sum", G, gau(4, "x", "1")), fam("g_min", G, gau(-2)), fam("g_max", G, gau(7)), fam("req_total", C, cnt(2))}},
				{agent, []*dto.MetricFamily{fam("g_min", G, gau(9)), fam("g_max", G, gau(6))}},
			},
			want: map[string]string{
				"g_sum{x=1}": "7", "g_sum{x=2}": "1", "g_min{}": "-2", "g_max{}": "7",
				"req_total{}": "3", // a policy for a counter is ignored
			},
		},
		{
			name: "summaries and untyped per slot",
			steps: []upd{
				{w1, []*dto.MetricFamily{fam("lat", S, summ(2, 4)), fam("thing", U, untyped(5))}},
				{w2, []*dto.MetricFamily{fam("lat", S, summ(3, 9))}},
			},
			want: map[string]string{
				"lat{role=worker,slot=1}":   "count=2 sum=4",
				"lat{role=worker,slot=2}":   "count=3 sum=9",
				"thing{role=worker,slot=1}": "5",
			},
		},
		{
			name: "classic histograms summed per bound",
			steps: []upd{
				{w1, []*dto.MetricFamily{fam("dur", H, classic(5, 2.5, []float64{0.1, 1}, []uint64{2, 4}))}},
				{w2, []*dto.MetricFamily{fam("dur", H, classic(3, 1.5, []float64{0.1, 1}, []uint64{1, 1}))}},
			},
			want: map[string]string{"dur{}": "count=8 sum=4 le0.1=3 le1=5"},
		},
		{
			name: "classic histograms with different bounds: union, missing bound counts as the next lower one",
			steps: []upd{
				{w1, []*dto.MetricFamily{fam("dur", H, classic(10, 1, []float64{1, 2, math.Inf(1)}, []uint64{3, 6, 10}))}},
				{w2, []*dto.MetricFamily{fam("dur", H, classic(7, 1, []float64{0.5, 2, 5}, []uint64{1, 4, 6}))}},
			},
			// 0.5: 0+1, 1: 3+1, 2: 6+4, 5: 6+6; +Inf is the count.
			want: map[string]string{"dur{}": "count=17 sum=2 le0.5=1 le1=4 le2=10 le5=12"},
		},
		{
			name: "retired counters and histograms stay, gauges and summaries go",
			steps: []upd{
				{w1, []*dto.MetricFamily{fam("req_total", C, cnt(5)), fam("dur", H, classic(2, 1, []float64{1}, []uint64{1})), fam("up", G, gau(1)), fam("lat", S, summ(1, 1))}},
				{w2, []*dto.MetricFamily{fam("req_total", C, cnt(1)), fam("up", G, gau(1))}},
			},
			retire: []Key{w1},
			want: map[string]string{
				"req_total{}":            "6",
				"dur{}":                  "count=2 sum=1 le1=1",
				"up{role=worker,slot=2}": "1",
			},
		},
		{
			name: "a child's own role or slot label is kept, ours become brood_role/brood_slot for the family",
			steps: []upd{
				{w1, []*dto.MetricFamily{fam("pool", G, gau(1, "slot", "a"), gau(2, "other", "b")), fam("free", G, gau(3))}},
				{w2, []*dto.MetricFamily{fam("pool", G, gau(4))}},
			},
			want: map[string]string{
				"pool{brood_role=worker,brood_slot=1,slot=a}":  "1",
				"pool{brood_role=worker,brood_slot=1,other=b}": "2",
				"pool{brood_role=worker,brood_slot=2}":         "4",
				"free{role=worker,slot=1}":                     "3",
			},
		},
		{
			name: "two live processes of one slot: per-slot series from the newest, counters from both",
			steps: []upd{
				{w1, []*dto.MetricFamily{fam("up", G, gau(1)), fam("req_total", C, cnt(5))}},
				{w1b, []*dto.MetricFamily{fam("up", G, gau(2)), fam("req_total", C, cnt(1))}},
			},
			want: map[string]string{"up{role=worker,slot=1}": "2", "req_total{}": "6"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := New(tt.opts)
			for _, u := range tt.steps {
				c.Update(u.k, u.fams)
			}
			for _, k := range tt.retire {
				c.Retire(k)
			}
			got := c.Families()
			equalMaps(t, flat(got), tt.want)
			checkFamilies(t, got)
			if c.Conflicts() != 0 {
				t.Errorf("Conflicts() = %d", c.Conflicts())
			}
		})
	}
}

// checkFamilies checks what every output must satisfy: sorted names, no
// empty family, no created timestamps or exemplars in merged series.
func checkFamilies(t *testing.T, fams []*dto.MetricFamily) {
	t.Helper()
	for i, mf := range fams {
		if i > 0 && fams[i-1].GetName() >= mf.GetName() {
			t.Errorf("families out of order: %s, %s", fams[i-1].GetName(), mf.GetName())
		}
		if len(mf.Metric) == 0 {
			t.Errorf("empty family %s", mf.GetName())
		}
		for _, m := range mf.Metric {
			switch mf.GetType() {
			case C:
				if m.GetCounter().GetCreatedTimestamp() != nil || m.GetCounter().GetExemplar() != nil {
					t.Errorf("%s: merged counter keeps created timestamp or exemplar", mf.GetName())
				}
			case H:
				if m.GetHistogram().GetCreatedTimestamp() != nil {
					t.Errorf("%s: merged histogram keeps created timestamp", mf.GetName())
				}
			case S:
				if m.GetSummary().GetCreatedTimestamp() == nil {
					t.Errorf("%s: per-slot summary lost its created timestamp", mf.GetName())
				}
			}
		}
	}
}

func TestConflicts(t *testing.T) {
	c := New(Options{})
	c.Update(w1, []*dto.MetricFamily{fam("x", C, cnt(1)), fam("y", G, gau(1))})
	c.Update(w2, []*dto.MetricFamily{fam("x", G, gau(5)), fam("y", G, gau(2)), fam("y", G, gau(3))})
	got := flat(c.Families())
	equalMaps(t, got, map[string]string{"x{}": "1", "y{role=worker,slot=1}": "1", "y{role=worker,slot=2}": "2"})
	if n := c.Conflicts(); n != 2 {
		t.Fatalf("Conflicts() = %d, want 2 (a type conflict, a repeated family)", n)
	}
	// Once nothing is left under a name, a new type may take it.
	c.Update(w1, []*dto.MetricFamily{fam("z", G, gau(1))})
	c.Update(w2, []*dto.MetricFamily{fam("y", G, gau(2))})
	c.Families()
	c.Update(w2, []*dto.MetricFamily{fam("x", G, gau(5))})
	equalMaps(t, flat(c.Families()), map[string]string{"x{role=worker,slot=2}": "5", "z{role=worker,slot=1}": "1"})
	// But a retired counter holds its name for good.
	c.Update(w1, []*dto.MetricFamily{fam("k_total", C, cnt(1))})
	c.Retire(w1)
	c.Update(w2, []*dto.MetricFamily{fam("k_total", G, gau(5))})
	equalMaps(t, flat(c.Families()), map[string]string{"k_total{}": "1"})
	if n := c.Conflicts(); n != 3 {
		t.Fatalf("Conflicts() = %d, want 3", n)
	}
}

// A summed counter is never served lower than it was (a child that went
// back within one pid, or float sums added in another order): the cluster
// view never shows a reset. It follows again once the sum passes it.
func TestCounterNeverServedLower(t *testing.T) {
	c := New(Options{})
	c.Update(w1, []*dto.MetricFamily{fam("x_total", C, cnt(10))})
	c.Families()
	c.Update(w1, []*dto.MetricFamily{fam("x_total", C, cnt(4))})
	equalMaps(t, flat(c.Families()), map[string]string{"x_total{}": "10"})
	c.Update(w1, []*dto.MetricFamily{fam("x_total", C, cnt(12))})
	equalMaps(t, flat(c.Families()), map[string]string{"x_total{}": "12"})
}

func TestLateUpdateAfterRetireIgnored(t *testing.T) {
	c := New(Options{})
	c.Update(w1, []*dto.MetricFamily{fam("x_total", C, cnt(10))})
	c.Retire(w1)
	c.Update(w1, []*dto.MetricFamily{fam("x_total", C, cnt(11))}) // crossed the exit
	c.Retire(w1)                                                  // twice: harmless
	equalMaps(t, flat(c.Families()), map[string]string{"x_total{}": "10"})
}

func TestSeriesAndFamiliesForgotten(t *testing.T) {
	c := New(Options{Gauges: map[string]Policy{"s": Sum}})
	c.Update(w1, []*dto.MetricFamily{fam("s", G, gau(1, "a", "1"), gau(1, "a", "2")), fam("x_total", C, cnt(1, "a", "1"), cnt(1, "a", "2"))})
	c.Families()
	c.Update(w1, []*dto.MetricFamily{fam("s", G, gau(1, "a", "1"))})
	equalMaps(t, flat(c.Families()), map[string]string{"s{a=1}": "1"})
	c.mu.Lock()
	ns, nf := len(c.fams["s"].series), len(c.fams)
	c.mu.Unlock()
	if ns != 1 || nf != 1 {
		t.Fatalf("kept %d series of s, %d families; want 1, 1", ns, nf)
	}
}

func TestUnsortedLabelsSameSeries(t *testing.T) {
	c := New(Options{})
	m := cnt(2, "a", "1", "b", "2")
	m.Label[0], m.Label[1] = m.Label[1], m.Label[0]
	c.Update(w1, []*dto.MetricFamily{fam("x_total", C, cnt(1, "a", "1", "b", "2"))})
	c.Update(w2, []*dto.MetricFamily{fam("x_total", C, m)})
	equalMaps(t, flat(c.Families()), map[string]string{"x_total{a=1,b=2}": "3"})
}

// The property: whatever children are killed, replaced and updated (their
// counters only growing within one pid), the merged counters and histogram
// buckets never decrease, and they equal the sum of the retired children's
// last gathered copies plus the live children's current ones.
func TestRetireMonotonicProperty(t *testing.T) {
	type proc struct {
		key      Key
		vals     map[string]float64 // counter value by label value, now
		hcnt     map[string]uint64
		gathered map[string]float64 // what the Cluster last got, by output key
	}
	for seed := uint64(0); seed < 40; seed++ {
		rng := rand.New(rand.NewPCG(seed, 99))
		c := New(Options{})
		pid := 0
		newProc := func(slot int) *proc {
			pid++
			role := "worker"
			if slot == 0 {
				role = "agent"
			}
			return &proc{key: Key{role, slot, pid}, vals: map[string]float64{}, hcnt: map[string]uint64{}}
		}
		procs := []*proc{newProc(0), newProc(1), newProc(2), newProc(3)}
		retired := map[string]float64{}
		prev := map[string]float64{}
		update := func(p *proc) {
			var cs, hs []*dto.Metric
			p.gathered = map[string]float64{}
			for l, v := range p.vals {
				cs = append(cs, cnt(v, "l", l))
				p.gathered["c_total/"+l] = v
			}
			for l, n := range p.hcnt {
				hs = append(hs, classic(n, float64(n), []float64{1, 10}, []uint64{n / 3, n / 2}, "l", l))
				p.gathered["h/"+l] = float64(n)
				p.gathered["h/"+l+"/1"] = float64(n / 3)
				p.gathered["h/"+l+"/10"] = float64(n / 2)
			}
			c.Update(p.key, []*dto.MetricFamily{fam("c_total", C, cs...), fam("h", H, hs...)})
		}
		retire := func(i int) {
			p := procs[i]
			c.Retire(p.key)
			for k, v := range p.gathered {
				retired[k] += v
			}
			procs[i] = newProc(p.key.Slot)
		}
		for step := 0; step < 300; step++ {
			i := rng.IntN(len(procs))
			p := procs[i]
			switch r := rng.IntN(10); {
			case r < 6: // work, then a gather
				for range rng.IntN(4) {
					l := string(rune('a' + rng.IntN(6)))
					p.vals[l] += float64(rng.IntN(5))
					p.hcnt[l] += uint64(rng.IntN(7))
				}
				update(p)
			case r < 8: // killed outright: what it counted since its last gather is lost
				for range rng.IntN(3) {
					p.vals["a"]++
				}
				retire(i)
			default: // stopped gracefully: one last gather, then retired
				p.vals["b"]++
				update(p)
				retire(i)
			}
			want := map[string]float64{}
			for k, v := range retired {
				want[k] += v
			}
			for _, p := range procs {
				for k, v := range p.gathered {
					want[k] += v
				}
			}
			cur := map[string]float64{}
			for _, mf := range c.Families() {
				for _, m := range mf.Metric {
					k := mf.GetName() + "/" + m.Label[0].GetValue()
					switch mf.GetType() {
					case C:
						cur[k] = m.GetCounter().GetValue()
					case H:
						h := m.GetHistogram()
						cur[k] = float64(h.GetSampleCount())
						for _, b := range h.Bucket {
							cur[k+"/"+strconv.FormatFloat(b.GetUpperBound(), 'g', -1, 64)] = float64(b.GetCumulativeCount())
						}
					}
				}
			}
			for k, v := range prev {
				if cur[k] < v {
					t.Fatalf("seed %d step %d: %s went down %v → %v", seed, step, k, v, cur[k])
				}
			}
			for k, v := range want {
				if cur[k] != v {
					t.Fatalf("seed %d step %d: %s = %v, want %v", seed, step, k, cur[k], v)
				}
			}
			prev = cur
		}
	}
}

func TestConcurrentUse(t *testing.T) {
	c := New(Options{Gauges: map[string]Policy{"g": Max}})
	done := make(chan struct{})
	for w := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range 200 {
				k := Key{"worker", w + 1, 1000*w + i/50}
				c.Update(k, []*dto.MetricFamily{fam("x_total", C, cnt(float64(i))), fam("g", G, gau(float64(i)))})
				if i%50 == 49 {
					c.Retire(k)
				}
			}
		}()
	}
	go func() {
		defer func() { done <- struct{}{} }()
		for range 200 {
			c.Families()
			c.Conflicts()
		}
	}()
	for range 5 {
		<-done
	}
	// Each worker retires four pids, last at 49, 99, 149, 199: 4 × 496.
	equalMaps(t, flat(c.Families()), map[string]string{"x_total{}": "1984"})
}
