package deploy

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// envRuntime makes the test binary a minimal container runtime: it reads a
// containerSpec (JSON) from the variable and becomes the container's first
// process. See runtimeMain.
const envRuntime = "DEPLOY_TEST_RUNTIME"

// runtimeSkip starts the runtime's message when it lacks a privilege: the
// test then skips instead of failing.
const runtimeSkip = "runtime: cannot emulate a container here: "

// containerSpec is the container runtimeMain sets up.
type containerSpec struct {
	Rootfs   string   // the image's tree
	UID, GID int      // USER, or the pod's runAsUser and runAsGroup
	Env      []string // the whole environment of the entrypoint
	Args     []string // ENTRYPOINT (and CMD, or the pod's args)
	ReadOnly bool     // readOnlyRootFilesystem
	TmpfsAt  string   // a fresh tmpfs mounted here (an emptyDir of medium Memory)
	BindAt   string   // BindFrom mounted here (a disk emptyDir)
	BindFrom string
}

// devices are the device nodes every container runtime provides in /dev.
var devices = []string{"null", "zero", "full", "random", "urandom"}

// runtimeMain is what a container runtime does before the entrypoint runs,
// reduced to what a Go program can notice: the test started this process in a
// mount namespace of its own (CLONE_NEWNS, with / made private), where it
// mounts /proc and the device nodes into the image's tree (a brood master
// re-executes itself through /proc/self/exe, and os/exec opens /dev/null),
// the volumes, and makes the tree read-only if asked; then it chroots into
// the tree, drops to the image's user and executes the entrypoint, which
// keeps this pid. It does not add a pid or network namespace: the process is
// not pid 1 (other tests cover that), and it shares the host's network, so
// the test points the listeners at free loopback ports. What it leaves out
// (/sys, /etc/hosts, /etc/resolv.conf, /dev/pts) only makes the emulation
// stricter.
func runtimeMain() {
	var s containerSpec
	die := func(format string, a ...any) {
		fmt.Fprintf(os.Stderr, "runtime: "+format+"\n", a...)
		os.Exit(125) // as docker run, for an error of the runtime itself
	}
	if err := json.Unmarshal([]byte(os.Getenv(envRuntime)), &s); err != nil {
		die("bad spec: %v", err)
	}
	privileged := func(what string, err error) {
		if errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EACCES) {
			fmt.Fprintf(os.Stderr, "%s%s: %v\n", runtimeSkip, what, err)
			os.Exit(125)
		}
		die("%s: %v", what, err)
	}
	at := func(p string) string { return filepath.Join(s.Rootfs, p) }
	mount := func(src, target, fstype string, flags uintptr, data string) {
		if err := syscall.Mount(src, target, fstype, flags, data); err != nil {
			privileged("mount "+target, err)
		}
	}
	// The mount points, which a runtime creates in the container's tree.
	for _, d := range []string{"/proc", "/dev"} {
		if err := os.Mkdir(at(d), 0o755); err != nil && !errors.Is(err, os.ErrExist) {
			die("%v", err)
		}
	}
	for _, d := range devices {
		f, err := os.OpenFile(at("/dev/"+d), os.O_CREATE|os.O_RDONLY, 0o644)
		if err != nil {
			die("%v", err)
		}
		f.Close()
	}
	mount(s.Rootfs, s.Rootfs, "", syscall.MS_BIND|syscall.MS_REC, "") // a mount of its own, to make read-only
	if err := syscall.Mount("proc", at("/proc"), "proc", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""); err != nil {
		mount("/proc", at("/proc"), "", syscall.MS_BIND|syscall.MS_REC, "") // where a new proc is not allowed
	}
	for _, d := range devices {
		mount("/dev/"+d, at("/dev/"+d), "", syscall.MS_BIND, "")
	}
	if s.TmpfsAt != "" {
		// As the kubelet mounts a memory emptyDir: a size, no mode (so the
		// kernel's default for a tmpfs root, 1777, owned by root).
		mount("tmpfs", at(s.TmpfsAt), "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size=16m")
	}
	if s.BindAt != "" {
		mount(s.BindFrom, at(s.BindAt), "", syscall.MS_BIND, "")
	}
	if s.ReadOnly {
		mount("", s.Rootfs, "", syscall.MS_BIND|syscall.MS_REMOUNT|syscall.MS_RDONLY, "")
	}
	if err := syscall.Chroot(s.Rootfs); err != nil {
		privileged("chroot", err)
	}
	if err := syscall.Chdir("/"); err != nil {
		die("chdir: %v", err)
	}
	if err := syscall.Setgroups(nil); err != nil {
		privileged("setgroups", err)
	}
	if err := syscall.Setgid(s.GID); err != nil {
		privileged("setgid", err)
	}
	if err := syscall.Setuid(s.UID); err != nil {
		privileged("setuid", err)
	}
	err := syscall.Exec(s.Args[0], s.Args, s.Env)
	fmt.Fprintf(os.Stderr, "exec %s: %v\n", s.Args[0], err)
	os.Exit(127)
}

