package brood_test

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/helperproc"
	"golang.org/x/sys/unix"
)

// The cluster under a service manager (DESIGN §11): a stand-in for systemd's
// notification socket records what the master says, and sockets are passed
// the way systemd and systemd-socket-activate pass them.

func monotonicUsec(t *testing.T) uint64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		t.Fatal(err)
	}
	return uint64(ts.Sec)*1e6 + uint64(ts.Nsec)/1e3
}

// noServiceEnv checks that no child inherited the service manager's variables.
func noServiceEnv(t *testing.T, pids []int) {
	t.Helper()
	for _, pid := range pids {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, kv := range strings.Split(string(b), "\x00") {
			for _, k := range []string{"NOTIFY_SOCKET=", "WATCHDOG_USEC=", "WATCHDOG_PID=", "LISTEN_PID=", "LISTEN_FDS=", "LISTEN_FDNAMES=", "FDSTORE="} {
				if strings.HasPrefix(kv, k) {
					t.Errorf("child %d inherited %s", pid, kv)
				}
			}
		}
	}
}

func TestNotifyStartReloadStop(t *testing.T) {
	sock := helperproc.NewNotifySocket(t)
	failFlag := filepath.Join(t.TempDir(), "fail")
	c := helperproc.Start(t, "hello", []string{"--workers", "2"}, helperproc.Options{
		Env: []string{"NOTIFY_SOCKET=" + sock.Path, "HELLO_FAIL_IF_EXISTS=" + failFlag},
	})
	master := c.Cmd.Process.Pid
	const wait = 20 * time.Second

	// Start: STATUS while starting, then one READY=1 with the counts and MAINPID.
	ready, before := sock.WaitFor(wait, "READY=1", func(n helperproc.Notification) bool { return n.Has("READY=1") })
	if got := ready.Value("STATUS"); got != "2/2 workers ready, agent ready, 0 restarts" {
		t.Errorf("STATUS with READY=1: %q", got)
	}
	if got := ready.Value("MAINPID"); got != strconv.Itoa(master) {
		t.Errorf("MAINPID=%s, want the master's pid %d", got, master)
	}
	for _, n := range before {
		if n.Value("STATUS") == "" || n.Has("STOPPING=1") || n.Has("RELOADING=1") {
			t.Errorf("before READY=1: %q", n.Lines)
		}
		if !strings.HasPrefix(n.Value("STATUS"), "starting: ") {
			t.Errorf("STATUS before READY=1 does not say starting: %q", n.Value("STATUS"))
		}
	}
	c.WaitReady(wait)
	noServiceEnv(t, c.ChildPIDs(""))

	// A reload: RELOADING=1 stamped with CLOCK_MONOTONIC, progress, READY=1.
	sent := monotonicUsec(t)
	c.Signal(syscall.SIGHUP)
	reloading, _ := sock.WaitFor(wait, "RELOADING=1", func(n helperproc.Notification) bool { return n.Has("RELOADING=1") })
	stamp, err := strconv.ParseUint(reloading.Value("MONOTONIC_USEC"), 10, 64)
	if err != nil || stamp < sent || stamp > monotonicUsec(t) {
		t.Errorf("MONOTONIC_USEC=%q, want a CLOCK_MONOTONIC time after %d", reloading.Value("MONOTONIC_USEC"), sent)
	}
	if got := reloading.Value("STATUS"); got != "reloading 0/3" {
		t.Errorf("STATUS with RELOADING=1: %q", got)
	}
	done, progress := sock.WaitFor(wait, "READY=1 after the reload", func(n helperproc.Notification) bool { return n.Has("READY=1") })
	var steps []string
	for _, n := range progress {
		steps = append(steps, n.Value("STATUS"))
	}
	if strings.Join(steps, ",") != "reloading 1/3,reloading 2/3,reloading 3/3" {
		t.Errorf("reload progress: %q", steps)
	}
	if got := done.Value("STATUS"); got != "2/2 workers ready, agent ready, 3 restarts" { // as in status: a reload restarts every slot
		t.Errorf("STATUS after the reload: %q", got)
	}
	noServiceEnv(t, c.ChildPIDs(""))

	// An aborted reload: the new worker cannot start; READY=1 with the failure.
	if err := os.WriteFile(failFlag, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	c.Signal(syscall.SIGHUP)
	sock.WaitFor(wait, "RELOADING=1", func(n helperproc.Notification) bool { return n.Has("RELOADING=1") })
	failed, _ := sock.WaitFor(wait, "READY=1 after the failed reload", func(n helperproc.Notification) bool { return n.Has("READY=1") })
	if got := failed.Value("STATUS"); !strings.HasPrefix(got, "reload failed: ") || !strings.Contains(got, "refuses to start") || !strings.Contains(got, "old workers keep serving") {
		t.Errorf("STATUS after the failed reload: %q", got)
	}

	// Stop: STOPPING=1 first, and the master exits 0.
	c.Signal(syscall.SIGTERM)
	stopping, _ := sock.WaitFor(wait, "STOPPING=1", func(n helperproc.Notification) bool { return n.Has("STOPPING=1") })
	if got := stopping.Value("STATUS"); !strings.HasPrefix(got, "stopping: received terminated") {
		t.Errorf("STATUS with STOPPING=1: %q", got)
	}
	if code := c.Wait(wait); code != 0 {
		t.Fatalf("exit status %d after SIGTERM", code)
	}
}

// watchdogGaps reads datagrams until match, returning the longest gap
// between two WATCHDOG=1 and how many there were.
func watchdogGaps(t *testing.T, sock *helperproc.NotifySocket, until func(helperproc.Notification) bool) (longest time.Duration, pings int) {
	t.Helper()
	var last time.Time
	for {
		n, err := sock.Next(20 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if n.Has("WATCHDOG=1") {
			now := n.At
			if !last.IsZero() && now.Sub(last) > longest {
				longest = now.Sub(last)
			}
			last = now
			pings++
		}
		if until(n) {
			return longest, pings
		}
	}
}

func TestWatchdogPausesForAHungChild(t *testing.T) {
	sock := helperproc.NewNotifySocket(t)
	// Pings every 50ms; heartbeats every 600ms with a timeout of 900ms: a
	// child that stops answering right after a round is killed at the second
	// round after it, and from 900ms to 1200ms of its silence it is hung.
	c := helperproc.Start(t, "hello", []string{"--workers", "2"}, helperproc.Options{
		Env:  []string{"NOTIFY_SOCKET=" + sock.Path, "WATCHDOG_USEC=100000", "WATCHDOG_PID=" + "0", "HELLO_HEARTBEAT=600ms"},
		Wrap: []string{"sh", "-c", `WATCHDOG_PID=$$ exec "$0" "$@"`},
	})
	_, pings := watchdogGaps(t, sock, func(n helperproc.Notification) bool { return n.Has("READY=1") })
	c.WaitReady(20 * time.Second)
	// Pings flow while all is well.
	for n := 0; n < 5; {
		got, err := sock.Next(10 * time.Second)
		if err != nil {
			t.Fatalf("no watchdog pings after READY=1 (%d before): %v", pings, err)
		}
		if got.Has("WATCHDOG=1") {
			n++
		}
	}
	hung := c.ChildPIDs("worker")[0]
	if err := syscall.Kill(hung, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	// It is killed as hung and replaced: the first ping after the STATUS
	// that says so ends the look.
	replaced := false
	gap, _ := watchdogGaps(t, sock, func(n helperproc.Notification) bool {
		if strings.HasPrefix(n.Value("STATUS"), "2/2 workers ready") && strings.HasSuffix(n.Value("STATUS"), " 1 restarts") {
			replaced = true
		}
		return replaced && n.Has("WATCHDOG=1")
	})
	if gap < 200*time.Millisecond {
		t.Errorf("longest gap between watchdog pings while a worker was hung: %v; want the pings paused", gap)
	}
	c.WaitFor(10*time.Second, "pings paused", helperproc.MasterMsg("watchdog pings paused"))
	c.WaitFor(10*time.Second, "pings resumed", helperproc.MasterMsg("watchdog pings resumed"))
	for n := 0; n < 3; {
		got, err := sock.Next(10 * time.Second)
		if err != nil {
			t.Fatalf("no watchdog pings after the replacement: %v", err)
		}
		if got.Has("WATCHDOG=1") {
			n++
		}
	}
	t.Logf("longest gap between pings while a worker was hung: %v", gap)
}

func TestWatchdogOfAnotherProcessSendsNoPings(t *testing.T) {
	sock := helperproc.NewNotifySocket(t)
	c := helperproc.Start(t, "hello", []string{"--workers", "1"}, helperproc.Options{
		Env: []string{"NOTIFY_SOCKET=" + sock.Path, "WATCHDOG_USEC=20000", "WATCHDOG_PID=1"},
	})
	_, pings := watchdogGaps(t, sock, func(n helperproc.Notification) bool { return n.Has("READY=1") })
	// A reload takes many 10ms ping intervals.
	c.Signal(syscall.SIGHUP)
	_, more := watchdogGaps(t, sock, func(n helperproc.Notification) bool { return n.Has("READY=1") })
	c.Signal(syscall.SIGTERM)
	_, last := watchdogGaps(t, sock, func(n helperproc.Notification) bool { return n.Has("STOPPING=1") })
	if pings+more+last != 0 {
		t.Fatalf("%d watchdog pings for WATCHDOG_PID=1", pings+more+last)
	}
	if code := c.Wait(20 * time.Second); code != 0 {
		t.Fatalf("exit status %d", code)
	}
}

// listenersOn counts the listening TCP sockets on port (IPv4 and IPv6).
func listenersOn(t *testing.T, port int) int {
	t.Helper()
	n := 0
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n")[1:] {
			fields := strings.Fields(line)
			if len(fields) < 4 || fields[3] != "0A" { // TCP_LISTEN
				continue
			}
			if i := strings.LastIndex(fields[1], ":"); i >= 0 {
				if p, err := strconv.ParseInt(fields[1][i+1:], 16, 32); err == nil && int(p) == port {
					n++
				}
			}
		}
	}
	return n
}

// triggerActivation connects to addr until systemd-socket-activate, which
// starts the program at the first connection, has accepted one into its
// queue.
func triggerActivation(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.Dial("tcp", addr)
		if err == nil {
			conn.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("connect %s: %v", addr, err)
		}
		time.Sleep(10 * time.Millisecond) // the tool has not bound yet: poll
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func getClose(addr, path string) (string, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Get("http://" + addr + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return string(b), err
}

func TestSystemdSocketActivate(t *testing.T) {
	tool, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("systemd-socket-activate is not installed (Debian: apt-get install systemd)")
	}
	for _, tc := range []struct {
		name   string
		listen func(addr string) string
	}{
		{"by address", func(addr string) string { return addr }},
		{"by name", func(string) string { return "fd://web" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			port := freePort(t)
			addr := fmt.Sprintf("127.0.0.1:%d", port)
			c := helperproc.Start(t, "hello", []string{"--workers", "2", "--listen", tc.listen(addr)}, helperproc.Options{
				Wrap: []string{tool, "-l", addr, "--fdname=web", "-E", "BROOD_TEST_HELPER", "-E", "BROOD_TEST_EVENTS", "-E", "BROOD_RUN_DIR", "-E", "GORACE"},
			})
			// Without --accept, the tool starts the program at the first connection.
			triggerActivation(t, addr)
			c.WaitReady(20 * time.Second)
			l := c.WaitFor(5*time.Second, "the passed socket", helperproc.MasterMsg("socket passed by the service manager"))
			if l.Str("name") != "web" || l.Str("addr") != "tcp://"+addr {
				t.Errorf("passed socket logged as %q %q", l.Str("name"), l.Str("addr"))
			}
			seen := map[string]bool{}
			for i := 0; i < 200 && len(seen) < 2; i++ {
				body, err := getClose(addr, "/")
				if err != nil {
					t.Fatal(err)
				}
				seen[strings.Fields(body)[1]] = true
			}
			if len(seen) != 2 {
				t.Errorf("answered by workers %v, want both", seen)
			}
			if n := listenersOn(t, port); n != 1 {
				t.Errorf("%d listening sockets on port %d, want the passed one alone", n, port)
			}
			noServiceEnv(t, c.ChildPIDs(""))
			c.Signal(syscall.SIGTERM)
			if code := c.Wait(20 * time.Second); code != 0 {
				t.Fatalf("exit status %d", code)
			}
		})
	}
	t.Run("unused socket", func(t *testing.T) {
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		c := helperproc.Start(t, "hello", []string{"--workers", "1", "--listen", "127.0.0.1:0"}, helperproc.Options{
			Wrap: []string{tool, "-l", addr, "--fdname=web", "-E", "BROOD_TEST_HELPER", "-E", "BROOD_TEST_EVENTS", "-E", "BROOD_RUN_DIR", "-E", "GORACE"},
		})
		triggerActivation(t, addr)
		if code := c.Wait(20 * time.Second); code != 1 {
			t.Fatalf("exit status %d, want 1", code)
		}
		if s := c.Stderr(); !strings.Contains(s, `fd 3 "web" (tcp://`+addr+`) not used by any listen address`) {
			t.Fatalf("stderr does not name the unused socket:\n%s", s)
		}
	})
}

// boundAddr is the address a descriptor is bound to.
func boundAddr(t *testing.T, fd int) string {
	t.Helper()
	sa, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	in, ok := sa.(*unix.SockaddrInet4)
	if !ok {
		t.Fatalf("fd %d is bound to %T", fd, sa)
	}
	return fmt.Sprintf("%d.%d.%d.%d:%d", in.Addr[0], in.Addr[1], in.Addr[2], in.Addr[3], in.Port)
}

// load sends one request after another (a new connection each) until stop
// is closed, and reports every failure.
type load struct {
	stop   chan struct{}
	done   chan struct{}
	mu     sync.Mutex
	ok     int
	okAt   []time.Time
	errors []string
}

func startLoad(addr string) *load {
	l := &load{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			select {
			case <-l.stop:
				return
			default:
			}
			_, err := getClose(addr, "/")
			l.mu.Lock()
			if err != nil {
				l.errors = append(l.errors, err.Error())
			} else {
				l.ok++
				l.okAt = append(l.okAt, time.Now())
			}
			l.mu.Unlock()
		}
	}()
	return l
}

func (l *load) end() (ok int, okAt []time.Time, errors []string) {
	close(l.stop)
	<-l.done
	return l.ok, l.okAt, l.errors
}

func TestFDStoreRestartRefusesNoConnection(t *testing.T) {
	sock := helperproc.NewNotifySocket(t)
	env := []string{"NOTIFY_SOCKET=" + sock.Path, "FDSTORE=8"}
	args := []string{"--workers", "2", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"}
	first := helperproc.Start(t, "hello", args, helperproc.Options{Env: env})

	// The master keeps the sockets it bound in the store, as systemd would.
	stored := map[string]int{}
	sock.WaitFor(20*time.Second, "READY=1", func(n helperproc.Notification) bool {
		if n.Has("FDSTORE=1") {
			if len(n.FDs) != 1 {
				t.Fatalf("FDSTORE=1 with %d descriptors", len(n.FDs))
			}
			stored[n.Value("FDNAME")] = n.FDs[0]
		}
		return n.Has("READY=1")
	})
	addr := first.WaitReady(20 * time.Second)
	admin := trimTCP(first.WaitFor(5*time.Second, "admin", helperproc.MasterMsg("admin listener")).Str("addr"))
	if len(stored) != 2 || boundAddr(t, stored["brood-listen-0"]) != addr || boundAddr(t, stored["brood-admin"]) != admin {
		t.Fatalf("stored %v; want brood-listen-0 on %s and brood-admin on %s", stored, addr, admin)
	}

	traffic := startLoad(addr)
	first.Signal(syscall.SIGTERM)
	if code := first.Wait(20 * time.Second); code != 0 {
		t.Fatalf("first master: exit status %d", code)
	}
	// No master runs now: a connection waits in the stored socket's queue.
	queued := make(chan error, 1)
	go func() { _, err := getClose(addr, "/"); queued <- err }()

	files := []*os.File{os.NewFile(uintptr(stored["brood-admin"]), "admin"), os.NewFile(uintptr(stored["brood-listen-0"]), "listen")}
	second := helperproc.Start(t, "hello", args, helperproc.Options{
		Env:        append(env, "LISTEN_FDS=2", "LISTEN_FDNAMES=brood-admin:brood-listen-0"),
		ExtraFiles: files,
		Wrap:       helperproc.ListenPIDWrap,
	})
	_, before := sock.WaitFor(20*time.Second, "READY=1 of the second master", func(n helperproc.Notification) bool { return n.Has("READY=1") })
	for _, n := range before {
		if n.Has("FDSTORE=1") {
			t.Errorf("the second master stored a socket again: %q", n.Lines)
		}
	}
	if got := second.WaitReady(20 * time.Second); got != addr {
		t.Errorf("second master listens on %s, want the stored %s", got, addr)
	}
	noServiceEnv(t, second.ChildPIDs(""))
	if err := <-queued; err != nil {
		t.Errorf("the connection queued while no master ran: %v", err)
	}
	if body, err := getClose(admin, "/readyz"); err != nil {
		t.Errorf("admin listener after the restart: %q, %v", body, err)
	}
	// Traffic on the new workers, then the tally.
	n0 := len(second.ChildPIDs("worker"))
	for i := 0; i < 20; i++ {
		if _, err := getClose(addr, "/"); err != nil {
			t.Fatal(err)
		}
	}
	ok, _, errs := traffic.end()
	if len(errs) > 0 {
		t.Errorf("%d of %d requests failed across the restart: %q", len(errs), ok+len(errs), errs)
	}
	port, _ := strconv.Atoi(addr[strings.LastIndex(addr, ":")+1:])
	if n := listenersOn(t, port); n != 1 {
		t.Errorf("%d listening sockets on port %d, want the stored one alone", n, port)
	}
	t.Logf("%d requests across the restart, none failed; %d workers", ok, n0)
	for _, f := range files {
		f.Close()
	}
}

func TestDrainDelayKeepsServingAfterReadyzFails(t *testing.T) {
	const delay = 1500 * time.Millisecond
	c := helperproc.Start(t, "hello", []string{"--workers", "2", "--admin", "127.0.0.1:0", "--drain-delay", delay.String()})
	addr := c.WaitReady(20 * time.Second)
	admin := trimTCP(c.WaitFor(5*time.Second, "admin", helperproc.MasterMsg("admin listener")).Str("addr"))
	if _, err := getClose(admin, "/readyz"); err != nil {
		t.Fatalf("/readyz before the stop: %v", err)
	}
	traffic := startLoad(addr)
	signalled := time.Now()
	c.Signal(syscall.SIGTERM)
	var unready time.Duration
	for {
		_, err := getClose(admin, "/readyz")
		if err != nil && strings.Contains(err.Error(), "503") {
			unready = time.Since(signalled)
			break
		}
		if time.Since(signalled) > 5*time.Second {
			t.Fatalf("/readyz still answers %v 5s after SIGTERM", err)
		}
	}
	// Requests go on until shortly before the delay is over; none may fail.
	for time.Since(signalled) < delay-300*time.Millisecond {
		select {
		case <-c.Done():
			t.Fatal("the master exited during the drain delay")
		case <-time.After(10 * time.Millisecond): // pacing the check, not synchronising
		}
	}
	ok, okAt, errs := traffic.end()
	if len(errs) > 0 {
		t.Errorf("%d of %d requests failed during the drain delay: %q", len(errs), ok+len(errs), errs)
	}
	late := 0
	for _, at := range okAt {
		if at.Sub(signalled) > unready+delay/2 {
			late++
		}
	}
	if late == 0 {
		t.Errorf("no request served in the second half of the drain delay (%d in all)", ok)
	}
	if code := c.Wait(20 * time.Second); code != 0 {
		t.Fatalf("exit status %d", code)
	}
	if took := time.Since(signalled); took < delay {
		t.Errorf("the stop took %v, less than the drain delay %v", took, delay)
	}
	t.Logf("/readyz 503 %v after SIGTERM; %d requests served during the delay, %d in its second half", unready, ok, late)
	if unready > 250*time.Millisecond {
		t.Errorf("/readyz turned 503 only %v after SIGTERM", unready)
	}
}
