// Package helperproc runs brood clusters for real in tests, with the helper-process
// pattern of os/exec's tests: the test binary is the only binary. A test starts it
// with BROOD_TEST_HELPER=<name>; TestMain calls Dispatch, which runs the named
// helper (a main function that calls brood.Main); the master re-executes the same
// binary for its children, which inherit the variable and re-enter the helper,
// where brood takes the role from the environment.
//
// Helpers log JSON to stderr (see Logger). The Cluster handle parses the master's
// stderr (its own lines and, relayed through it, its children's) and lets tests
// wait for a line with a deadline instead of sleeping.
package helperproc

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/proc"
	"golang.org/x/sys/unix"
)

const envHelper = "BROOD_TEST_HELPER"

// EnvEvents names a file helpers append events to (see Event).
const EnvEvents = "BROOD_TEST_EVENTS"

var (
	helpers = map[string]func(){}
	usedMu  sync.Mutex
	used    = map[string]bool{}
)

// Register adds a helper. main must not return normally: it should call
// brood.Main or os.Exit.
func Register(name string, main func()) {
	if _, dup := helpers[name]; dup {
		panic("helperproc: duplicate helper " + name)
	}
	helpers[name] = main
}

// Dispatch runs the helper named in the environment, if any, and exits. Call it
// first in TestMain.
func Dispatch() {
	name := os.Getenv(envHelper)
	if name == "" {
		return
	}
	h, ok := helpers[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "helperproc: no helper %q\n", name)
		os.Exit(2)
	}
	h()
	fmt.Fprintf(os.Stderr, "helperproc: helper %q returned\n", name)
	os.Exit(2)
}

// CheckAllUsed fails if a registered helper was never started (when the whole
// suite ran), so dead helpers do not accumulate. Call it after m.Run.
func CheckAllUsed(runFlag string) error {
	if runFlag != "" {
		return nil
	}
	usedMu.Lock()
	defer usedMu.Unlock()
	var unused []string
	for name := range helpers {
		if !used[name] {
			unused = append(unused, name)
		}
	}
	if len(unused) > 0 {
		sort.Strings(unused)
		return fmt.Errorf("helperproc: helpers registered but never used: %v", unused)
	}
	return nil
}

// Logger is the logger helpers use: JSON on stderr, debug level.
func Logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Event appends one line to the events file (if the test set one) and logs it
// as {"msg":"event","event":...} on stderr, so that tests can wait for it.
// Appends of a line are atomic, so the file records the order in which
// processes did things.
func Event(format string, args ...any) {
	ev := fmt.Sprintf(format, args...)
	if path := os.Getenv(EnvEvents); path != "" {
		if f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
			f.WriteString(ev + "\n")
			f.Close()
		}
	}
	b, _ := json.Marshal(map[string]string{"msg": "event", "event": ev})
	os.Stderr.Write(append(b, '\n'))
}

// Record appends one line to the events file only (not stderr): for
// high-volume records a test reads after the fact.
func Record(format string, args ...any) {
	path := os.Getenv(EnvEvents)
	if path == "" {
		return
	}
	if f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600); err == nil {
		f.WriteString(fmt.Sprintf(format, args...) + "\n")
		f.Close()
	}
}

// IsEvent matches the stderr line of an Event whose text satisfies match.
func IsEvent(match func(ev string) bool) func(Line) bool {
	return func(l Line) bool { return l.Msg() == "event" && match(l.Str("event")) }
}

// EventCount returns how many Event lines so far satisfy match.
func (c *Cluster) EventCount(match func(ev string) bool) int {
	return c.Count(IsEvent(match))
}

// WaitEvents waits until n Event lines satisfy match.
func (c *Cluster) WaitEvents(timeout time.Duration, what string, n int, match func(ev string) bool) {
	c.t.Helper()
	seen := 0
	c.WaitFor(timeout, what, func(l Line) bool {
		if IsEvent(match)(l) {
			seen++
		}
		return seen >= n
	})
}