// needRoot skips the test unless it runs as root, which chroot, mounts and
// a change of user need.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("running the image's tree needs root (chroot, a mount namespace, setuid); this test runs as uid", os.Geteuid())
	}
}

var (
	buildMu  sync.Mutex
	buildDir string                // removed by TestMain
	builds   = map[string]string{} // go build arguments -> binary
)

// imageTree lays out the image the Dockerfile describes in a new directory
// and returns it: the directories the build stage makes under /rootfs, with
// their modes, and the binary, built with the Dockerfile's own go build
// command (its -o moved from /rootfs). Both are root's, as COPY makes them.
// A build-stage command that touches /rootfs in any other way fails the
// test: the emulation would not know what the image holds.
func imageTree(t *testing.T, d dockerfile) string {
	t.Helper()
	if d.finalImage != "scratch" {
		t.Fatalf("the image is FROM %s; this test emulates FROM scratch", d.finalImage)
	}
	if len(d.finalCopies) != 1 || d.finalCopies[0] != "--from=build /rootfs/ /" {
		t.Fatalf("the last stage copies %q; this test knows only COPY --from=build /rootfs/ /", d.finalCopies)
	}
	rootfs := filepath.Join(t.TempDir(), "rootfs")
	made := false
	for _, run := range d.buildRuns {
		for _, part := range strings.Split(run, "&&") {
			w := shellWords(t, strings.TrimSpace(part))
			switch {
			case len(w) > 0 && w[0] == "mkdir":
				mkdirInTree(t, rootfs, w[1:])
				made = true
			case slices.Contains(w, "go") && slices.Contains(w, "build"):
				buildInTree(t, rootfs, w)
			case strings.Contains(part, "/rootfs"):
				t.Fatalf("Dockerfile: RUN %s: this test does not know what that does to the image", part)
			}
		}
	}
	if !made {
		t.Fatal("Dockerfile: no mkdir of /rootfs in the build stage")
	}
	return rootfs
}

// mkdirInTree does mkdir [-p] [-m MODE] /rootfs/... under rootfs.
func mkdirInTree(t *testing.T, rootfs string, args []string) {
	t.Helper()
	mode, parents := os.FileMode(0o755), false
	for i := 0; i < len(args); i++ {
		switch a := args[i]; {
		case a == "-p":
			parents = true
		case a == "-m" && i+1 < len(args):
			var m uint32
			if _, err := fmt.Sscanf(args[i+1], "%o", &m); err != nil {
				t.Fatalf("Dockerfile: mkdir -m %s: %v", args[i+1], err)
			}
			if m&^0o1777 != 0 {
				t.Fatalf("Dockerfile: mkdir -m %s: this test knows permission bits and the sticky bit", args[i+1])
			}
			mode = os.FileMode(m & 0o777)
			if m&0o1000 != 0 {
				mode |= os.ModeSticky
			}
			i++
		case a == "/rootfs" || strings.HasPrefix(a, "/rootfs/"):
			dir := filepath.Join(rootfs, strings.TrimPrefix(a, "/rootfs"))
			if parents {
				if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.Mkdir(dir, 0o700); err != nil && !(parents && errors.Is(err, os.ErrExist)) {
				t.Fatal(err)
			}
			if err := os.Chmod(dir, mode); err != nil { // exactly the mode, as mkdir -m does
				t.Fatal(err)
			}
		default:
			t.Fatalf("Dockerfile: mkdir %q: this test knows -p, -m MODE and paths under /rootfs", args)
		}
	}
}

// buildInTree runs the Dockerfile's go build (w: its words) from the module
// root, once per test binary, and copies the result into rootfs.
func buildInTree(t *testing.T, rootfs string, w []string) {
	t.Helper()
	var env, args []string
	for len(w) > 0 && strings.Contains(w[0], "=") {
		env, w = append(env, w[0]), w[1:]
	}
	if len(w) < 2 || w[0] != "go" || w[1] != "build" {
		t.Fatalf("Dockerfile: %q: want [VAR=value...] go build ...", w)
	}
	out := ""
	for i := 2; i < len(w); i++ {
		if w[i] == "-o" && i+1 < len(w) {
			out = w[i+1]
			i++
			continue
		}
		args = append(args, w[i])
	}
	if !strings.HasPrefix(out, "/rootfs/") {
		t.Fatalf("Dockerfile: go build -o %q: want a path under /rootfs", out)
	}
	key := strings.Join(append(env, args...), "\x00")
	buildMu.Lock()
	bin, ok := builds[key]
	if !ok {
		var err error
		if buildDir == "" {
			if buildDir, err = os.MkdirTemp("", "deploy-build-"); err != nil {
				buildMu.Unlock()
				t.Fatal(err)
			}
		}
		bin = filepath.Join(buildDir, fmt.Sprint(len(builds)), filepath.Base(out))
		cmd := exec.Command("go", append([]string{"build", "-o", bin}, args...)...)
		cmd.Dir = moduleRoot(t)
		cmd.Env = append(os.Environ(), env...)
		if b, err := cmd.CombinedOutput(); err != nil {
			buildMu.Unlock()
			t.Fatalf("%s %q: %v\n%s", strings.Join(env, " "), cmd.Args, err, b)
		}
		builds[key] = bin
	}
	buildMu.Unlock()
	checkStatic(t, bin)
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	dst := filepath.Join(rootfs, strings.TrimPrefix(out, "/rootfs"))
	if err := os.WriteFile(dst, data, 0o755); err != nil {
		t.Fatal(err)
	}
}

// checkStatic fails unless bin runs without a dynamic loader or libraries,
// which scratch does not have.
func checkStatic(t *testing.T, bin string) {
	t.Helper()
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatalf("%s needs a dynamic loader: it cannot run FROM scratch (is CGO_ENABLED=0 gone from the Dockerfile?)", bin)
		}
	}
	if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
		t.Fatalf("%s needs %v: it cannot run FROM scratch", bin, libs)
	}
}

