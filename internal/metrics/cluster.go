package metrics

import (
	"cmp"
	"encoding/binary"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"

	dto "github.com/prometheus/client_model/go"
)

// Key names one child process: its role ("agent", "worker"), its slot (worker
// id 1..N, 0 for the agent) and pid.
type Key struct {
	Role string
	Slot int
	PID  int
}

// Policy says how a gauge is merged across the cluster.
type Policy int

const (
	// PerSlot (the default) keeps one series per process, with labels role
	// and slot added.
	PerSlot Policy = iota
	// Sum adds the children's values per label set.
	Sum
	// Min takes the smallest value per label set (NaN only if all are NaN).
	Min
	// Max takes the largest value per label set (NaN only if all are NaN).
	Max
)

func (p Policy) String() string {
	switch p {
	case PerSlot:
		return "per-slot"
	case Sum:
		return "sum"
	case Min:
		return "min"
	case Max:
		return "max"
	}
	return "Policy(" + strconv.Itoa(int(p)) + ")"
}

// Options configures a Cluster.
type Options struct {
	// Gauges gives the merge policy of gauge families, by family name.
	// Families not listed, and policies for families that are not gauges,
	// are PerSlot / ignored.
	Gauges map[string]Policy
}

// Label names added to per-process series. When a family's own series
// already carry one of them, that family uses brood_role / brood_slot
// (prefixing "brood_" again as long as the name is taken) instead: the
// program's labels are never renamed or overwritten.
const (
	RoleLabel = "role"
	SlotLabel = "slot"
)

// How many retired keys are remembered, so that a late gather of a retired
// child (an answer that crossed its exit) does not bring it back.
const tombstones = 4096

type kind uint8

const (
	kindSum     kind = iota // counters and histograms: summed, retained in the base
	kindAgg                 // gauges with Sum/Min/Max: merged over the live children
	kindPerSlot             // one series per child, labels role and slot added
)

// Cluster merges the metric families gathered from the children of a
// cluster. Safe for concurrent use.
type Cluster struct {
	mu       sync.Mutex
	policies map[string]Policy

	children   map[Key]*child
	order      []*child // children by role, slot, newest first
	orderDirty bool
	born       uint64

	fams       map[string]*family
	names      []string // sorted family names
	namesDirty bool

	retired   map[Key]struct{}
	retiredQ  []Key
	conflicts uint64
	gen       uint64 // bumped by every Families
	upd       uint64 // bumped by every Update
	buf       []byte // label-set key scratch
	lps       []*dto.LabelPair
}

type child struct {
	key    Key
	born   uint64
	fams   []childFam
	roleV  string
	slotV  string
	labels map[[2]string]*[2]*dto.LabelPair // role/slot pairs by label names
}

type childFam struct {
	f     *family
	src   *dto.MetricFamily
	ser   []*series // kindSum / kindAgg: the merged series of each metric
	names []string  // kindPerSlot: the distinct label names the child uses
}

type family struct {
	name, help, unit string
	typ              dto.MetricType
	kind             kind
	policy           Policy

	series map[string]*series
	sorted []*series
	dirty  bool

	refs  int    // live children's copies of this family
	nbase int    // series with a retained base
	upd   uint64 // last Update that saw it (duplicate detection)

	gen     uint64 // last Families that saw a live copy
	members []member
}

type member struct {
	ch *child
	cf *childFam
}

type series struct {
	key    string
	labels []*dto.LabelPair

	hasBase bool
	base    float64
	hbase   *hacc

	gen uint64
	cur float64
	n   int // contributions this generation (gauges)
	// shown is the value a summed counter was last served with: it is never
	// served lower, so float rounding (the same values added in another order
	// once a child retires) cannot look like a counter reset.
	shown float64
	h     *hacc
}

// New returns an empty Cluster.
func New(opts Options) *Cluster {
	p := make(map[string]Policy, len(opts.Gauges))
	for k, v := range opts.Gauges {
		p[k] = v
	}
	return &Cluster{
		policies: p,
		children: make(map[Key]*child),
		fams:     make(map[string]*family),
		retired:  make(map[Key]struct{}),
	}
}

