package upgrade

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/proc"
)

// The tests run this test binary as the checked program (the helper-process
// pattern): envHelper says what it does.
const envHelper = "UPGRADE_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(envHelper) {
	case "":
		os.Exit(m.Run())
	case "good":
		fmt.Println("some log line on stdout")
		json.NewEncoder(os.Stdout).Encode(CurrentBuild())
		os.Exit(0)
	case "fail":
		fmt.Fprintln(os.Stderr, "starting up")
		fmt.Fprintln(os.Stderr, "brood: Config.Worker is required")
		os.Exit(1)
	case "silent":
		os.Exit(0)
	case "env":
		fmt.Fprintln(os.Stderr, strings.Join(os.Environ(), "\n"))
		os.Exit(1)
	case "hang":
		// A child of its own in its process group, then wait forever: the
		// timeout must take both.
		c := exec.Command(os.Args[0])
		c.Env = append(os.Environ(), envHelper+"=sleep")
		if err := c.Start(); err != nil {
			os.Exit(3)
		}
		fmt.Println(c.Process.Pid)
		time.Sleep(time.Hour) // the behaviour under test: hang
	case "sleep":
		time.Sleep(time.Hour)
	case "linger":
		// Exit 0 with the build printed, leaving a child that holds stdout.
		c := exec.Command(os.Args[0])
		c.Env = append(os.Environ(), envHelper+"=sleep")
		c.Stdout = os.Stdout
		if err := c.Start(); err != nil {
			os.Exit(3)
		}
		json.NewEncoder(os.Stdout).Encode(CurrentBuild())
		os.Exit(0)
	}
	os.Exit(2)
}

func helperEnv(what string) []string { return append(os.Environ(), envHelper+"="+what) }

func TestPreflightGoodBinary(t *testing.T) {
	b, err := Preflight(context.Background(), os.Args[0], []string{"run", "--workers", "2"}, helperEnv("good"), 30*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if b != CurrentBuild() {
		t.Fatalf("Preflight returned %+v, want %+v", b, CurrentBuild())
	}
}

// A check that exits 0 but leaves a process holding its stdout still
// succeeds, within the wait delay, and the process is killed.
func TestPreflightLingeringChild(t *testing.T) {
	b, err := Preflight(context.Background(), os.Args[0], nil, helperEnv("linger"), 30*time.Second)
	if err != nil || b != CurrentBuild() {
		t.Fatalf("Preflight: %+v, %v", b, err)
	}
	for _, pid := range groupOf(t, os.Args[0]) {
		t.Errorf("pid %d (%s) still runs after the preflight", pid, state(pid))
	}
}

func TestPreflightErrors(t *testing.T) {
	dir := t.TempDir()
	noExec := filepath.Join(dir, "noexec")
	if err := os.WriteFile(noExec, []byte("#!/bin/sh\necho hi\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	foreign := filepath.Join(dir, "arm64")
	if err := os.WriteFile(foreign, foreignELF(), 0o755); err != nil {
		t.Fatal(err)
	}
	self := os.Args[0]
	for _, c := range []struct {
		name, exe, helper string
		want              string
	}{
		{"missing", filepath.Join(dir, "nothing-here"), "good", "preflight of " + filepath.Join(dir, "nothing-here") + ": not found"},
		{"not executable", noExec, "good", "preflight of " + noExec + ": not executable"},
		{"directory", dir, "good", "preflight of " + dir + ": not executable"},
		{"foreign architecture", foreign, "good", "preflight of " + foreign + ": exec format error (built for another architecture?)"},
		{"exits 1", self, "fail", "preflight of " + self + ": exited with status 1: brood: Config.Worker is required"},
		{"no build line", self, "silent", "preflight of " + self + ": printed no build info"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Preflight(context.Background(), c.exe, nil, helperEnv(c.helper), 30*time.Second)
			if err == nil || err.Error() != c.want {
				t.Fatalf("error %v, want %q", err, c.want)
			}
		})
	}
}

// foreignELF is the header of an ELF executable for arm64 (EM_AARCH64): the
// kernel of an amd64 machine refuses it with ENOEXEC (without qemu's
// binfmt_misc, which this machine does not have).
func foreignELF() []byte {
	h := make([]byte, 64)
	copy(h, "\x7fELF")
	h[4], h[5], h[6] = 2, 1, 1                 // 64-bit, little-endian, version 1
	binary.LittleEndian.PutUint16(h[16:], 2)   // ET_EXEC
	binary.LittleEndian.PutUint16(h[18:], 183) // EM_AARCH64
	binary.LittleEndian.PutUint32(h[20:], 1)
	binary.LittleEndian.PutUint16(h[52:], 64) // e_ehsize
	binary.LittleEndian.PutUint16(h[54:], 56) // e_phentsize
	return h
}

func TestPreflightTimeoutLeavesNothing(t *testing.T) {
	const timeout = 500 * time.Millisecond
	began := time.Now()
	_, err := Preflight(context.Background(), os.Args[0], nil, helperEnv("hang"), timeout)
	took := time.Since(began)
	if err == nil || err.Error() != "preflight of "+os.Args[0]+": did not finish within 500ms" {
		t.Fatalf("error %v, want a timeout", err)
	}
	if took > timeout+preflightWaitDelay+2*time.Second {
		t.Errorf("Preflight took %v with a timeout of %v", took, timeout)
	}
	// The hanging check and the child it started are both gone (a zombie
	// counts: pid 1 here reaps nobody).
	for _, pid := range groupOf(t, os.Args[0]) {
		t.Errorf("pid %d (%s) still runs after the preflight timed out", pid, state(pid))
	}
}

// groupOf lists live processes (not zombies) running exe with the hang or
// sleep helper in their environment.
func groupOf(t *testing.T, exe string) []int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		var live []int
		ents, _ := os.ReadDir("/proc")
		for _, e := range ents {
			pid, err := strconv.Atoi(e.Name())
			if err != nil {
				continue
			}
			env, _ := os.ReadFile("/proc/" + e.Name() + "/environ")
			if !strings.Contains(string(env), envHelper+"=hang") && !strings.Contains(string(env), envHelper+"=sleep") {
				continue
			}
			if s := state(pid); s != "" && s != "Z" && s != "X" {
				live = append(live, pid)
			}
		}
		if len(live) == 0 || time.Now().After(deadline) {
			return live
		}
		time.Sleep(10 * time.Millisecond) // polling /proc: there is no event for another process's death
	}
}

