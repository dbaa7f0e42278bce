package relay

import (
	"testing"

	"github.com/brood-go/brood/internal/ipc"
)

// exceptMsg is a DestApp or DestAll message with FlagExcept naming except.
func exceptMsg(t testing.TB, dest ipc.Dest, action string, id uint64, except []int, data string) ipc.Frame {
	t.Helper()
	payload := append(ipc.AppendExcept(nil, except), data...)
	raw, err := ipc.AppendFrame(nil, &ipc.Header{Kind: ipc.KindMessage, Dest: dest, Flags: ipc.FlagExcept, ID: id}, action, payload, ipc.DefaultMaxFrame)
	if err != nil {
		t.Fatal(err)
	}
	f, err := ipc.Decode(raw)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// A DestWorker message is held for its slot while the slot's process
// starts, delivered as DestApp (what a protocol-2 receiver decodes), kept
// until acknowledged and redelivered to the slot's next process when the
// receiver dies first.
func TestDestWorkerHeldAndRedelivered(t *testing.T) {
	r := newRouter(0)
	as := r.AddSlot(ipc.RoleAgent, 0)
	ws1 := r.AddSlot(ipc.RoleWorker, 1)
	ws2 := r.AddSlot(ipc.RoleWorker, 2)
	agent, _ := attach(t, r, as, 10)
	r.MarkReady(agent)
	other, otherp := attach(t, r, ws1, 21)
	r.MarkReady(other)             // worker 1 must not get worker 2's message
	w, wp := attach(t, r, ws2, 22) // starting
	handle(r, agent, msg(t, ipc.DestWorker, 2, "handed-back", 7))
	if q, _ := r.Pending(w); q != 1 {
		t.Fatalf("held %d for the starting worker 2, want 1", q)
	}
	r.MarkReady(w)
	f := wp.next(t)
	if string(f.Action) != "handed-back" || f.ID != 7 || f.Dest != ipc.DestApp || f.To != 0 || f.Flags&ipc.FlagHeld == 0 || f.From != 10 {
		t.Fatalf("worker 2 got %q id %d dest %v to %d flags %#x from %d; want the held message as DestApp from the agent", f.Action, f.ID, f.Dest, f.To, f.Flags, f.From)
	}
	noMoreFrames(t, otherp)
	if _, un := r.Pending(w); un != 1 {
		t.Fatalf("unacknowledged %d, want 1", un)
	}
	r.Detach(w) // died without acknowledging
	nw, np := attach(t, r, ws2, 23)
	r.MarkReady(nw)
	if f := np.next(t); string(f.Action) != "handed-back" || f.ID != 7 || f.Dest != ipc.DestApp {
		t.Fatalf("the replacement got %q id %d dest %v, want the redelivered message", f.Action, f.ID, f.Dest)
	}
	if s := r.Stats(); s.Redelivered != 1 || s.Held != 2 { // held while worker 2 started, and again while its slot was empty
		t.Fatalf("stats %+v, want 2 held and 1 redelivered", s)
	}
}

// A DestWorker message for a worker slot that does not exist is nacked to
// its sender, naming the worker, and counted unreachable.
func TestDestWorkerMissingSlotIsNacked(t *testing.T) {
	r := newRouter(0)
	as := r.AddSlot(ipc.RoleAgent, 0)
	ws := r.AddSlot(ipc.RoleWorker, 1)
	agent, ap := attach(t, r, as, 10)
	r.MarkReady(agent)
	w, wp := attach(t, r, ws, 21)
	r.MarkReady(w)
	handle(r, agent, msg(t, ipc.DestWorker, 3, "to-3", 5))
	expectNack(t, ap, 5, "no worker 3")
	r.RemoveSlot(ws) // scaled down
	handle(r, agent, msg(t, ipc.DestWorker, 1, "to-1", 6))
	expectNack(t, ap, 6, "no worker 1")
	noMoreFrames(t, wp)
	if s := r.Stats(); s.Unreachable != 2 || s.Relayed != 0 {
		t.Fatalf("stats %+v, want 2 unreachable and nothing relayed", s)
	}
}

// FlagExcept skips exactly the slots its list names, and what is delivered
// carries neither the list nor the flag.
func TestExceptSkipsListedSlots(t *testing.T) {
	r := newRouter(0)
	as := r.AddSlot(ipc.RoleAgent, 0)
	agent, ap := attach(t, r, as, 10)
	r.MarkReady(agent)
	peers := map[int]*peer{}
	var sender *Endpoint
	for id := 1; id <= 4; id++ {
		e, p := attach(t, r, r.AddSlot(ipc.RoleWorker, id), uint32(20+id))
		r.MarkReady(e)
		peers[id] = p
		if id == 1 {
			sender = e
		}
	}
	check := func(p *peer, who string, id uint64) {
		t.Helper()
		f := p.next(t)
		if f.ID != id || string(f.Payload) != "data" || f.Flags&ipc.FlagExcept != 0 || f.Flags&ipc.FlagHeld == 0 {
			t.Fatalf("%s got id %d payload %q flags %#x; want message %d with its data alone, held, without FlagExcept", who, f.ID, f.Payload, f.Flags, id)
		}
	}
	// From the agent, to the app, having served workers 2 and 4 directly.
	handle(r, agent, exceptMsg(t, ipc.DestApp, "app", 1, []int{2, 4}, "data"))
	check(peers[1], "worker 1", 1)
	check(peers[3], "worker 3", 1)
	// From worker 1, to all, having served the agent directly; itself included
	// as a DestAll copy is.
	handle(r, sender, exceptMsg(t, ipc.DestAll, "all", 2, []int{0}, "data"))
	for id := 1; id <= 4; id++ {
		check(peers[id], "worker", 2)
	}
	// An empty list: everyone.
	handle(r, sender, exceptMsg(t, ipc.DestAll, "all", 3, nil, "data"))
	check(ap, "the agent", 3)
	for id := 1; id <= 4; id++ {
		check(peers[id], "worker", 3)
	}
	noMoreFrames(t, ap)
	for id, p := range peers {
		if id != 1 {
			noMoreFrames(t, p)
		}
	}
	if s := r.Stats(); s.Relayed != 2+4+5 || s.Dropped != 0 {
		t.Fatalf("stats %+v, want 11 relayed, none dropped", s)
	}
}

// A malformed except list, or FlagExcept on a destination other than app
// and all, is nacked; nothing is delivered.
func TestExceptMalformedIsNacked(t *testing.T) {
	r := newRouter(0)
	as := r.AddSlot(ipc.RoleAgent, 0)
	agent, ap := attach(t, r, as, 10)
	r.MarkReady(agent)
	w, wp := attach(t, r, r.AddSlot(ipc.RoleWorker, 1), 21)
	r.MarkReady(w)
	bad := func(dest ipc.Dest, to uint32, id uint64, payload []byte) ipc.Frame {
		raw, err := ipc.AppendFrame(nil, &ipc.Header{Kind: ipc.KindMessage, Dest: dest, To: to, Flags: ipc.FlagExcept, ID: id}, "bad", payload, ipc.DefaultMaxFrame)
		if err != nil {
			t.Fatal(err)
		}
		f, err := ipc.Decode(raw)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	handle(r, agent, bad(ipc.DestApp, 0, 1, []byte{3, 1})) // says 3 slots, names 1
	expectNack(t, ap, 1, "malformed except list")
	handle(r, agent, bad(ipc.DestAll, 0, 2, nil))
	expectNack(t, ap, 2, "malformed except list")
	handle(r, agent, bad(ipc.DestPID, 21, 3, ipc.AppendExcept(nil, []int{1})))
	expectNack(t, ap, 3, "malformed except list")
	handle(r, agent, bad(ipc.DestWorker, 1, 4, ipc.AppendExcept(nil, []int{1})))
	expectNack(t, ap, 4, "malformed except list")
	noMoreFrames(t, wp)
	if s := r.Stats(); s.Dropped != 4 || s.Relayed != 0 {
		t.Fatalf("stats %+v, want 4 dropped and nothing relayed", s)
	}
}
