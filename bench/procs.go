package main

import (
	"bufio"
	"bytes"
	"errors"
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
	"time"

	"golang.org/x/sys/unix"
)

// Every process the bench starts leads a process group of its own (a brood
// master's children join it), so that killGroups can end everything, on any
// exit path, with one signal per group.
var groups struct {
	sync.Mutex
	procs map[int]*proc // live, by pgid (= leader pid)
	all   map[int]bool  // every pgid ever created, for the leftover check
}

func allGroups() map[int]bool {
	groups.Lock()
	defer groups.Unlock()
	out := make(map[int]bool, len(groups.all))
	for k := range groups.all {
		out[k] = true
	}
	return out
}

// proc is a process the bench started. Its standard error is kept line by line
// (and copied to a log file); its standard output goes to stdout if set.
type proc struct {
	name     string
	cmd      *exec.Cmd
	log      *lineLog
	done     chan struct{} // closed when the process has exited and been reaped
	exitedAt time.Time
	err      error
}

// start runs bin with args. stdout may be nil (discarded). logDir receives
// <name>-<pid>.log with its standard error.
func start(logDir, name string, stdout io.Writer, bin string, args ...string) (*proc, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = stdout
	cmd.Stderr = w // an *os.File: Wait does not wait for our reader
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	p := &proc{name: name, cmd: cmd, log: newLineLog(), done: make(chan struct{})}
	groups.Lock()
	if groups.procs == nil {
		groups.procs, groups.all = make(map[int]*proc), make(map[int]bool)
	}
	err = cmd.Start()
	if err == nil {
		groups.procs[cmd.Process.Pid] = p
		groups.all[cmd.Process.Pid] = true
	}
	groups.Unlock()
	w.Close()
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	logFile, _ := os.Create(filepath.Join(logDir, fmt.Sprintf("%s-%d.log", name, cmd.Process.Pid)))
	go p.log.read(r, logFile)
	go func() {
		p.err = cmd.Wait()
		p.exitedAt = time.Now()
		close(p.done)
	}()
	return p, nil
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has exited, waiting at most d.
func (p *proc) exited(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-p.done:
		return true
	case <-t.C:
		return false
	}
}

// stop sends SIGTERM and waits up to d; then it kills the whole group, which
// also ends any child a master left behind. It reports whether the process
// stopped by itself.
func (p *proc) stop(d time.Duration) bool {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	clean := p.exited(d)
	p.kill()
	return clean
}

// kill SIGKILLs the process group and waits (boundedly) for the leader.
func (p *proc) kill() {
	_ = syscall.Kill(-p.pid(), syscall.SIGKILL)
	p.exited(5 * time.Second)
	groups.Lock()
	delete(groups.procs, p.pid())
	groups.Unlock()
}

// killGroups kills every group still registered: the bench's exit path, normal
// or not.
func killGroups() {
	groups.Lock()
	var ps []*proc
	for _, p := range groups.procs {
		ps = append(ps, p)
	}
	groups.Unlock()
	for _, p := range ps {
		p.kill()
	}
	reapOrphans()
}

// becomeSubreaper makes the processes our children leave behind (a brood
// child whose master was killed) our children, so that reapOrphans can collect
// them instead of leaving zombies to an init that may not reap.
func becomeSubreaper() { _ = unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) }

// reapOrphans waits for exited processes that were re-parented to us. The
// processes we started ourselves are reaped by their exec.Cmd.
func reapOrphans() {
	groups.Lock()
	defer groups.Unlock()
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || groups.procs[pid] != nil {
			continue
		}
		if st, ok := procStat(pid); ok && st.ppid == os.Getpid() && st.state == 'Z' {
			var ws unix.WaitStatus
			_, _ = unix.Wait4(pid, &ws, unix.WNOHANG, nil)
		}
	}
}

// leftovers lists live processes in any process group the bench created.
func leftovers(pgids map[int]bool) []string {
	var out []string
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, ok := procStat(pid)
		if ok && pgids[st.pgid] && st.state != 'Z' && st.state != 'X' {
			out = append(out, fmt.Sprintf("%d %s", pid, cmdline(pid)))
		}
	}
	return out
}

// lineLog keeps a process's standard error by line and lets callers wait for a
// line that matches.
type lineLog struct {
	mu      sync.Mutex
	lines   []string
	eof     bool
	changed chan struct{}
}

func newLineLog() *lineLog { return &lineLog{changed: make(chan struct{})} }