// Conflicts returns how many family copies were dropped so far because
// their type differed from the type the cluster first saw under that name,
// or because a gather carried the same family name twice.
func (c *Cluster) Conflicts() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.conflicts
}

// Update records a fresh gather of child k, replacing its previous copy.
// The families are kept, not copied: the caller must not modify them after
// the call. An Update of a key that was retired (among the last 4096) is
// ignored: it is a gather that crossed the child's exit.
func (c *Cluster) Update(k Key, fams []*dto.MetricFamily) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.retired[k]; ok {
		return
	}
	c.upd++
	old := c.children[k]
	ch := &child{key: k, roleV: k.Role, slotV: strconv.Itoa(k.Slot)}
	if old != nil {
		ch.born, ch.labels = old.born, old.labels
	} else {
		c.born++
		ch.born = c.born
		c.orderDirty = true
	}
	if old != nil {
		// Released first, so that a family only this child had may change type.
		for _, cf := range old.fams {
			cf.f.refs--
		}
	}
	ch.fams = make([]childFam, 0, len(fams))
	for _, mf := range fams {
		if mf == nil || mf.GetName() == "" {
			continue
		}
		if _, ok := dto.MetricType_name[int32(mf.GetType())]; !ok {
			c.conflicts++ // no encoder could write it
			continue
		}
		f := c.family(mf)
		if f == nil || f.upd == c.upd {
			c.conflicts++
			continue
		}
		f.upd = c.upd
		cf := childFam{f: f, src: mf}
		if f.kind == kindPerSlot {
			cf.names = labelNames(mf.Metric)
		} else {
			cf.ser = make([]*series, len(mf.Metric))
			for i, m := range mf.Metric {
				if m != nil {
					cf.ser[i] = c.lookup(f, m)
				}
			}
		}
		f.refs++
		ch.fams = append(ch.fams, cf)
	}
	c.children[k] = ch
	if !c.orderDirty {
		for i, o := range c.order {
			if o == old {
				c.order[i] = ch
			}
		}
	}
}

// family returns the family for mf, creating it, or nil when mf's type
// conflicts with the family's.
func (c *Cluster) family(mf *dto.MetricFamily) *family {
	name := mf.GetName()
	f := c.fams[name]
	if f != nil {
		if f.typ == mf.GetType() {
			return f
		}
		if f.refs > 0 || f.nbase > 0 {
			return nil
		}
		// Nothing left of the old family: the name is free again.
	} else {
		c.namesDirty = true
	}
	f = &family{
		name:   name,
		help:   mf.GetHelp(),
		unit:   mf.GetUnit(),
		typ:    mf.GetType(),
		series: make(map[string]*series),
	}
	switch f.typ {
	case dto.MetricType_COUNTER, dto.MetricType_HISTOGRAM:
		f.kind = kindSum
	case dto.MetricType_GAUGE:
		f.policy = c.policies[name]
		if f.policy == Sum || f.policy == Min || f.policy == Max {
			f.kind = kindAgg
		} else {
			f.policy, f.kind = PerSlot, kindPerSlot
		}
	default: // summaries, untyped, gauge histograms
		f.kind = kindPerSlot
	}
	c.fams[name] = f
	return f
}

// lookup returns the merged series of m's label set in f, creating it. The
// label-set key is built in a reused buffer, so finding an existing series
// does not allocate.
func (c *Cluster) lookup(f *family, m *dto.Metric) *series {
	lps := m.Label
	if !labelsSorted(lps) {
		c.lps = append(c.lps[:0], lps...)
		slices.SortStableFunc(c.lps, func(a, b *dto.LabelPair) int { return strings.Compare(a.GetName(), b.GetName()) })
		lps = c.lps
	}
	b := c.buf[:0]
	for _, lp := range lps {
		if lp == nil {
			continue
		}
		b = binary.AppendUvarint(b, uint64(len(lp.GetName())))
		b = append(b, lp.GetName()...)
		b = binary.AppendUvarint(b, uint64(len(lp.GetValue())))
		b = append(b, lp.GetValue()...)
	}
	c.buf = b
	if s := f.series[string(b)]; s != nil {
		return s
	}
	s := &series{key: string(b), labels: make([]*dto.LabelPair, 0, len(lps))}
	pairs := make([]dto.LabelPair, len(lps))
	for i, lp := range lps {
		if lp == nil {
			continue
		}
		pairs[i].Name, pairs[i].Value = new(lp.GetName()), new(lp.GetValue())
		s.labels = append(s.labels, &pairs[i])
	}
	f.series[s.key] = s
	f.dirty = true
	return s
}

