package cli

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// unitCmd runs `unit` with args against a program named clitest and returns
// the exit code and the outputs.
func unitCmd(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	app := testApp(&stdout, &stderr)
	app.Defaults.Listen = []string{":7001"}
	code := Execute(t.Context(), app, append([]string{"unit"}, args...))
	return code, stdout.String(), stderr.String()
}

// clearBroodEnv unsets every BROOD_* variable for the test, so that the
// environment the tests run in does not leak into the unit.
func clearBroodEnv(t *testing.T) {
	t.Helper()
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, "BROOD_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
}

// directives parses a unit file into "Section.Key" -> values, in order.
func directives(t *testing.T, text string) map[string][]string {
	t.Helper()
	d := map[string][]string{}
	section := ""
	for i, l := range strings.Split(text, "\n") {
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			section = l[1 : len(l)-1]
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok || section == "" {
				t.Fatalf("line %d of the unit is neither a comment, a section nor a directive: %q", i+1, l)
			}
			d[section+"."+k] = append(d[section+"."+k], v)
		}
	}
	return d
}

func TestUnitDirectives(t *testing.T) {
	clearBroodEnv(t)
	code, out, errOut := unitCmd(t, "--executable", "/usr/local/bin/clitest", "--listen", "fd://http", "--admin", "127.0.0.1:9090",
		"--drain-delay", "5s", "--stop-timeout", "20s", "--user", "www", "--workers", "3")
	if code != ExitOK {
		t.Fatalf("unit: exit %d, stderr %q", code, errOut)
	}
	d := directives(t, out)
	want := map[string][]string{
		"Unit.Description":               {"clitest (brood cluster)"},
		"Unit.After":                     {"network.target", "clitest.socket"},
		"Unit.Requires":                  {"clitest.socket"},
		"Service.Type":                   {"notify-reload"},
		"Service.NotifyAccess":           {"main"},
		"Service.ExecStart":              {"/usr/local/bin/clitest run --name clitest --workers 3 --stop-timeout 20s --listen fd://http --admin 127.0.0.1:9090 --drain-delay 5s --run-dir %t/clitest"},
		"Service.RuntimeDirectory":       {"clitest"},
		"Service.RuntimeDirectoryMode":   {"0700"},
		"Service.User":                   {"www"},
		"Service.WatchdogSec":            {"60s"},
		"Service.FileDescriptorStoreMax": {"1"}, // the admin listener; http comes from the socket unit
		"Service.Environment":            {"BROOD_FDSTORE=1"},
		"Service.KillMode":               {"mixed"},
		"Service.TimeoutStopSec":         {"50s"}, // 5s + 2 × 20s + 5s
		"Service.Restart":                {"on-failure"},
		"Install.WantedBy":               {"multi-user.target"},
		"Install.Also":                   {"clitest.socket"},
	}
	for k, v := range want {
		if !slices.Equal(d[k], v) {
			t.Errorf("%s = %q, want %q", k, d[k], v)
		}
	}
	for k := range d {
		if _, ok := want[k]; !ok {
			t.Errorf("unexpected directive %s = %q", k, d[k])
		}
	}
	if !strings.Contains(out, "ExecReload=/usr/local/bin/clitest reload --name clitest --run-dir %t/clitest\n") {
		t.Errorf("the header does not show the synchronous ExecReload for older systemd:\n%s", out)
	}
}

func TestUnitPlainListenAndRunDir(t *testing.T) {
	clearBroodEnv(t)
	dir := t.TempDir()
	t.Chdir(dir)
	code, out, errOut := unitCmd(t, "--executable", "/opt/clitest", "--run-dir", "run", "--listen", ":7001,unix:///run/clitest.sock",
		"--admin", "unix:///run/clitest-admin.sock", "--watchdog", "0")
	if code != ExitOK {
		t.Fatalf("unit: exit %d, stderr %q", code, errOut)
	}
	d := directives(t, out)
	wantExec := "/opt/clitest run --name clitest --workers 1 --stop-timeout 10s --listen :7001 --listen unix:///run/clitest.sock --admin unix:///run/clitest-admin.sock --run-dir " + filepath.Join(dir, "run")
	for k, want := range map[string]string{
		"Service.ExecStart":              wantExec,
		"Service.FileDescriptorStoreMax": "3",
		"Service.TimeoutStopSec":         "25s",
	} {
		if got := strings.Join(d[k], "|"); got != want {
			t.Errorf("%s = %q, want %q", k, got, want)
		}
	}
	for _, k := range []string{"Unit.Requires", "Service.RuntimeDirectory", "Service.WatchdogSec", "Service.User", "Install.Also"} {
		if v, ok := d[k]; ok {
			t.Errorf("%s = %q, want none", k, v)
		}
	}
}

