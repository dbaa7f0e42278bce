package brood

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/brood-go/brood/internal/upgrade"
)

// Run's check mode (library use, no CLI): the cfg given is checked, and the
// build printed as one JSON line, or the reason as one line.
func TestPreflightOfRun(t *testing.T) {
	worker := func(context.Context, *Process) error { return nil }
	t.Setenv(upgrade.EnvStateVersion, "1")
	var out, errOut bytes.Buffer
	if code := preflightCode(Config{Worker: worker, Listen: []string{"127.0.0.1:0"}, RunDir: t.TempDir() + "/run"}, &out, &errOut); code != 0 {
		t.Fatalf("good config: exit %d, stderr %q", code, errOut.String())
	}
	var b upgrade.Build
	if err := json.Unmarshal(out.Bytes(), &b); err != nil || b != upgrade.CurrentBuild() || strings.Count(out.String(), "\n") != 1 {
		t.Fatalf("stdout %q (%v); want the build as one JSON line", out.String(), err)
	}
	for _, c := range []struct {
		cfg          Config
		stateVersion string
		want         string
	}{
		{Config{}, "1", "Error: brood: Config.Worker is required\n"},
		{Config{Worker: worker, Listen: []string{"udp://:53"}}, "1", "Error: brood: listen address"},
		{Config{Worker: worker, Admin: "bogus://x"}, "1", "Error: brood: admin listener: "},
		{Config{Worker: worker, Fleet: "nats://127.0.0.1:4222", Node: "bad\nnode"}, "1", "Error: brood: fleet: --node: "},
		{Config{Worker: worker}, "", "Error: brood: BROOD_STATE_VERSION is not set; this build reads state version 1\n"},
	} {
		t.Setenv(upgrade.EnvStateVersion, c.stateVersion)
		out.Reset()
		errOut.Reset()
		code := preflightCode(c.cfg, &out, &errOut)
		if code != 1 || !strings.HasPrefix(errOut.String(), c.want) || strings.Count(errOut.String(), "\n") != 1 || out.Len() != 0 {
			t.Errorf("%+v: exit %d, stdout %q, stderr %q; want exit 1 and one line starting %q", c.cfg, code, out.String(), errOut.String(), c.want)
		}
	}
}
