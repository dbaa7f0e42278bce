package direct

import (
	"errors"
	"io"
	"os"
	"testing"

	"github.com/brood-go/brood/internal/ipc"
)

func TestOfferRoundTrip(t *testing.T) {
	for _, o := range []Offer{{PeerPID: 77, PeerRole: ipc.RoleAgent}, {PeerPID: 1 << 22, PeerRole: ipc.RoleWorker, PeerID: 9}} {
		got, err := DecodeOffer(o.Encode())
		if err != nil || got != o {
			t.Fatalf("DecodeOffer(Encode(%+v)) = %+v, %v", o, got, err)
		}
	}
	for _, bad := range []Offer{{PeerPID: 1, PeerRole: ipc.RoleAgent}, {PeerPID: 5, PeerRole: ipc.RoleAgent, PeerID: 2}, {PeerPID: 5, PeerRole: ipc.RoleWorker}, {PeerPID: 5, PeerRole: ipc.RoleMaster}} {
		if _, err := DecodeOffer(bad.Encode()); !errors.Is(err, ErrMalformed) {
			t.Errorf("DecodeOffer(%+v): %v, want ErrMalformed", bad, err)
		}
	}
}

func FuzzDecodeOffer(f *testing.F) {
	f.Add(Offer{PeerPID: 77, PeerRole: ipc.RoleWorker, PeerID: 3}.Encode())
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		o, err := DecodeOffer(b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error not wrapping ErrMalformed: %v", err)
			}
			return
		}
		if again, err := DecodeOffer(o.Encode()); err != nil || again != o {
			t.Fatalf("decoded %+v does not round-trip: %+v, %v", o, again, err)
		}
	})
}

// TestSendReceive passes a real channel end over a real channel socket and
// checks that it works, that the master's copies can close, and that a
// closed socket ends Receive.
func TestSendReceive(t *testing.T) {
	mc, cf, err := ChannelSocket()
	if err != nil {
		t.Fatal(err)
	}
	cc, err := Conn(int(dupFd(t, cf)), "test")
	cf.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	a, b, err := NewPair()
	if err != nil {
		t.Fatal(err)
	}
	o := Offer{PeerPID: 1234, PeerRole: ipc.RoleWorker, PeerID: 2}
	if err := Send(mc, o, b); err != nil {
		t.Fatal(err)
	}
	b.Close()
	got, end, err := Receive(cc)
	if err != nil || got != o {
		t.Fatalf("Receive = %+v, %v; want %+v", got, err, o)
	}
	if _, err := a.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 2)
	if _, err := io.ReadFull(end, buf); err != nil || string(buf) != "hi" {
		t.Fatalf("read %q, %v through the passed end", buf, err)
	}
	end.Close()
	a.Close()
	mc.Close()
	if _, _, err := Receive(cc); err == nil {
		t.Fatal("Receive after the master's end closed: no error")
	}
}

func dupFd(t *testing.T, f *os.File) uintptr {
	t.Helper()
	g, err := f.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var fd int
	_ = g.Control(func(x uintptr) { fd, err = dupCloexec(int(x)) })
	if err != nil {
		t.Fatal(err)
	}
	return uintptr(fd)
}