// The environment fills what flags leave unset, and the unit pins it into
// ExecStart; flags still win over it.
func TestUnitTakesEnvironment(t *testing.T) {
	clearBroodEnv(t)
	t.Setenv("BROOD_DRAIN_DELAY", "7s")
	t.Setenv("BROOD_STOP_TIMEOUT", "3s")
	t.Setenv("BROOD_WORKERS", "9")
	code, out, errOut := unitCmd(t, "--executable", "/opt/clitest", "--workers", "2")
	if code != ExitOK {
		t.Fatalf("unit: exit %d, stderr %q", code, errOut)
	}
	d := directives(t, out)
	if got, want := d["Service.ExecStart"], []string{"/opt/clitest run --name clitest --workers 2 --stop-timeout 3s --listen :7001 --drain-delay 7s --run-dir %t/clitest"}; !slices.Equal(got, want) {
		t.Errorf("ExecStart = %q, want %q", got, want)
	}
	if got, want := d["Service.TimeoutStopSec"], []string{"18s"}; !slices.Equal(got, want) { // 7s + 2 × 3s + 5s
		t.Errorf("TimeoutStopSec = %q, want %q", got, want)
	}
}

func TestUnitTimeoutStopSec(t *testing.T) {
	clearBroodEnv(t)
	for _, c := range []struct {
		drain, stop string
		want        string
	}{
		{"0s", "", "25s"}, // the default stop timeout, 10s
		{"5s", "10s", "30s"},
		{"30s", "1m", "155s"},
		{"1500ms", "2s", "10500ms"},
		{"1us", "1s", "7000001us"},
	} {
		args := []string{"--executable", "/opt/clitest", "--drain-delay", c.drain}
		if c.stop != "" {
			args = append(args, "--stop-timeout", c.stop)
		}
		code, out, errOut := unitCmd(t, args...)
		if code != ExitOK {
			t.Fatalf("drain %s stop %s: exit %d, stderr %q", c.drain, c.stop, code, errOut)
		}
		if got := directives(t, out)["Service.TimeoutStopSec"]; !slices.Equal(got, []string{c.want}) {
			t.Errorf("drain %s stop %q: TimeoutStopSec = %q, want %s", c.drain, c.stop, got, c.want)
		}
	}
	if got, want := StopBudget(5*time.Second, 10*time.Second), 30*time.Second; got != want {
		t.Errorf("StopBudget(5s, 10s) = %v, want %v", got, want)
	}
	if got, want := StopBudget(0, 0), 2*DefaultStopTimeout+StopMargin; got != want {
		t.Errorf("StopBudget(0, 0) = %v, want %v", got, want)
	}
}

func TestExecWord(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"plain", "plain"},
		{"--listen=", "--listen="},
		{"", `""`},
		{"a b", `"a b"`},
		{"100%", "100%%"},
		{"%t", "%%t"},
		{"$HOME", "$$HOME"},
		{"${HOME}", "$${HOME}"},
		{`say "hi"`, `"say \"hi\""`},
		{"it's", `"it's"`},
		{`back\slash`, `"back\\slash"`},
		{";", `";"`},
		{"a;b", "a;b"},
		{"tab\there", `"tab\there"`},
		{"new\nline", `"new\nline"`},
		{"bell\a", `"bell\x07"`},
		{"é", "é"},
		{"50% of $X y", `"50%% of $$X y"`},
	} {
		got, err := execWord(c.in)
		if err != nil || got != c.want {
			t.Errorf("execWord(%q) = %q, %v; want %q", c.in, got, err, c.want)
		}
	}
	if _, err := execWord("nul\x00"); err == nil {
		t.Error("execWord accepted a NUL byte")
	}
}

