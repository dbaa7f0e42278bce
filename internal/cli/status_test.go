package cli

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/brood-go/brood/internal/wire"
)

// The master's row of `status` ends with its build and upgrade count.
func TestStatusShowsMasterBuild(t *testing.T) {
	st := wire.Status{Name: "hello", PID: 42, State: "running", StartedAt: time.Now(), Upgrades: 2,
		Build:     wire.Build{Version: "v1.2.3", Revision: "0123abcd4567890", Modified: true, GoVersion: "go1.26.8"},
		Processes: []wire.Process{{Role: "worker", ID: 1, PID: 43, State: "ready"}}}
	var out bytes.Buffer
	printStatus(&out, st)
	var master string
	for _, l := range strings.Split(out.String(), "\n") {
		if strings.HasPrefix(l, "master ") {
			master = l
		}
	}
	if !strings.HasSuffix(master, "v1.2.3 (rev 0123abcd4567, modified) go1.26.8, 2 upgrades") {
		t.Errorf("master row %q lacks the build and upgrades\n%s", master, out.String())
	}
	st.Upgrades, st.Build = 1, wire.Build{}
	out.Reset()
	printStatus(&out, st)
	if !strings.Contains(out.String(), "unknown build, 1 upgrade\n") {
		t.Errorf("status:\n%s", out.String())
	}
}
