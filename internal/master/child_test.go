package master

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/control"
	"github.com/brood-go/brood/internal/helperproc"
	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/wire"
)

// A reply to the master's request is taken only from the process it asked:
// a worker that answers the agent's request id first (even claiming to be
// someone else) is ignored.
func TestReplyIsTakenOnlyFromTheProcessAsked(t *testing.T) {
	forge := make(chan uint64)
	answer := make(chan struct{})
	h := startHarness(t, 1, func(role ipc.Role, id, n int) script {
		if role == ipc.RoleAgent {
			return script{reply: func(f ipc.Frame) bool {
				<-answer // answer only after the worker's forgery was handled
				return false
			}}
		}
		return script{forge: forge}
	})
	h.wait("the cluster", is(wire.EventClusterReady))
	m := h.m
	result := make(chan error, 1)
	var got []wire.ScheduleStatus
	go func() { result <- m.askAgent(context.Background(), wire.ActScheduleList, nil, &got) }()
	id := waitPendingAsk(t, m)
	forge <- id
	close(forge)
	// The forged reply is read and dropped before the agent answers.
	h.waitLogged(t, "reply to the master dropped")
	close(answer)
	if err := <-result; err != nil {
		t.Fatal(err)
	}
	if len(got) != 0 {
		t.Fatalf("the master took the worker's forged reply: %+v", got)
	}
}

func waitPendingAsk(t *testing.T, m *Master) uint64 {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if m.asks.Len() == 1 {
			return m.askID.Load()
		}
		runtime.Gosched()
	}
	t.Fatal("the master's request was not registered")
	return 0
}

// The agent keeps running after a guarded panic: a ReplaceMe from it is
// ignored, not turned into a replacement of the singleton.
func TestReplaceMeFromTheAgentIsIgnored(t *testing.T) {
	h := startHarness(t, 1, func(role ipc.Role, id, n int) script {
		if role == ipc.RoleAgent {
			return script{replaceMe: "panic in an agent handler"}
		}
		return script{}
	})
	h.wait("the cluster", is(wire.EventClusterReady))
	// A reload afterwards replaces the agent exactly once, by the reload.
	res, err := h.m.Reload()
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range h.m.Events(0) {
		if ev.Type == wire.EventReplaced && ev.Reason == wire.ReasonPanic {
			t.Fatalf("the agent was replaced after its guarded panic: %+v", ev)
		}
	}
	if len(res.Replaced) != 2 {
		t.Fatalf("reload replaced %+v, want the worker and the agent", res.Replaced)
	}
}

// scale refuses absurd worker counts with a clear error, answered 400.
func TestScaleBounds(t *testing.T) {
	h := startHarness(t, 1, func(ipc.Role, int, int) script { return script{} })
	h.wait("the cluster", is(wire.EventClusterReady))
	for _, n := range []int{0, -3, wire.MaxWorkers + 1} {
		_, err := h.m.Scale(n)
		if err == nil || errorStatus(err) != http.StatusBadRequest || !strings.Contains(err.Error(), "want 1 to 1024 workers") {
			t.Errorf("scale %d: %v (status %d), want a 400 naming the bounds", n, err, errorStatus(err))
		}
	}
}

// A failed first start reports the failing process's own error, and the
// event stream says so.
func TestFailedStartNamesTheFailure(t *testing.T) {
	h := startHarness(t, 2, func(role ipc.Role, id, n int) script {
		if role == ipc.RoleWorker && id == 2 {
			return script{fail: "database at db.internal:5432 unreachable"}
		}
		return script{}
	})
	ev := h.wait("the failure", is(wire.EventStartFailed))
	if !strings.Contains(ev.Detail, "start worker 2") || !strings.Contains(ev.Detail, "database at db.internal:5432 unreachable") {
		t.Fatalf("start failed with %q, want worker 2's error", ev.Detail)
	}
	err := <-h.runErr
	h.runErr <- err
	if err == nil || err.Error() != ev.Detail {
		t.Fatalf("Run returned %v, want %q", err, ev.Detail)
	}
}

// blockingWriter blocks every Write until released: a stderr nobody reads.
type blockingWriter struct {
	release chan struct{}
	mu      sync.Mutex
	buf     bytes.Buffer
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

// The master's output never blocks it: with the destination stalled, writes
// return at once, and what does not fit is dropped and counted.
func TestOutputNeverBlocks(t *testing.T) {
	dst := &blockingWriter{release: make(chan struct{})}
	o := newOutput(dst)
	line := bytes.Repeat([]byte("x"), 1023)
	line = append(line, '\n')
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 2 * outputBuffer / len(line) {
			o.Write(line)
		}
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Write blocked on a stalled destination")
	}
	if o.Dropped() == 0 {
		t.Fatal("nothing counted as dropped after writing twice the buffer to a stalled destination")
	}
	close(dst.release)
	o.close()
	dst.mu.Lock()
	defer dst.mu.Unlock()
	if dst.buf.Len() == 0 || dst.buf.Len()%len(line) != 0 {
		t.Fatalf("destination got %d bytes, want whole lines", dst.buf.Len())
	}
}

