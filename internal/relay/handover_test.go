package relay

import (
	"testing"
	"time"

	"github.com/brood-go/brood/internal/ipc"
)

// TestExportImport: what one Router keeps for a process (the count written,
// the unacknowledged held messages, the queued ones) carries to a second
// Router, as an upgrade of the master does: an acknowledgement read by the
// second applies to what the first wrote, queued messages are written after
// it, and a death after the hand-over redelivers the rest.
func TestExportImport(t *testing.T) {
	r1 := newRouter(0)
	as1, ws1 := r1.AddSlot(ipc.RoleAgent, 0), r1.AddSlot(ipc.RoleWorker, 1)
	agent, _ := attach(t, r1, as1, 10)
	r1.MarkReady(agent)
	w, wp := attach(t, r1, ws1, 20)
	r1.MarkReady(w)
	for i := range 4 {
		handle(r1, agent, msg(t, ipc.DestApp, 0, "m", uint64(i)))
	}
	for range 4 {
		wp.next(t)
	}
	handle(r1, w, ipc.Frame{Header: ipc.Header{Kind: ipc.KindAck, Ref: 1}}) // handled 1 of 4
	w.Writer().Close(time.Now())
	sent, retained, queued := r1.Export(w)
	if sent != 4 || len(retained) != 3 || retained[0].Seq != 2 || len(queued) != 0 {
		t.Fatalf("Export = sent %d, retained %v, queued %d; want 4, seqs 2..4, 0", sent, retained, len(queued))
	}

	r2 := newRouter(0)
	as2, ws2 := r2.AddSlot(ipc.RoleAgent, 0), r2.AddSlot(ipc.RoleWorker, 1)
	agent2, _ := attach(t, r2, as2, 10)
	r2.MarkReady(agent2)
	w2, wp2 := attach(t, r2, ws2, 20)
	extra := msg(t, ipc.DestApp, 0, "m", 4)
	extra.Raw[7] |= byte(ipc.FlagHeld) // as the router queues a role-addressed message
	if err := r2.Import(w2, sent, retained, [][]byte{extra.Raw}); err != nil {
		t.Fatal(err)
	}
	if err := r2.Import(w2, sent, retained, nil); err == nil {
		t.Fatal("a second Import into the same process succeeded")
	}
	r2.MarkReady(w2)
	if f := wp2.next(t); f.ID != 4 { // the queued one, written now
		t.Fatalf("after the import the process got message %d, want the queued 4", f.ID)
	}
	handle(r2, w2, ipc.Frame{Header: ipc.Header{Kind: ipc.KindAck, Ref: 3}}) // handled 3 of 5
	if _, un := r2.Pending(w2); un != 2 {
		t.Fatalf("unacknowledged %d after the ack, want 2 (seqs 4 and 5)", un)
	}
	r2.Detach(w2)
	nw, np := attach(t, r2, ws2, 21)
	r2.MarkReady(nw)
	for _, want := range []uint64{3, 4} {
		if f := np.next(t); f.ID != want {
			t.Fatalf("replacement got %d, want %d", f.ID, want)
		}
	}
	r2.Carry(r1.Stats())
	if s := r2.Stats(); s.Relayed != r1.Stats().Relayed+3 {
		t.Fatalf("carried counters: relayed %d, want %d", s.Relayed, r1.Stats().Relayed+3)
	}
}