// containerEnv is the environment a runtime gives the entrypoint: its own
// defaults (PATH as docker sets it when the image has none, HOSTNAME, and
// HOME=/ for a user without a passwd entry), then the image's ENV in order,
// then the overrides (docker run -e, a pod's env), in order.
func containerEnv(order []string, env map[string]string, overrides ...[2]string) []string {
	vars := map[string]string{"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOSTNAME": "deploytest", "HOME": "/"}
	keys := []string{"PATH", "HOSTNAME", "HOME"}
	set := func(k, v string) {
		if _, ok := vars[k]; !ok {
			keys = append(keys, k)
		}
		vars[k] = v
	}
	for _, k := range order {
		set(k, env[k])
	}
	for _, o := range overrides {
		set(o[0], o[1])
	}
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = k + "=" + vars[k]
	}
	return out
}

// container is a running container: its first process and what it wrote.
type container struct {
	t      *testing.T
	cmd    *exec.Cmd
	mu     sync.Mutex
	out    []string      // lines of stdout and stderr
	change chan struct{} // closed and replaced at each line
	exited chan struct{} // closed once cmd.Wait returned
	err    error         // cmd.Wait's error, once exited
}

// startContainer runs spec; the container is killed when the test ends, and
// everything it wrote is logged if the test failed.
func startContainer(t *testing.T, spec containerSpec) *container {
	t.Helper()
	if err := os.Chmod(spec.Rootfs, 0o755); err != nil { // "/" of an image
		t.Fatal(err)
	}
	js, err := json.Marshal(spec)
	if err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	c := &container{t: t, change: make(chan struct{}), exited: make(chan struct{})}
	c.cmd = exec.CommandContext(ctx, self)
	c.cmd.Env = []string{envRuntime + "=" + string(js)}
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS, Setpgid: true}
	c.cmd.Cancel = func() error { return syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL) }
	c.cmd.WaitDelay = 10 * time.Second
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	c.cmd.Stdout, c.cmd.Stderr = w, w
	if err := c.cmd.Start(); err != nil {
		cancel()
		r.Close()
		w.Close()
		if errors.Is(err, syscall.EPERM) {
			t.Skipf("cannot start a process in a mount namespace of its own: %v", err)
		}
		t.Fatal(err)
	}
	w.Close()
	var reading sync.WaitGroup
	reading.Go(func() {
		defer r.Close()
		buf := make([]byte, 0, 4096)
		chunk := make([]byte, 4096)
		for {
			n, err := r.Read(chunk)
			buf = append(buf, chunk[:n]...)
			for {
				i := bytes.IndexByte(buf, '\n')
				if i < 0 {
					break
				}
				c.addLine(string(buf[:i]))
				buf = buf[i+1:]
			}
			if err != nil {
				if len(buf) > 0 {
					c.addLine(string(buf))
				}
				return
			}
		}
	})
	go func() {
		c.err = c.cmd.Wait()
		reading.Wait()
		close(c.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-c.exited:
		default:
			_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
			<-c.exited
		}
		cancel()
		if t.Failed() {
			t.Logf("container output:\n%s", c.output())
		}
	})
	return c
}

