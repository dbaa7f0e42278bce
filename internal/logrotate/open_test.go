package logrotate

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

const secret = "root only\n"

// plantLink makes path a symbolic link to a root-only file (or to where one
// would be created, if missing) and returns the target.
func plantLink(t *testing.T, path string, missing bool) string {
	t.Helper()
	target := filepath.Join(t.TempDir(), "secret")
	if !missing {
		if err := os.WriteFile(target, []byte(secret), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	return target
}

// checkUntouched fails the test if target changed (or, if missing, exists).
func checkUntouched(t *testing.T, target string, missing bool) {
	t.Helper()
	b, err := os.ReadFile(target)
	switch {
	case missing && !errors.Is(err, os.ErrNotExist):
		t.Errorf("%s was created through the symbolic link (err %v)", target, err)
	case missing:
	case err != nil:
		t.Fatal(err)
	case string(b) != secret:
		t.Errorf("the symbolic link's target was written to: %q", b)
	}
}

func TestOpenRefusesSymlink(t *testing.T) {
	for _, missing := range []bool{false, true} {
		path := filepath.Join(t.TempDir(), "app.log")
		target := plantLink(t, path, missing)
		f, err := Open(path, 0o644)
		if err == nil {
			f.Write([]byte("planted\n"))
			f.Close()
			t.Errorf("Open through a symbolic link to %s (missing %v) succeeded", target, missing)
		} else if !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "symbolic link") {
			t.Errorf("error does not name the path and the link: %v", err)
		}
		checkUntouched(t, target, missing)
	}
}

// A link planted at the path after a rotation renamed the file: Reopen refuses
// it, and the File keeps writing to the renamed file.
func TestReopenRefusesSymlink(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.log")
	f, err := Open(path, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	target := plantLink(t, path, false)
	if err := f.Reopen(); err == nil {
		t.Error("Reopen through a symbolic link succeeded")
	} else if !strings.Contains(err.Error(), path) {
		t.Errorf("error does not name the path: %v", err)
	}
	if _, err := f.Write([]byte("after\n")); err != nil {
		t.Fatal(err)
	}
	checkUntouched(t, target, false)
	if b, _ := os.ReadFile(path + ".1"); string(b) != "after\n" {
		t.Errorf("the renamed file holds %q, want the line written after the refused Reopen", b)
	}
}

// chownNobody gives path to uid/gid 65534, skipping the test without the
// privilege to.
func chownNobody(t *testing.T, path string) {
	t.Helper()
	if err := os.Chown(path, 65534, 65534); errors.Is(err, os.ErrPermission) {
		t.Skipf("cannot chown to another uid: %v", err)
	} else if err != nil {
		t.Fatal(err)
	}
}

func TestOpenRefusesAnotherUsersFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.log")
	if err := os.WriteFile(path, []byte(secret), 0o666); err != nil {
		t.Fatal(err)
	}
	chownNobody(t, path)
	f, err := Open(path, 0o644)
	if err == nil {
		f.Close()
		t.Fatal("Open of a file owned by uid 65534 succeeded")
	}
	if msg := err.Error(); !strings.Contains(msg, path) || !strings.Contains(msg, "uid 65534") {
		t.Errorf("error does not name the path and the owner: %v", err)
	}
	checkUntouched(t, path, false)
}

// A FIFO at the path would block the open (no reader) or take the logs away.
func TestOpenRefusesFIFO(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.log")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		f, err := Open(path, 0o644)
		if err == nil {
			f.Close()
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Error("Open of a FIFO succeeded")
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Open of a FIFO without a reader still blocks after 30s") // the goroutine stays blocked
	}
}

// The Rotator's fresh file after a rename: a link or another user's file
// planted at the path is refused, not written to or chmod-ed.
func TestCreateEmptyRefusesPlantedFiles(t *testing.T) {
	path := filepath.Join(t.TempDir(), "app.log")
	target := plantLink(t, path, false)
	if err := createEmpty(path, 0o644); err == nil {
		t.Error("createEmpty through a symbolic link succeeded")
	}
	checkUntouched(t, target, false)
	if fi, err := os.Stat(target); err != nil {
		t.Fatal(err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Errorf("the link's target was chmod-ed to %v", fi.Mode().Perm())
	}

	other := filepath.Join(t.TempDir(), "other.log")
	if err := os.WriteFile(other, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	chownNobody(t, other)
	if err := createEmpty(other, 0o666); err == nil {
		t.Error("createEmpty of a file owned by uid 65534 succeeded")
	}
	if fi, err := os.Stat(other); err != nil {
		t.Fatal(err)
	} else if fi.Mode().Perm() != 0o600 {
		t.Errorf("another user's file was chmod-ed to %v", fi.Mode().Perm())
	}
}
