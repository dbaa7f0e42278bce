package brood

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/proc"
	"github.com/brood-go/brood/internal/wire"
)

// A child whose master announces protocols it cannot speak refuses: it tells
// the master its own version and why, and does not run.
func TestChildRefusesMasterProtocol(t *testing.T) {
	for _, c := range []struct {
		lo, hi string
		want   string
	}{
		{"5", "6", "brood: the master speaks IPC protocol 5 to 6, this binary speaks 1 to 3"},
		{"9", "", "brood: the master speaks IPC protocol 9, this binary speaks 1 to 3"},
		{"x", "2", `brood: BROOD_PROTOCOL="x": not an IPC protocol version`},
	} {
		master, childEnd, err := proc.Socketpair()
		if err != nil {
			t.Fatal(err)
		}
		fd, err := syscall.Dup(int(childEnd.Fd()))
		childEnd.Close()
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range map[string]string{wire.EnvRole: "worker", wire.EnvID: "1", wire.EnvIPCFD: strconv.Itoa(fd), wire.EnvListenFDs: "0",
			wire.EnvProtocol: c.lo, wire.EnvProtocolMax: c.hi} {
			t.Setenv(k, v)
		}
		var cfg Config
		_, err = childFromEnv(&cfg)
		if err == nil || err.Error() != c.want {
			t.Errorf("BROOD_PROTOCOL=%s, _MAX=%s: %v; want %q", c.lo, c.hi, err, c.want)
		}
		master.SetReadDeadline(time.Now().Add(10 * time.Second))
		rd := ipc.NewReader(master, 0)
		var got []string
		for {
			f, err := rd.Next()
			if err != nil {
				break
			}
			got = append(got, f.Kind.String()+" "+string(f.Payload))
		}
		master.Close()
		if want := []string{"hello " + strconv.Itoa(ipc.Version), "fatal " + c.want}; strings.Join(got, "|") != strings.Join(want, "|") {
			t.Errorf("frames to the master: %q; want %q", got, want)
		}
	}
}

// A child of a master older than version ranges (BROOD_PROTOCOL alone) or of
// a newer one speaks the highest version both know; below the fleet's
// version it has no fleet.
func TestChildNegotiatesProtocol(t *testing.T) {
	for _, c := range []struct {
		lo, hi string
		want   int
	}{{"1", "", 1}, {"1", "2", 2}, {"2", "5", ipc.Version}, {"1", "1", 1}} {
		v, err := negotiateProtocol(c.lo, c.hi)
		if err != nil || v != c.want {
			t.Errorf("negotiateProtocol(%q, %q) = %d, %v; want %d", c.lo, c.hi, v, err, c.want)
		}
	}
}