// Line is one line of the cluster's stderr: a JSON log record, or raw text.
type Line struct {
	Raw    string
	Fields map[string]any
}

// Msg is the record's message.
func (l Line) Msg() string { return l.Str("msg") }

// Str returns a field as a string.
func (l Line) Str(k string) string {
	switch v := l.Fields[k].(type) {
	case string:
		return v
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64)
	case nil:
		return ""
	default:
		return fmt.Sprint(v)
	}
}

// Int returns a numeric field.
func (l Line) Int(k string) int {
	n, _ := strconv.Atoi(l.Str(k))
	return n
}

// Cluster is a running master started from a helper.
type Cluster struct {
	t      testing.TB
	Cmd    *exec.Cmd
	Helper string // the helper it runs (for commands against it: status)
	Events string // path of the events file
	RunDir string // the cluster's run dir (BROOD_RUN_DIR), unique per cluster

	stdout SyncBuffer

	mu      sync.Mutex
	stall   chan struct{} // while set, the reader stops reading stderr until it is closed
	lines   []Line
	changed chan struct{} // closed and replaced whenever lines grow or the master exits
	exited  bool
	exitErr error
	done    chan struct{}
	wrapped bool // started under Options.Wrap
}

// Options adjust Start.
type Options struct {
	Env    []string // extra environment
	Dir    string
	RunDir string // use this run dir instead of a new one (to talk to a running cluster)
	// SmallStderr gives the master's stderr a pipe of one page, so that
	// Cluster.StallStderr fills it after a few lines.
	SmallStderr bool
	// ExtraFiles are passed from descriptor 3 on, as a service manager
	// passes sockets.
	ExtraFiles []*os.File
	// Wrap runs the master under a command: Wrap, then the test binary and
	// args ({"unshare", "--pid", "--fork", ...}, {"systemd-socket-activate",
	// "-l", addr}, ListenPIDWrap). Cluster.Cmd is then the wrapper's, which
	// must fork the master or exec it. The pids in the master's log may be
	// those of another pid namespace, so the cleanup kills only the process
	// group.
	Wrap []string
}

// ListenPIDWrap is a Wrap that sets LISTEN_PID to the master's own pid, as
// systemd does after its fork: sh's pid, which exec keeps.
var ListenPIDWrap = []string{"sh", "-c", `LISTEN_PID=$$ exec "$0" "$@"`}

// Start runs helper as a master with args (brood command-line flags). The
// cluster is killed (process group) when the test ends; on failure its stderr is
// printed.
func Start(t testing.TB, helper string, args []string, opts ...Options) *Cluster {
	t.Helper()
	usedMu.Lock()
	used[helper] = true
	usedMu.Unlock()
	var o Options
	if len(opts) > 0 {
		o = opts[0]
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := &Cluster{t: t, Helper: helper, Events: t.TempDir() + "/events", RunDir: o.RunDir, changed: make(chan struct{}), done: make(chan struct{}), wrapped: len(o.Wrap) > 0}
	if c.RunDir == "" {
		c.RunDir = ShortTempDir(t)
	}
	cmd := exec.Command(exe, args...)
	if c.wrapped {
		cmd = exec.Command(o.Wrap[0], append(append(o.Wrap[1:len(o.Wrap):len(o.Wrap)], exe), args...)...)
	}
	cmd.ExtraFiles = o.ExtraFiles
	// GORACE: the race runtime otherwise sleeps a second at every exit, which
	// would hide how long stops really take.
	cmd.Env = append(os.Environ(), envHelper+"="+helper, EnvEvents+"="+c.Events, "GORACE=atexit_sleep_ms=0", "BROOD_RUN_DIR="+c.RunDir)
	cmd.Env = append(cmd.Env, o.Env...)
	cmd.Dir = o.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 10 * time.Second // children share stdout; do not wait forever for them
	cmd.Stdout = &c.stdout
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c.Cmd = cmd
	if f, ok := stderr.(*os.File); ok && o.SmallStderr {
		if _, err := unix.FcntlInt(f.Fd(), unix.F_SETPIPE_SZ, os.Getpagesize()); err != nil {
			t.Fatalf("shrink the stderr pipe: %v", err)
		}
	}
	go c.read(stderr)
	t.Cleanup(c.cleanup)
	return c
}

func (c *Cluster) read(r interface{ Read([]byte) (int, error) }) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 4<<20)
	for sc.Scan() {
		l := Line{Raw: sc.Text()}
		if strings.HasPrefix(l.Raw, "{") {
			_ = json.Unmarshal([]byte(l.Raw), &l.Fields)
		}
		c.mu.Lock()
		c.lines = append(c.lines, l)
		close(c.changed)
		c.changed = make(chan struct{})
		stall := c.stall
		c.mu.Unlock()
		if stall != nil {
			<-stall
		}
	}
	err := c.Cmd.Wait()
	c.mu.Lock()
	c.exited, c.exitErr = true, err
	close(c.changed)
	c.changed = make(chan struct{})
	c.mu.Unlock()
	close(c.done)
}

