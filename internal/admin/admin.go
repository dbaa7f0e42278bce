// Package admin is the master's admin listener (Config.Admin): Prometheus
// metrics for the whole cluster, health endpoints, the lifecycle event stream
// and a live dashboard. It serves what a Source (the master) tells it and
// holds no cluster state of its own.
//
//	GET /          the dashboard: one self-contained page (embedded assets)
//	GET /status    the cluster's status as JSON (wire.Status)
//	GET /events    Server-Sent Events: every lifecycle event (wire.Event as
//	               JSON in the data field, its Seq as the id); ?json answers the
//	               kept events as one JSON array instead; Last-Event-ID or
//	               ?since=SEQ resumes after that event
//	GET /metrics   Prometheus exposition (promhttp content negotiation)
//	GET /livez     200 while the master's loop runs and its children answer heartbeats
//	GET /readyz    200 only while the cluster is up; 503 during start and from the
//	               first instant of a stop
package admin

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"strings"
	"time"

	"github.com/brood-go/brood/internal/aside"
	"github.com/brood-go/brood/internal/wire"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
)

// Source is what the admin listener serves: the master.
type Source interface {
	// Status is the cluster's status (as `status --json`).
	Status() wire.Status
	// Subscribe returns the kept events after seq, a channel of the later
	// ones, and a function that ends the subscription. The channel is closed
	// when the subscription ends or the subscriber falls too far behind.
	Subscribe(seq uint64) (past []wire.Event, ch <-chan wire.Event, cancel func())
	// Live reports whether the master's loop runs and its children answer
	// heartbeats; Ready whether the cluster is up. Each returns why not.
	Live() (bool, string)
	Ready() (bool, string)
	// Gatherer gathers the cluster's metrics: the master's own and every
	// child's, merged. It is called once per scrape, with the scrape's context
	// carried by the request: a Gatherer that also implements ContextGatherer
	// is asked through GatherContext with the request's context.
	Gatherer() prometheus.Gatherer
	// Done is closed when the master stops: streams end.
	Done() <-chan struct{}
}

// ContextGatherer is a Gatherer that can bound its work by the scrape's
// context (the client going away, a scrape deadline). /metrics uses it when
// Source.Gatherer returns one.
type ContextGatherer interface {
	GatherContext(ctx context.Context) ([]*dto.MetricFamily, error)
}

// Options configure Handler.
type Options struct {
	// Name is the application's name, shown in the dashboard's title.
	Name string
	// Logger receives what the handler cannot tell a client: metrics that
	// failed to gather, a status that did not encode. Nil discards.
	Logger *slog.Logger
}

const (
	// heartbeat is how often an idle event stream gets a comment line, so
	// that proxies and load balancers keep it open.
	heartbeat = 15 * time.Second
	// streamWriteTimeout bounds each write to an event stream: a client that
	// stops reading is dropped instead of holding a subscription forever. It
	// also lifts any WriteTimeout of the http.Server for the stream.
	streamWriteTimeout = 30 * time.Second
)

type server struct {
	src       Source
	log       *slog.Logger
	heartbeat time.Duration
	page      []byte
	pageCSP   string
}

// Handler serves the admin endpoints for src.
func Handler(src Source, opts Options) http.Handler {
	return newHandler(src, opts, heartbeat)
}

func newHandler(src Source, opts Options, hb time.Duration) http.Handler {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &server{src: src, log: log, heartbeat: hb}
	s.page, s.pageCSP = buildPage(opts.Name)

	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", s.dashboard)
	mux.HandleFunc("GET /status", s.status)
	mux.HandleFunc("GET /livez", s.health(src.Live, "not live"))
	mux.HandleFunc("GET /readyz", s.health(src.Ready, "not ready"))
	mux.HandleFunc("GET /metrics", s.metrics)
	mux.HandleFunc("GET /events", s.events)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		mux.ServeHTTP(w, r)
	})
}

func (s *server) dashboard(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("Content-Security-Policy", s.pageCSP)
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Frame-Options", "DENY")
	w.Write(s.page)
}

