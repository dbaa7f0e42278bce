package wire

import "strings"

// The environment contract between the master and a child. The master sets
// these when it starts a child; the child reads them and removes them from its
// environment, so programs it starts are not mistaken for brood children.
const (
	EnvRole        = "BROOD_ROLE"         // "agent" or "worker"
	EnvID          = "BROOD_ID"           // worker slot 1..N, 0 for the agent
	EnvIPCFD       = "BROOD_IPC_FD"       // the child's end of the socketpair: 3
	EnvListenFDs   = "BROOD_LISTEN_FDS"   // number of listeners, at fds IPC_FD+1 ... in Config.Listen order
	EnvMasterPID   = "BROOD_MASTER_PID"   // for logs and sanity checks
	EnvProtocol    = "BROOD_PROTOCOL"     // the lowest IPC protocol version the master speaks (what a binary older than version ranges takes as its only one)
	EnvProtocolMax = "BROOD_PROTOCOL_MAX" // the highest (unset: EnvProtocol's); see package ipc, "Handshake and version"
	EnvName        = "BROOD_NAME"         // Config.Name as the master resolved it (also the --name flag's variable)
	EnvStopTimeout = "BROOD_STOP_TIMEOUT" // Config.StopTimeout as the master resolved it
	EnvMetrics     = "BROOD_METRICS"      // "1" when the master serves /metrics: send final metrics when stopping
	EnvFleetNode   = "BROOD_FLEET_NODE"   // this member's node id when the cluster is in a fleet (else unset)
	EnvDirectFD    = "BROOD_DIRECT_FD"    // the child's end of its channel socket (package direct); unset: no direct channels
)

// Secrets of the fleet connection: the master reads them (they mirror flags)
// and never passes them on to a child.
const (
	EnvFleetPassword = "BROOD_FLEET_PASSWORD"
	EnvFleetToken    = "BROOD_FLEET_TOKEN"
)

// The daemon handshake: `start --daemon` starts the master with the write end
// of a pipe as fd 3 and EnvNotifyFD=3. The master writes one line and closes
// it: "ready <status JSON>" once the whole cluster is ready, or "error
// <message>" if the start failed (it then stops everything and exits non-zero).
const EnvNotifyFD = "BROOD_NOTIFY_FD"

// EnvFDStore ("1") makes a master run by systemd keep its listening sockets
// in the fd store even where systemd does not announce one with $FDSTORE
// (before systemd 254): set it when the unit has FileDescriptorStoreMax=.
const EnvFDStore = "BROOD_FDSTORE"

// EnvLogFiles tells a daemon master the paths of its stdout and stderr files
// ("<stdout>,<stderr>"), so that it can reopen them after rotation.
const EnvLogFiles = "BROOD_LOG_FILES"

// childOnlyEnv are the variables a master never passes on from its own
// environment: the child contract, and the master's own markers.
var childOnlyEnv = []string{EnvRole, EnvID, EnvIPCFD, EnvListenFDs, EnvMasterPID, EnvProtocol, EnvProtocolMax, EnvNotifyFD, EnvMetrics, EnvFleetNode, EnvDirectFD, EnvFleetPassword, EnvFleetToken}

// IsChildOnly reports whether kv ("KEY=value") is a variable the master must not
// pass on to a child from its own environment.
func IsChildOnly(kv string) bool {
	for _, k := range childOnlyEnv {
		if strings.HasPrefix(kv, k+"=") {
			return true
		}
	}
	return false
}
