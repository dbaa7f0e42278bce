// Package upgrade is the in-place upgrade of the master (DESIGN §12): the
// state one master image hands to the next through an inherited descriptor,
// its versioned encoding, and the environment contract between the two
// images and the preflight check.
package upgrade

// StateVersion is the version of the state format this build writes. A
// build reads every version from MinStateVersion to StateVersion.
const StateVersion = 1

// MinStateVersion is the oldest state format this build can restore.
const MinStateVersion = 1

// Supported reports whether this build can restore state format v.
func Supported(v int) bool { return v >= MinStateVersion && v <= StateVersion }

// The environment contract of an upgrade.
const (
	// EnvPreflight ("1") runs the program in check mode: it loads its Config
	// from the same command line as the master, confirms that it can read
	// the state format EnvStateVersion names, prints its Build as one JSON
	// line on stdout and exits 0, or prints why not on stderr and exits 1.
	EnvPreflight = "BROOD_PREFLIGHT"
	// EnvStateVersion is the state format the upgrading master will hand over.
	EnvStateVersion = "BROOD_STATE_VERSION"
	// EnvStateFD is the descriptor the new image reads its state from.
	EnvStateFD = "BROOD_UPGRADE_STATE_FD"
	// EnvRollbackFD is an O_PATH descriptor of the previous image's
	// executable, which the new image re-executes if it cannot restore.
	EnvRollbackFD = "BROOD_UPGRADE_ROLLBACK_FD"
)
