package logrotate

import (
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// lineLen is the length of every test line, newline included.
const lineLen = 100

// testLine returns writer w's line number seq: "writer=2 seq=123 xxx...x\n".
func testLine(w, seq int) []byte {
	b := fmt.Appendf(make([]byte, 0, lineLen), "writer=%d seq=%d ", w, seq)
	for len(b) < lineLen-1 {
		b = append(b, 'x')
	}
	return append(b, '\n')
}

var lineRE = regexp.MustCompile(`^writer=(\d+) seq=(\d+) x+\n$`)

// readSeqs reads files in order and returns each writer's seqs in the order
// read. A line that is not exactly one testLine (split, merged or torn) fails
// the test.
func readSeqs(t *testing.T, files []string) map[int][]int {
	t.Helper()
	seqs := map[int][]int{}
	malformed := 0
	defer func() {
		if malformed > 0 {
			t.Errorf("%d malformed lines in all", malformed)
		}
	}()
	for _, name := range files {
		data, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		for i, l := range strings.SplitAfter(string(data), "\n") {
			if l == "" {
				continue
			}
			m := lineRE.FindStringSubmatch(l)
			if m == nil || len(l) != lineLen {
				if malformed++; malformed <= 10 {
					t.Errorf("%s:%d: malformed line %q", name, i+1, l)
				}
				continue
			}
			w, _ := strconv.Atoi(m[1])
			seq, _ := strconv.Atoi(m[2])
			seqs[w] = append(seqs[w], seq)
		}
	}
	return seqs
}

// checkSeqs fails the test unless each of writers wrote exactly the seqs
// 0..lines-1, once each, in order across the files as read.
func checkSeqs(t *testing.T, seqs map[int][]int, writers, lines int) {
	t.Helper()
	counts := make([]int, writers)
	for w := range counts {
		counts[w] = lines
	}
	checkSeqCounts(t, seqs, counts)
}

// checkSeqCounts fails the test unless each writer w wrote exactly the seqs
// 0..counts[w]-1, once each, in order across the files as read.
func checkSeqCounts(t *testing.T, seqs map[int][]int, counts []int) {
	t.Helper()
	writers := len(counts)
	for w := range seqs {
		if w < 0 || w >= writers {
			t.Errorf("lines from unknown writer %d", w)
		}
	}
	for w := range writers {
		lines := counts[w]
		got := seqs[w]
		sorted := slices.Sorted(slices.Values(got))
		for i, seq := range sorted {
			if seq != i {
				t.Errorf("writer %d: %d lines, first wrong seq at index %d is %d: lines lost or duplicated", w, len(got), i, seq)
				break
			}
		}
		if len(sorted) != lines {
			t.Errorf("writer %d: %d lines, want %d", w, len(sorted), lines)
		}
		if !slices.IsSorted(got) {
			t.Errorf("writer %d: seqs out of order across files", w)
		}
	}
}
