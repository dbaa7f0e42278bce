package cli

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

// The foreground run's exit code: what Run says, a failed start otherwise.
func TestRunExitCodes(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		code int
		out  string
	}{
		{"clean stop", nil, ExitOK, ""},
		{"start failed", errors.New("brood: listen 127.0.0.1:80: address in use"), ExitFailure, "Error: brood: listen 127.0.0.1:80: address in use\n"},
		{"killed on stop", &ExitError{Code: ExitStopKilled, Err: errors.New("1 process killed")}, ExitStopKilled, "Error: 1 process killed\n"},
		{"forced", &ExitError{Code: ExitInterrupted, Err: errors.New("forced stop")}, ExitInterrupted, "Error: forced stop\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr bytes.Buffer
			app := App{
				Defaults:      Options{Name: "exit-test"},
				Run:           func(context.Context, Options) error { return tc.err },
				DefaultRunDir: func(string) string { return t.TempDir() },
				Stdout:        &bytes.Buffer{},
				Stderr:        &stderr,
			}
			if code := Execute(t.Context(), app, []string{"run"}); code != tc.code || stderr.String() != tc.out {
				t.Errorf("exit %d, stderr %q; want %d, %q", code, stderr.String(), tc.code, tc.out)
			}
		})
	}
	var stderr bytes.Buffer
	app := App{Defaults: Options{Name: "exit-test"}, Run: func(context.Context, Options) error { return nil }, Stdout: &bytes.Buffer{}, Stderr: &stderr}
	if code := Execute(t.Context(), app, []string{"run", "--no-such-flag"}); code != ExitUsage || !strings.Contains(stderr.String(), "unknown flag") {
		t.Errorf("bad flag: exit %d, stderr %q; want %d and the flag named", code, stderr.String(), ExitUsage)
	}
}
