package master

import (
	"slices"
	"strings"
	"testing"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/wire"
)

// Children learn the node id; the fleet's secrets never reach them.
func TestChildEnvFleet(t *testing.T) {
	t.Setenv(wire.EnvFleetPassword, "secret")
	t.Setenv(wire.EnvFleetToken, "tok")
	cfg := Config{Name: "x", Fleet: FleetConfig{URLs: "nats://a:4222", Node: "n1"}}
	env := childEnv(cfg, &slot{role: ipc.RoleWorker, id: 1}, 1, 0, 1)
	if !slices.Contains(env, wire.EnvFleetNode+"=n1") {
		t.Errorf("no node id in %q", env)
	}
	for _, kv := range env {
		if strings.Contains(kv, "secret") || strings.Contains(kv, "tok") && strings.HasPrefix(kv, "BROOD_") {
			t.Errorf("a child gets %q", kv)
		}
	}
	cfg.Fleet.URLs = ""
	if env := childEnv(cfg, &slot{role: ipc.RoleWorker, id: 1}, 1, 0, 1); !slices.Contains(env, wire.EnvFleetNode+"=") {
		t.Errorf("not in a fleet, yet %q", env)
	}
}

// A fleet's name and node id must make valid subjects and headers.
func TestNewChecksFleet(t *testing.T) {
	for _, c := range []Config{
		{Name: "a..b", Fleet: FleetConfig{URLs: "nats://x:4222", Node: "n"}},
		{Name: "ok", Fleet: FleetConfig{URLs: "nats://x:4222", Node: "bad\nnode"}},
		{Name: "ok", Fleet: FleetConfig{URLs: "nats://x:4222", Node: strings.Repeat("n", 256)}},
	} {
		if _, err := New(c); err == nil || !strings.Contains(err.Error(), "fleet") {
			t.Errorf("New(%+v) = %v, want a fleet error", c.Fleet, err)
		}
	}
}
