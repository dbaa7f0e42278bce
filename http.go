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
	"time"
)

// DefaultReadHeaderTimeout is the http.Server.ReadHeaderTimeout ServeHTTP sets
// when the server has none, so that a client that connects and sends nothing
// cannot hold up a graceful stop.
const DefaultReadHeaderTimeout = 10 * time.Second

// ServeHTTP serves srv on every listener of p, calls p.Ready once it is serving,
// and when ctx is done drains without dropping a request, then returns nil.
//
// The drain: keep-alives are switched off; this worker closes its own descriptor
// of each listener (the socket and its accept queue stay open in the master and
// the other workers, so queued connections are served by them); Serve returns;
// ServeHTTP waits until no accepted connection is new or active, up to the
// process's StopTimeout; then it calls srv.Shutdown. Calling Shutdown first would
// drop connections accepted but not yet read (net/http closes them unanswered).
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
	srv.Handler = recoverHandler(h, p.log)
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
		failed = fmt.Errorf("brood: serve HTTP: %w", err)
		ls = ls[:0:0] // that one returned already
	}
	deadline := time.Now().Add(p.stopTime - p.stopTime/10)
	srv.SetKeepAlivesEnabled(false)
	for _, l := range p.Listeners() {
		l.Close()
	}
	for range len(p.Listeners()) - boolInt(failed != nil) {
		<-serveErr
	}
	drained := conns.waitIdle(deadline)
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

// connTracker counts connections that are new (accepted, request not yet read)
// or active (serving a request).
type connTracker struct {
	mu      sync.Mutex
	busy    map[net.Conn]struct{}
	changed chan struct{}
}

func (t *connTracker) init() {
	t.busy = make(map[net.Conn]struct{})
	t.changed = make(chan struct{}, 1)
}

func (t *connTracker) set(c net.Conn, s http.ConnState) {
	t.mu.Lock()
	if s == http.StateNew || s == http.StateActive {
		t.busy[c] = struct{}{}
	} else {
		delete(t.busy, c)
	}
	t.mu.Unlock()
	select {
	case t.changed <- struct{}{}:
	default:
	}
}

// waitIdle waits until no connection is busy, or deadline; it reports which.
func (t *connTracker) waitIdle(deadline time.Time) bool {
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	for {
		t.mu.Lock()
		n := len(t.busy)
		t.mu.Unlock()
		if n == 0 {
			return true
		}
		select {
		case <-t.changed:
		case <-timer.C:
			return false
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
