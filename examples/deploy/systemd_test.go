package deploy

import (
	"context"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite hello.service from `hello unit`")

// unitArgs are the flags hello.service was printed with.
var unitArgs = []string{"unit", "--executable", "/usr/local/bin/hello", "--listen", "fd://http", "--admin", "127.0.0.1:9090", "--user", "hello"}

// helloBinary is the hello example as the Dockerfile builds it.
func helloBinary(t *testing.T) string {
	t.Helper()
	return filepath.Join(imageTree(t, parseDockerfile(t, readFile(t, "Dockerfile"))), "hello")
}

// hello.service is exactly what `hello unit` prints for unitArgs, so the
// example never drifts from the command (go test -run TestServiceIsUnitOutput
// -update rewrites it).
func TestServiceIsUnitOutput(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, helloBinary(t), unitArgs...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "BROOD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("hello %s: %v", strings.Join(unitArgs, " "), err)
	}
	if *update {
		if err := os.WriteFile("hello.service", out, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if got := readFile(t, "hello.service"); got != string(out) {
		t.Errorf("hello.service is not what `hello %s` prints (go test -run %s -update rewrites it):\n%s", strings.Join(unitArgs, " "), t.Name(), out)
	}
}

// The socket unit names the socket the service asks for, and holds the port
// the example listens on by default.
func TestSocketMatchesService(t *testing.T) {
	socket, service := readFile(t, "hello.socket"), readFile(t, "hello.service")
	names := regexp.MustCompile(`(?m)^FileDescriptorName=(\S+)$`).FindAllStringSubmatch(socket, -1)
	if len(names) != 1 {
		t.Fatalf("hello.socket names %d sockets, want one", len(names))
	}
	if !strings.Contains(service, " --listen fd://"+names[0][1]+" ") {
		t.Errorf("hello.service does not take the socket named %s", names[0][1])
	}
	if !regexp.MustCompile(`(?m)^ListenStream=7001$`).MatchString(socket) {
		t.Error("hello.socket does not listen on 7001, the example's port")
	}
}

// systemd-analyze verify accepts both units as installed: in a root with
// systemd's own units, the two files in /etc/systemd/system and the binary in
// /usr/local/bin. systemd before 253 does not know Type=notify-reload: verify
// must then report that and nothing else, and a copy with Type=notify (the
// one change) must be clean.
func TestSystemdUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("no systemd-analyze")
	}
	units := "/usr/lib/systemd/system"
	if _, err := os.Stat(filepath.Join(units, "sysinit.target")); err != nil {
		t.Skipf("no systemd units in %s to verify against: %v", units, err)
	}
	out, err := exec.Command(analyze, "--version").Output()
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`^systemd (\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("systemd-analyze --version: %q", out)
	}
	version, _ := strconv.Atoi(string(m[1]))

	root := t.TempDir()
	for _, d := range []string{"usr/lib/systemd", "etc/systemd/system", "usr/local/bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("cp", "-a", units, filepath.Join(root, "usr/lib/systemd")).CombinedOutput(); err != nil {
		t.Fatalf("cp -a %s: %v\n%s", units, err, out)
	}
	bin, err := os.ReadFile(helloBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "usr/local/bin/hello"), bin, 0o755); err != nil {
		t.Fatal(err)
	}
	socket, service := readFile(t, "hello.socket"), readFile(t, "hello.service")
	verify := func(service string) []string {
		t.Helper()
		if err := os.WriteFile(filepath.Join(root, "etc/systemd/system/hello.service"), []byte(service), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "etc/systemd/system/hello.socket"), []byte(socket), 0o644); err != nil {
			t.Fatal(err)
		}
		var complaints []string
		for _, u := range []string{"hello.service", "hello.socket"} {
			ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
			cmd := exec.CommandContext(ctx, analyze, "verify", "--man=no", "--root="+root, "/etc/systemd/system/"+u)
			cmd.WaitDelay = 5 * time.Second
			out, err := cmd.CombinedOutput()
			cancel()
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if l != "" {
					complaints = append(complaints, u+": "+l)
				}
			}
			if err != nil {
				complaints = append(complaints, u+": systemd-analyze verify: "+err.Error())
			}
		}
		return complaints
	}
	complaints := verify(service)
	if version >= 253 {
		if len(complaints) > 0 {
			t.Errorf("systemd %d complains:\n%s", version, strings.Join(complaints, "\n"))
		}
		return
	}
	// Verifying either unit loads both, so each run reports the line once.
	typeLine := regexp.MustCompile(`^hello\.(service|socket): ` + regexp.QuoteMeta(root) + `/etc/systemd/system/hello\.service:\d+: Failed to parse service type, ignoring: notify-reload$`)
	for _, c := range complaints {
		if !typeLine.MatchString(c) {
			t.Errorf("systemd %d: a complaint other than about Type=notify-reload: %s", version, c)
		}
	}
	if len(complaints) == 0 {
		t.Errorf("systemd %d did not report Type=notify-reload as unknown: is this check still looking at the right file?", version)
	}
	older := strings.Replace(service, "\nType=notify-reload\n", "\nType=notify\n", 1)
	if strings.Count(service, "\n") != strings.Count(older, "\n") || older == service {
		t.Fatal("no Type=notify-reload line to replace")
	}
	if complaints := verify(older); len(complaints) > 0 {
		t.Errorf("systemd %d complains about the Type=notify copy:\n%s", version, strings.Join(complaints, "\n"))
	}
}

// The README's systemd section shows the command that printed hello.service
// and lines of it: both must still be true.
func TestReadmeShowsTheService(t *testing.T) {
	readme := readFile(t, filepath.Join(moduleRoot(t), "README.md"))
	_, section, ok := strings.Cut(readme, "\n### systemd\n")
	if !ok {
		t.Fatal("README.md has no ### systemd section")
	}
	section, _, _ = strings.Cut(section, "\n### ")
	if cmd := "hello " + strings.Join(unitArgs, " "); !strings.Contains(section, "\n"+cmd+"\n") {
		t.Errorf("the README's systemd section does not show %q", cmd)
	}
	_, block, ok := strings.Cut(section, "```ini\n")
	if !ok {
		t.Fatal("the README's systemd section shows no unit")
	}
	block, _, _ = strings.Cut(block, "```")
	service := "\n" + readFile(t, "hello.service")
	for _, l := range strings.Split(block, "\n") {
		if l != "" && !strings.Contains(service, "\n"+l+"\n") {
			t.Errorf("the README shows %q, which is not a line of hello.service", l)
		}
	}
}
