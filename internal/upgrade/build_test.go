package upgrade

import (
	"encoding/json"
	"runtime"
	"strings"
	"testing"
)

func TestBuildString(t *testing.T) {
	for _, c := range []struct {
		b    Build
		want string
	}{
		{Build{}, "unknown build"},
		{Build{Version: "v1.2.3", Revision: "0123abcd4567890fedcba", Modified: true, GoVersion: "go1.25"}, "v1.2.3 (rev 0123abcd4567, modified) go1.25"},
		{Build{Version: "(devel)", Revision: "abc", GoVersion: "go1.26.8"}, "devel (rev abc) go1.26.8"},
		{Build{Version: "(devel)"}, "devel"},
		{Build{Modified: true}, "(modified)"},
		{Build{GoVersion: "go1.26.8"}, "go1.26.8"},
	} {
		if got := c.b.String(); got != c.want {
			t.Errorf("%+v.String() = %q, want %q", c.b, got, c.want)
		}
	}
}

func TestCurrentBuild(t *testing.T) {
	b := CurrentBuild()
	if b.GoVersion != runtime.Version() {
		t.Errorf("GoVersion %q, want %q", b.GoVersion, runtime.Version())
	}
	if b.String() == "unknown build" {
		t.Errorf("the test binary's build is unknown: %+v", b)
	}
	raw, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{`"module":`, `"version":`, `"revision":`, `"modified":`, `"go":`, `"time":`} {
		if !strings.Contains(string(raw), k) {
			t.Errorf("Build JSON %s lacks %s", raw, k)
		}
	}
}
