package brood

import (
	"io"
	"log/slog"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/ipc"
)

// TestAckOnlyForHeldMessages drives one Messenger's dispatcher directly: a
// process acknowledges handled messages only when the master holds a copy of
// one of them (FlagHeld), and the acknowledgement counts every message handled.
func TestAckOnlyForHeldMessages(t *testing.T) {
	ours, master := net.Pipe()
	defer master.Close()
	w := ipc.NewWriter(ours, 0, 0)
	m := newMessenger(w, 42, Worker, 0, slog.New(slog.DiscardHandler))
	handled := make(chan struct{}, 8)
	m.On("x", func(Message) { handled <- struct{}{} })

	deliver := func(flags ipc.Flags) {
		t.Helper()
		h := ipc.Header{Kind: ipc.KindMessage, Dest: ipc.DestPID, Role: ipc.RoleAgent, Flags: flags, From: 7, To: 42}
		raw, err := ipc.AppendFrame(nil, &h, "x", []byte(`1`), ipc.DefaultMaxFrame)
		if err != nil {
			t.Fatal(err)
		}
		f, err := ipc.Decode(raw)
		if err != nil {
			t.Fatal(err)
		}
		m.handleFrame(f)
		select {
		case <-handled:
		case <-time.After(10 * time.Second):
			t.Fatal("handler did not run")
		}
	}
	for range 3 {
		deliver(0) // pid-addressed: delivered at most once, nothing to release
	}
	deliver(ipc.FlagHeld)

	master.SetReadDeadline(time.Now().Add(10 * time.Second))
	f, err := ipc.NewReader(master, 0).Next()
	if err != nil {
		t.Fatalf("reading what the worker wrote: %v", err)
	}
	if f.Kind != ipc.KindAck || f.Ref != 4 {
		t.Fatalf("first frame the worker wrote: %v ref %d; want the ack of all 4 handled messages (none for the 3 pid-addressed ones)", f.Kind, f.Ref)
	}
	m.close(10 * time.Second)
	w.Close(time.Now().Add(time.Second))
}

// A Request takes its reply only from the process it was sent to: another
// process answering its id (the master relays replies by pid, with the real
// sender) is ignored.
func TestRequestTakesReplyOnlyFromItsReceiver(t *testing.T) {
	ours, master := net.Pipe()
	defer master.Close()
	go io.Copy(io.Discard, master)
	w := ipc.NewWriter(ours, 0, 0)
	m := newMessenger(w, 42, Worker, 0, slog.New(slog.DiscardHandler))
	m.setMembers([]byte(`[{"pid":7,"role":2,"id":0,"ready":true},{"pid":8,"role":3,"id":2,"ready":true}]`))
	got := make(chan string, 1)
	go func() {
		reply, err := m.Request(t.Context(), 7, "q", nil)
		if err != nil {
			got <- err.Error()
			return
		}
		got <- string(reply.Data)
	}()
	for m.pending.Len() == 0 {
		runtime.Gosched()
	}
	id := m.nextID.Load()
	deliver := func(from uint32, data string) {
		h := ipc.Header{Kind: ipc.KindReply, Dest: ipc.DestPID, Role: ipc.RoleWorker, From: from, To: 42, Ref: id}
		raw, err := ipc.AppendFrame(nil, &h, "q", []byte(data), ipc.DefaultMaxFrame)
		if err != nil {
			t.Fatal(err)
		}
		f, err := ipc.Decode(raw)
		if err != nil {
			t.Fatal(err)
		}
		m.handleFrame(f)
	}
	deliver(8, `"forged"`)
	deliver(7, `"real"`)
	if r := <-got; r != `"real"` {
		t.Fatalf("the request got %s, want the receiver's reply", r)
	}
	m.close(10 * time.Second)
	w.Close(time.Now().Add(time.Second))
}
