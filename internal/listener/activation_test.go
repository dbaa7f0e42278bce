package listener

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// passAt puts duplicates of the listeners' descriptors at consecutive
// descriptors from first, as a service manager passes them from 3, and
// closes them at cleanup.
func passAt(t *testing.T, first int, ls ...any) {
	t.Helper()
	for i, l := range ls {
		var fd int
		switch l := l.(type) {
		case net.Listener:
			f, err := l.(interface{ File() (*os.File, error) }).File()
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			fd = int(f.Fd())
		case int:
			fd = l
		}
		if err := unix.Dup3(fd, first+i, unix.O_CLOEXEC); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(first + i) })
	}
}

func listen(t *testing.T, network, addr string) net.Listener {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func TestActivatedReadsPassedSockets(t *testing.T) {
	const first = 200
	tcp := listen(t, "tcp", "127.0.0.1:0")
	path := filepath.Join(shortDir(t), "a.sock")
	ux := listen(t, "unix", path)
	passAt(t, first, tcp, ux)
	self := os.Getpid()

	got, err := activated(strconv.Itoa(self), "2", "http:", self, first)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Fatalf("got %v", got)
	}
	if got[0].Name != "http" || got[0].Addr != (Address{Network: "tcp", Addr: tcp.Addr().String()}) || got[0].FD != first {
		t.Errorf("first: %v", got[0])
	}
	if got[1].Name != "unknown" || got[1].Addr != (Address{Network: "unix", Addr: path}) {
		t.Errorf("second: %v", got[1])
	}
	for _, p := range got {
		flags, err := unix.FcntlInt(uintptr(p.FD), unix.F_GETFL, 0)
		if err != nil || flags&unix.O_NONBLOCK == 0 {
			t.Errorf("%v is not nonblocking (flags %#x, %v)", p, flags, err)
		}
		fdflags, err := unix.FcntlInt(uintptr(p.FD), unix.F_GETFD, 0)
		if err != nil || fdflags&unix.FD_CLOEXEC == 0 {
			t.Errorf("%v is not close-on-exec", p)
		}
	}

	if got, err := activated(strconv.Itoa(self+1), "2", "", self, first); err != nil || got != nil {
		t.Errorf("LISTEN_PID of another process: %v, %v", got, err)
	}
	if got, err := activated("", "", "", self, first); err != nil || got != nil {
		t.Errorf("nothing passed: %v, %v", got, err)
	}
}

func TestActivatedRefusesWhatIsNotAListener(t *testing.T) {
	const first = 210
	self := strconv.Itoa(os.Getpid())
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	udp, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	uf, err := udp.(*net.UDPConn).File()
	if err != nil {
		t.Fatal(err)
	}
	defer uf.Close()
	unbound, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(unbound)
	passAt(t, first, int(r.Fd()), int(uf.Fd()), unbound)
	for i, want := range []string{"not a socket", "not a stream socket", "not a listening socket"} {
		_, err := activated(self, "1", "x", os.Getpid(), first+i)
		if err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), strconv.Itoa(first+i)) {
			t.Errorf("descriptor %d: %v, want an error naming it: %q", first+i, err, want)
		}
	}
	for _, bad := range [][3]string{{"", "1", ""}, {"me", "1", ""}, {self, "many", ""}, {self, "-1", ""}} {
		if _, err := activated(bad[0], bad[1], bad[2], os.Getpid(), first); err == nil {
			t.Errorf("LISTEN_PID=%q LISTEN_FDS=%q accepted", bad[0], bad[1])
		}
	}
}

func TestPassedMatches(t *testing.T) {
	p := func(addr string) Passed { return Passed{Addr: Address{Network: "tcp", Addr: addr}} }
	for _, tc := range []struct {
		passed Passed
		listen string
		want   bool
	}{
		{p("127.0.0.1:8080"), "127.0.0.1:8080", true},
		{p("127.0.0.1:8080"), "tcp://127.0.0.1:8080", true},
		{p("127.0.0.1:8080"), "localhost:8080", true},
		{p("127.0.0.1:8080"), "127.0.0.1:8081", false},
		{p("127.0.0.1:8080"), "127.0.0.2:8080", false},
		{p("127.0.0.1:8080"), ":8080", false},
		{p("127.0.0.1:8080"), "tcp6://127.0.0.1:8080", false},
		{p("[::]:8080"), ":8080", true},
		{p("0.0.0.0:8080"), ":8080", true},
		{p("[::]:8080"), "0.0.0.0:8080", true},
		{p("[::1]:8080"), "[::1]:8080", true},
		{p("[::1]:8080"), "tcp4://[::1]:8080", false},
		{p("[::ffff:127.0.0.1]:8080"), "127.0.0.1:8080", true},
		{p("127.0.0.1:8080"), ":0", false},
		{Passed{Addr: Address{Network: "unix", Addr: "/run/a.sock"}}, "unix:///run/a.sock", true},
		{Passed{Addr: Address{Network: "unix", Addr: "/run/a.sock"}}, "/run/./a.sock", true},
		{Passed{Addr: Address{Network: "unix", Addr: "/run/a.sock"}}, "/run/b.sock", false},
		{Passed{Addr: Address{Network: "unix", Addr: "/run/a.sock"}}, "127.0.0.1:8080", false},
	} {
		a, err := Parse(tc.listen)
		if err != nil {
			t.Fatal(err)
		}
		if got := tc.passed.matches(a); got != tc.want {
			t.Errorf("passed %s, listen %q: matches = %v", tc.passed.Addr, tc.listen, got)
		}
	}
}

