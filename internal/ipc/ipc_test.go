package ipc

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/proc"
)

func socketpair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	a, f, err := proc.Socketpair()
	if err != nil {
		t.Fatal(err)
	}
	b, err := net.FileConn(f)
	f.Close()
	if err != nil {
		a.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

func TestRoundTrip(t *testing.T) {
	h := Header{Kind: KindMessage, Dest: DestPID, Role: RoleWorker, Flags: FlagRaw, From: 7, To: 9, ID: 1 << 40, Ref: 3}
	buf, err := AppendFrame(nil, &h, "hello", []byte("payload"), DefaultMaxFrame)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Decode(buf)
	if err != nil {
		t.Fatal(err)
	}
	if f.Header != h || string(f.Action) != "hello" || string(f.Payload) != "payload" {
		t.Fatalf("got %+v %q %q, want %+v hello payload", f.Header, f.Action, f.Payload, h)
	}
	r := NewReader(bytes.NewReader(append(buf, buf...)), 0)
	for i := range 2 {
		f, err := r.Next()
		if err != nil || f.Header != h {
			t.Fatalf("frame %d: %+v, %v", i, f.Header, err)
		}
	}
	if _, err := r.Next(); err != io.EOF {
		t.Fatalf("after the last frame: got %v, want io.EOF", err)
	}
}

func TestLimits(t *testing.T) {
	h := Header{Kind: KindMessage, Dest: DestApp}
	_, err := AppendFrame(nil, &h, "a", make([]byte, 100), 100)
	var se *SizeError
	if !errors.As(err, &se) || se.Size != HeaderSize+101 || !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized encode: got %v, want a SizeError of %d bytes", err, HeaderSize+101)
	}
	if _, err := AppendFrame(nil, &h, string(make([]byte, MaxActionLen+1)), nil, DefaultMaxFrame); !errors.Is(err, ErrActionLong) {
		t.Fatalf("long action: got %v, want ErrActionLong", err)
	}
	buf, _ := AppendFrame(nil, &h, "a", make([]byte, 100), DefaultMaxFrame)
	if _, err := NewReader(bytes.NewReader(buf), 100).Next(); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized decode: got %v, want ErrTooLarge", err)
	}
	if _, err := NewReader(bytes.NewReader(buf[:50]), 0).Next(); err != io.ErrUnexpectedEOF {
		t.Fatalf("truncated: got %v, want io.ErrUnexpectedEOF", err)
	}
}

// A header that claims a body of the maximum size must not make the reader
// allocate that much before the body arrives.
func TestReaderAllocatesForDataNotClaims(t *testing.T) {
	hdr := []byte{0x00, 0xff, 0xff, 0x00} // ~16 MiB claimed
	r := NewReader(bytes.NewReader(append(hdr, make([]byte, 100)...)), DefaultMaxFrame)
	if _, err := r.Next(); err != io.ErrUnexpectedEOF {
		t.Fatalf("got %v, want io.ErrUnexpectedEOF", err)
	}
	if len(r.buf) > 2*initialReadBuf {
		t.Fatalf("reader grew its buffer to %d bytes for 104 bytes of input", len(r.buf))
	}
}

func TestLargeFrameThenSmall(t *testing.T) {
	h := Header{Kind: KindMessage, Dest: DestApp}
	big := bytes.Repeat([]byte("x"), 5<<20)
	var buf []byte
	buf, _ = AppendFrame(buf, &h, "big", big, DefaultMaxFrame)
	buf, _ = AppendFrame(buf, &h, "small", []byte("y"), DefaultMaxFrame)
	r := NewReader(iotestOneByteThenAll(buf), 0)
	f, err := r.Next()
	if err != nil || !bytes.Equal(f.Payload, big) {
		t.Fatalf("big frame: %v", err)
	}
	f, err = r.Next()
	if err != nil || string(f.Action) != "small" {
		t.Fatalf("small frame: %q %v", f.Action, err)
	}
}

// iotestOneByteThenAll returns a reader that returns 1 byte, then 1000, then the rest,
// so frames straddle reads.
func iotestOneByteThenAll(b []byte) io.Reader {
	return io.MultiReader(bytes.NewReader(b[:1]), bytes.NewReader(b[1:1001]), bytes.NewReader(b[1001:]))
}

