package relay

import (
	"bytes"
	"testing"
)

func frameOf(n int, b byte) []byte { return bytes.Repeat([]byte{b}, n) }

// Small and big frames keep their order through Push, Pop, PopBack, Each and
// compaction, and Bytes counts both kinds.
func TestFrameQueueMixedSizes(t *testing.T) {
	var q frameQueue
	var want [][]byte
	sizes := []int{40, bigFrame, 100, bigFrame + 7, 3 << 20, 60}
	for i := range 3000 {
		raw := frameOf(sizes[i%len(sizes)]%4096+40, byte(i))
		if i%500 == 0 {
			raw = frameOf(sizes[i%len(sizes)]+bigFrame, byte(i))
		}
		q.Push(raw, uint64(i))
		want = append(want, raw)
	}
	q.PopBack()
	want = want[:len(want)-1]
	check := func() {
		t.Helper()
		total := 0
		for _, w := range want {
			total += len(w)
		}
		if q.Len() != len(want) || q.Bytes() != total {
			t.Fatalf("len %d bytes %d, want %d and %d", q.Len(), q.Bytes(), len(want), total)
		}
		i := 0
		q.Each(func(raw []byte, _ uint64) {
			if !bytes.Equal(raw, want[i]) {
				t.Fatalf("frame %d: %d bytes of %d, want %d of %d", i, len(raw), raw[0], len(want[i]), want[i][0])
			}
			i++
		})
	}
	check()
	for len(want) > 10 { // crosses the compaction threshold several times
		raw, _ := q.Front()
		if !bytes.Equal(raw, want[0]) {
			t.Fatalf("front: %d bytes, want %d", len(raw), len(want[0]))
		}
		q.Pop()
		want = want[1:]
		if len(want)%700 == 0 {
			check()
		}
	}
	check()
}

// A burst grows the queue far beyond a steady-state size; once it is drained
// the queue gives that memory back, while a small steady flow keeps its buffer.
func TestFrameQueueShrinksAfterBurst(t *testing.T) {
	var q frameQueue
	for i := range 40000 {
		q.Push(frameOf(100, 1), uint64(i)) // 4 MB in small frames, 40,000 entries
	}
	for i := range 64 {
		q.Push(frameOf(1<<20, 2), uint64(i)) // 64 MiB in big frames
	}
	if c := cap(q.buf); c < 4_000_000 {
		t.Fatalf("buffer capacity %d after the burst", c)
	}
	for q.Len() > 0 {
		q.Pop()
	}
	if c, e, b := cap(q.buf), cap(q.ends), cap(q.big); c > maxIdleBuf || e > maxIdleEntries || b > maxIdleEntries {
		t.Fatalf("drained queue keeps capacity %d bytes, %d entries, %d big; want at most %d, %d, %d", c, e, b, maxIdleBuf, maxIdleEntries, maxIdleEntries)
	}
	for i := range 5 {
		q.Push(frameOf(1000, 3), uint64(i))
	}
	for q.Len() > 0 {
		q.Pop()
	}
	c := cap(q.buf)
	if c == 0 {
		t.Fatal("a small queue dropped its buffer")
	}
	small := frameOf(1000, 4)
	if n := testing.AllocsPerRun(100, func() {
		for i := range 5 {
			q.Push(small, uint64(i))
		}
		for q.Len() > 0 {
			q.Pop()
		}
	}); n != 0 {
		t.Fatalf("steady flow allocates %v times per run", n)
	}
}

// Popped big frames are released at once: the queue's references go.
func TestFrameQueueReleasesBigFramesWhenPopped(t *testing.T) {
	var q frameQueue
	for i := range 4 {
		q.Push(frameOf(bigFrame, byte(i)), uint64(i))
	}
	q.Push(frameOf(10, 9), 9)
	q.Pop()
	q.Pop()
	if q.big[0] != nil || q.big[1] != nil {
		t.Fatal("popped big frames are still referenced")
	}
}
