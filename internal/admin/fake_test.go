package admin

import (
	"sync"
	"time"

	"github.com/brood-go/brood/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
)

// fakeSource is a Source whose status, health, events and metrics a test
// sets. Events get consecutive Seqs from 1; a subscriber that falls more than
// subBuffer events behind is closed, as the master does.
type fakeSource struct {
	mu       sync.Mutex
	status   wire.Status
	live     bool
	liveWhy  string
	ready    bool
	readyWhy string
	gatherer prometheus.Gatherer
	events   []wire.Event
	subs     map[int]chan wire.Event
	nextSub  int
	done     chan struct{}
	stopOnce sync.Once
}

const subBuffer = 64

func newFakeSource() *fakeSource {
	return &fakeSource{
		live:     true,
		ready:    true,
		gatherer: prometheus.NewRegistry(),
		subs:     map[int]chan wire.Event{},
		done:     make(chan struct{}),
	}
}

func (f *fakeSource) Status() wire.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.status
	s.Processes = append([]wire.Process(nil), s.Processes...)
	return s
}

func (f *fakeSource) SetStatus(s wire.Status) {
	f.mu.Lock()
	f.status = s
	f.mu.Unlock()
}

// UpdateStatus changes the status under the lock.
func (f *fakeSource) UpdateStatus(fn func(*wire.Status)) {
	f.mu.Lock()
	fn(&f.status)
	f.mu.Unlock()
}

func (f *fakeSource) Live() (bool, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.live, f.liveWhy
}

func (f *fakeSource) Ready() (bool, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ready, f.readyWhy
}

func (f *fakeSource) SetHealth(live bool, liveWhy string, ready bool, readyWhy string) {
	f.mu.Lock()
	f.live, f.liveWhy, f.ready, f.readyWhy = live, liveWhy, ready, readyWhy
	f.mu.Unlock()
}

func (f *fakeSource) Gatherer() prometheus.Gatherer {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.gatherer
}

func (f *fakeSource) Done() <-chan struct{} { return f.done }

// Stop closes Done, as the master does when it stops.
func (f *fakeSource) Stop() { f.stopOnce.Do(func() { close(f.done) }) }

// Publish keeps e with the next Seq (and a time if it has none) and sends it
// to every subscriber; it returns the Seq.
func (f *fakeSource) Publish(e wire.Event) uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	e.Seq = uint64(len(f.events)) + 1
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	f.events = append(f.events, e)
	for id, ch := range f.subs {
		select {
		case ch <- e:
		default: // fell behind
			close(ch)
			delete(f.subs, id)
		}
	}
	return e.Seq
}

func (f *fakeSource) Subscribe(seq uint64) ([]wire.Event, <-chan wire.Event, func()) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var past []wire.Event
	for _, e := range f.events {
		if e.Seq > seq {
			past = append(past, e)
		}
	}
	ch := make(chan wire.Event, subBuffer)
	id := f.nextSub
	f.nextSub++
	f.subs[id] = ch
	var once sync.Once
	return past, ch, func() {
		once.Do(func() {
			f.mu.Lock()
			defer f.mu.Unlock()
			if c, ok := f.subs[id]; ok {
				close(c)
				delete(f.subs, id)
			}
		})
	}
}

// Subscribers is how many subscriptions are open.
func (f *fakeSource) Subscribers() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.subs)
}

// EndSubscriptions closes every subscriber's channel.
func (f *fakeSource) EndSubscriptions() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for id, ch := range f.subs {
		close(ch)
		delete(f.subs, id)
	}
}
