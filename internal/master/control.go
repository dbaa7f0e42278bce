package master

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"

	"github.com/brood-go/brood/internal/control"
	"github.com/brood-go/brood/internal/wire"
)

// The master's control plane: the endpoints the CLI calls over the control
// socket. Each handler only translates HTTP to a call on the master and
// returns an error; errorStatus maps errors to status codes in one place.

// handlerFunc is a control endpoint: it writes a success itself and returns
// any failure.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

// apiError is an error with the HTTP status it is answered with.
type apiError struct {
	status int
	err    error
}

func (e apiError) Error() string { return e.err.Error() }
func (e apiError) Unwrap() error { return e.err }

// errorStatus is the status code an error is answered with.
func errorStatus(err error) int {
	var ae apiError
	var se *StateError
	var br badRequest
	switch {
	case errors.As(err, &ae):
		return ae.status
	case errors.As(err, &se):
		return http.StatusConflict
	case errors.As(err, &br):
		return http.StatusBadRequest
	case errors.Is(err, errStopping):
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

func (m *Master) handle(f handlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if err := f(w, r); err != nil {
			control.WriteError(w, errorStatus(err), err)
		}
	}
}

func (m *Master) controlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", m.handle(func(w http.ResponseWriter, r *http.Request) error {
		control.WriteJSON(w, http.StatusOK, m.statusWithSchedules(r.Context()))
		return nil
	}))
	mux.HandleFunc("POST /stop", m.handle(func(w http.ResponseWriter, r *http.Request) error {
		pid, uid, _ := control.PeerFrom(r.Context())
		m.RequestStop(fmt.Sprintf("stop requested over the control socket (pid %d, uid %d)", pid, uid))
		control.WriteJSON(w, http.StatusAccepted, m.Status())
		return nil
	}))
	mux.HandleFunc("POST /reload", m.handle(func(w http.ResponseWriter, r *http.Request) error {
		res, err := m.Reload()
		if err != nil {
			return err
		}
		control.WriteJSON(w, http.StatusOK, res)
		return nil
	}))
	mux.HandleFunc("POST /upgrade", m.handle(func(w http.ResponseWriter, r *http.Request) error {
		var req wire.UpgradeRequest
		if r.ContentLength != 0 {
			if err := control.ReadJSON(r, &req); err != nil {
				return badRequest{err}
			}
		}
		p, err := m.prepareUpgrade(r.Context(), req)
		if err != nil {
			return err
		}
		hj, ok := w.(http.Hijacker)
		if !ok {
			p.cancel()
			return errors.New("brood: upgrade: the control connection cannot be handed over")
		}
		conn, _, err := hj.Hijack() // the next image answers on it
		if err != nil {
			p.cancel()
			return fmt.Errorf("brood: upgrade: %w", err)
		}
		// execUpgrade returns only if the cluster changed before the freeze.
		err = m.execUpgrade(p, conn)
		answerRaw(conn, errorStatus(err), map[string]string{"error": err.Error()})
		return nil
	}))
	mux.HandleFunc("POST /scale", m.handle(func(w http.ResponseWriter, r *http.Request) error {
		var req wire.ScaleRequest
		if err := control.ReadJSON(r, &req); err != nil {
			return badRequest{err}
		}
		res, err := m.Scale(req.Workers)
		if err != nil {
			return err
		}
		control.WriteJSON(w, http.StatusOK, res)
		return nil
	}))
	mux.HandleFunc("GET /schedules", m.handle(func(w http.ResponseWriter, r *http.Request) error {
		var list []wire.ScheduleStatus
		if err := m.askAgent(r.Context(), wire.ActScheduleList, nil, &list); err != nil {
			return apiError{http.StatusServiceUnavailable, err}
		}
		control.WriteJSON(w, http.StatusOK, list)
		return nil
	}))
	mux.HandleFunc("POST /schedules/run", m.handle(func(w http.ResponseWriter, r *http.Request) error {
		var req wire.ScheduleRunRequest
		if err := control.ReadJSON(r, &req); err != nil {
			return badRequest{err}
		}
		var body wire.ErrorBody
		if err := m.askAgent(r.Context(), wire.ActScheduleRun, req.Name, &body); err != nil {
			return apiError{http.StatusServiceUnavailable, err}
		}
		if body.Error != "" {
			return badRequest{errors.New(body.Error)}
		}
		control.WriteJSON(w, http.StatusAccepted, body)
		return nil
	}))
	mux.HandleFunc("POST /logs/rotate", m.handle(func(w http.ResponseWriter, r *http.Request) error {
		if err := m.RotateLogs("requested over the control socket"); err != nil {
			return err
		}
		control.WriteJSON(w, http.StatusOK, wire.ErrorBody{})
		return nil
	}))
	mux.HandleFunc("GET /events", m.handle(m.serveEvents))
	return mux
}

// serveEvents answers GET /events: the kept events after ?since=SEQ as a JSON
// array, or with ?follow=1 as a stream of JSON lines that goes on until the
// client leaves or the master stops.
func (m *Master) serveEvents(w http.ResponseWriter, r *http.Request) error {
	var since uint64
	if v := r.URL.Query().Get("since"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return badRequest{fmt.Errorf("since=%q: want an event sequence number", v)}
		}
		since = n
	}
	if r.URL.Query().Get("follow") == "" {
		control.WriteJSON(w, http.StatusOK, m.events.since(since))
		return nil
	}
	past, ch, cancel := m.events.subscribe(since)
	defer cancel()
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	enc := json.NewEncoder(w)
	flusher, _ := w.(http.Flusher)
	for _, ev := range past {
		enc.Encode(ev)
	}
	for {
		if flusher != nil {
			flusher.Flush()
		}
		select {
		case ev, ok := <-ch:
			if !ok {
				return nil
			}
			if err := enc.Encode(ev); err != nil {
				return nil
			}
		case <-r.Context().Done():
			return nil
		}
	}
}

// acquireRunDir takes the run dir's lock (a second instance with the same
// name and run dir is refused) and starts serving the control socket.
func (m *Master) acquireRunDir() (release func(), err error) {
	var inst *control.Instance
	if m.restore != nil {
		inst, err = control.Adopt(m.cfg.RunDir, m.restore.st.RunDirLock, m.restore.st.Control)
	} else {
		inst, err = control.Acquire(m.cfg.RunDir, m.cfg.Name)
	}
	if err != nil {
		return nil, fmt.Errorf("brood: %w", err)
	}
	m.ctl = inst
	if err := inst.Listen(); err != nil {
		inst.Close()
		return nil, fmt.Errorf("brood: control socket: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// ErrClosed: closed before it began serving, when a start fails at once.
		if err := inst.Serve(m.controlHandler(), m.log); err != nil && !errors.Is(err, net.ErrClosed) {
			m.log.Error("control socket stopped", "err", err)
		}
	}()
	return func() {
		m.events.closeAll() // end followers, or Close waits out its grace for them
		inst.Close()
		<-done
	}, nil
}
