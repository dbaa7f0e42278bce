package admin

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/brood-go/brood/internal/wire"
)

// events serves GET /events: the kept events after the resume point and then
// the live ones as Server-Sent Events, or (?json) the kept ones as an array.
func (s *server) events(w http.ResponseWriter, r *http.Request) {
	since, err := resumePoint(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if r.URL.Query().Has("json") {
		past, _, cancel := s.src.Subscribe(since)
		cancel()
		if past == nil {
			past = []wire.Event{}
		}
		b, err := json.Marshal(past)
		if err != nil {
			s.log.Error("admin: events do not encode", "err", err)
			http.Error(w, "events do not encode", http.StatusInternalServerError)
			return
		}
		writeJSON(w, b)
		return
	}
	s.stream(w, r, since)
}

// resumePoint is the Seq after which a stream starts: the Last-Event-ID an
// EventSource sends when it reconnects wins over the ?since= of its URL.
func resumePoint(r *http.Request) (uint64, error) {
	v, what := r.Header.Get("Last-Event-ID"), "Last-Event-ID"
	if v == "" {
		v, what = r.URL.Query().Get("since"), "since"
	}
	if v = strings.TrimSpace(v); v == "" {
		return 0, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, errors.New(what + ": not an event sequence number: " + strconv.Quote(v))
	}
	return n, nil
}

// Why a stream ends, in the data of its last ("end") event.
const (
	endClosed  = "subscription closed" // ended by the master or fell behind: reconnect to resume
	endStopped = "master stopped"
)

func (s *server) stream(w http.ResponseWriter, r *http.Request, since uint64) {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer the stream

	past, ch, cancel := s.src.Subscribe(since)
	defer cancel()

	var (
		buf  bytes.Buffer
		last = since
		sent = since > 0 // whether last is the Seq of an event the client has
	)
	add := func(e wire.Event) {
		if sent && e.Seq <= last {
			return // the subscription overlapped what was already sent
		}
		b, err := json.Marshal(e)
		if err != nil {
			s.log.Error("admin: event does not encode", "seq", e.Seq, "err", err)
			return
		}
		buf.WriteString("id: ")
		buf.WriteString(strconv.FormatUint(e.Seq, 10))
		buf.WriteString("\nevent: ")
		buf.WriteString(fieldValue(string(e.Type)))
		buf.WriteString("\ndata: ")
		buf.Write(b)
		buf.WriteString("\n\n")
		last, sent = e.Seq, true
	}
	// send writes what add buffered and flushes it; false when the client is
	// gone.
	send := func() bool {
		if err := rc.SetWriteDeadline(time.Now().Add(streamWriteTimeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return false
		}
		_, err := w.Write(buf.Bytes())
		buf.Reset()
		if err != nil {
			return false
		}
		if err := rc.Flush(); err != nil && !errors.Is(err, http.ErrNotSupported) {
			return false
		}
		return true
	}
	end := func(why string) {
		buf.WriteString("event: end\ndata: ")
		b, _ := json.Marshal(map[string]string{"reason": why})
		buf.Write(b)
		buf.WriteString("\n\n")
		send()
	}

	// The retry hint makes a browser reconnect within a second when the
	// stream ends; the kept events fill in what it missed.
	buf.WriteString("retry: 1000\n\n")
	for _, e := range past {
		add(e)
	}
	if !send() {
		return
	}

	tick := time.NewTicker(s.heartbeat)
	defer tick.Stop()
	for {
		select {
		case <-r.Context().Done():
			return
		case e, ok := <-ch:
			if !ok {
				end(endClosed)
				return
			}
			add(e)
			if !send() {
				return
			}
		case <-tick.C:
			buf.WriteString(": heartbeat\n\n")
			if !send() {
				return
			}
		case <-s.src.Done():
			// Events published before the stop are the stream's last words.
		drain:
			for range 4096 {
				select {
				case e, ok := <-ch:
					if !ok {
						break drain
					}
					add(e)
				default:
					break drain
				}
			}
			end(endStopped)
			return
		}
	}
}

// fieldValue keeps a value on its SSE line.
func fieldValue(v string) string {
	if strings.ContainsAny(v, "\r\n") {
		return strings.NewReplacer("\r", " ", "\n", " ").Replace(v)
	}
	return v
}
