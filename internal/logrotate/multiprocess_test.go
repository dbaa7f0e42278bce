package logrotate

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// Environment of the writer helper.
const (
	envPath   = "LOGROTATE_TEST_PATH"
	envWriter = "LOGROTATE_TEST_WRITER"
	envLines  = "LOGROTATE_TEST_LINES"
)

// A writer writes at least envLines lines and goes on until it has reopened
// its File minReopens times, so that rotations happen while it writes however
// fast it is; maxWriterLines bounds the wait.
const (
	minReopens     = 2
	maxWriterLines = 2000000
)

// writerHelper is the main function of a writer process. It opens the log
// through a File, reopens it on each SIGUSR1, says "ready <id>" on stdout, waits
// for EOF on stdin (the start gate), writes its lines as fast as it can until
// it has written enough and reopened minReopens times, and says
// "done <id> lines=<n> reopens=<m>". It returns the exit code.
func writerHelper() int {
	path := os.Getenv(envPath)
	id, err1 := strconv.Atoi(os.Getenv(envWriter))
	lines, err2 := strconv.Atoi(os.Getenv(envLines))
	if err := errors.Join(err1, err2); err != nil {
		fmt.Fprintln(os.Stderr, "writer helper:", err)
		return 2
	}
	f, err := Open(path, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "writer helper:", err)
		return 1
	}

	// SIGUSR1 stays caught until exit: a late one must not kill the process.
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGUSR1)
	stop := make(chan struct{})
	var reopens atomic.Int64
	var reopenErr error
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-sig:
				if reopenErr = f.Reopen(); reopenErr != nil {
					return
				}
				reopens.Add(1)
			}
		}
	})

	fmt.Printf("ready %d\n", id)
	io.Copy(io.Discard, os.Stdin)
	var writeErr error
	seq := 0
	for ; seq < lines || reopens.Load() < minReopens; seq++ {
		if seq == maxWriterLines {
			writeErr = fmt.Errorf("only %d reopens after %d lines", reopens.Load(), seq)
			break
		}
		if _, writeErr = f.Write(testLine(id, seq)); writeErr != nil {
			break
		}
	}
	close(stop)
	wg.Wait()
	if err := errors.Join(writeErr, reopenErr, f.Close()); err != nil {
		fmt.Fprintf(os.Stderr, "writer helper %d: %v\n", id, err)
		return 1
	}
	fmt.Printf("done %d lines=%d reopens=%d\n", id, seq, reopens.Load())
	return 0
}

// The acceptance test: rotation by size under concurrent writers from
// several processes loses no line and splits none.
func TestSizeRotationWithWriterProcessesLosesNoLineAndSplitsNone(t *testing.T) {
	const writers, lines = 4, 20000
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "app.log")

	// One pipe gates the start of all writers (EOF means go); one collects
	// their reports (short lines, so atomic on a pipe).
	gateR, gateW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer gateW.Close()
	outR, outW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer outR.Close()
	cmds := make([]*exec.Cmd, 0, writers)
	t.Cleanup(func() { // on failure, leave no process behind
		for _, cmd := range cmds {
			if cmd.ProcessState == nil {
				cmd.Process.Kill()
				cmd.Wait()
			}
		}
	})
	for w := range writers {
		cmd := exec.Command(exe)
		cmd.Env = append(os.Environ(), envHelper+"=writer", envPath+"="+path,
			envWriter+"="+strconv.Itoa(w), envLines+"="+strconv.Itoa(lines))
		cmd.Stdin, cmd.Stdout, cmd.Stderr = gateR, outW, os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	gateR.Close()
	outW.Close()
	if err := outR.SetReadDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	reports := bufio.NewScanner(outR)
	for range writers {
		if !reports.Scan() || !strings.HasPrefix(reports.Text(), "ready ") {
			t.Fatalf("waiting for the writers to be ready: %q, %v", reports.Text(), reports.Err())
		}
	}

	// Every writer now catches SIGUSR1: run the rotator, then open the gate.
	var rotations atomic.Int64
	r, err := NewRotator([]string{path}, Policy{MaxSize: 64 << 10}, Options{
		CheckEvery: time.Millisecond,
		OnRotate: func([]string) {
			rotations.Add(1)
			for _, cmd := range cmds {
				cmd.Process.Signal(syscall.SIGUSR1) // os.ErrProcessDone once it exited
			}
		},
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
	stopRotator := func() { cancel(); run.Wait() }
	defer stopRotator()
	gateW.Close()

	var reopens []string
	written := make([]int, writers) // lines per writer
	for reports.Scan() {            // until every writer has exited (EOF)
		reopens = append(reopens, reports.Text())
		var id, n, m int
		if _, err := fmt.Sscanf(reports.Text(), "done %d lines=%d reopens=%d", &id, &n, &m); err != nil || id < 0 || id >= writers {
			t.Fatalf("bad report from a writer: %q (%v)", reports.Text(), err)
		}
		written[id] = n
	}
	if err := reports.Err(); err != nil {
		t.Fatalf("reading the writers' reports: %v", err)
	}
	for _, cmd := range cmds {
		if err := cmd.Wait(); err != nil {
			t.Fatalf("writer %v: %v", cmd.Args, err)
		}
	}
	stopRotator()
	whileWriting := rotations.Load()
	final, err := r.RotateNow() // nothing if the last periodic one left path empty
	if err != nil {
		t.Fatal(err)
	}

	// Read path.N ... path.1 (oldest first), then path, which must be fresh.
	entries, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	n := len(entries) - 1
	var files []string
	for i := n; i >= 1; i-- {
		files = append(files, numbered(path, i))
	}
	files = append(files, path)
	for _, e := range entries {
		if name := filepath.Join(filepath.Dir(path), e.Name()); name != path {
			if k, ok := parseNumber(strings.TrimPrefix(name, path+".")); !ok || k > n {
				t.Fatalf("unexpected file %s among %d rotated files", name, n)
			}
		}
	}
	if fi, err := os.Stat(path); err != nil {
		t.Error(err)
	} else if fi.Size() != 0 {
		t.Errorf("after the final rotation %s holds %d bytes, want 0", path, fi.Size())
	}
	checkSeqCounts(t, readSeqs(t, files), written)

	t.Logf("%d writer processes x at least %d lines (%d bytes each): %d rotations while writing + %d final, %d rotated files; %s",
		writers, lines, lineLen, whileWriting, len(final), n, strings.Join(reopens, ", "))
	if whileWriting < 2 {
		t.Errorf("only %d rotations while the writers wrote: the test did not exercise rotation", whileWriting)
	}
}