func TestUnitRefuses(t *testing.T) {
	clearBroodEnv(t)
	for _, c := range []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"--bogus"}, ExitUsage, "unknown flag: --bogus"},
		{[]string{"--executable", "bin/clitest"}, ExitUsage, `executable "bin/clitest" is not an absolute path`},
		{[]string{"--executable", "/opt/clitest", "--watchdog", "-1s"}, ExitUsage, "--watchdog -1s is negative"},
		{[]string{"--executable", "/opt/clitest", "--name", "a b"}, ExitUsage, `name "a b"`},
		{[]string{"--executable", "/opt/clitest", "--user", "x\nExecStartPre=/bin/evil"}, ExitUsage, "is not a user name"},
		{[]string{"--executable", "/opt/clitest", "extra"}, ExitUsage, `unknown command "extra"`},
	} {
		code, out, errOut := unitCmd(t, c.args...)
		if code != c.code || !strings.Contains(errOut, c.msg) || out != "" {
			t.Errorf("unit %q: exit %d, stdout %q, stderr %q; want exit %d, no output and an error with %q", c.args, code, out, errOut, c.code, c.msg)
		}
		if n := strings.Count(errOut, "Error:"); n != 1 {
			t.Errorf("unit %q: %d errors on stderr, want one: %q", c.args, n, errOut)
		}
	}
}

// Without --executable the unit names this very program, links resolved.
func TestUnitOwnExecutable(t *testing.T) {
	clearBroodEnv(t)
	code, out, errOut := unitCmd(t)
	if code != ExitOK {
		t.Fatalf("unit: exit %d, stderr %q", code, errOut)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if exe, err = filepath.EvalSymlinks(exe); err != nil {
		t.Fatal(err)
	}
	word, _ := execWord(exe)
	if got := directives(t, out)["Service.ExecStart"]; len(got) != 1 || !strings.HasPrefix(got[0], word+" run ") {
		t.Errorf("ExecStart = %q, want it to start with %q", got, word+" run ")
	}
	// The test binary is a go test build: unit warns that it will vanish.
	if strings.Contains(exe, "/go-build") != strings.Contains(errOut, "warning:") {
		t.Errorf("executable %s, stderr %q: the warning about go run/test builds is wrong", exe, errOut)
	}
}

// awkward are arguments that exercise every quoting rule of systemd's
// command lines at once.
var awkward = struct{ exe, runDir, listen, admin string }{
	exe:    "/opt/my app/100%/clitest",
	runDir: `/srv/run dir/it's "q" \ $HOME ${X} %t ;`,
	listen: "unix:///tmp/a b;c.sock",
	admin:  "unix:///tmp/tab\there.sock",
}

func awkwardUnit(t *testing.T, exe string) string {
	t.Helper()
	code, out, errOut := unitCmd(t, "--executable", exe, "--run-dir", awkward.runDir, "--listen", awkward.listen, "--admin", awkward.admin)
	if code != ExitOK {
		t.Fatalf("unit: exit %d, stderr %q", code, errOut)
	}
	return out
}

// systemd itself reads back the ExecStart of a unit with awkward arguments:
// `systemd --test --user` loads the unit and dumps each command line as it
// parsed it (specifiers resolved; $ is expanded only at exec time, so the
// dump still has $$ where the unit escaped a $).
func TestUnitQuotingRoundTrip(t *testing.T) {
	clearBroodEnv(t)
	sd := findSystemd(t)
	unit := awkwardUnit(t, awkward.exe)
	dir, rt := t.TempDir(), t.TempDir()
	// systemd refuses test mode as root: run it as nobody, which must be able
	// to read the unit and own its runtime dir.
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		cred = &syscall.Credential{Uid: 65534, Gid: 65534}
		for _, d := range []string{dir, filepath.Dir(dir)} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chown(rt, 65534, 65534); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "clitest.service"), []byte(strings.Replace(unit, "\nType=notify-reload\n", "\nType=notify\n", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, sd, "--test", "--user", "--unit=clitest.service", "--no-pager")
	// The trailing ":" of the unit path appends the default paths (basic.target).
	cmd.Env = []string{"HOME=" + rt, "XDG_RUNTIME_DIR=" + rt, "SYSTEMD_UNIT_PATH=" + dir + ":", "SYSTEMD_LOG_TARGET=console", "PATH=/usr/bin:/bin"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s --test: %v\n%s", sd, err, out)
	}
	got, err := dumpedExecStart(string(out), "clitest.service")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := append([]string{awkward.exe}, runArgs(&Options{Name: "clitest", Workers: 1, StopTimeout: DefaultStopTimeout,
		Listen: []string{awkward.listen}, Admin: awkward.admin})...)
	want = append(want, "--run-dir", awkward.runDir)
	for i := range want {
		want[i] = strings.ReplaceAll(want[i], "$", "$$") // expanded to $ at exec time
	}
	if !slices.Equal(got, want) {
		t.Errorf("systemd parsed ExecStart as\n%q\nwant\n%q", got, want)
	}
}

// findSystemd returns the path of the systemd manager binary, or skips.
func findSystemd(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/lib/systemd/systemd", "/usr/lib/systemd/systemd"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() {
			return p
		}
	}
	t.Skip("no systemd binary (/lib/systemd/systemd) to read the unit back")
	return ""
}

