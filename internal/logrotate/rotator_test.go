package logrotate

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeClock is a Clock that moves only when told to.
type fakeClock struct {
	mu      sync.Mutex
	now     time.Time
	waiters []fakeWaiter
	afters  chan time.Duration // receives each After's d, for tests to wait on
}

type fakeWaiter struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock(now time.Time) *fakeClock {
	return &fakeClock{now: now, afters: make(chan time.Duration, 64)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	c.waiters = append(c.waiters, fakeWaiter{c.now.Add(d), ch})
	c.afters <- d
	return ch
}

// Advance moves the clock by d and fires the waiters that are due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	c.waiters = slices.DeleteFunc(c.waiters, func(w fakeWaiter) bool {
		if w.at.After(c.now) {
			return false
		}
		w.ch <- c.now
		return true
	})
}

// receive returns the next value from ch, failing the test after a deadline.
func receive[T any](t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(10 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
		panic("unreachable")
	}
}

// zone is not UTC, so that midnight in it is not midnight in UTC.
var zone = time.FixedZone("UTC+5", 5*60*60)

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func appendFile(t *testing.T, path, data string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
}

// wantFiles fails the test unless dir holds exactly the files named in want,
// with the given contents.
func wantFiles(t *testing.T, dir string, want map[string]string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		got[e.Name()] = string(data)
	}
	for name, data := range want {
		if g, ok := got[name]; !ok {
			t.Errorf("missing %s", name)
		} else if g != data {
			t.Errorf("%s holds %q, want %q", name, g, data)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("unexpected file %s", name)
		}
	}
}