// Many goroutines append through one Writer; each one's frames arrive in order.
func TestWriterOrderPerSender(t *testing.T) {
	a, b := socketpair(t)
	w := NewWriter(a, 0, 0)
	const senders, each = 4, 5000
	var wg sync.WaitGroup
	for s := range senders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				h := Header{Kind: KindMessage, Dest: DestApp, ID: uint64(i), To: uint32(s)}
				if err := w.Append(&h, "seq", []byte("0123456789abcdef")); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	got := make([]uint64, senders)
	r := NewReader(b, 0)
	done := make(chan error, 1)
	go func() {
		for n := 0; n < senders*each; n++ {
			f, err := r.Next()
			if err != nil {
				done <- err
				return
			}
			if f.ID != got[f.To] {
				done <- fmt.Errorf("sender %d: got seq %d, want %d", f.To, f.ID, got[f.To])
				return
			}
			got[f.To]++
		}
		done <- nil
	}()
	wg.Wait()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := w.Close(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
}

// Close writes what is queued even when the peer reads slowly.
func TestWriterCloseFlushes(t *testing.T) {
	a, b := socketpair(t)
	w := NewWriter(a, 0, 0)
	payload := make([]byte, 64<<10)
	const n = 64 // 4 MiB: more than the socket buffers hold
	for i := range n {
		if err := w.Append(&Header{Kind: KindMessage, Dest: DestApp, ID: uint64(i)}, "x", payload); err != nil {
			t.Fatal(err)
		}
	}
	count := make(chan int, 1)
	go func() {
		r := NewReader(b, 0)
		c := 0
		for {
			if _, err := r.Next(); err != nil {
				count <- c
				return
			}
			c++
		}
	}()
	if err := w.Close(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if c := <-count; c != n {
		t.Fatalf("peer read %d frames, want %d", c, n)
	}
	if err := w.Append(&Header{Kind: KindMessage, Dest: DestApp}, "x", nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: got %v, want ErrClosed", err)
	}
}

func TestWriterQueueLimit(t *testing.T) {
	a, _ := socketpair(t) // nobody reads b
	w := NewWriter(a, 1<<20, 0)
	defer w.Close(time.Now())
	payload := make([]byte, 60<<10)
	var err error
	for i := 0; i < 1000 && err == nil; i++ {
		err = w.Append(&Header{Kind: KindMessage, Dest: DestApp}, "x", payload)
	}
	if !errors.Is(err, ErrBufferFull) {
		t.Fatalf("got %v, want ErrBufferFull once the peer stops reading", err)
	}
}

func TestWriterPipe(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	w := NewWriter(a, 0, 0)
	go func() {
		for i := range 100 {
			w.Append(&Header{Kind: KindMessage, Dest: DestApp, ID: uint64(i)}, "p", nil)
		}
	}()
	r := NewReader(b, 0)
	for i := range 100 {
		f, err := r.Next()
		if err != nil || f.ID != uint64(i) {
			t.Fatalf("frame %d: id %d, %v", i, f.ID, err)
		}
	}
	if err := w.Close(time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
}

func BenchmarkAppendFrame(b *testing.B) {
	h := Header{Kind: KindMessage, Dest: DestApp, From: 1}
	payload := make([]byte, 64)
	buf := make([]byte, 0, 4096)
	b.ReportAllocs()
	b.SetBytes(int64(EncodedLen("bench", 64)))
	for b.Loop() {
		buf, _ = AppendFrame(buf[:0], &h, "bench", payload, DefaultMaxFrame)
	}
}

func BenchmarkReaderNext(b *testing.B) {
	h := Header{Kind: KindMessage, Dest: DestApp, From: 1}
	one, _ := AppendFrame(nil, &h, "bench", make([]byte, 64), DefaultMaxFrame)
	stream := bytes.Repeat(one, 1024)
	src := bytes.NewReader(stream)
	r := NewReader(src, 0)
	b.ReportAllocs()
	b.SetBytes(int64(len(one)))
	for b.Loop() {
		if _, err := r.Next(); err == io.EOF {
			src.Reset(stream)
			if _, err := r.Next(); err != nil {
				b.Fatal(err)
			}
		} else if err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWriterThroughput sends 64-byte messages from one goroutine in a
// tight loop through a Writer to a reader on the other end of a socketpair: the
// pattern of a process streaming messages. It reports messages per second and
// write syscalls per message (batching makes it well below 1).
func BenchmarkWriterThroughput(b *testing.B) {
	a, c := socketpair(b)
	w := NewWriter(a, 0, 0)
	payload := make([]byte, 64)
	h := Header{Kind: KindMessage, Dest: DestApp}
	done := make(chan int, 1)
	go func() {
		r := NewReader(c, 0)
		n := 0
		for {
			if _, err := r.Next(); err != nil {
				done <- n
				return
			}
			n++
		}
	}()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for b.Loop() {
		if err := w.Append(&h, "bench", payload); err != nil {
			b.Fatal(err)
		}
	}
	w.Close(time.Now().Add(10 * time.Second))
	a.Close()
	got := <-done
	b.ReportMetric(float64(got)/time.Since(start).Seconds(), "msgs/s")
	b.ReportMetric(float64(w.writes.Load())/float64(got), "writes/msg")
}

// A burst grows the Writer's buffers far beyond a steady-state size; once it
// is written they are released, over a socketpair (direct writes) and a pipe
// (the flusher only), while small steady writes keep theirs.
func TestWriterShrinksAfterBurst(t *testing.T) {
	for _, tc := range []struct {
		name string
		pair func(t *testing.T) (net.Conn, net.Conn)
	}{
		{"socketpair", func(t *testing.T) (net.Conn, net.Conn) { return socketpair(t) }},
		{"pipe", func(t *testing.T) (net.Conn, net.Conn) { a, b := net.Pipe(); return a, b }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := tc.pair(t)
			defer a.Close()
			defer b.Close()
			w := NewWriter(a, 0, 0)
			defer w.Close(time.Now().Add(time.Second))
			payload := make([]byte, 1<<20)
			const n = 32 // 32 MiB queued at once: the peer reads only afterwards
			for i := range n {
				if err := w.Queue(mustFrame(t, &Header{Kind: KindMessage, Dest: DestApp, ID: uint64(i)}, "x", payload)); err != nil {
					t.Fatal(err)
				}
			}
			peak := w.Capacity()
			if peak < n<<20 {
				t.Fatalf("capacity %d with %d MiB queued", peak, n)
			}
			read := make(chan int, 1)
			go func() {
				r := NewReader(b, 0)
				c := 0
				for c < n+1 {
					if _, err := r.Next(); err != nil {
						break
					}
					c++
				}
				read <- c
			}()
			w.Flush()
			if err := w.Append(&Header{Kind: KindMessage, Dest: DestApp}, "small", nil); err != nil {
				t.Fatal(err)
			}
			if c := <-read; c != n+1 {
				t.Fatalf("peer read %d frames, want %d", c, n+1)
			}
			deadline := time.Now().Add(10 * time.Second)
			for w.Buffered() > 0 || w.Capacity() > 2*maxIdleWriteBuf {
				if time.Now().After(deadline) {
					t.Fatalf("after the burst: %d bytes buffered, capacity %d (peak %d); want at most %d", w.Buffered(), w.Capacity(), peak, 2*maxIdleWriteBuf)
				}
				runtime.Gosched()
			}
		})
	}
}

func mustFrame(t *testing.T, h *Header, action string, payload []byte) []byte {
	t.Helper()
	raw, err := AppendFrame(nil, h, action, payload, DefaultMaxFrame)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// Past mapFrom, pending bytes move to a mapping, small frames queued before
// included, and every mapping is unmapped as soon as it is written: nothing
// of a burst stays mapped, and the peer reads every frame intact and in order,
// over a socketpair (direct writes) and a pipe (the flusher only).
func TestWriterMapsLargeBurstsAndUnmapsThemWhenWritten(t *testing.T) {
	for _, tc := range []struct {
		name string
		pair func(t *testing.T) (net.Conn, net.Conn)
	}{
		{"socketpair", func(t *testing.T) (net.Conn, net.Conn) { return socketpair(t) }},
		{"pipe", func(t *testing.T) (net.Conn, net.Conn) { a, b := net.Pipe(); return a, b }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := tc.pair(t)
			defer a.Close()
			defer b.Close()
			w := NewWriter(a, 0, 0)
			defer w.Close(time.Now().Add(time.Second))
			const n = 24
			sizes := func(i int) int { return [...]int{1 << 20, 100, 300 << 10, 5}[i%4] }
			fill := func(i int) []byte { return bytes.Repeat([]byte{byte(i + 1)}, sizes(i)) }
			for i := range n {
				if err := w.Queue(mustFrame(t, &Header{Kind: KindMessage, Dest: DestApp, ID: uint64(i)}, "x", fill(i))); err != nil {
					t.Fatal(err)
				}
				if i == 0 {
					w.mu.Lock()
					mapped := w.pendingMem != nil
					w.mu.Unlock()
					if !mapped {
						t.Fatal("a 1 MiB frame was queued on the heap")
					}
				}
			}
			done := make(chan error, 1)
			go func() {
				r := NewReader(b, 0)
				for i := range n + 1 {
					f, err := r.Next()
					if err != nil {
						done <- err
						return
					}
					if i < n && (f.ID != uint64(i) || !bytes.Equal(f.Payload, fill(i))) {
						done <- fmt.Errorf("frame %d: id %d, %d bytes", i, f.ID, len(f.Payload))
						return
					}
				}
				done <- nil
			}()
			w.Flush()
			// More while the first batch is being written: appended to a
			// mapping that may grow, then written in a batch of its own.
			for i := range 8 {
				if err := w.Append(&Header{Kind: KindMessage, Dest: DestApp, ID: uint64(1000 + i)}, "x", make([]byte, 1<<20)); err != nil {
					t.Fatal(err)
				}
			}
			if err := w.Append(&Header{Kind: KindMessage, Dest: DestApp}, "small", nil); err != nil {
				t.Fatal(err)
			}
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			// The reader stopped after n+1 frames; drain the rest.
			go io.Copy(io.Discard, b)
			deadline := time.Now().Add(10 * time.Second)
			for {
				w.mu.Lock()
				buffered, pm, om := len(w.pending)+len(w.out), w.pendingMem, w.outMem
				w.mu.Unlock()
				if buffered == 0 && pm == nil && om == nil {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("after the burst: %d bytes buffered, pending mapped %v, out mapped %v", buffered, pm != nil, om != nil)
				}
				runtime.Gosched()
			}
		})
	}
}

// A write error drops what is queued, mappings included.
func TestWriterUnmapsOnWriteError(t *testing.T) {
	a, b := socketpair(t)
	defer a.Close()
	w := NewWriter(a, 0, 0)
	defer w.Close(time.Now().Add(time.Second))
	b.Close()
	for i := range 4 {
		if err := w.Queue(mustFrame(t, &Header{Kind: KindMessage, Dest: DestApp, ID: uint64(i)}, "x", make([]byte, 1<<20))); err != nil {
			t.Fatal(err)
		}
	}
	w.Flush()
	deadline := time.Now().Add(10 * time.Second)
	for w.Append(&Header{Kind: KindMessage, Dest: DestApp}, "small", make([]byte, 2<<20)) == nil {
		if time.Now().After(deadline) {
			t.Fatal("no write error within 10s of the peer closing")
		}
		runtime.Gosched()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pendingMem != nil || w.outMem != nil || len(w.pending)+len(w.out) != 0 {
		t.Fatalf("after the error: pending mapped %v, out mapped %v, %d bytes", w.pendingMem != nil, w.outMem != nil, len(w.pending)+len(w.out))
	}
}

// A stream of small frames appended back to back is written in batches (the
// burst rule, with more than one P), not one write(2) per frame, and the
// first frame after a pause is written at once, by the appender.
func TestWriterBatchesBursts(t *testing.T) {
	if runtime.GOMAXPROCS(0) < 2 {
		t.Skip("bursts are batched only with GOMAXPROCS > 1")
	}
	a, c := socketpair(t)
	w := NewWriter(a, 0, 0)
	const frames = 1000 // fits the socket buffer: without the rule, each would be a write
	got := make(chan int, 1)
	go func() {
		r := NewReader(c, 0)
		n := 0
		for n < frames+1 {
			if _, err := r.Next(); err != nil {
				break
			}
			n++
		}
		got <- n
	}()
	h := Header{Kind: KindMessage, Dest: DestApp}
	payload := make([]byte, 64)
	for range frames {
		if err := w.Append(&h, "burst", payload); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for w.Buffered() > 0 && time.Now().Before(deadline) {
		runtime.Gosched()
	}
	if writes := w.writes.Load(); writes > frames/4 {
		t.Errorf("%d frames appended back to back took %d writes, want at most %d", frames, writes, frames/4)
	}
	// After a pause longer than the burst window, the appender writes itself:
	// the frame is out when Append returns.
	w.mu.Lock()
	w.lastWrite = time.Now().Add(-time.Second)
	w.mu.Unlock()
	before := w.writes.Load()
	if err := w.Append(&h, "alone", payload); err != nil {
		t.Fatal(err)
	}
	if w.writes.Load() == before || w.Buffered() != 0 {
		t.Errorf("a frame after a pause was left to the flusher (writes %d -> %d, %d bytes buffered)", before, w.writes.Load(), w.Buffered())
	}
	if n := <-got; n != frames+1 {
		t.Fatalf("reader got %d frames, want %d", n, frames+1)
	}
	w.Close(time.Now().Add(time.Second))
}