func (l *lineLog) read(r io.ReadCloser, copyTo *os.File) {
	defer r.Close()
	if copyTo != nil {
		defer copyTo.Close()
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if copyTo != nil {
			fmt.Fprintln(copyTo, line)
		}
		l.mu.Lock()
		l.lines = append(l.lines, line)
		close(l.changed)
		l.changed = make(chan struct{})
		l.mu.Unlock()
	}
	l.mu.Lock()
	l.eof = true
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
}

// wait returns the first line, from index from on, that contains every one of
// parts, waiting at most d.
func (l *lineLog) wait(from int, d time.Duration, parts ...string) (int, string, error) {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		l.mu.Lock()
		for i := from; i < len(l.lines); i++ {
			if containsAll(l.lines[i], parts) {
				line := l.lines[i]
				l.mu.Unlock()
				return i, line, nil
			}
		}
		from = len(l.lines)
		eof, changed := l.eof, l.changed
		l.mu.Unlock()
		if eof {
			return -1, "", fmt.Errorf("no log line with %q: the process closed its standard error", parts)
		}
		select {
		case <-changed:
		case <-deadline.C:
			return -1, "", fmt.Errorf("no log line with %q within %v", parts, d)
		}
	}
}

func (l *lineLog) tail(n int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines[max(0, len(l.lines)-n):], "\n")
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// logField returns the value of key=value in a slog text line.
func logField(line, key string) string {
	i := strings.Index(line, " "+key+"=")
	if i < 0 {
		return ""
	}
	v := line[i+len(key)+2:]
	if strings.HasPrefix(v, `"`) {
		if s, err := strconv.QuotedPrefix(v); err == nil {
			u, _ := strconv.Unquote(s)
			return u
		}
	}
	if j := strings.IndexByte(v, ' '); j >= 0 {
		v = v[:j]
	}
	return v
}

// --- /proc

type stat struct {
	state byte
	ppid  int
	pgid  int
}

func procStat(pid int) (stat, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return stat{}, false
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 || i+2 >= len(b) {
		return stat{}, false
	}
	f := strings.Fields(string(b[i+2:]))
	if len(f) < 3 {
		return stat{}, false
	}
	ppid, _ := strconv.Atoi(f[1])
	pgid, _ := strconv.Atoi(f[2])
	return stat{state: f[0][0], ppid: ppid, pgid: pgid}, true
}

// alive reports whether pid exists and has not exited (a zombie has).
func alive(pid int) bool {
	st, ok := procStat(pid)
	return ok && st.state != 'Z' && st.state != 'X'
}

// children returns the pids of pid's live children.
func children(pid int) []int {
	var out []int
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	for _, t := range tasks {
		b, _ := os.ReadFile(t)
		for _, f := range strings.Fields(string(b)) {
			if c, err := strconv.Atoi(f); err == nil && alive(c) {
				out = append(out, c)
			}
		}
	}
	return out
}

func cmdline(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return strings.TrimSpace(strings.ReplaceAll(string(b), "\x00", " "))
}

// roleChildren returns the master's children whose title (argv[0], "<name>
// worker 2") has the given role word.
func roleChildren(master int, role string) []int {
	var out []int
	for _, c := range children(master) {
		f := strings.Fields(cmdline(c))
		if len(f) >= 2 && f[1] == role {
			out = append(out, c)
		}
	}
	return out
}

// rssMiB returns VmRSS in MiB.
func rssMiB(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return float64(kb) / 1024, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// pssMiB returns the proportional set size (shared pages divided among the
// processes that map them) in MiB, or 0 if the kernel does not report it.
func pssMiB(pid int) float64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "Pss:"); ok {
			kb, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			return float64(kb) / 1024
		}
	}
	return 0
}

// --- network

// freeAddr returns a loopback address with a port nobody listens on.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// get sends one GET / on a new connection (Connection: close) and returns the
// status and body.
func get(addr string, timeout time.Duration) (int, string, error) {
	c, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// firstOK polls addr until it answers 200, and returns when it did.
func firstOK(addr string, within time.Duration) (time.Time, error) {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		status, _, err := get(addr, time.Until(deadline))
		if err == nil && status == http.StatusOK {
			return time.Now(), nil
		}
		time.Sleep(200 * time.Microsecond)
	}
	return time.Time{}, fmt.Errorf("%s did not answer 200 within %v", addr, within)
}

// len is the number of lines read so far: wait from it for a line still to come.
func (l *lineLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.lines)
}
