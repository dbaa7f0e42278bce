package upgrade

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"time"
)

// Preflight is a stand-in until preflight.go lands.
func Preflight(ctx context.Context, exe string, args, env []string, timeout time.Duration) (Build, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = env
	out, err := cmd.Output()
	if err != nil {
		return Build{}, fmt.Errorf("preflight of %s: %w", exe, err)
	}
	var b Build
	if err := json.Unmarshal(out, &b); err != nil {
		return Build{}, fmt.Errorf("preflight of %s: printed no build info", exe)
	}
	return b, nil
}

// PreflightEnv is a stand-in until preflight.go lands.
func PreflightEnv(environ []string, stateVersion int) []string {
	return append(append([]string(nil), environ...), EnvPreflight+"=1", EnvStateVersion+"="+strconv.Itoa(stateVersion))
}
