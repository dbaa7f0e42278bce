package control

import (
	"context"
	"errors"
	"net/http"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestHandoffAdopt: a request sent while no image serves waits in the
// backlog and is answered by the adopting Instance; the run dir stays held
// throughout (a second Acquire fails) and its files stay in place.
func TestHandoffAdopt(t *testing.T) {
	dir := runDir(t)
	in := acquire(t, dir)
	wait := serve(t, in, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"from":"old"}`))
	}), nil)
	c, err := Dial(dir, "hello")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var out map[string]any
	if err := c.Do(context.Background(), "GET", "/x", nil, &out); err != nil { // Serve is running
		t.Fatal(err)
	}
	lock, ln, err := in.Handoff(time.Second)
	if err != nil {
		t.Fatalf("Handoff: %v", err)
	}
	if err := wait(); err != nil {
		t.Fatalf("Serve after Handoff: %v", err)
	}
	if _, err := Acquire(dir, "hello"); !errors.As(err, new(*AlreadyRunningError)) {
		t.Fatalf("Acquire after Handoff: got %v, want AlreadyRunningError", err)
	}
	for _, p := range []string{SocketPath(dir), PIDPath(dir)} {
		if _, err := os.Lstat(p); err != nil {
			t.Fatalf("Handoff removed %s: %v", p, err)
		}
	}
	answer := make(chan error, 1)
	go func() {
		var out map[string]any
		answer <- c.Do(context.Background(), "GET", "/x", nil, &out)
	}()
	// Adopt from the numbers, as the next image does (the exec keeps them).
	lfd, _ := unix.Dup(int(lock.Fd()))
	sfd, _ := unix.Dup(int(ln.Fd()))
	lock.Close()
	ln.Close()
	in2, err := Adopt(dir, lfd, sfd)
	if err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	t.Cleanup(func() { in2.Close() })
	serve(t, in2, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"from":"new"}`))
	}), nil)
	select {
	case err := <-answer:
		if err != nil {
			t.Fatalf("request across the handoff: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("request across the handoff was not answered within 10s")
	}
	if err := in2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(SocketPath(dir)); !os.IsNotExist(err) {
		t.Fatalf("Close of the adopted Instance left %s: %v", SocketPath(dir), err)
	}
}