// state is the process state letter of pid from /proc/PID/stat, "" if it is gone.
func state(pid int) string {
	st, err := proc.ReadStat(pid)
	if err != nil {
		return ""
	}
	return string(st.State)
}

func TestPreflightCancelled(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(fmt.Errorf("the master is stopping"))
	_, err := Preflight(ctx, os.Args[0], nil, helperEnv("sleep"), time.Minute)
	if err == nil || !strings.Contains(err.Error(), "the master is stopping") {
		t.Fatalf("error %v, want the cancellation's cause", err)
	}
}

func TestPreflightEnv(t *testing.T) {
	environ := []string{
		"PATH=/usr/bin", "HOME=/root", "BROOD_WORKERS=3", "BROOD_LISTEN=:7001",
		"BROOD_ROLE=worker", "BROOD_ID=2", "BROOD_IPC_FD=3", "BROOD_LISTEN_FDS=1", "BROOD_MASTER_PID=9", "BROOD_PROTOCOL=1",
		"BROOD_NOTIFY_FD=3", "BROOD_FLEET_PASSWORD=secret", "NOTIFY_SOCKET=/run/systemd/notify", "WATCHDOG_USEC=1",
		"LISTEN_FDS=2", "LISTEN_PID=9", "LISTEN_FDNAMES=http", "BROOD_PREFLIGHT=0", "BROOD_STATE_VERSION=9",
		EnvStateFD + "=5", EnvRollbackFD + "=6",
	}
	got := strings.Join(PreflightEnv(environ, 4), " ")
	want := "PATH=/usr/bin HOME=/root BROOD_WORKERS=3 BROOD_LISTEN=:7001 BROOD_PREFLIGHT=1 BROOD_STATE_VERSION=4"
	if got != want {
		t.Fatalf("PreflightEnv:\n got %s\nwant %s", got, want)
	}
}

func TestCheckStateVersion(t *testing.T) {
	reads := fmt.Sprintf("this build reads state version %d", StateVersion)
	if MinStateVersion != StateVersion {
		reads = fmt.Sprintf("this build reads state versions %d to %d", MinStateVersion, StateVersion)
	}
	if err := CheckStateVersion(strconv.Itoa(StateVersion)); err != nil {
		t.Errorf("the current version: %v", err)
	}
	for v, want := range map[string]string{
		"":   EnvStateVersion + " is not set; " + reads,
		"x1": EnvStateVersion + `="x1" is not a version; ` + reads,
		"99": "cannot restore state version 99: " + reads,
		"0":  "cannot restore state version 0: " + reads,
	} {
		if err := CheckStateVersion(v); err == nil || err.Error() != want {
			t.Errorf("CheckStateVersion(%q) = %v, want %q", v, err, want)
		}
	}
}

// The exit status of a check killed by a signal is said so.
func TestPreflightKilledBySignal(t *testing.T) {
	dir := t.TempDir()
	script := filepath.Join(dir, "selfkill")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho dying >&2\nkill -9 $$\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Preflight(context.Background(), script, nil, nil, 30*time.Second)
	if err == nil || err.Error() != "preflight of "+script+": killed by signal "+syscall.SIGKILL.String()+": dying" {
		t.Fatalf("error %v", err)
	}
}
