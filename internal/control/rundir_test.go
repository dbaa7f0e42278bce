package control

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// wantUnsafe checks that err is an *UnsafePathError about path whose message
// contains why.
func wantUnsafe(t *testing.T, what string, err error, path, why string) {
	t.Helper()
	var ue *UnsafePathError
	if !errors.As(err, &ue) || ue.Path != path || !strings.Contains(err.Error(), why) || !strings.Contains(err.Error(), path) {
		t.Errorf("%s: got %v, want an unsafe-path error naming %s: %q", what, err, path, why)
	}
}

// mkdir creates dir with mode (whatever the umask).
func mkdir(t *testing.T, dir string, mode os.FileMode) {
	t.Helper()
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, mode); err != nil {
		t.Fatal(err)
	}
}

// TestAcquireRefusesUnsafeAncestors checks the path of the run dir, not just
// its last component, on the master's side and the client's.
func TestAcquireRefusesUnsafeAncestors(t *testing.T) {
	base := runDir(t)

	// A world-writable parent without the sticky bit: anyone could rename
	// the run dir away and put their own in its place.
	open := filepath.Join(base, "open")
	mkdir(t, open, 0o777)
	_, err := Acquire(filepath.Join(open, "run"), "hello")
	wantUnsafe(t, "Acquire under a world-writable parent", err, open, "(owner uid "+fmt.Sprint(os.Geteuid())+", mode 0777) is writable by group or others and has no sticky bit")
	// A run dir someone prepared there, with a socket: Dial refuses too.
	mkdir(t, filepath.Join(open, "run2"), 0o700)
	staleSocket(t, SocketPath(filepath.Join(open, "run2")))
	_, err = Dial(filepath.Join(open, "run2"), "hello")
	wantUnsafe(t, "Dial under a world-writable parent", err, open, "is writable by group or others and has no sticky bit")

	// The same with the sticky bit, like /tmp, is fine.
	sticky := filepath.Join(base, "sticky")
	mkdir(t, sticky, os.ModeSticky|0o777)
	acquire(t, filepath.Join(sticky, "run"))

	// The run dir itself as a symbolic link, even to a safe directory.
	real := filepath.Join(base, "real")
	mkdir(t, real, 0o700)
	link := filepath.Join(base, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	_, err = Acquire(link, "hello")
	wantUnsafe(t, "Acquire of a symlinked run dir", err, link, "is a symbolic link")
	_, err = Dial(link, "hello")
	wantUnsafe(t, "Dial of a symlinked run dir", err, link, "is a symbolic link")

	// An ancestor that is a link of ours to a safe directory is followed ...
	acquire(t, filepath.Join(link, "run"))
	// ... and one to an unsafe directory is refused, naming the target.
	badTarget := filepath.Join(base, "bad")
	mkdir(t, badTarget, 0o777)
	badLink := filepath.Join(base, "badlink")
	if err := os.Symlink(badTarget, badLink); err != nil {
		t.Fatal(err)
	}
	_, err = Acquire(filepath.Join(badLink, "run"), "hello")
	wantUnsafe(t, "Acquire through a link to an unsafe directory", err, badTarget, "is writable by group or others")
}

// TestDefaultRunDirParentIsOurs checks that brood-<uid> (or brood) of the
// default run dir is held to the rules of a directory brood creates: it is not
// followed if it is a link.
func TestDefaultRunDirParentIsOurs(t *testing.T) {
	base := runDir(t)
	t.Setenv("XDG_RUNTIME_DIR", base)
	elsewhere := filepath.Join(base, "elsewhere")
	mkdir(t, elsewhere, 0o700)
	if err := os.Symlink(elsewhere, filepath.Join(base, "brood")); err != nil {
		t.Fatal(err)
	}
	dir := DefaultRunDir("hello")
	if dir != filepath.Join(base, "brood", "hello") {
		t.Fatalf("DefaultRunDir: got %s", dir)
	}
	_, err := Acquire(dir, "hello")
	wantUnsafe(t, "Acquire with brood a link", err, filepath.Join(base, "brood"), "is a symbolic link")

	// Without the link, Acquire creates both components, mode 0700.
	if err := os.Remove(filepath.Join(base, "brood")); err != nil {
		t.Fatal(err)
	}
	acquire(t, dir)
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if fi, err := os.Lstat(d); err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
			t.Errorf("%s: got %v, %v, want a directory of mode 0700", d, fi.Mode(), err)
		}
	}
}

// TestRunDirOwnedByOther refuses an ancestor and a brood-<uid> directory that
// belong to another user.
func TestRunDirOwnedByOther(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to chown a directory to uid 65534")
	}
	base := runDir(t)
	theirs := filepath.Join(base, "theirs")
	mkdir(t, theirs, 0o755)
	if err := os.Chown(theirs, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	_, err := Acquire(filepath.Join(theirs, "run"), "hello")
	wantUnsafe(t, "Acquire under another user's directory", err, theirs, fmt.Sprintf("(owner uid %d, mode 0755) is owned by uid %d, not by uid 0", nobody, nobody))

	// brood-0 of the default run dir made by someone else first, as in /tmp.
	t.Setenv("XDG_RUNTIME_DIR", "")
	t.Setenv("TMPDIR", base)
	planted := filepath.Join(base, "brood-0")
	mkdir(t, planted, 0o700)
	if err := os.Chown(planted, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	_, err = Acquire(DefaultRunDir("hello"), "hello")
	wantUnsafe(t, "Acquire with a planted brood-0", err, planted, fmt.Sprintf("is owned by uid %d, not by uid 0", nobody))
}

// TestDialRefusesServerOfOtherUID puts the socket of a server running as uid
// 65534 in a run dir of root's: the client refuses to talk to it.
func TestDialRefusesServerOfOtherUID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start a helper process as uid 65534")
	}
	base, exe := sharedDir(t)
	theirs := filepath.Join(base, "theirs")
	mkdir(t, theirs, 0o700)
	if err := os.Chown(theirs, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	startHelper(t, "listen", exe, theirs, &syscall.Credential{Uid: nobody, Gid: nobody})
	// SO_PEERCRED names whoever called listen(2), wherever the socket's name
	// is now.
	dir := filepath.Join(base, "run")
	mkdir(t, dir, 0o700)
	if err := os.Rename(SocketPath(theirs), SocketPath(dir)); err != nil {
		t.Fatal(err)
	}

	err := dial(t, dir).Do(ctx(t), "GET", "/status", nil, nil)
	want := fmt.Sprintf("it runs as uid %d", nobody)
	if err == nil || !strings.Contains(err.Error(), "refusing the server on "+SocketPath(dir)) || !strings.Contains(err.Error(), want) {
		t.Errorf("GET /status: got %v, want a refusal saying %q", err, want)
	}
}
