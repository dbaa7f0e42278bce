package listener

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// shortDir is a directory for sockets, whose paths must stay short.
func shortDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "lst")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// fullBacklog binds a listening unix socket at path with a backlog of 0 and
// connects to it, without anyone accepting, until connect says EAGAIN.
func fullBacklog(t *testing.T, path string) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if i == 100 {
			t.Fatal("backlog not full after 100 connections")
		}
		c, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Close(c) })
		err = unix.Connect(c, &unix.SockaddrUnix{Name: path})
		if errors.Is(err, unix.EAGAIN) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
	}
}

func TestRemoveStaleSocketKeepsBusySocket(t *testing.T) {
	path := filepath.Join(shortDir(t), "app.sock")
	fullBacklog(t, path)
	err := removeStaleSocket(path)
	if err == nil || !strings.Contains(err.Error(), path) || !errors.Is(err, syscall.EAGAIN) {
		t.Errorf("live socket with a full backlog: got %v, want an error naming %s and wrapping EAGAIN", err, path)
	}
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("the live socket was removed: %v", err)
	}
	_, err = Open(context.Background(), []string{"unix://" + path}, false)
	if err == nil {
		t.Errorf("Open over a live socket with a full backlog: got nil error")
	}
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("Open removed the live socket: %v", err)
	}
}

func TestRemoveStaleSocket(t *testing.T) {
	path := filepath.Join(shortDir(t), "app.sock")
	// Stale: bound, then closed without unlinking.
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	socks, err := Open(context.Background(), []string{"unix://" + path}, false)
	if err != nil {
		t.Fatalf("Open over a stale socket: %v", err)
	}
	defer CloseAll(socks)

	// Live: the socket just opened.
	_, err = Open(context.Background(), []string{"unix://" + path}, false)
	if err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Errorf("Open over a live socket: got %v, want address already in use", err)
	}
	if _, err := os.Lstat(path + ".lock"); err != nil {
		t.Errorf("lock file: %v", err)
	}
}

// TestOpenUnixWaitsForLock: while another process holds the path's lock (it
// is between its check and its bind), Open does not touch the path.
func TestOpenUnixWaitsForLock(t *testing.T) {
	path := filepath.Join(shortDir(t), "app.sock")
	unlock, err := lockSocketPath(path)
	if err != nil {
		t.Fatal(err)
	}
	// The lock is an flock on an open file description: a second open of the
	// file, as another process's, conflicts with it.
	done := make(chan error, 1)
	go func() {
		socks, err := Open(context.Background(), []string{"unix://" + path}, false)
		CloseAll(socks)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("Open returned (%v) while the lock was held", err)
	case <-time.After(200 * time.Millisecond): // a bounded check that it waits, not a synchronisation
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket bound while the lock was held: %v", err)
	}
	unlock()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Open after the lock was released: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Open still waiting 10s after the lock was released")
	}
}