func TestOpenWithPassedSockets(t *testing.T) {
	ctx := context.Background()
	a := listen(t, "tcp", "127.0.0.1:0")
	b := listen(t, "tcp", "127.0.0.1:0")
	const first = 220
	passAt(t, first, a, b)
	self := os.Getpid()
	passed, err := activated(strconv.Itoa(self), "2", "http:"+StorePrefix+"admin", self, first)
	if err != nil {
		t.Fatal(err)
	}

	// By address, by name, and a fresh bind for what was not passed.
	socks, unused, err := OpenWith(ctx, []string{"fd://" + StorePrefix + "admin", a.Addr().String(), "127.0.0.1:0"}, false, passed)
	if err != nil {
		t.Fatal(err)
	}
	if len(unused) != 0 || len(socks) != 3 {
		t.Fatalf("socks %v, unused %v", socks, unused)
	}
	if !socks[0].Passed || socks[0].Bound.Addr != b.Addr().String() || socks[0].FD() != first+1 {
		t.Errorf("fd://: %+v", socks[0])
	}
	if !socks[1].Passed || socks[1].Bound.Addr != a.Addr().String() || socks[1].Name != "http" {
		t.Errorf("by address: %+v", socks[1])
	}
	if socks[2].Passed || socks[2].Bound.Addr == a.Addr().String() || socks[2].Bound.Addr == b.Addr().String() {
		t.Errorf("fresh bind: %+v", socks[2])
	}
	closeOpened(socks)

	// No addresses: every passed socket but the program's own stored ones.
	socks, unused, err = OpenWith(ctx, nil, false, passed)
	if err != nil {
		t.Fatal(err)
	}
	if len(socks) != 1 || socks[0].Name != "http" || len(unused) != 1 || unused[0].Name != StorePrefix+"admin" {
		t.Fatalf("no addresses: socks %+v, unused %v", socks, unused)
	}

	// One address: the other passed socket is returned unused.
	socks, unused, err = OpenWith(ctx, []string{"fd://http"}, false, passed)
	if err != nil || len(socks) != 1 || len(unused) != 1 || unused[0].FD != first+1 {
		t.Fatalf("socks %+v, unused %v, %v", socks, unused, err)
	}

	// A name that was not passed is an error naming it and what was passed.
	_, _, err = OpenWith(ctx, []string{"127.0.0.1:0", "fd://metrics"}, false, passed)
	if err == nil || !strings.Contains(err.Error(), `no socket named "metrics"`) || !strings.Contains(err.Error(), `"http"`) {
		t.Fatalf("unknown name: %v", err)
	}
	_, _, err = OpenWith(ctx, []string{"fd://metrics"}, false, nil)
	if err == nil || !strings.Contains(err.Error(), "none were passed") {
		t.Fatalf("nothing passed: %v", err)
	}
}

func TestParseFDAddress(t *testing.T) {
	a, err := Parse("fd://http")
	if err != nil || a != (Address{Network: "fd", Addr: "http"}) || a.String() != "fd://http" {
		t.Fatalf("%v %v", a, err)
	}
	for _, bad := range []string{"fd://", "fd://a:b", "fd://a/b"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestPreferStored(t *testing.T) {
	stored := []Passed{
		{Name: StorePrefix + "listen-0", Addr: Address{Network: "tcp", Addr: "127.0.0.1:41000"}},
		{Name: "web", Addr: Address{Network: "tcp", Addr: "127.0.0.1:8080"}},
	}
	for _, tc := range []struct{ addr, name, want string }{
		{"127.0.0.1:0", StorePrefix + "listen-0", "fd://" + StorePrefix + "listen-0"},
		{"127.0.0.1:41000", StorePrefix + "listen-0", "fd://" + StorePrefix + "listen-0"},
		{"127.0.0.1:41001", StorePrefix + "listen-0", "127.0.0.1:41001"}, // the configuration changed
		{"127.0.0.2:0", StorePrefix + "listen-0", "127.0.0.2:0"},
		{"127.0.0.1:0", StorePrefix + "listen-1", "127.0.0.1:0"},
		{"fd://web", StorePrefix + "listen-0", "fd://web"},
	} {
		if got := PreferStored(tc.addr, tc.name, stored); got != tc.want {
			t.Errorf("PreferStored(%q, %q) = %q, want %q", tc.addr, tc.name, got, tc.want)
		}
	}
}

// FuzzActivated feeds arbitrary LISTEN_* values: a clear error or sockets,
// never a panic, and never a descriptor outside the announced range.
func FuzzActivated(f *testing.F) {
	self := os.Getpid()
	f.Add(strconv.Itoa(self), "1", "http")
	f.Add(strconv.Itoa(self), "3", "a::b")
	f.Add("", "1", "")
	f.Add(strconv.Itoa(self), "-1", "")
	f.Add(strconv.Itoa(self), "99999999999999999999", "x")
	f.Fuzz(func(t *testing.T, pid, n, names string) {
		const first = 900 // nothing is open there: every descriptor is refused
		got, err := activated(pid, n, names, self, first)
		if err == nil && len(got) > 0 {
			t.Fatalf("accepted %v from descriptors that are not open", got)
		}
	})
}