// dumpedExecStart finds unit's ExecStart in the dump of `systemd --test` and
// splits its "Command Line:" the way systemd quoted it (bare words, or double
// quotes with C escapes).
func dumpedExecStart(dump, unit string) ([]string, error) {
	sc := bufio.NewScanner(strings.NewReader(dump))
	sc.Buffer(nil, 1<<20)
	inUnit, inExec := false, false
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(l, "-> Unit "):
			inUnit, inExec = l == "-> Unit "+unit+":", false
		case inUnit && l == "-> ExecStart:":
			inExec = true
		case inExec && strings.HasPrefix(l, "Command Line: "):
			return splitDumpedCommand(strings.TrimPrefix(l, "Command Line: "))
		}
	}
	return nil, fmt.Errorf("no ExecStart command line for %s in the dump", unit)
}

func splitDumpedCommand(s string) ([]string, error) {
	var words []string
	for s = strings.TrimLeft(s, " "); s != ""; s = strings.TrimLeft(s, " ") {
		if s[0] != '"' {
			w, rest, _ := strings.Cut(s, " ")
			words, s = append(words, w), rest
			continue
		}
		var b strings.Builder
		i := 1
		for ; i < len(s) && s[i] != '"'; i++ {
			if s[i] != '\\' {
				b.WriteByte(s[i])
				continue
			}
			if i++; i == len(s) {
				return nil, fmt.Errorf("dangling backslash in %q", s)
			}
			switch c := s[i]; {
			case c == 'n':
				b.WriteByte('\n')
			case c == 't':
				b.WriteByte('\t')
			case c >= '0' && c <= '7' && i+2 < len(s):
				v, err := strconv.ParseUint(s[i:i+3], 8, 8)
				if err != nil {
					return nil, fmt.Errorf("bad octal escape in %q: %w", s, err)
				}
				b.WriteByte(byte(v))
				i += 2
			default: // \\ \" \$ \`
				b.WriteByte(c)
			}
		}
		if i == len(s) {
			return nil, fmt.Errorf("unterminated quote in %q", s)
		}
		words, s = append(words, b.String()), s[i+1:]
	}
	return words, nil
}