func labelsSorted(lps []*dto.LabelPair) bool {
	for i := 1; i < len(lps); i++ {
		if lps[i].GetName() < lps[i-1].GetName() {
			return false
		}
	}
	return true
}

// labelNames returns the distinct label names of ms.
func labelNames(ms []*dto.Metric) []string {
	var names []string
	for _, m := range ms {
		if m == nil {
			continue
		}
	next:
		for _, lp := range m.Label {
			n := lp.GetName()
			for _, o := range names {
				if o == n {
					continue next
				}
			}
			names = append(names, n)
		}
	}
	return names
}

// Retire folds the last copy of child k into the retained base and forgets
// k: its counters and histograms (classic and native) keep counting in the
// merged view after it is gone; its gauges and summaries disappear.
func (c *Cluster) Retire(k Key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.retired[k]; !ok {
		if len(c.retiredQ) == tombstones {
			delete(c.retired, c.retiredQ[0])
			c.retiredQ = append(c.retiredQ[:0], c.retiredQ[1:]...)
		}
		c.retired[k] = struct{}{}
		c.retiredQ = append(c.retiredQ, k)
	}
	ch := c.children[k]
	if ch == nil {
		return
	}
	delete(c.children, k)
	c.orderDirty = true
	for _, cf := range ch.fams {
		f := cf.f
		f.refs--
		if f.kind != kindSum {
			continue
		}
		for i, m := range cf.src.Metric {
			s := cf.ser[i]
			if s == nil {
				continue
			}
			if !s.hasBase {
				s.hasBase = true
				f.nbase++
			}
			if f.typ == dto.MetricType_COUNTER {
				s.base += m.GetCounter().GetValue()
			} else {
				if s.hbase == nil {
					s.hbase = new(hacc)
				}
				s.hbase.add(m.GetHistogram())
			}
		}
	}
}

func (c *Cluster) sortedChildren() []*child {
	if c.orderDirty {
		c.order = c.order[:0]
		for _, ch := range c.children {
			c.order = append(c.order, ch)
		}
		slices.SortFunc(c.order, func(a, b *child) int {
			if r := cmp.Compare(a.key.Role, b.key.Role); r != 0 {
				return r
			}
			if r := cmp.Compare(a.key.Slot, b.key.Slot); r != 0 {
				return r
			}
			return cmp.Compare(b.born, a.born)
		})
		c.orderDirty = false
	}
	return c.order
}

