// Command floor is the set of baselines the brood bench compares against. Each
// mode is the least a Go program needs to do the same job without brood:
//
//	floor http -listen ADDR           one net/http process serving fixture.Handler
//	floor pingpong -n N               two processes ping-pong one frame over a raw
//	                                  socketpair (blocking write+read per hop);
//	                                  prints a fixture.RTT as JSON
//	floor pingpong -net -n N          the same through Go's netpoller (net.Conn on
//	                                  each end), as every Go program's socket I/O:
//	                                  a reference for the Go runtime's share
//	floor pingpong -relay -n N        the same with a third process in the middle
//	                                  that copies bytes both ways with blocking
//	                                  read(2)/write(2) on two threads, no
//	                                  netpoller: about what a relay in C costs
//	floor pingpong -relay -net -n N   the same relay through Go's netpoller in all
//	                                  three processes: the least a Go relay like
//	                                  brood's master costs
//	floor pingpong ... -onecpu        any of the above with every process pinned
//	                                  to one CPU (no cross-CPU wake-ups)
//	floor metrics -listen ADDR -series N -copies K
//	                                  one process serving K copies of the bench
//	                                  cluster's N application series (label
//	                                  shard=1..K, so K×N distinct series) with
//	                                  plain promhttp on /metrics
//	floor oneway -n N                 one process writes N frames to a socketpair,
//	                                  one write(2) per frame, another reads them;
//	                                  prints a fixture.Oneway as JSON
//	floor oneway -batch -n N          the same with the frames written in batches:
//	                                  each write(2) carries as many whole frames
//	                                  as fit in fixture.OnewayBatch (64 KiB), as a
//	                                  sender that coalesces its writes does
//
// Frames have the size brood puts on the wire for the same message
// (fixture.PingFrame, fixture.OnewayFrame). The child half of pingpong and oneway
// is this program again, with the socket on fd 3.
package main

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/sys/unix"

	"github.com/brood-go/brood/bench/internal/fixture"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: floor http|pingpong|oneway [flags]")
		os.Exit(2)
	}
	mode := os.Args[1]
	fs := flag.NewFlagSet(mode, flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:8080", "http: address")
	n := fs.Int("n", 20000, "pingpong: round trips; oneway: frames")
	useNet := fs.Bool("net", false, "pingpong: use net.Conn (Go's netpoller) instead of blocking syscalls")
	relay := fs.Bool("relay", false, "pingpong: through a relay process")
	oneCPU := fs.Bool("onecpu", false, "pingpong: pin every process to one CPU")
	batch := fs.Bool("batch", false, "oneway: write frames in batches of up to fixture.OnewayBatch bytes, not one write(2) each")
	series := fs.Int("series", 10000, "metrics: application series per copy")
	copies := fs.Int("copies", 8, "metrics: copies of the series (label shard)")
	natsURL := fs.String("url", "", "natsrtt, natsbcast: the NATS server (raw request/reply, or publish to 2 subscribers, between connections of this process)")
	fs.Parse(os.Args[2:])
	if *oneCPU {
		if err := fixture.PinToOneCPU(); err != nil {
			fmt.Fprintln(os.Stderr, "floor:", err)
			os.Exit(1)
		}
	}
	var err error
	switch mode {
	case "http":
		err = serveHTTP(*listen)
	case "metrics":
		err = serveMetrics(*listen, *series, *copies)
	case "pingpong":
		err = pingpong(*n, *useNet, *relay)
	case "relay-child":
		err = relayChild(*useNet)
	case "pingpong-child":
		err = echo(*useNet)
	case "natsrtt":
		var r fixture.RTT
		if r, err = fixture.RawNATSRTT(*natsURL, *n); err == nil {
			err = json.NewEncoder(os.Stdout).Encode(r)
		}
	case "natsbcast":
		var r fixture.Oneway
		if r, err = fixture.RawNATSBcast(*natsURL, *n, 2); err == nil {
			err = json.NewEncoder(os.Stdout).Encode(r)
		}
	case "oneway":
		err = oneway(*n, *batch)
	case "oneway-child":
		err = drain(*n)
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "floor:", err)
		os.Exit(1)
	}
}