// systemdVersion is the version systemd-analyze reports ("systemd 252 (...)").
func systemdVersion(t *testing.T, analyze string) int {
	t.Helper()
	out, err := exec.Command(analyze, "--version").Output()
	if err != nil {
		t.Fatalf("%s --version: %v", analyze, err)
	}
	m := regexp.MustCompile(`^systemd (\d+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("%s --version: no version in %q", analyze, out)
	}
	v, _ := strconv.Atoi(string(m[1]))
	return v
}

// analyzeVerify runs `systemd-analyze verify` on the .service text (with the
// .socket beside it, if any) and returns its complaints, one a line, and
// systemd's version. It skips the test without systemd-analyze.
func analyzeVerify(t *testing.T, name, service, socket string) (complaints []string, version int) {
	t.Helper()
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("no systemd-analyze to verify the unit with")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, name+".service")
	if err := os.WriteFile(path, []byte(service), 0o644); err != nil {
		t.Fatal(err)
	}
	if socket != "" {
		if err := os.WriteFile(filepath.Join(dir, name+".socket"), []byte(socket), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, analyze, "verify", "--man=no", path)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if l != "" {
			complaints = append(complaints, strings.TrimPrefix(l, path+":"))
		}
	}
	if err != nil {
		complaints = append(complaints, "systemd-analyze verify: "+err.Error())
	}
	return complaints, systemdVersion(t, analyze)
}

// verifyUnit fails the test on any complaint of systemd-analyze verify about
// the unit but, before systemd 253, the one about Type=notify-reload; it then
// also verifies a copy with Type=notify, the only change, which must be clean.
func verifyUnit(t *testing.T, name, service, socket string) {
	t.Helper()
	complaints, version := analyzeVerify(t, name, service, socket)
	if version >= 253 {
		if len(complaints) > 0 {
			t.Errorf("systemd %d: systemd-analyze verify complains:\n%s", version, strings.Join(complaints, "\n"))
		}
		return
	}
	typeLine := regexp.MustCompile(`^\d+: Failed to parse service type, ignoring: notify-reload$`)
	if len(complaints) != 1 || !typeLine.MatchString(complaints[0]) {
		t.Errorf("systemd %d: want only the complaint about Type=notify-reload, got:\n%s", version, strings.Join(complaints, "\n"))
	}
	older := strings.Replace(service, "\nType=notify-reload\n", "\nType=notify\n", 1)
	if d := lineDiff(service, older); len(d) != 1 {
		t.Fatalf("the Type=notify copy differs in %d lines, want 1: %q", len(d), d)
	}
	if complaints, _ := analyzeVerify(t, name, older, socket); len(complaints) > 0 {
		t.Errorf("systemd %d: systemd-analyze verify complains about the Type=notify copy:\n%s", version, strings.Join(complaints, "\n"))
	}
}

// lineDiff returns the lines that differ between a and b (same line count).
func lineDiff(a, b string) []string {
	la, lb := strings.Split(a, "\n"), strings.Split(b, "\n")
	if len(la) != len(lb) {
		return []string{"line counts differ"}
	}
	var d []string
	for i := range la {
		if la[i] != lb[i] {
			d = append(d, la[i]+" -> "+lb[i])
		}
	}
	return d
}

// The unit for awkward arguments passes systemd-analyze verify, which also
// checks that ExecStart names an executable file.
func TestUnitVerifies(t *testing.T) {
	clearBroodEnv(t)
	exe := filepath.Join(t.TempDir(), "my app", "100%", "clitest")
	if err := os.MkdirAll(filepath.Dir(exe), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	verifyUnit(t, "clitest", awkwardUnit(t, exe), "")

	code, out, errOut := unitCmd(t, "--executable", exe, "--listen", "fd://http", "--admin", "127.0.0.1:9090", "--user", "clitest", "--drain-delay", "2s")
	if code != ExitOK {
		t.Fatalf("unit: exit %d, stderr %q", code, errOut)
	}
	verifyUnit(t, "clitest", out, "[Socket]\nListenStream=7001\nFileDescriptorName=http\n\n[Install]\nWantedBy=sockets.target\n")
}

// The checks can fail: systemd-analyze reports a bad value, an unknown
// directive and a missing executable in a unit.
func TestAnalyzeVerifyCatchesMistakes(t *testing.T) {
	clearBroodEnv(t)
	_, out, _ := unitCmd(t, "--executable", "/bin/true")
	out = strings.Replace(out, "\nType=notify-reload\n", "\nType=notify\n", 1)
	if complaints, _ := analyzeVerify(t, "clitest", out, ""); len(complaints) > 0 {
		t.Fatalf("the control unit is not clean: %q", complaints)
	}
	for _, c := range []struct{ from, to, complaint string }{
		{"KillMode=mixed", "KillMode=mixd", "mixd"},
		{"WatchdogSec=", "WatchdgSec=", "WatchdgSec"},
		{"=/bin/true run", "=/nonexistent/clitest run", "/nonexistent/clitest"},
	} {
		bad := strings.Replace(out, c.from, c.to, 1)
		complaints, _ := analyzeVerify(t, "clitest", bad, "")
		if !strings.Contains(strings.Join(complaints, "\n"), c.complaint) {
			t.Errorf("%s -> %s: systemd-analyze verify does not complain about %q: %q", c.from, c.to, c.complaint, complaints)
		}
	}
}
