package upgrade

import (
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
)

// Build describes the binary a process runs: what `status` shows for the
// master and what a preflight prints (one JSON line) so that the upgrading
// master knows which build it is about to become.
type Build struct {
	Module    string `json:"module"`   // main module path
	Version   string `json:"version"`  // main module version, "(devel)" for a local build; buildLabel if set
	Revision  string `json:"revision"` // vcs.revision
	Modified  bool   `json:"modified"` // vcs.modified: built from a tree with local changes
	GoVersion string `json:"go"`       // the toolchain, "go1.26.0"
	Time      string `json:"time"`     // vcs.time: the revision's commit time (RFC 3339)
}

// buildLabel, when set at link time, is this build's Version, in place of the
// module version (which is "(devel)" for every local build):
//
//	go build -ldflags "-X github.com/brood-go/brood/internal/upgrade.buildLabel=v2-rc1" ./cmd/app
//
// It exists so that two builds of one program that differ only in this flag
// (tests of reload and upgrade build the same test program twice) can be told
// apart in `status` and by a preflight. Releases need not set it: a tagged
// module version and the VCS revision say the same.
var buildLabel string

// CurrentBuild describes the running binary, from the build information
// the Go toolchain embeds (runtime/debug.ReadBuildInfo) and buildLabel.
func CurrentBuild() Build { return currentBuild() }

// currentBuild reads the build information once: it cannot change.
var currentBuild = sync.OnceValue(readBuild)

func readBuild() Build {
	b := Build{GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		b.Module, b.Version = bi.Main.Path, bi.Main.Version
		if bi.GoVersion != "" {
			b.GoVersion = bi.GoVersion
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Revision = s.Value
			case "vcs.modified":
				b.Modified = s.Value == "true"
			case "vcs.time":
				b.Time = s.Value
			}
		}
	}
	if buildLabel != "" {
		b.Version = buildLabel
	}
	return b
}

// String is a short description for people: "v1.2.3 (rev 0123abcd4567,
// modified) go1.26.0"; a local build's "(devel)" is shown as "devel", a
// revision is cut to 12 characters, and a Build that knows nothing is
// "unknown build".
func (b Build) String() string {
	var parts []string
	switch v := b.Version; {
	case v == "(devel)":
		parts = append(parts, "devel")
	case v != "":
		parts = append(parts, v)
	}
	var vcs []string
	if r := b.Revision; r != "" {
		if len(r) > 12 {
			r = r[:12]
		}
		vcs = append(vcs, "rev "+r)
	}
	if b.Modified {
		vcs = append(vcs, "modified")
	}
	if len(vcs) > 0 {
		parts = append(parts, "("+strings.Join(vcs, ", ")+")")
	}
	if b.GoVersion != "" {
		parts = append(parts, b.GoVersion)
	}
	if len(parts) == 0 {
		return "unknown build"
	}
	return strings.Join(parts, " ")
}
