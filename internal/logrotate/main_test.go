package logrotate

import (
	"fmt"
	"os"
	"testing"

	"go.uber.org/goleak"
)

// envHelper makes the test binary play a helper process instead of running
// the tests (the helper-process pattern of os/exec's tests).
const envHelper = "LOGROTATE_TEST_HELPER"

// TestMain runs a helper if the environment names one; otherwise it runs the
// tests and fails if a goroutine outlived them.
func TestMain(m *testing.M) {
	switch name := os.Getenv(envHelper); name {
	case "":
	case "writer":
		os.Exit(writerHelper())
	default:
		fmt.Fprintf(os.Stderr, "logrotate test: no helper %q\n", name)
		os.Exit(2)
	}
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}
