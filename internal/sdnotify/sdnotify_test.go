package sdnotify

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/helperproc"
	"golang.org/x/sys/unix"
)

func TestNotifyPathSocket(t *testing.T) {
	sock := helperproc.NewNotifySocket(t)
	t.Setenv(EnvSocket, sock.Path)
	n, err := FromEnv()
	if err != nil || n == nil {
		t.Fatalf("FromEnv: %v, %v", n, err)
	}
	if err := n.Notify("READY=1", "STATUS=2/2 workers ready"); err != nil {
		t.Fatal(err)
	}
	got, pid, err := sock.NextFrom(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Lines) != 2 || !got.Has("READY=1") || got.Value("STATUS") != "2/2 workers ready" {
		t.Fatalf("datagram %q", got.Lines)
	}
	if pid != os.Getpid() {
		t.Fatalf("sender pid %d, want %d", pid, os.Getpid())
	}
}

func TestNotifyPassesDescriptors(t *testing.T) {
	sock := helperproc.NewNotifySocket(t)
	n := &Notifier{addr: sock.Path}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if err := n.NotifyWithFDs([]int{int(w.Fd())}, "FDSTORE=1", "FDNAME=pipe"); err != nil {
		t.Fatal(err)
	}
	got, err := sock.Next(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Has("FDSTORE=1") || got.Value("FDNAME") != "pipe" || len(got.FDs) != 1 {
		t.Fatalf("datagram %q with fds %v", got.Lines, got.FDs)
	}
	// The received descriptor is the same pipe: what is written on it arrives.
	if _, err := unix.Write(got.FDs[0], []byte("x")); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, 1)
	if _, err := r.Read(b); err != nil || b[0] != 'x' {
		t.Fatalf("read %q, %v", b, err)
	}
}

func TestNotifyAbstractSocket(t *testing.T) {
	name := fmt.Sprintf("@brood-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: name}); err != nil {
		t.Fatal(err)
	}
	t.Setenv(EnvSocket, name)
	n, err := FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Notify("WATCHDOG=1"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	nb, _, err := unix.Recvfrom(fd, buf, 0)
	if err != nil || string(buf[:nb]) != "WATCHDOG=1" {
		t.Fatalf("got %q, %v", buf[:nb], err)
	}
}

func TestNotifyErrors(t *testing.T) {
	t.Setenv(EnvSocket, "")
	if n, err := FromEnv(); n != nil || err != nil {
		t.Fatalf("unset: %v, %v", n, err)
	}
	var none *Notifier
	if err := none.Notify("READY=1"); err != nil {
		t.Fatalf("nil notifier: %v", err)
	}
	t.Setenv(EnvSocket, "relative/path")
	if _, err := FromEnv(); err == nil {
		t.Fatal("a relative path was accepted")
	}
	missing := &Notifier{addr: t.TempDir() + "/nothing"}
	if err := missing.Notify("READY=1"); err == nil {
		t.Fatal("sending to a missing socket did not fail")
	}
	if err := missing.Notify("READY"); err == nil {
		t.Fatal("a line without '=' was sent")
	}
}

func TestWatchdog(t *testing.T) {
	for _, tc := range []struct {
		usec, pid string
		want      time.Duration
		ok, err   bool
	}{
		{usec: "", ok: false},
		{usec: "2000000", want: time.Second, ok: true},
		{usec: "2000000", pid: strconv.Itoa(os.Getpid()), want: time.Second, ok: true},
		{usec: "2000000", pid: "1", ok: false},
		{usec: "0", err: true},
		{usec: "soon", err: true},
		{usec: "1000", pid: "me", err: true},
	} {
		t.Setenv(EnvWatchdogUsec, tc.usec)
		t.Setenv(EnvWatchdogPID, tc.pid)
		d, ok, err := Watchdog()
		if (err != nil) != tc.err || ok != tc.ok || d != tc.want {
			t.Errorf("WATCHDOG_USEC=%q WATCHDOG_PID=%q: %v %v %v", tc.usec, tc.pid, d, ok, err)
		}
	}
}

func TestServiceEnv(t *testing.T) {
	for kv, want := range map[string]bool{
		"NOTIFY_SOCKET=/run/x": true, "WATCHDOG_USEC=1": true, "WATCHDOG_PID=1": true, "FDSTORE=4": true,
		"LISTEN_FDS=1": true, "LISTEN_PID=3": true, "LISTEN_FDNAMES=http": true,
		"LISTEN=1": false, "HOME=/root": false, "NOTIFY_SOCKETS=x": false,
	} {
		if IsServiceEnv(kv) != want {
			t.Errorf("IsServiceEnv(%q) = %v", kv, !want)
		}
	}
}

func TestMonotonicUsecAdvances(t *testing.T) {
	a := MonotonicUsec()
	deadline := time.Now().Add(5 * time.Second)
	for MonotonicUsec() == a {
		if time.Now().After(deadline) {
			t.Fatal("CLOCK_MONOTONIC did not advance")
		}
	}
}
