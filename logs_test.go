package brood_test

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/brood-go/brood"
	"github.com/brood-go/brood/internal/control"
	"github.com/brood-go/brood/internal/helperproc"
)

// Each writer of logsConfig writes at least logLines lines, and goes on until
// it has seen the third rotation (path.3 exists), so that rotation happens while
// the processes write however fast they are; maxLogLines bounds the wait.
const (
	logLines    = 4000
	maxLogLines = 500000
)

// logsConfig: the agent and 2 workers all write numbered lines into one log
// file that the agent rotates by size while they write. Each reports
// "done <who> lines=<n>".
func logsConfig() brood.Config {
	path := os.Getenv("LOGS_FILE")
	write := func(ctx context.Context, p *brood.Process) error {
		f, err := p.OpenLog(path)
		if err != nil {
			return err
		}
		who := fmt.Sprintf("%s%d", p.Role(), p.ID())
		p.Messenger().On(brood.ActionReady, func(brood.Message) {
			p.Go(func(ctx context.Context) {
				pad := strings.Repeat("x", 60)
				for i := 0; ; i++ {
					if i >= logLines && i%100 == 0 {
						if _, err := os.Stat(path + ".3"); err == nil {
							helperproc.Event("done %s lines=%d", who, i)
							return
						}
					}
					if i == maxLogLines || ctx.Err() != nil {
						helperproc.Event("write-error %s: no third rotation after %d lines", who, i)
						return
					}
					if _, err := fmt.Fprintf(f, "writer=%s seq=%d %s\n", who, i, pad); err != nil {
						helperproc.Event("write-error %v", err)
						return
					}
				}
			})
		})
		p.Ready()
		<-ctx.Done()
		return f.Close()
	}
	return brood.Config{
		Name:        "logs",
		Workers:     2,
		Logger:      helperproc.Logger(),
		LogRotation: brood.LogRotation{Files: []string{path}, MaxSize: 32 << 10, CheckEvery: 2 * time.Millisecond},
		Agent:       write,
		Worker:      write,
	}
}

func logsMain() { brood.Main(logsConfig()) }

func TestLogRotationAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "app.log")
	c := helperproc.Start(t, "logs", []string{"--listen="}, helperproc.Options{Env: []string{"LOGS_FILE=" + path}})
	c.WaitReady(startTimeout)
	c.WaitEvents(60*time.Second, "every writer to finish", 3, hasPrefix("done "))
	if code, out, s := cli(t, c.RunDir, "rotate-logs"); code != 0 {
		t.Fatalf("rotate-logs: exit %d %s %s", code, out, s.Stderr())
	}
	stopCluster(t, c)
	written := map[string]int{} // lines per writer
	for _, ev := range c.ReadEvents() {
		if strings.HasPrefix(ev, "write-error") {
			t.Fatal(ev)
		}
		var who string
		var n int
		if _, err := fmt.Sscanf(ev, "done %s lines=%d", &who, &n); err == nil {
			written[who] = n
		}
	}
	files, _ := filepath.Glob(path + "*")
	seen := map[string]map[int]int{}
	bad := 0
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(fh)
		for sc.Scan() {
			var who string
			var seq int
			if n, _ := fmt.Sscanf(sc.Text(), "writer=%s seq=%d", &who, &seq); n != 2 || len(sc.Text()) != len(fmt.Sprintf("writer=%s seq=%d ", who, seq))+60 {
				bad++
				continue
			}
			if seen[who] == nil {
				seen[who] = map[int]int{}
			}
			seen[who][seq]++
		}
		fh.Close()
	}
	if bad > 0 {
		t.Errorf("%d malformed (split or merged) lines", bad)
	}
	writers := make([]string, 0, len(seen))
	total := 0
	for who, seqs := range seen {
		writers = append(writers, who)
		n, ok := written[who]
		if !ok {
			t.Errorf("%s wrote lines but reported no count", who)
		}
		total += n
		for i := range n {
			if seqs[i] != 1 {
				t.Errorf("%s line %d appears %d times", who, i, seqs[i])
			}
		}
		if len(seqs) != n {
			t.Errorf("%s: %d distinct lines in the files, it wrote %d", who, len(seqs), n)
		}
	}
	sort.Strings(writers)
	if strings.Join(writers, ",") != "agent0,worker1,worker2" {
		t.Errorf("writers %v", writers)
	}
	reopens := c.Count(helperproc.MasterMsg("log files reopened"))
	t.Logf("%d lines from %d processes in %d files; %d reopens", total, len(seen), len(files), reopens)
	if len(files) < 4 || reopens < 3 {
		t.Errorf("only %d files and %d reopens: rotation did not happen while the processes wrote", len(files), reopens)
	}
}

