package metrics

// Temporary stand-in for the merger being built on its own branch: the lead
// integrates against this API. Removed when that branch merges.

import (
	"bytes"
	"errors"
	"io"
	"sync"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

type Key struct {
	Role string
	Slot int
	PID  int
}

type Policy int

const (
	PerSlot Policy = iota
	Sum
	Min
	Max
)

type Options struct{ Gauges map[string]Policy }

type Cluster struct {
	mu   sync.Mutex
	live map[Key][]*dto.MetricFamily
}

func New(opts Options) *Cluster { return &Cluster{live: map[Key][]*dto.MetricFamily{}} }

func (c *Cluster) Update(k Key, fams []*dto.MetricFamily) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.live[k] = fams
}

func (c *Cluster) Retire(k Key) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.live, k)
}

func (c *Cluster) Families() []*dto.MetricFamily {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []*dto.MetricFamily
	for _, f := range c.live {
		out = append(out, f...)
	}
	return out
}

func (c *Cluster) Conflicts() uint64 { return 0 }

func Encode(fams []*dto.MetricFamily) ([]byte, error) {
	var b bytes.Buffer
	enc := expfmt.NewEncoder(&b, expfmt.NewFormat(expfmt.TypeProtoDelim))
	for _, f := range fams {
		if err := enc.Encode(f); err != nil {
			return nil, err
		}
	}
	return b.Bytes(), nil
}

func Decode(b []byte, limit int) ([]*dto.MetricFamily, error) {
	if len(b) > limit {
		return nil, errors.New("metrics: too large")
	}
	dec := expfmt.NewDecoder(bytes.NewReader(b), expfmt.NewFormat(expfmt.TypeProtoDelim))
	var out []*dto.MetricFamily
	for {
		var f dto.MetricFamily
		if err := dec.Decode(&f); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, err
		}
		out = append(out, &f)
	}
}
