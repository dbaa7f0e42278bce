package brood

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/brood-go/brood/internal/cli"
	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/schedule"
	"github.com/brood-go/brood/internal/wire"
)

// The numeric enums that cross package boundaries are converted by value:
// these tests keep the two sides equal.

func TestRolesMatchTheWire(t *testing.T) {
	for _, c := range []struct {
		public Role
		wire   ipc.Role
	}{{Master, ipc.RoleMaster}, {Agent, ipc.RoleAgent}, {Worker, ipc.RoleWorker}} {
		if ipc.Role(c.public) != c.wire || Role(c.wire) != c.public {
			t.Errorf("brood.%v is %d, ipc's is %d", c.public, c.public, c.wire)
		}
		if c.public.String() != wire.RoleName(c.wire) {
			t.Errorf("brood.%v is named %q, the wire's %q", c.public, c.public.String(), wire.RoleName(c.wire))
		}
	}
}

func TestScheduleTypesMatchTheScheduler(t *testing.T) {
	for _, c := range []struct {
		public ScheduleType
		inner  schedule.Type
	}{{OneWorker, schedule.OneWorker}, {AllWorkers, schedule.AllWorkers}, {InAgent, schedule.Agent}} {
		if schedule.Type(c.public) != c.inner {
			t.Errorf("brood.%v is %d, the scheduler's is %d", c.public, c.public, c.inner)
		}
	}
}

// The member table the master sends (wire.Member) decodes into the public
// Member with every field.
func TestMemberTableMatchesTheWire(t *testing.T) {
	in := wire.Member{PID: 42, Role: ipc.RoleWorker, ID: 3, Ready: true, Stopping: true}
	b, err := json.Marshal([]wire.Member{in})
	if err != nil {
		t.Fatal(err)
	}
	var out []Member
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	if want := (Member{PID: 42, Role: Worker, ID: 3, Ready: true, Stopping: true}); len(out) != 1 || out[0] != want {
		t.Fatalf("%s decoded as %+v, want %+v", b, out, want)
	}
}

// `unit` writes cli.DefaultStopTimeout into the ExecStart of a program that
// sets no StopTimeout, and computes TimeoutStopSec from it: it must be the
// default the program would have used.
func TestStopTimeoutDefaultIsTheCLIs(t *testing.T) {
	cfg, err := Config{Worker: func(context.Context, *Process) error { return nil }}.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.StopTimeout != cli.DefaultStopTimeout {
		t.Errorf("Config.StopTimeout defaults to %v, cli.DefaultStopTimeout is %v", cfg.StopTimeout, cli.DefaultStopTimeout)
	}
}