// waitFileContains polls a file another process writes until it contains s,
// for up to 10 seconds, and returns its content.
func waitFileContains(t *testing.T, path, s, what string) []byte {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil && strings.Contains(string(b), s) {
			return b
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s within 10s: %s holds:\n%s", what, path, b)
		}
		time.Sleep(10 * time.Millisecond) // polling a file another process writes, with a deadline
	}
}

// An external logrotate renames the daemon's log and sends SIGUSR1: the master
// reopens, and new lines go to the new file.
func TestSIGUSR1ReopensDaemonLogs(t *testing.T) {
	runDir := helperproc.ShortTempDir(t)
	logDir := t.TempDir()
	killDaemon(t, runDir)
	if code, out, _ := cli(t, runDir, "start", "--daemon", "--workers", "1", "--log-dir", logDir); code != 0 {
		t.Fatalf("start: exit %d %s", code, out)
	}
	logPath := filepath.Join(logDir, "master-stderr.log")
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	pid, err := control.ReadPID(runDir)
	if err != nil {
		t.Fatal(err)
	}
	syscall.Kill(pid, syscall.SIGUSR1)
	// The master creates the new file when it reopens.
	waitFileContains(t, logPath, "log files reopened", "no new master-stderr.log with the reopen line")
	if code, _, _ := cli(t, runDir, "scale", "2"); code != 0 {
		t.Fatal("scale 2 failed")
	}
	// The master writes its log lines from a goroutine of its own: they may
	// follow the answer to scale by a moment.
	b := waitFileContains(t, logPath, `"msg":"scaled"`, "lines after the reopen are not in the new file")
	if !strings.Contains(string(b), `"child_id":2`) {
		t.Errorf("lines after the reopen are not in the new file:\n%s", b)
	}
	old, _ := os.ReadFile(logPath + ".1")
	if strings.Contains(string(old), `"msg":"scaled"`) {
		t.Error("lines after the reopen went to the renamed file")
	}
	if code, _, _ := cli(t, runDir, "stop"); code != 0 {
		t.Fatal("stop failed")
	}
}

// A symbolic link planted at the daemon's log path after an external logrotate
// renamed it: the master's reopen refuses it (and says so in the file it keeps
// writing to) instead of appending its lines to the link's target.
func TestSIGUSR1RefusesSymlinkedDaemonLog(t *testing.T) {
	runDir := helperproc.ShortTempDir(t)
	logDir := t.TempDir()
	killDaemon(t, runDir)
	if code, out, _ := cli(t, runDir, "start", "--daemon", "--workers", "1", "--log-dir", logDir); code != 0 {
		t.Fatalf("start: exit %d %s", code, out)
	}
	defer cli(t, runDir, "stop")
	logPath := filepath.Join(logDir, "master-stderr.log")
	if err := os.Rename(logPath, logPath+".1"); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(target, []byte("root only\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, logPath); err != nil {
		t.Fatal(err)
	}
	pid, err := control.ReadPID(runDir)
	if err != nil {
		t.Fatal(err)
	}
	syscall.Kill(pid, syscall.SIGUSR1)
	deadline := time.Now().Add(10 * time.Second)
	for { // the reopen failed, so the line lands in the renamed file
		if b, err := os.ReadFile(logPath + ".1"); err == nil && strings.Contains(string(b), "log files reopened") {
			if !strings.Contains(string(b), "symbolic link") {
				t.Errorf("the refused reopen is not logged:\n%s", b)
			}
			break
		}
		if b, _ := os.ReadFile(target); string(b) != "root only\n" {
			t.Fatalf("the master wrote to the link's target: %q", b)
		}
		if time.Now().After(deadline) {
			t.Fatal("no reopen line in master-stderr.log.1 within 10s")
		}
		time.Sleep(10 * time.Millisecond) // polling a file another process writes, with a deadline
	}
	if b, _ := os.ReadFile(target); string(b) != "root only\n" {
		t.Errorf("the master wrote to the link's target: %q", b)
	}
}