// Children's lines reach the master's output whole, however long (up to
// maxLine), and never interleaved with another child's.
func TestLongLinesAreWrittenWhole(t *testing.T) {
	var dst helperproc.SyncBuffer
	o := newOutput(&dst)
	const n = 20
	long := func(c byte) []byte { return append(bytes.Repeat([]byte{c}, 200<<10), '\n') }
	var wg sync.WaitGroup
	for _, c := range []byte("ab") {
		r, w := io.Pipe()
		wg.Go(func() { pumpLines(r, o, nil) })
		go func() {
			for range n {
				w.Write(long(c))
			}
			w.Close()
		}()
	}
	wg.Wait()
	o.close()
	lines := strings.Split(strings.TrimSuffix(dst.String(), "\n"), "\n")
	// Two fast writers can outrun the buffer: what did not fit is dropped
	// whole and counted, never written in part.
	if len(lines)+int(o.Dropped()) != 2*n || len(lines) == 0 {
		t.Fatalf("%d lines written and %d dropped, want %d in all", len(lines), o.Dropped(), 2*n)
	}
	for i, l := range lines {
		if len(l) != 200<<10 || strings.Trim(l, string(l[0])) != "" {
			t.Fatalf("line %d: %d bytes starting %q: split or interleaved", i, len(l), l[:min(10, len(l))])
		}
	}
	// A line over maxLine is cut there and marked.
	var cut helperproc.SyncBuffer
	o2 := newOutput(&cut)
	pumpLines(bytes.NewReader(append(bytes.Repeat([]byte("z"), maxLine+5000), '\n')), o2, nil)
	o2.close()
	if got := cut.String(); len(got) != maxLine+len(truncatedMark) || !strings.HasSuffix(got, string(truncatedMark)) || o2.Dropped() != 1 {
		t.Fatalf("cut line: %d bytes, dropped %d; want %d bytes ending with the mark", len(got), o2.Dropped(), maxLine+len(truncatedMark))
	}
}

// The event stream keeps the last events, and a follower that falls too far
// behind is cut off rather than blocking the master.
func TestEventLogBounds(t *testing.T) {
	l := newEventLog(nil)
	past, ch, cancel := l.subscribe(0)
	defer cancel()
	if len(past) != 0 {
		t.Fatalf("past %v", past)
	}
	for range eventsKept + 10 {
		l.publish(wire.Event{Type: wire.EventStarted})
	}
	if got := l.since(0); len(got) != eventsKept || got[0].Seq != 11 || got[len(got)-1].Seq != eventsKept+10 {
		t.Fatalf("kept %d events from %d to %d, want the last %d", len(got), got[0].Seq, got[len(got)-1].Seq, eventsKept)
	}
	n := 0
	for range ch {
		n++
	}
	if n != eventsKept {
		t.Fatalf("the slow follower got %d events before its stream ended, want %d", n, eventsKept)
	}
	if got := l.since(eventsKept + 5); len(got) != 5 {
		t.Fatalf("since: %d events, want 5", len(got))
	}
	b, _ := json.Marshal(wire.Event{Type: wire.EventExited, Reason: wire.ReasonHang})
	var back wire.Event
	if err := json.Unmarshal(b, &back); err != nil || back.Reason != wire.ReasonHang || !strings.Contains(string(b), `"reason":"hang"`) {
		t.Fatalf("reason round trip: %s -> %+v %v", b, back, err)
	}
	var bad wire.Reason
	if err := bad.UnmarshalText([]byte("nonsense")); err == nil || !errors.Is(err, err) {
		t.Fatal("an unknown reason decoded")
	}
}

// GET /events answers the kept events, and ?follow=1 streams the later ones
// as JSON lines until the client leaves.
func TestEventsOverTheControlSocket(t *testing.T) {
	h := startHarness(t, 1, func(ipc.Role, int, int) script { return script{} })
	h.wait("the cluster", is(wire.EventClusterReady))
	c, err := control.Dial(h.m.cfg.RunDir, "harness")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var kept []wire.Event
	if err := c.Do(ctx, "GET", "/events", nil, &kept); err != nil {
		t.Fatal(err)
	}
	if len(kept) == 0 || kept[len(kept)-1].Type != wire.EventClusterReady {
		t.Fatalf("GET /events: %v, want the start ending with cluster-ready", kept)
	}
	last := kept[len(kept)-1].Seq
	got := make(chan wire.Event, 16)
	streamCtx, stopStream := context.WithCancel(ctx)
	streamed := make(chan error, 1)
	go func() {
		streamed <- c.Stream(streamCtx, fmt.Sprintf("/events?follow=1&since=%d", last), func(line []byte) error {
			var ev wire.Event
			if err := json.Unmarshal(line, &ev); err != nil {
				return err
			}
			got <- ev
			return nil
		})
	}()
	go h.m.Scale(2)
	for ev := range got {
		if ev.Seq <= last {
			t.Fatalf("streamed event %d, asked for those after %d", ev.Seq, last)
		}
		if ev.Type == wire.EventScaled {
			if ev.From != 1 || ev.To != 2 || ev.Result != "ok" {
				t.Fatalf("scaled event %+v", ev)
			}
			break
		}
	}
	stopStream()
	if err := <-streamed; err != nil {
		t.Fatalf("stream: %v", err)
	}
	if err := c.Do(ctx, "GET", "/events?since=x", nil, nil); errorStatusOf(err) != http.StatusBadRequest {
		t.Fatalf("GET /events?since=x: %v, want a 400", err)
	}
}

func errorStatusOf(err error) int {
	var se *control.StatusError
	if errors.As(err, &se) {
		return se.Status
	}
	return 0
}