// Families returns the merged view, sorted by name, ready for
// expfmt/promhttp:
//   - counters and histograms: summed over the live children and the base,
//     per distinct label set (labels as the children report them, no
//     role/slot added), without created timestamps, exemplars or sample
//     timestamps (the cluster series has no single creation);
//   - gauges: PerSlot → each child's series with labels role and slot
//     added; Sum/Min/Max → merged per label set without role/slot;
//   - summaries, untyped and gauge histograms: per child with role and slot
//     added (quantiles cannot be merged);
//   - a family whose type differs between children: the first type seen
//     wins; conflicting copies are dropped and counted (Conflicts()).
//
// Per-child series are the children's own metrics (created timestamps,
// exemplars kept) with the two labels added. When two live children share a
// role and slot (a replacement overlapping the process it replaces), the
// per-child series of the newest one only are served, so that no series
// appears twice. Families without any series are left out.
//
// The result shares immutable parts with the stored copies: treat it as
// read-only.
func (c *Cluster) Families() []*dto.MetricFamily {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.gen++
	gen := c.gen
	for _, ch := range c.sortedChildren() {
		for i := range ch.fams {
			cf := &ch.fams[i]
			f := cf.f
			if f.gen != gen {
				f.gen = gen
				f.members = f.members[:0]
			}
			switch f.kind {
			case kindPerSlot:
				f.members = append(f.members, member{ch, cf})
			case kindSum:
				if f.typ == dto.MetricType_COUNTER {
					for j, m := range cf.src.Metric {
						if s := cf.ser[j]; s != nil {
							s.touch(gen, false)
							s.cur += m.GetCounter().GetValue()
						}
					}
				} else {
					for j, m := range cf.src.Metric {
						if s := cf.ser[j]; s != nil {
							s.touch(gen, true)
							s.h.add(m.GetHistogram())
						}
					}
				}
			case kindAgg:
				for j, m := range cf.src.Metric {
					if s := cf.ser[j]; s != nil {
						s.touch(gen, false)
						s.gauge(f.policy, m.GetGauge().GetValue())
					}
				}
			}
		}
	}

	if c.namesDirty {
		c.names = c.names[:0]
		for n := range c.fams {
			c.names = append(c.names, n)
		}
		slices.Sort(c.names)
		c.namesDirty = false
	}
	out := make([]*dto.MetricFamily, 0, len(c.names))
	for _, name := range c.names {
		f := c.fams[name]
		if f.gen != gen && f.nbase == 0 && f.refs == 0 {
			delete(c.fams, name)
			c.namesDirty = true
			continue
		}
		var mf *dto.MetricFamily
		if f.kind == kindPerSlot {
			mf = c.perSlot(f, gen)
		} else {
			mf = f.merged(gen)
		}
		if mf != nil {
			out = append(out, mf)
		}
	}
	return out
}

// touch starts the series' accumulation for generation gen from its base.
func (s *series) touch(gen uint64, hist bool) {
	if s.gen == gen {
		return
	}
	s.gen, s.n = gen, 0
	s.cur = s.base
	if hist {
		if s.h == nil {
			s.h = new(hacc)
		}
		if s.hasBase && s.hbase != nil {
			s.h.copyFrom(s.hbase)
		} else {
			s.h.reset()
		}
	}
}

func (s *series) gauge(p Policy, v float64) {
	s.n++
	if s.n == 1 {
		s.cur = v
		return
	}
	switch p {
	case Sum:
		s.cur += v
	case Min:
		if v < s.cur || math.IsNaN(s.cur) {
			s.cur = v
		}
	case Max:
		if v > s.cur || math.IsNaN(s.cur) {
			s.cur = v
		}
	}
}

func newFamily(f *family, n int) *dto.MetricFamily {
	mf := &dto.MetricFamily{Name: new(f.name), Type: new(f.typ), Metric: make([]*dto.Metric, 0, n)}
	if f.help != "" {
		mf.Help = new(f.help)
	}
	if f.unit != "" {
		mf.Unit = new(f.unit)
	}
	return mf
}

// merged renders a summed or aggregated family, dropping the series nobody
// contributes to any more.
func (f *family) merged(gen uint64) *dto.MetricFamily {
	if f.dirty {
		f.sorted = f.sorted[:0]
		for _, s := range f.series {
			f.sorted = append(f.sorted, s)
		}
		slices.SortFunc(f.sorted, func(a, b *series) int { return compareLabels(a.labels, b.labels) })
		f.dirty = false
	}
	mf := newFamily(f, len(f.sorted))
	ms := make([]dto.Metric, len(f.sorted))
	var vals []float64
	if f.typ != dto.MetricType_HISTOGRAM {
		vals = make([]float64, len(f.sorted))
	}
	var counters []dto.Counter
	var gauges []dto.Gauge
	switch f.typ {
	case dto.MetricType_COUNTER:
		counters = make([]dto.Counter, len(f.sorted))
	case dto.MetricType_GAUGE:
		gauges = make([]dto.Gauge, len(f.sorted))
	}
	n := 0
	for _, s := range f.sorted {
		live := s.gen == gen
		if !live && !s.hasBase {
			delete(f.series, s.key)
			f.dirty = true
			continue
		}
		m := &ms[n]
		m.Label = s.labels
		switch f.typ {
		case dto.MetricType_COUNTER:
			vals[n] = s.base
			if live {
				vals[n] = s.cur
			}
			vals[n] = max(vals[n], s.shown)
			s.shown = vals[n]
			counters[n].Value = &vals[n]
			m.Counter = &counters[n]
		case dto.MetricType_GAUGE:
			vals[n] = s.cur
			gauges[n].Value = &vals[n]
			m.Gauge = &gauges[n]
		case dto.MetricType_HISTOGRAM:
			if live {
				m.Histogram = s.h.histogram()
			} else {
				m.Histogram = s.hbase.histogram()
			}
		}
		mf.Metric = append(mf.Metric, m)
		n++
	}
	if n == 0 {
		return nil
	}
	return mf
}