func (c *Cluster) cleanup() {
	var pids []int
	if !c.wrapped { // pids of this namespace
		pids = c.AllPIDs()
	}
	_ = syscall.Kill(-c.Cmd.Process.Pid, syscall.SIGKILL)
	for _, p := range pids {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.t.Errorf("helperproc: master %d did not exit after SIGKILL", c.Cmd.Process.Pid)
	}
	if c.t.Failed() {
		c.t.Logf("cluster stderr:\n%s", c.Stderr())
	}
}

// ShortTempDir returns a new directory under os.TempDir, removed when the test
// ends. Unix socket paths must stay under 108 bytes, which t.TempDir (named
// after the test) can exceed.
func ShortTempDir(t testing.TB) string {
	d, err := os.MkdirTemp("", "brood")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// StallStderr stops reading the master's stderr after the next line, as a
// terminal or log reader that stalled would, until resume is called.
func (c *Cluster) StallStderr() (resume func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	stall := make(chan struct{})
	c.stall = stall
	var once sync.Once
	return func() {
		once.Do(func() {
			c.mu.Lock()
			c.stall = nil
			c.mu.Unlock()
			close(stall)
		})
	}
}

// Stdout returns what the process wrote to stdout; complete once it exited.
func (c *Cluster) Stdout() string { return c.stdout.String() }

// SyncBuffer is a strings.Builder safe for concurrent Write and String: the
// captured output of a process or a goroutine under test.
type SyncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Stderr returns everything the cluster wrote to stderr so far.
func (c *Cluster) Stderr() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var b strings.Builder
	for _, l := range c.lines {
		b.WriteString(l.Raw)
		b.WriteByte('\n')
	}
	return b.String()
}

// Lines returns the lines so far.
func (c *Cluster) Lines() []Line {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.lines)
}

// WaitFor waits until a line satisfies match, or fails the test after timeout
// (or if the master exits first). It returns the first matching line.
func (c *Cluster) WaitFor(timeout time.Duration, what string, match func(Line) bool) Line {
	c.t.Helper()
	l, err := c.waitFor(timeout, match)
	if err != nil {
		c.t.Fatalf("waiting for %s: %v", what, err)
	}
	return l
}

func (c *Cluster) waitFor(timeout time.Duration, match func(Line) bool) (Line, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	seen := 0
	for {
		c.mu.Lock()
		for ; seen < len(c.lines); seen++ {
			if match(c.lines[seen]) {
				l := c.lines[seen]
				c.mu.Unlock()
				return l, nil
			}
		}
		exited, changed := c.exited, c.changed
		c.mu.Unlock()
		if exited {
			return Line{}, fmt.Errorf("the master exited (%v) first", c.exitErr)
		}
		select {
		case <-changed:
		case <-deadline.C:
			return Line{}, fmt.Errorf("not seen within %v", timeout)
		}
	}
}

