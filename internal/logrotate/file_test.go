package logrotate

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestFileConcurrentWritesAndReopens(t *testing.T) {
	const writers, lines, maxRenames = 8, 2000, 200
	path := filepath.Join(t.TempDir(), "sub", "dir", "app.log") // Open creates sub/dir
	f, err := Open(path, 0o644)
	if err != nil {
		t.Fatal(err)
	}

	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for seq := range lines {
				if _, err := f.Write(testLine(w, seq)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}

	done := make(chan struct{})
	var rotated []string // oldest first; written by the renamer, read after reopeners.Wait
	var reopeners sync.WaitGroup
	reopeners.Go(func() { // rename then reopen, as a rotation does
		for gen := 1; gen <= maxRenames; gen++ {
			select {
			case <-done:
				return
			default:
			}
			to := numbered(path, gen)
			if err := os.Rename(path, to); err != nil {
				t.Error(err)
				return
			}
			rotated = append(rotated, to)
			if err := f.Reopen(); err != nil {
				t.Error(err)
				return
			}
		}
	})
	reopeners.Go(func() { // reopen the same name, racing the renamer
		for {
			select {
			case <-done:
				return
			default:
			}
			if err := f.Reopen(); err != nil {
				t.Error(err)
				return
			}
		}
	})
	wg.Wait()
	close(done)
	reopeners.Wait()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	seqs := readSeqs(t, append(rotated, path))
	checkSeqs(t, seqs, writers, lines)
	t.Logf("%d writers x %d lines across %d files", writers, lines, len(rotated)+1)
}

func TestFileAfterClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.log")
	f, err := Open(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if f.Path() != path {
		t.Errorf("Path() = %q, want %q", f.Path(), path)
	}
	if _, err := f.Write([]byte("one\n")); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("two\n")); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Write after Close: %v, want os.ErrClosed", err)
	}
	if err := f.Reopen(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Reopen after Close: %v, want os.ErrClosed", err)
	}
	if err := f.Close(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("second Close: %v, want os.ErrClosed", err)
	}
	data, err := os.ReadFile(path)
	if err != nil || string(data) != "one\n" {
		t.Errorf("file holds %q, %v; want %q", data, err, "one\n")
	}
}

func TestFileReopenKeepsOldFileOnError(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "logs", "app.log")
	f, err := Open(path, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Replace the directory by a file: the path can no longer be opened.
	if err := os.Rename(filepath.Join(dir, "logs"), filepath.Join(dir, "old")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "logs"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := f.Reopen(); err == nil {
		t.Fatal("Reopen succeeded with a file as parent directory")
	}
	if _, err := f.Write([]byte("still here\n")); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, "old", "app.log"))
	if err != nil || string(data) != "still here\n" {
		t.Errorf("old file holds %q, %v; want the line", data, err)
	}
}
