package master

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	if os.Getenv(envRealChild) != "" {
		realChildMain() // a child of a test's master (direct_test.go); never returns
	}
	goleak.VerifyTestMain(m)
}