// WaitForNext waits until the cluster writes another line or exits, or d
// has passed: for tests that poll a state with no event of its own (a file,
// a status) between the cluster's lines.
func (c *Cluster) WaitForNext(d time.Duration) {
	c.mu.Lock()
	ch := c.changed
	c.mu.Unlock()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ch:
	case <-t.C:
	}
}

// Count returns how many lines so far satisfy match.
func (c *Cluster) Count(match func(Line) bool) int {
	n := 0
	for _, l := range c.Lines() {
		if match(l) {
			n++
		}
	}
	return n
}

// MasterMsg matches a master log line with the given message.
func MasterMsg(msg string) func(Line) bool {
	return func(l Line) bool { return l.Str("role") == "master" && l.Msg() == msg }
}

// WaitReady waits for "cluster ready" and returns the first bound address
// without its scheme (host:port or socket path), or "" if there is none.
func (c *Cluster) WaitReady(timeout time.Duration) string {
	c.t.Helper()
	c.WaitFor(timeout, "cluster ready", MasterMsg("cluster ready"))
	if c.Count(MasterMsg("listening")) == 0 {
		return ""
	}
	return c.Addr(0)
}

// Addr returns the i-th bound listener address from the "listening" lines,
// without its scheme.
func (c *Cluster) Addr(i int) string {
	c.t.Helper()
	n := 0
	for _, l := range c.Lines() {
		if MasterMsg("listening")(l) {
			if n == i {
				a := l.Str("addr")
				a = strings.TrimPrefix(a, "tcp://")
				return strings.TrimPrefix(a, "unix://")
			}
			n++
		}
	}
	c.t.Fatalf("no listener %d in the log", i)
	return ""
}

// ChildPIDs returns the pids of children the master started and has not seen
// exit, by role ("agent", "worker" or "" for all).
func (c *Cluster) ChildPIDs(role string) []int {
	alive := map[int]bool{}
	for _, l := range c.Lines() {
		if l.Str("role") != "master" || (role != "" && l.Str("child_role") != role) {
			continue
		}
		switch l.Msg() {
		case "started":
			alive[l.Int("child_pid")] = true
		case "exited", "crashed", "exited before it was ready":
			delete(alive, l.Int("child_pid"))
		}
	}
	var out []int
	for p := range alive {
		out = append(out, p)
	}
	sort.Ints(out)
	return out
}

// AllPIDs returns every child pid the master ever started.
func (c *Cluster) AllPIDs() []int {
	var out []int
	for _, l := range c.Lines() {
		if MasterMsg("started")(l) {
			out = append(out, l.Int("child_pid"))
		}
	}
	return out
}

// Signal sends sig to the master.
func (c *Cluster) Signal(sig syscall.Signal) {
	c.t.Helper()
	if err := c.Cmd.Process.Signal(sig); err != nil {
		c.t.Fatalf("signal master: %v", err)
	}
}

// Wait waits for the master to exit and returns its exit code (-1 if killed by
// a signal). It fails the test after timeout.
func (c *Cluster) Wait(timeout time.Duration) int {
	c.t.Helper()
	select {
	case <-c.done:
	case <-time.After(timeout):
		c.t.Fatalf("master did not exit within %v", timeout)
	}
	return c.Cmd.ProcessState.ExitCode()
}

// Done is closed when the master has exited.
func (c *Cluster) Done() <-chan struct{} { return c.done }

// ReadEvents returns the lines of the events file.
func (c *Cluster) ReadEvents() []string {
	b, err := os.ReadFile(c.Events)
	if err != nil {
		return nil
	}
	return strings.Split(strings.TrimRight(string(b), "\n"), "\n")
}

// Alive reports whether pid is a live (not zombie) process.
func Alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// WaitGone waits until none of pids is alive, or ctx is done; it returns the
// ones still alive then. It waits on pidfds (see proc.WaitGone), not by polling.
func WaitGone(ctx context.Context, pids []int) []int {
	timeout := time.Minute
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	var alive []int
	for _, p := range proc.WaitGone(pids, timeout) {
		if Alive(p) { // a zombie of ours has exited
			alive = append(alive, p)
		}
	}
	return alive
}