func compareLabels(a, b []*dto.LabelPair) int {
	for i := 0; i < len(a) && i < len(b); i++ {
		if r := strings.Compare(a[i].GetName(), b[i].GetName()); r != 0 {
			return r
		}
		if r := strings.Compare(a[i].GetValue(), b[i].GetValue()); r != 0 {
			return r
		}
	}
	return cmp.Compare(len(a), len(b))
}

// perSlot renders a family served per child, with the role and slot labels
// added.
func (c *Cluster) perSlot(f *family, gen uint64) *dto.MetricFamily {
	if f.gen != gen || len(f.members) == 0 {
		return nil
	}
	roleName, slotName := RoleLabel, SlotLabel
	taken := func(n string) bool {
		for _, mb := range f.members {
			if slices.Contains(mb.cf.names, n) {
				return true
			}
		}
		return false
	}
	for taken(roleName) || taken(slotName) {
		roleName, slotName = "brood_"+roleName, "brood_"+slotName
	}
	total, nlabels := 0, 0
	for _, mb := range f.members {
		total += len(mb.cf.src.Metric)
		for _, m := range mb.cf.src.Metric {
			nlabels += len(m.GetLabel()) + 2
		}
	}
	mf := newFamily(f, total)
	ms := make([]dto.Metric, total)
	lbuf := make([]*dto.LabelPair, 0, nlabels) // carved into each metric's labels
	n := 0
	var prev *child
	for _, mb := range f.members {
		if prev != nil && prev.key.Role == mb.ch.key.Role && prev.key.Slot == mb.ch.key.Slot {
			continue // an older process of the same slot: the newest one is served
		}
		prev = mb.ch
		pair := mb.ch.pairs(roleName, slotName)
		for _, src := range mb.cf.src.Metric {
			if src == nil {
				continue
			}
			m := &ms[n]
			n++
			m.Label, lbuf = withLabels(lbuf, src.Label, pair)
			m.Gauge, m.Summary, m.Untyped, m.Histogram = src.Gauge, src.Summary, src.Untyped, src.Histogram
			m.Counter, m.TimestampMs = src.Counter, src.TimestampMs
			mf.Metric = append(mf.Metric, m)
		}
	}
	if n == 0 {
		return nil
	}
	return mf
}

// pairs returns the child's role and slot label pairs under the given names,
// created once per child and name choice.
func (ch *child) pairs(roleName, slotName string) *[2]*dto.LabelPair {
	k := [2]string{roleName, slotName}
	if p := ch.labels[k]; p != nil {
		return p
	}
	if ch.labels == nil {
		ch.labels = make(map[[2]string]*[2]*dto.LabelPair)
	}
	p := &[2]*dto.LabelPair{
		{Name: new(roleName), Value: new(ch.roleV)},
		{Name: new(slotName), Value: new(ch.slotV)},
	}
	ch.labels[k] = p
	return p
}

// withLabels appends lps with the two pairs inserted (keeping the order by
// name when lps is in that order) to buf, and returns them as a slice of
// their own capacity, and buf.
func withLabels(buf, lps []*dto.LabelPair, add *[2]*dto.LabelPair) ([]*dto.LabelPair, []*dto.LabelPair) {
	start := len(buf)
	a := add[:]
	if a[1].GetName() < a[0].GetName() {
		a = []*dto.LabelPair{a[1], a[0]}
	}
	for _, lp := range lps {
		for len(a) > 0 && a[0].GetName() < lp.GetName() {
			buf = append(buf, a[0])
			a = a[1:]
		}
		buf = append(buf, lp)
	}
	buf = append(buf, a...)
	return buf[start:len(buf):len(buf)], buf
}
