package brood

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/brood-go/brood/internal/control"
	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/proc"
	"github.com/brood-go/brood/internal/relay"
)

// The master's control plane: the endpoints the CLI (stop, status, reload,
// scale) calls over the control socket, and the operations behind them.

func (m *master) controlHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		control.WriteJSON(w, http.StatusOK, m.statusWithSchedules(r.Context()))
	})
	mux.HandleFunc("POST /stop", func(w http.ResponseWriter, r *http.Request) {
		pid, uid, _ := control.PeerFrom(r.Context())
		m.requestStop(fmt.Sprintf("stop requested over the control socket (pid %d, uid %d)", pid, uid))
		control.WriteJSON(w, http.StatusAccepted, m.status())
	})
	mux.HandleFunc("POST /reload", func(w http.ResponseWriter, r *http.Request) {
		res, err := m.reload()
		if err != nil {
			control.WriteError(w, http.StatusInternalServerError, err)
			return
		}
		control.WriteJSON(w, http.StatusOK, res)
	})
	mux.HandleFunc("GET /schedules", func(w http.ResponseWriter, r *http.Request) {
		var list []ScheduleStatus
		if err := m.askAgent(r.Context(), actScheduleList, nil, &list); err != nil {
			control.WriteError(w, http.StatusServiceUnavailable, err)
			return
		}
		control.WriteJSON(w, http.StatusOK, list)
	})
	mux.HandleFunc("POST /schedules/run", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Name string `json:"name"`
		}
		if err := control.ReadJSON(r, &req); err != nil {
			control.WriteError(w, http.StatusBadRequest, err)
			return
		}
		var body errorBody
		err := m.askAgent(r.Context(), actScheduleRun, req.Name, &body)
		switch {
		case err != nil:
			control.WriteError(w, http.StatusServiceUnavailable, err)
		case body.Error != "":
			control.WriteError(w, http.StatusBadRequest, errors.New(body.Error))
		default:
			control.WriteJSON(w, http.StatusAccepted, body)
		}
	})
	mux.HandleFunc("POST /logs/rotate", func(w http.ResponseWriter, r *http.Request) {
		if err := m.rotateLogs("requested over the control socket"); err != nil {
			control.WriteError(w, http.StatusInternalServerError, err)
			return
		}
		control.WriteJSON(w, http.StatusOK, errorBody{})
	})
	mux.HandleFunc("POST /scale", func(w http.ResponseWriter, r *http.Request) {
		var req control.ScaleRequest
		if err := control.ReadJSON(r, &req); err != nil {
			control.WriteError(w, http.StatusBadRequest, err)
			return
		}
		res, err := m.scale(req.Workers)
		if err != nil {
			status := http.StatusInternalServerError
			if errors.Is(err, errBadRequest) {
				status = http.StatusBadRequest
			}
			control.WriteError(w, status, err)
			return
		}
		control.WriteJSON(w, http.StatusOK, res)
	})
	return mux
}

var errBadRequest = errors.New("bad request")

// requestStop makes run begin a graceful stop.
func (m *master) requestStop(why string) {
	m.stopOnce.Do(func() {
		m.stopWhy = why
		close(m.stopReq)
	})
}

