package upgrade

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"
)

func sampleState() *State {
	return &State{
		Started: time.Unix(1700000000, 0).UTC(), Upgrades: 2, RunDirLock: 5, Control: 6, Client: 7,
		Sockets: []Socket{{FD: 8, Network: "tcp", Requested: "tcp://:0", Bound: "tcp://127.0.0.1:4000"}},
		Admin:   &Socket{FD: 9, Network: "tcp", Requested: "tcp://:0", Bound: "tcp://127.0.0.1:4001"},
		Slots: []Slot{
			{Role: "agent", ID: 0, Restarts: 3, Child: Child{PID: 100, Protocol: 2, IPC: 10, Stdout: 11, Stderr: 12, Sent: 5,
				Retained: []Frame{{Seq: 4, Raw: []byte("four")}, {Seq: 5, Raw: []byte("five")}}, Unread: []byte{0, 0}}},
			{Role: "worker", ID: 1, Child: Child{PID: 101, Protocol: 2, IPC: 13, Stdout: -1, Stderr: -1}},
			{Role: "worker", ID: 2, Child: Child{PID: 102, Protocol: 3, IPC: 14, Stdout: -1, Stderr: -1, Direct: 15, DirectSent: 40}},
		},
		Router:        Counters{Relayed: 9, Direct: 40},
		ScheduleClock: []byte(`{"tick":1}`),
	}
}

func TestStateRoundTrip(t *testing.T) {
	s := sampleState()
	b, err := Encode(s)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != StateVersion || got.Slots[0].Child.Retained[1].Seq != 5 || string(got.ScheduleClock) != `{"tick":1}` || got.Admin.FD != 9 {
		t.Fatalf("round trip changed the state: %+v", got)
	}
	if c := got.Slots[2].Child; c.Direct != 15 || c.DirectSent != 40 || got.Router.Direct != 40 || got.Slots[1].Child.Direct != 0 {
		t.Fatalf("round trip changed the direct-channel fields: %+v, %+v", got.Slots[2].Child, got.Router)
	}
	if want := []int{5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}; !slices.Equal(got.Descriptors(), want) {
		t.Fatalf("Descriptors = %v, want %v", got.Descriptors(), want)
	}
}

func TestDecodeRefuses(t *testing.T) {
	for name, tc := range map[string]struct {
		mutate func(*State)
		want   string
	}{
		"future version": {func(s *State) {}, "unsupported state version"},
		"duplicate fd":   {func(s *State) { s.Slots[1].Child.IPC = 10 }, "descriptor 10 is also"},
		"direct fd dup":  {func(s *State) { s.Slots[2].Child.Direct = 13 }, "channel socket: descriptor 13 is also"},
		"direct fd low":  {func(s *State) { s.Slots[2].Child.Direct = -1 }, "out of range"},
		"stdio fd":       {func(s *State) { s.Control = 1 }, "out of range"},
		"pid 1":          {func(s *State) { s.Slots[1].Child.PID = 1 }, "pid 1"},
		"two agents":     {func(s *State) { s.Slots[1].Role = "agent" }, "second agent"},
		"seq order":      {func(s *State) { s.Slots[0].Child.Retained[0].Seq = 9 }, "out of order"},
	} {
		t.Run(name, func(t *testing.T) {
			s := sampleState()
			tc.mutate(s)
			b, err := Encode(s)
			if err != nil {
				t.Fatal(err)
			}
			if name == "future version" {
				b = []byte(strings.Replace(string(b), `"version":1`, `"version":99`, 1))
			}
			_, err = Decode(b)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Decode = %v, want an error containing %q", err, tc.want)
			}
			if name == "future version" && !errors.Is(err, ErrVersion) {
				t.Fatalf("not ErrVersion: %v", err)
			}
		})
	}
}

func TestMemfd(t *testing.T) {
	f, err := WriteMemfd([]byte("state"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for range 2 { // read twice: a rollback reads the same file again
		b, err := ReadFD(int(f.Fd()))
		if err != nil || string(b) != "state" {
			t.Fatalf("ReadFD = %q, %v", b, err)
		}
	}
}

func FuzzDecodeState(f *testing.F) {
	b, _ := Encode(sampleState())
	f.Add(b)
	f.Add([]byte(`{"version":1}`))
	f.Add([]byte(`{"version":1,"slots":[{"role":"worker","id":1,"child":{"pid":5,"ipc":3,"retained":[{"seq":1}]}}]}`))
	f.Add([]byte(`{"version":1,"slots":[{"role":"worker","id":1,"child":{"pid":5,"ipc":3,"direct":4,"direct_sent":7}}],"router":{"direct":7}}`))
	f.Add([]byte(`{"version":1,"slots":[{"role":"agent","id":0,"child":{"pid":5,"ipc":3,"direct":3}}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Decode(b)
		if err != nil {
			return
		}
		// A state that decodes names each descriptor once, none of them stdio.
		seen := map[int]bool{}
		for _, fd := range s.Descriptors() {
			if fd < 3 || seen[fd] {
				t.Fatalf("decoded state names descriptor %d twice or below 3: %v", fd, s.Descriptors())
			}
			seen[fd] = true
		}
	})
}