// serveMetrics is what a single Go program with the cluster's series pays:
// promauto into prometheus.DefaultRegisterer, promhttp.Handler on /metrics.
func serveMetrics(addr string, series, copies int) error {
	for k := range copies {
		fixture.RegisterSeries(prometheus.WrapRegistererWith(prometheus.Labels{"shard": strconv.Itoa(k + 1)}, prometheus.DefaultRegisterer), series)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.Handler())
	return serve(addr, mux)
}

func serveHTTP(addr string) error { return serve(addr, fixture.Handler()) }

func serve(addr string, h http.Handler) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// startChild runs this program in mode with the other end of a blocking
// socketpair on fd 3, and returns our end.
func startChild(mode string, n int, extra ...string) (int, *exec.Cmd, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, nil, err
	}
	theirs := os.NewFile(uintptr(fds[1]), "child end")
	defer theirs.Close()
	exe, err := os.Executable()
	if err != nil {
		return -1, nil, err
	}
	cmd := exec.Command(exe, append([]string{mode, "-n", fmt.Sprint(n)}, extra...)...)
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		unix.Close(fds[0])
		return -1, nil, err
	}
	return fds[0], cmd, nil
}

const childFD = 3

// rw is one end of the ping-pong: blocking syscalls, or a net.Conn.
type rw interface {
	io.Writer
	io.Reader
}

// fdRW does blocking read(2) and write(2) on a descriptor.
type fdRW int

func (f fdRW) Write(b []byte) (int, error) { return len(b), writeAll(int(f), b) }
func (f fdRW) Read(b []byte) (int, error) {
	for {
		n, err := unix.Read(int(f), b)
		if err == unix.EINTR {
			continue
		}
		if err == nil && n == 0 {
			return 0, io.EOF
		}
		return n, err
	}
}

// endpoint wraps fd as an rw; with useNet, as a net.Conn in Go's poller.
func endpoint(fd int, useNet bool) (rw, func(), error) {
	if !useNet {
		return fdRW(fd), func() { unix.Close(fd) }, nil
	}
	f := os.NewFile(uintptr(fd), "socket")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return nil, nil, err
	}
	return c, func() { c.Close() }, nil
}

func pingpong(n int, useNet, relay bool) error {
	var extra []string
	if useNet {
		extra = []string{"-net"}
	}
	child := "pingpong-child"
	if relay {
		child = "relay-child"
	}
	fd, cmd, err := startChild(child, 0, extra...)
	if err != nil {
		return err
	}
	conn, closeConn, err := endpoint(fd, useNet)
	if err != nil {
		return err
	}
	frame := make([]byte, fixture.PingFrame)
	binary.BigEndian.PutUint32(frame, uint32(len(frame)-4))
	in := make([]byte, len(frame))
	const warmup = 1000
	samples := make([]int64, 0, n)
	for i := range warmup + n {
		t0 := time.Now()
		if _, err := conn.Write(frame); err != nil {
			return err
		}
		if _, err := io.ReadFull(conn, in); err != nil {
			return err
		}
		if i >= warmup {
			samples = append(samples, int64(time.Since(t0)))
		}
	}
	closeConn()
	if err := cmd.Wait(); err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(fixture.RTTOf(samples))
}