// status describes the cluster for `status`. Resource figures are sampled now
// if the last sample is older than half a second or a process has none yet.
func (m *master) status() control.Status {
	now := time.Now()
	m.mu.Lock()
	stale := now.Sub(m.self.at) > 500*time.Millisecond
	for _, c := range m.children {
		stale = stale || (c.usage.at.IsZero() && c.pid < singlePIDBase)
	}
	m.mu.Unlock()
	if stale {
		m.sampleUsage(now)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st := control.Status{
		Name: m.cfg.Name, PID: m.pid, State: m.state.String(), Listen: m.boundAddrs(),
		Workers: len(m.workers), StartedAt: m.startedAt, RunDir: m.cfg.RunDir,
		RSSBytes: m.self.rss, CPUPercent: m.self.cpuPercent,
	}
	row := func(s *slot, c *child) control.Process {
		p := control.Process{Role: s.role.String(), ID: s.id, Restarts: s.restarts, LastReason: s.lastReason, State: "restarting"}
		if c != nil {
			p.PID, p.State, p.StartedAt = c.pid, c.state.String(), c.startedAt
			p.Uptime = now.Sub(c.startedAt).Seconds()
			p.RSSBytes, p.CPUPercent = c.usage.rss, c.usage.cpuPercent
		}
		return p
	}
	for _, s := range m.slotsLocked() {
		seen := false
		for _, c := range m.childrenOf(s) {
			st.Processes = append(st.Processes, row(s, c))
			seen = true
		}
		if !seen && !s.removed {
			st.Processes = append(st.Processes, row(s, nil))
		}
	}
	rs := m.router.Stats()
	st.Messages = control.Messages{Relayed: rs.Relayed, Held: rs.Held, Redelivered: rs.Redelivered, Refused: rs.Dropped, LostReplies: rs.LostReplies}
	return st
}

// statusWithSchedules is status plus the agent's schedule table, if any.
func (m *master) statusWithSchedules(ctx context.Context) control.Status {
	st := m.status()
	if len(m.cfg.Schedules) > 0 {
		ctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		var list []ScheduleStatus
		if err := m.askAgent(ctx, actScheduleList, nil, &list); err == nil {
			st.Schedules, _ = json.Marshal(list)
		}
	}
	return st
}

// slotsLocked returns the agent's slot and the workers' in id order.
func (m *master) slotsLocked() []*slot {
	var out []*slot
	if m.agent != nil {
		out = append(out, m.agent)
	}
	for _, id := range m.workerIDsLocked() {
		out = append(out, m.workers[id])
	}
	return out
}

func (m *master) workerIDsLocked() []int {
	ids := make([]int, 0, len(m.workers))
	for id := range m.workers {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// childrenOf returns the live processes of slot s, oldest first.
func (m *master) childrenOf(s *slot) []*child {
	var out []*child
	for _, c := range m.children {
		if c.slot == s {
			out = append(out, c)
		}
	}
	slices.SortFunc(out, func(a, b *child) int { return a.startedAt.Compare(b.startedAt) })
	return out
}

// usage is a resource sample of one process.
type usage struct {
	rss        uint64
	cpuPercent float64
	cpu        time.Duration
	at         time.Time
}

// sample updates u from /proc.
func (u *usage) sample(pid int, now time.Time) {
	s, err := proc.Read(pid)
	if err != nil {
		return
	}
	if !u.at.IsZero() {
		if wall := now.Sub(u.at); wall > 0 {
			u.cpuPercent = float64(s.CPUTime-u.cpu) / float64(wall) * 100
		}
	}
	u.rss, u.cpu, u.at = s.RSS, s.CPUTime, now
}

// reload replaces every worker, one slot at a time (a new process ready, then
// the old one drains), then the agent. The new processes run the executable on
// disk now. If a new worker fails to start, the reload stops there and the old
// workers keep serving.
func (m *master) reload() (control.ReloadResult, error) {
	m.opMu.Lock()
	defer m.opMu.Unlock()
	start := time.Now()
	var res control.ReloadResult
	m.log.Info("reload: replacing every worker, then the agent")
	m.mu.Lock()
	ids := m.workerIDsLocked()
	m.mu.Unlock()
	for _, id := range ids {
		m.mu.Lock()
		s := m.workers[id]
		var old *child
		if s != nil {
			old = s.serving
		}
		m.mu.Unlock()
		if old == nil {
			continue // restarting: its new process runs the new binary anyway
		}
		nc, err := m.replaceWith(old, "reload")
		if err != nil {
			m.log.Error("reload aborted; the remaining workers keep the old binary", "err", err)
			return res, fmt.Errorf("brood: reload aborted at %s; the old workers keep serving: %w", s, err)
		}
		res.Replaced = append(res.Replaced, control.Replacement{Role: "worker", ID: id, OldPID: old.pid, NewPID: nc.pid})
	}
	if r, err := m.reloadAgent(); err != nil {
		return res, err
	} else if r != nil {
		res.Replaced = append(res.Replaced, *r)
	}
	res.Took = time.Since(start).Seconds()
	m.log.Info("reload done", "replaced", len(res.Replaced), "took", time.Since(start).Round(time.Millisecond))
	return res, nil
}

// reloadAgent stops the agent and starts a new one: the agent is a singleton,
// so the two never run at once. Messages for it are held meanwhile.
func (m *master) reloadAgent() (*control.Replacement, error) {
	m.mu.Lock()
	s := m.agent
	var old *child
	if s != nil {
		old = s.serving
	}
	if old != nil {
		old.replaced = true
		s.restarts++
		s.lastReason = "reload"
	}
	m.mu.Unlock()
	if old == nil {
		return nil, nil
	}
	m.stopChild(old)
	nc, err := m.startChild(s)
	if err != nil {
		m.mu.Lock()
		s.crashes++
		if m.state == stateRunning && s.serving == nil {
			m.ensureRestartLocked(s)
		}
		m.mu.Unlock()
		return nil, fmt.Errorf("brood: reload: start agent: %w", err)
	}
	return &control.Replacement{Role: "agent", OldPID: old.pid, NewPID: nc.pid}, nil
}

// scale changes the number of workers: new slots start (in parallel) and must
// all become ready; removed slots (the highest ids) drain and stop.
func (m *master) scale(n int) (control.ScaleResult, error) {
	if n < 1 {
		return control.ScaleResult{}, fmt.Errorf("brood: scale to %d: %w: want at least 1 worker", n, errBadRequest)
	}
	m.opMu.Lock()
	defer m.opMu.Unlock()
	m.mu.Lock()
	from := len(m.workers)
	running := m.state == stateRunning
	m.mu.Unlock()
	if !running {
		return control.ScaleResult{}, fmt.Errorf("brood: scale: the cluster is %s", m.stateNow())
	}
	res := control.ScaleResult{From: from, To: n}
	switch {
	case n > from:
		var added []*slot
		for id := from + 1; id <= n; id++ {
			added = append(added, m.addSlot(Worker, id))
		}
		errs := make([]error, len(added))
		var wg sync.WaitGroup
		for i, s := range added {
			wg.Go(func() {
				if _, err := m.startChild(s); err != nil {
					errs[i] = fmt.Errorf("start %s: %w", s, err)
				}
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			for _, s := range added {
				m.removeSlot(s)
			}
			return res, fmt.Errorf("brood: scale to %d workers failed; back to %d: %w", n, from, err)
		}
	case n < from:
		var wg sync.WaitGroup
		for id := from; id > n; id-- {
			m.mu.Lock()
			s := m.workers[id]
			m.mu.Unlock()
			wg.Go(func() { m.removeSlot(s) })
		}
		wg.Wait()
	}
	m.mu.Lock()
	m.cfg.Workers = n
	m.sendPidsLocked()
	m.mu.Unlock()
	m.log.Info("scaled", "from", from, "to", n)
	return res, nil
}

// removeSlot takes a worker slot out of the cluster and stops its processes.
func (m *master) removeSlot(s *slot) {
	m.mu.Lock()
	s.removed = true
	delete(m.workers, s.id)
	procs := m.childrenOf(s)
	m.mu.Unlock()
	m.router.RemoveSlot(s.rs)
	for _, c := range procs {
		m.stopChild(c)
	}
}

func (m *master) stateNow() clusterState {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.state
}

// acquireRunDir takes the run dir's lock (a second instance with the same name
// and run dir is refused) and starts serving the control socket.
func (m *master) acquireRunDir() (release func(), err error) {
	inst, err := control.Acquire(m.cfg.RunDir, m.cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("brood: %w", err)
	}
	if err := inst.Listen(); err != nil {
		inst.Close()
		return nil, fmt.Errorf("brood: control socket: %w", err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := inst.Serve(m.controlHandler(), m.log); err != nil {
			m.log.Error("control socket stopped", "err", err)
		}
	}()
	m.log.Debug("control socket", "path", control.SocketPath(m.cfg.RunDir))
	return func() {
		inst.Close()
		<-done
	}, nil
}

// reloadInBackground runs a reload on a goroutine owned by the master (SIGHUP).
func (m *master) reloadInBackground(why string) {
	started := m.goOwned(func() {
		if _, err := m.reload(); err != nil {
			m.log.Error("reload failed", "err", err)
		}
	})
	if started {
		m.log.Info("reload requested", "by", why)
	} else {
		m.log.Warn("reload requested while stopping; ignored", "by", why)
	}
}

// onMasterReply hands a reply to the master's request that waits for it.
func (m *master) onMasterReply(f ipc.Frame) {
	m.reqMu.Lock()
	ch := m.requests[f.Ref]
	delete(m.requests, f.Ref)
	m.reqMu.Unlock()
	if ch != nil {
		ch <- append([]byte(nil), f.Payload...)
	}
}

// onMasterMessage handles brood's messages to the master.
func (m *master) onMasterMessage(from *relay.Endpoint, f ipc.Frame) {
	switch string(f.Action) {
	case actLogsRotated:
		// Not on the reader's goroutine: reopening takes m.mu and writes files.
		m.goOwned(func() { m.logsReopen(fmt.Sprintf("pid %d rotated %s", from.PID, f.Payload)) })
	default:
		m.log.Warn("unknown message to the master", "action", string(f.Action), "from_pid", from.PID)
	}
}

// askAgent sends a request to the agent and waits for its answer, decoded
// into out.
func (m *master) askAgent(ctx context.Context, action string, data, out any) error {
	m.mu.Lock()
	var c *child
	if m.agent != nil {
		c = m.agent.serving
	}
	m.mu.Unlock()
	if c == nil {
		return fmt.Errorf("%s: no agent is running right now", action)
	}
	payload, err := json.Marshal(data)
	if err != nil {
		return err
	}
	ch := make(chan []byte, 1)
	m.reqMu.Lock()
	m.reqID++
	id := m.reqID
	m.requests[id] = ch
	m.reqMu.Unlock()
	defer func() {
		m.reqMu.Lock()
		delete(m.requests, id)
		m.reqMu.Unlock()
	}()
	m.router.Request(c.ep, id, action, payload)
	select {
	case b := <-ch:
		return json.Unmarshal(b, out)
	case <-c.exited:
		return fmt.Errorf("%s: the agent (pid %d) exited before answering", action, c.pid)
	case <-ctx.Done():
		return fmt.Errorf("%s: no answer from the agent (pid %d): %w", action, c.pid, ctx.Err())
	}
}

// rotateLogs rotates what is due (by the agent) and then has every process
// reopen its files: SIGUSR1, and logrotate(8)'s postrotate.
func (m *master) rotateLogs(why string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var body errorBody
	var err error
	if m.cfg.LogRotation.enabled() {
		if err = m.askAgent(ctx, actLogsRotate, nil, &body); err == nil && body.Error != "" {
			err = errors.New(body.Error)
		}
	}
	m.logsReopen(why)
	return err
}
