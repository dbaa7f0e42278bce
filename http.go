package brood

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// drainIdleGrace bounds how long a draining worker waits for an idle
// keep-alive connection to bring its next request (answered with Connection:
// close) before closing it.
const drainIdleGrace = time.Second

// DefaultReadHeaderTimeout is the http.Server.ReadHeaderTimeout ServeHTTP sets
// when the server has none, so that a client that connects and sends its
// headers slowly, or nothing, cannot hold a connection (or a graceful stop)
// for longer. Each request arms and disarms a read-deadline timer (about 1% of
// a worker's CPU with a trivial handler, bench/RESULTS.md). Set
// ReadHeaderTimeout to -1 for none.
const DefaultReadHeaderTimeout = 10 * time.Second

// ServeHTTP serves srv on every listener of p, calls p.Ready once it is serving,
// and when ctx is done drains without dropping a request, then returns nil.
//
// The drain: from now on every response carries "Connection: close"; this
// worker closes its own descriptor of each listener (the socket and its accept
// queue stay open in the master and the other workers, which serve what is
// queued); Serve returns; ServeHTTP waits until every connection has been
// answered and closed: new and active ones up to the process's StopTimeout, idle
// keep-alive ones up to a second, for their next request; then it calls
// srv.Shutdown, which closes what is left. Two shortcuts lose requests and are
// avoided: Shutdown first drops connections accepted but not yet read (net/http
// closes them unanswered), and SetKeepAlivesEnabled(false) closes idle
// keep-alive connections at once, including those whose client has just sent
// its next request (measured: 64 failed requests per reload under wrk).
//
// A panic in a handler is recovered: it is logged with its stack, the client gets
// a 500 (or, if the response had started, a reset), and the worker keeps serving,
// as net/http would. srv.Handler nil means http.DefaultServeMux. ServeHTTP sets
// srv.ReadHeaderTimeout to DefaultReadHeaderTimeout if it is zero, and
// srv.ErrorLog to the process's logger if it is nil; it wraps srv.ConnState.
func ServeHTTP(ctx context.Context, p *Process, srv *http.Server) error {
	ls := p.Listeners()
	if len(ls) == 0 {
		return fmt.Errorf("brood: ServeHTTP in %s %d: no listeners (is Config.Listen empty?)", p.Role(), p.ID())
	}
	var conns connTracker
	conns.init()
	var draining atomic.Bool
	userHook := srv.ConnState
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		conns.set(c, s)
		if userHook != nil {
			userHook(c, s)
		}
	}
	h := srv.Handler
	if h == nil {
		h = http.DefaultServeMux
	}
	srv.Handler = closeWhenDraining(recoverHandler(h, p.log), &draining)
	if srv.ReadHeaderTimeout == 0 {
		srv.ReadHeaderTimeout = DefaultReadHeaderTimeout
	}
	if srv.ErrorLog == nil {
		srv.ErrorLog = slog.NewLogLogger(p.log.Handler(), slog.LevelWarn)
	}

	serveErr := make(chan error, len(ls))
	for _, l := range ls {
		go func() { serveErr <- srv.Serve(l) }()
	}
	p.Ready()

	var failed error
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		failed = fmt.Errorf("brood: serve HTTP: %w", err) // that Serve returned already
	}
	start := time.Now()
	deadline := start.Add(p.stopTime - p.stopTime/10)
	draining.Store(true)
	for _, l := range p.Listeners() {
		l.Close()
	}
	for range len(p.Listeners()) - boolInt(failed != nil) {
		<-serveErr
	}
	idleDeadline := start.Add(drainIdleGrace)
	if idleDeadline.After(deadline) {
		idleDeadline = deadline
	}
	drained := conns.waitClosed(deadline, idleDeadline)
	sctx, cancel := context.WithDeadline(context.Background(), deadline.Add(p.stopTime/20))
	defer cancel()
	err := srv.Shutdown(sctx)
	if err != nil {
		srv.Close()
		err = fmt.Errorf("brood: drain HTTP: %w", err)
	}
	if !drained && err == nil {
		err = errors.New("brood: drain HTTP: connections still active at the stop deadline")
	}
	if failed != nil {
		return failed
	}
	if err != nil {
		p.log.Warn("drain incomplete", "err", err)
	}
	return nil
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