func (c *container) addLine(l string) {
	c.mu.Lock()
	c.out = append(c.out, l)
	close(c.change)
	c.change = make(chan struct{})
	c.mu.Unlock()
}

func (c *container) output() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Join(c.out, "\n")
}

// waitFor waits until a line matches re and returns its first submatch (or
// the line); it fails the test after timeout or if the container exits first.
func (c *container) waitFor(timeout time.Duration, re string) string {
	c.t.Helper()
	rx := regexp.MustCompile(re)
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for seen := 0; ; {
		c.mu.Lock()
		lines, change := c.out[seen:], c.change
		seen = len(c.out)
		c.mu.Unlock()
		for _, l := range lines {
			if m := rx.FindStringSubmatch(l); m != nil {
				if len(m) > 1 {
					return m[1]
				}
				return l
			}
		}
		select {
		case <-change:
		case <-c.exited:
			c.mu.Lock()
			more := len(c.out) > seen
			c.mu.Unlock()
			if !more {
				c.skipIfRuntimeCannot()
				c.t.Fatalf("the container exited (%v) before a line matched %q", c.err, re)
			}
		case <-deadline.C:
			c.t.Fatalf("no line matched %q within %v", re, timeout)
		}
	}
}

// skipIfRuntimeCannot skips the test if the runtime lacked a privilege.
func (c *container) skipIfRuntimeCannot() {
	c.t.Helper()
	if out := c.output(); strings.HasPrefix(out, runtimeSkip) {
		c.t.Skip(strings.TrimSpace(out))
	}
}

// wait waits for the container to exit and returns its exit code.
func (c *container) wait(timeout time.Duration) int {
	c.t.Helper()
	select {
	case <-c.exited:
	case <-time.After(timeout):
		c.t.Fatalf("the container did not exit within %v", timeout)
	}
	c.skipIfRuntimeCannot()
	var ee *exec.ExitError
	switch {
	case c.err == nil:
		return 0
	case errors.As(c.err, &ee) && ee.ExitCode() >= 0:
		return ee.ExitCode()
	default:
		c.t.Fatalf("the container ended with %v", c.err)
		return -1
	}
}

// checkServes waits for the hello cluster in c to be ready, then checks it
// answers HTTP on its listener and /readyz and /livez on its admin listener,
// and that its run dir is where brood's default puts it for uid, private to
// that uid. It returns the HTTP address.
func (c *container) checkServes(uid int) string {
	t := c.t
	t.Helper()
	addr := c.waitFor(time.Minute, `msg=listening .*addr=tcp://(\S+)`)
	admin := c.waitFor(time.Minute, `msg="admin listener" .*addr=tcp://(\S+)`)
	c.waitFor(time.Minute, `msg="cluster ready"`)
	client := &http.Client{Timeout: 10 * time.Second}
	defer client.CloseIdleConnections()
	get := func(url string) (int, string) {
		t.Helper()
		resp, err := client.Get(url)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("GET %s: %v", url, err)
		}
		return resp.StatusCode, string(b)
	}
	if code, body := get("http://" + addr + "/"); code != 200 || !strings.HasPrefix(body, "hello from worker ") {
		t.Errorf("GET / = %d %q, want 200 hello from worker ...", code, body)
	}
	for _, p := range []string{"/readyz", "/livez"} {
		if code, body := get("http://" + admin + p); code != 200 {
			t.Errorf("GET %s on the admin listener = %d %q, want 200", p, code, body)
		}
	}
	// The master's view of its tree, through its own root.
	runDir := fmt.Sprintf("/proc/%d/root/tmp/brood-%d/hello", c.cmd.Process.Pid, uid)
	fi, err := os.Lstat(runDir)
	if err != nil {
		t.Fatalf("run dir: %v", err)
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || fi.Mode().Perm() != 0o700 || st == nil || int(st.Uid) != uid {
		t.Errorf("run dir %s: mode %v, owner %v; want a directory, 0700, uid %d", runDir, fi.Mode(), st.Uid, uid)
	}
	if _, err := os.Lstat(filepath.Join(runDir, "control.sock")); err != nil {
		t.Errorf("no control socket in the run dir: %v", err)
	}
	return addr
}

// stop sends SIGTERM to the container's first process, as docker stop and
// the kubelet do, and checks that it exits 0 within timeout, and that
// nothing serves addr any more.
func (c *container) stop(timeout time.Duration, addr string) {
	t := c.t
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := c.wait(timeout); code != 0 {
		t.Fatalf("after SIGTERM the container exited %d, want 0", code)
	}
	if !strings.Contains(c.output(), "msg=stopped") {
		t.Error("the master did not log that it stopped")
	}
	if conn, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
		conn.Close()
		t.Errorf("%s still accepts connections after the container exited", addr)
	}
}