func TestDailyRotationAtLocalMidnight(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.log")
	other := filepath.Join(dir, "err.log")
	writeFile(t, path, "saturday\n")
	writeFile(t, other, "") // empty: nothing to rotate
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	clock := newFakeClock(time.Date(2024, 3, 9, 23, 59, 59, 0, zone))
	rotated := make(chan []string, 1)
	r, err := NewRotator([]string{path, other}, Policy{Daily: true}, Options{
		Clock:      clock,
		CheckEvery: time.Hour,
		OnRotate:   func(paths []string) { rotated <- paths },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var run sync.WaitGroup
	run.Go(func() {
		if err := r.Run(ctx); err != nil {
			t.Error(err)
		}
	})
	defer func() { cancel(); run.Wait() }()

	if d := receive(t, clock.afters, "Run to wait"); d != time.Second {
		t.Fatalf("Run waits %v at 23:59:59, want 1s (until midnight)", d)
	}
	if err := r.Run(ctx); err == nil {
		t.Error("a second concurrent Run did not fail")
	}
	clock.Advance(time.Second)
	if got := receive(t, rotated, "OnRotate"); !slices.Equal(got, []string{path}) {
		t.Errorf("OnRotate(%q), want [%s]", got, path)
	}
	wantFiles(t, dir, map[string]string{
		"app.log":            "",
		"app.log.2024-03-09": "saturday\n",
		"err.log":            "",
	})
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("fresh file: %v, %v; want mode 0640", fi.Mode(), err)
	}
	if d := receive(t, clock.afters, "Run to wait again"); d != time.Hour {
		t.Errorf("Run waits %v after midnight, want CheckEvery (1h)", d)
	}
}

func TestDailyCollisionsAndKeep(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.log")
	for _, name := range []string{"app.log.2024-03-01", "app.log.2024-03-09", "app.log.2024-03-09.1", "app.log.7"} {
		writeFile(t, filepath.Join(dir, name), name)
	}
	clock := newFakeClock(time.Date(2024, 3, 9, 12, 0, 0, 0, zone))
	r, err := NewRotator([]string{path}, Policy{Daily: true, Keep: 3}, Options{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}

	writeFile(t, path, "noon\n")
	names, err := r.RotateNow() // Daily only: today's date, taken twice
	if err != nil || !slices.Equal(names, []string{path + ".2024-03-09.2"}) {
		t.Fatalf("RotateNow() = %q, %v; want [%s.2024-03-09.2]", names, err, path)
	}
	appendFile(t, path, "evening\n")
	clock.Advance(12 * time.Hour)
	r.check(clock.Now())
	wantFiles(t, dir, map[string]string{
		"app.log":              "",
		"app.log.2024-03-09.1": "app.log.2024-03-09.1",
		"app.log.2024-03-09.2": "noon\n",
		"app.log.2024-03-09.3": "evening\n",
		"app.log.7":            "app.log.7", // numbered: not counted against dated Keep
	})

	r.check(clock.Now()) // same day: nothing to do
	appendFile(t, path, "sunday\n")
	clock.Advance(24 * time.Hour)
	r.check(clock.Now())
	wantFiles(t, dir, map[string]string{
		"app.log":              "",
		"app.log.2024-03-09.2": "noon\n",
		"app.log.2024-03-09.3": "evening\n",
		"app.log.2024-03-10":   "sunday\n",
		"app.log.7":            "app.log.7",
	})
}

func TestSizeRotationNumbersAndKeeps(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.log")
	var rotated [][]string
	clock := newFakeClock(time.Date(2024, 3, 9, 12, 0, 0, 0, zone))
	r, err := NewRotator([]string{path}, Policy{MaxSize: 10, Keep: 3}, Options{
		Clock:    clock,
		OnRotate: func(paths []string) { rotated = append(rotated, paths) },
	})
	if err != nil {
		t.Fatal(err)
	}
	r.check(clock.Now()) // missing file: nothing to do
	writeFile(t, path, "0123456789")
	r.check(clock.Now()) // 10 bytes: not over MaxSize
	wantFiles(t, dir, map[string]string{"app.log": "0123456789"})
	if len(rotated) != 0 {
		t.Fatalf("OnRotate called %d times before any rotation", len(rotated))
	}

	for gen := 1; gen <= 5; gen++ {
		writeFile(t, path, strings.Repeat(string(rune('a'+gen-1)), 11))
		r.check(clock.Now())
	}
	wantFiles(t, dir, map[string]string{
		"app.log":   "",
		"app.log.1": "eeeeeeeeeee",
		"app.log.2": "ddddddddddd",
		"app.log.3": "ccccccccccc",
	})
	if len(rotated) != 5 || !slices.Equal(rotated[4], []string{path}) {
		t.Errorf("OnRotate calls: %q, want 5 of [%s]", rotated, path)
	}
}

func TestSizeRotationKeepsAllAndLeavesGaps(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.log")
	writeFile(t, filepath.Join(dir, "app.log.5"), "older, past a gap")
	writeFile(t, filepath.Join(dir, "app.log.2024-03-08"), "dated")
	r, err := NewRotator([]string{path}, Policy{MaxSize: 1}, Options{Clock: newFakeClock(time.Now())})
	if err != nil {
		t.Fatal(err)
	}
	for _, data := range []string{"one", "two", "three"} {
		writeFile(t, path, data)
		r.check(time.Now())
	}
	wantFiles(t, dir, map[string]string{
		"app.log":            "",
		"app.log.1":          "three",
		"app.log.2":          "two",
		"app.log.3":          "one",
		"app.log.5":          "older, past a gap",
		"app.log.2024-03-08": "dated",
	})
}

func TestRotateNow(t *testing.T) {
	dir := t.TempDir()
	full := filepath.Join(dir, "full.log")
	empty := filepath.Join(dir, "empty.log")
	missing := filepath.Join(dir, "missing.log")
	writeFile(t, full, "line\n")
	writeFile(t, empty, "")
	var rotated [][]string
	// Daily and MaxSize: RotateNow numbers.
	r, err := NewRotator([]string{full, empty, missing}, Policy{Daily: true, MaxSize: 1 << 20}, Options{
		Clock:    newFakeClock(time.Date(2024, 3, 9, 12, 0, 0, 0, zone)),
		OnRotate: func(paths []string) { rotated = append(rotated, paths) },
	})
	if err != nil {
		t.Fatal(err)
	}
	names, err := r.RotateNow()
	if err != nil || !slices.Equal(names, []string{full + ".1"}) {
		t.Fatalf("RotateNow() = %q, %v; want [%s.1]", names, err, full)
	}
	if !slices.EqualFunc(rotated, [][]string{{full}}, slices.Equal) {
		t.Errorf("OnRotate calls: %q, want [[%s]]", rotated, full)
	}
	wantFiles(t, dir, map[string]string{"full.log": "", "full.log.1": "line\n", "empty.log": ""})

	names, err = r.RotateNow() // everything empty now
	if err != nil || len(names) != 0 || len(rotated) != 1 {
		t.Errorf("RotateNow() of empty files = %q, %v with %d OnRotate calls; want nothing", names, err, len(rotated))
	}
}

func TestRotateNowReportsErrors(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.log")
	writeFile(t, good, "line\n")
	writeFile(t, filepath.Join(dir, "notadir"), "")
	bad := filepath.Join(dir, "notadir", "app.log")
	r, err := NewRotator([]string{bad, good}, Policy{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	names, err := r.RotateNow()
	if !slices.Equal(names, []string{good + ".1"}) {
		t.Errorf("RotateNow() names = %q, want the good file's", names)
	}
	if err == nil || !strings.HasPrefix(err.Error(), "logrotate: stat "+bad) {
		t.Errorf("RotateNow() error = %v, want the bad path's stat error", err)
	}
}

func TestRenameErrorMessage(t *testing.T) {
	dir := t.TempDir()
	err := rename(filepath.Join(dir, "x"), filepath.Join(dir, "x.1"))
	want := "logrotate: rename " + filepath.Join(dir, "x") + " to " + filepath.Join(dir, "x.1") + ": no such file or directory"
	if err == nil || err.Error() != want || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("rename error = %v, want %q wrapping os.ErrNotExist", err, want)
	}
}

func TestNewRotatorChecksArguments(t *testing.T) {
	for _, tc := range []struct {
		name  string
		paths []string
		p     Policy
		opts  Options
	}{
		{"no paths", nil, Policy{}, Options{}},
		{"empty path", []string{""}, Policy{}, Options{}},
		{"duplicate", []string{"/x/a.log", "/x/../x/a.log"}, Policy{}, Options{}},
		{"negative MaxSize", []string{"/x/a.log"}, Policy{MaxSize: -1}, Options{}},
		{"negative Keep", []string{"/x/a.log"}, Policy{Keep: -1}, Options{}},
		{"negative CheckEvery", []string{"/x/a.log"}, Policy{}, Options{CheckEvery: -1}},
	} {
		if _, err := NewRotator(tc.paths, tc.p, tc.opts); err == nil || !strings.HasPrefix(err.Error(), "logrotate: ") {
			t.Errorf("%s: NewRotator error = %v, want a logrotate error", tc.name, err)
		}
	}
}

func TestRunWithoutTriggersWaitsForContext(t *testing.T) {
	r, err := NewRotator([]string{"/nonexistent/a.log"}, Policy{}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	cancel()
	if err := receive(t, done, "Run to return"); err != nil {
		t.Errorf("Run() = %v, want nil", err)
	}
}

func TestDailyIgnoresClockSetBack(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.log")
	clock := newFakeClock(time.Date(2024, 3, 9, 0, 0, 5, 0, zone))
	r, err := NewRotator([]string{path}, Policy{Daily: true}, Options{Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, "line\n")
	clock.Advance(-10 * time.Second) // back to 2024-03-08 23:59:55
	r.check(clock.Now())
	wantFiles(t, dir, map[string]string{"app.log": "line\n"})
	clock.Advance(10 * time.Second) // 2024-03-09 again: a new day since the mark
	r.check(clock.Now())
	wantFiles(t, dir, map[string]string{"app.log": "", "app.log.2024-03-08": "line\n"})
}
