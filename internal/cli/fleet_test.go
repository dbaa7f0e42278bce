package cli

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// The fleet's flags mirror BROOD_* variables, and a flag beats its variable.
func TestFleetEnv(t *testing.T) {
	t.Setenv("BROOD_FLEET", "nats://a:4222,nats://b:4222")
	t.Setenv("BROOD_NODE", "n1")
	t.Setenv("BROOD_FLEET_PASSWORD", "pw")
	t.Setenv("BROOD_FLEET_OPTIONAL", "true")
	t.Setenv("BROOD_FLEET_LEASE_TTL", "3s")
	t.Setenv("BROOD_FLEET_TLS_CA", "/ca.pem")
	var opts Options
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	for _, f := range []struct {
		name string
		p    *string
	}{{"fleet", &opts.Fleet}, {"node", &opts.Node}, {"fleet-password", &opts.FleetPassword}, {"fleet-tls-ca", &opts.FleetTLSCA}} {
		fs.StringVar(f.p, f.name, "", "")
	}
	fs.BoolVar(&opts.FleetOptional, "fleet-optional", false, "")
	fs.DurationVar(&opts.FleetLeaseTTL, "fleet-lease-ttl", 0, "")
	if err := fs.Parse([]string{"--node", "flag-wins"}); err != nil {
		t.Fatal(err)
	}
	if err := applyEnv(fs, &opts); err != nil {
		t.Fatal(err)
	}
	if opts.Fleet != "nats://a:4222,nats://b:4222" || opts.Node != "flag-wins" || opts.FleetPassword != "pw" ||
		!opts.FleetOptional || opts.FleetLeaseTTL != 3*time.Second || opts.FleetTLSCA != "/ca.pem" {
		t.Errorf("options: %+v", opts)
	}
}

// `start --daemon` passes the fleet's settings on, its secrets by
// environment only.
func TestDaemonPassesFleetOn(t *testing.T) {
	app := &App{DefaultRunDir: func(string) string { return "/run/x" }}
	opts := &Options{Name: "x", Fleet: "nats://a:4222", Node: "n1", FleetUser: "u", FleetPassword: "secret", FleetToken: "tok",
		FleetCreds: "/c.creds", FleetTLSCert: "/c.pem", FleetTLSKey: "/k.pem", FleetOptional: true, FleetLeaseTTL: 5 * time.Second}
	args := strings.Join(daemonArgs(app, opts), " ")
	for _, want := range []string{"--fleet nats://a:4222", "--node n1", "--fleet-user u", "--fleet-creds /c.creds", "--fleet-tls-cert /c.pem",
		"--fleet-tls-key /k.pem", "--fleet-optional", "--fleet-lease-ttl 5s"} {
		if !strings.Contains(args, want) {
			t.Errorf("daemon args %q lack %q", args, want)
		}
	}
	if strings.Contains(args, "secret") || strings.Contains(args, "tok") {
		t.Errorf("daemon args carry a secret: %q", args)
	}
	env := daemonEnv(opts)
	if !slices.Contains(env, "BROOD_FLEET_PASSWORD=secret") || !slices.Contains(env, "BROOD_FLEET_TOKEN=tok") {
		t.Errorf("daemon env: %q", env)
	}
}
