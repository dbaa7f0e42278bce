package brood_test

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"github.com/brood-go/brood/internal/helperproc"
	"go.uber.org/goleak"
)

// TestMain first lets the test binary play a helper process (master or child) if
// the environment says so; otherwise it runs the tests and checks that no
// goroutine leaked and every helper was used.
func TestMain(m *testing.M) {
	registerHelpers()
	helperproc.Dispatch()
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
		run := flag.Lookup("test.run").Value.String()
		if testing.Short() {
			run = "short" // some helpers belong to long tests
		}
		if err := helperproc.CheckAllUsed(run); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}