// closeWhenDraining makes every response of a draining worker close its
// connection, so that keep-alive clients move to other workers between
// requests, never during one.
func closeWhenDraining(next http.Handler, draining *atomic.Bool) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if draining.Load() {
			w.Header().Set("Connection", "close")
		}
		next.ServeHTTP(w, r)
	})
}

// connTracker follows the state of every open connection.
type connTracker struct {
	mu      sync.Mutex
	conns   map[net.Conn]http.ConnState
	changed chan struct{}
}

func (t *connTracker) init() {
	t.conns = make(map[net.Conn]http.ConnState)
	t.changed = make(chan struct{}, 1)
}

func (t *connTracker) set(c net.Conn, s http.ConnState) {
	t.mu.Lock()
	if s == http.StateClosed || s == http.StateHijacked {
		delete(t.conns, c)
	} else {
		t.conns[c] = s
	}
	t.mu.Unlock()
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

// counts returns the connections serving (new or active) and idle.
func (t *connTracker) counts() (busy, idle int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, s := range t.conns {
		if s == http.StateIdle {
			idle++
		} else {
			busy++
		}
	}
	return busy, idle
}

// waitClosed waits until every connection is closed, giving busy ones until
// deadline and idle ones until idleDeadline. It reports false if a busy
// connection remained at the deadline.
func (t *connTracker) waitClosed(deadline, idleDeadline time.Time) bool {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	idleTimer := time.NewTimer(time.Until(idleDeadline))
	defer idleTimer.Stop()
	idleOver := false
	for {
		busy, idle := t.counts()
		if busy == 0 && (idle == 0 || idleOver) {
			return true
		}
		select {
		case <-t.changed:
		case <-idleTimer.C:
			idleOver = true
		case <-timer.C:
			return busy == 0
		}
	}
}

// recoverHandler turns a handler panic into a logged 500.
func recoverHandler(next http.Handler, log *slog.Logger) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rw := &trackingWriter{ResponseWriter: w}
		defer func() {
			v := recover()
			if v == nil {
				return
			}
			if v == http.ErrAbortHandler {
				panic(v)
			}
			log.Error("panic in HTTP handler", "method", r.Method, "path", r.URL.Path, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			if rw.wrote {
				panic(http.ErrAbortHandler) // the response started: reset, don't corrupt it
			}
			http.Error(w, "500 Internal Server Error", http.StatusInternalServerError)
		}()
		next.ServeHTTP(rw, r)
	})
}

// trackingWriter records whether the response has started. It forwards the
// optional interfaces net/http's writer has, and Unwrap for ResponseController.
type trackingWriter struct {
	http.ResponseWriter
	wrote bool
}

func (w *trackingWriter) WriteHeader(code int) {
	if code >= 200 {
		w.wrote = true
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *trackingWriter) Write(b []byte) (int, error) {
	w.wrote = true
	return w.ResponseWriter.Write(b)
}

func (w *trackingWriter) ReadFrom(r io.Reader) (int64, error) {
	w.wrote = true
	if rf, ok := w.ResponseWriter.(io.ReaderFrom); ok {
		return rf.ReadFrom(r)
	}
	return io.Copy(w.ResponseWriter, r)
}

func (w *trackingWriter) Flush() {
	w.wrote = true
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *trackingWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	w.wrote = true
	if h, ok := w.ResponseWriter.(http.Hijacker); ok {
		return h.Hijack()
	}
	return nil, nil, fmt.Errorf("brood: %T does not support Hijack", w.ResponseWriter)
}

func (w *trackingWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