func (s *server) status(w http.ResponseWriter, r *http.Request) {
	st := s.src.Status()
	b, err := json.Marshal(st)
	if err != nil && st.Schedules != nil {
		// The agent's schedule table is passed through as it came; a broken
		// one must not take the rest of the status with it.
		s.log.Warn("admin: status: schedules do not encode; serving the status without them", "err", err)
		st.Schedules = nil
		b, err = json.Marshal(st)
	}
	if err != nil {
		s.log.Error("admin: status does not encode", "err", err)
		http.Error(w, "status does not encode", http.StatusInternalServerError)
		return
	}
	writeJSON(w, b)
}

func writeJSON(w http.ResponseWriter, b []byte) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	w.Write(append(b, '\n'))
}

// health answers 200 "ok" or 503 with the reason check gives, as plain text.
func (s *server) health(check func() (bool, string), fallback string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/plain; charset=utf-8")
		h.Set("Cache-Control", "no-store")
		ok, why := check()
		if ok {
			w.Write([]byte("ok\n"))
			return
		}
		why = strings.TrimSpace(why)
		if why == "" {
			why = fallback
		}
		w.WriteHeader(http.StatusServiceUnavailable)
		w.Write([]byte(why + "\n"))
	}
}

// metrics serves /metrics: it gathers the cluster's metrics (the master
// decodes the children's at low priority), then writes the exposition out
// at low priority too if that is done within exposeIdleFor, else at
// normal priority (aside.IdleBy), into memory, and sends it.
func (s *server) metrics(w http.ResponseWriter, r *http.Request) {
	mfs, err := safeGatherer{ctx: r.Context(), g: s.src.Gatherer(), log: s.log}.Gather()
	h := promhttp.HandlerFor(gathered{mfs, err}, promhttp.HandlerOpts{
		// A child that failed to answer (or a collector that failed) costs
		// its own series, never the scrape: serve what was gathered.
		ErrorHandling: promhttp.ContinueOnError,
		ErrorLog:      promLogger{s.log},
	})
	aside.IdleBy(time.Now().Add(exposeIdleFor), func() *recorded {
		rec := &recorded{header: http.Header{}}
		h.ServeHTTP(rec, r)
		return rec
	}).sendTo(w)
}

// exposeIdleFor is how long /metrics waits for its exposition to be written
// at low priority before it writes it at normal priority.
const exposeIdleFor = 500 * time.Millisecond

// gathered is a gather already made, served as it is.
type gathered struct {
	mfs []*dto.MetricFamily
	err error
}

func (g gathered) Gather() ([]*dto.MetricFamily, error) { return g.mfs, g.err }

// recorded is a response written into memory, to be sent once complete.
type recorded struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (r *recorded) Header() http.Header { return r.header }

func (r *recorded) WriteHeader(status int) {
	if r.status == 0 {
		r.status = status
	}
}

func (r *recorded) Write(b []byte) (int, error) {
	r.WriteHeader(http.StatusOK)
	return r.body.Write(b)
}

func (r *recorded) sendTo(w http.ResponseWriter) {
	maps.Copy(w.Header(), r.header)
	w.WriteHeader(cmp.Or(r.status, http.StatusOK))
	w.Write(r.body.Bytes())
}

// safeGatherer calls the scrape's gatherer with the request's context when it
// takes one, and turns a nil gatherer or a panic into a gather error, so that
// nothing a gatherer does fails the scrape: promhttp's ContinueOnError still
// answers 500 when an error leaves no family at all, so that case is logged
// here and served as an empty exposition.
type safeGatherer struct {
	ctx context.Context
	g   prometheus.Gatherer
	log *slog.Logger
}

func (s safeGatherer) Gather() ([]*dto.MetricFamily, error) {
	mfs, err := s.gather()
	if err != nil && len(mfs) == 0 {
		s.log.Warn("admin: metrics scrape: nothing gathered", "err", err)
		return nil, nil
	}
	return mfs, err
}

func (s safeGatherer) gather() (mfs []*dto.MetricFamily, err error) {
	defer func() {
		if p := recover(); p != nil {
			mfs, err = nil, fmt.Errorf("gatherer panicked: %v", p)
		}
	}()
	switch g := s.g.(type) {
	case nil:
		return nil, fmt.Errorf("no gatherer")
	case ContextGatherer:
		return g.GatherContext(s.ctx)
	default:
		return g.Gather()
	}
}

type promLogger struct{ log *slog.Logger }

func (p promLogger) Println(v ...any) {
	p.log.Warn("admin: metrics scrape", "err", strings.TrimSpace(fmt.Sprintln(v...)))
}