// relayChild sits between the measuring process (fd 3) and an echoing child
// of its own, and copies bytes both ways, one read and one write per chunk, as
// a relaying master does: through Go's netpoller with useNet, else with
// blocking syscalls (each direction then holds a thread in read(2)).
func relayChild(useNet bool) error {
	up, closeUp, err := endpoint(childFD, useNet)
	if err != nil {
		return err
	}
	var extra []string
	if useNet {
		extra = []string{"-net"}
	}
	fd, cmd, err := startChild("pingpong-child", 0, extra...)
	if err != nil {
		return err
	}
	down, closeDown, err := endpoint(fd, useNet)
	if err != nil {
		return err
	}
	if !useNet {
		// close(2) does not wake a thread blocked in read(2) on the same
		// socket; shutdown(2) does: the pump reading it and the echo child
		// both see EOF.
		closeDown = func() { unix.Shutdown(fd, unix.SHUT_RDWR) }
	}
	pump := func(dst io.Writer, src io.Reader) {
		buf := make([]byte, 64<<10)
		for {
			n, err := src.Read(buf)
			if err != nil {
				return
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
	}
	back := make(chan struct{})
	go func() {
		defer close(back)
		pump(up, down)
	}()
	pump(down, up) // until the measuring process closes its end
	closeDown()
	<-back
	closeUp()
	return cmd.Wait()
}

// echo answers every frame with the same frame until EOF.
func echo(useNet bool) error {
	conn, closeConn, err := endpoint(childFD, useNet)
	if err != nil {
		return err
	}
	defer closeConn()
	buf := make([]byte, fixture.PingFrame)
	for {
		if _, err := io.ReadFull(conn, buf); err != nil {
			if err == io.EOF {
				return nil
			}
			return err
		}
		if _, err := conn.Write(buf); err != nil {
			return err
		}
	}
}

// oneway writes n frames to a child that reads and counts them: one write(2)
// per frame, or, with batch, as many whole frames per write(2) as fit in
// fixture.OnewayBatch bytes.
func oneway(n int, batch bool) error {
	fd, cmd, err := startChild("oneway-child", n)
	if err != nil {
		return err
	}
	perWrite := 1
	if batch {
		perWrite = fixture.OnewayBatch / fixture.OnewayFrame
	}
	buf := make([]byte, 0, perWrite*fixture.OnewayFrame)
	for range perWrite {
		frame := make([]byte, fixture.OnewayFrame)
		binary.BigEndian.PutUint32(frame, uint32(len(frame)-4))
		buf = append(buf, frame...)
	}
	t0 := time.Now()
	for sent := 0; sent < n; sent += perWrite {
		k := min(perWrite, n-sent)
		if err := writeAll(fd, buf[:k*fixture.OnewayFrame]); err != nil {
			return err
		}
	}
	var done [1]byte
	if err := readFull(fd, done[:]); err != nil {
		return fmt.Errorf("waiting for the reader: %w", err)
	}
	secs := time.Since(t0).Seconds()
	unix.Close(fd)
	if err := cmd.Wait(); err != nil {
		return err
	}
	writes := int64((n + perWrite - 1) / perWrite)
	return json.NewEncoder(os.Stdout).Encode(fixture.Oneway{Mode: "floor", Sends: writes, Deliveries: int64(n), Seconds: secs})
}

// drain reads n frames (parsing each length prefix), then answers one byte.
func drain(n int) error {
	buf := make([]byte, 256<<10)
	frames, have := 0, 0
	for frames < n {
		k, err := unix.Read(childFD, buf[have:])
		if err == unix.EINTR {
			continue
		}
		if err != nil || k <= 0 {
			return fmt.Errorf("read after %d frames: %v", frames, err)
		}
		have += k
		off := 0
		for have-off >= 4 {
			size := 4 + int(binary.BigEndian.Uint32(buf[off:]))
			if have-off < size {
				break
			}
			off += size
			frames++
		}
		have = copy(buf, buf[off:have])
	}
	return writeAll(childFD, []byte{1})
}

func writeAll(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Write(fd, b)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b = b[n:]
	}
	return nil
}

// readFull fills b; io.EOF if the stream ends before the first byte.
func readFull(fd int, b []byte) error {
	for got := 0; got < len(b); {
		n, err := unix.Read(fd, b[got:])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			if got == 0 {
				return io.EOF
			}
			return io.ErrUnexpectedEOF
		}
		got += n
	}
	return nil
}
