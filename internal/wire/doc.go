// Package wire is the contract shared by the master, its children and the CLI,
// defined once: the environment a child is started with, brood's reserved
// actions, the member table, the lifecycle events with their typed reasons,
// and the JSON the control socket speaks (status, reload, scale, schedules,
// errors).
//
// Keys of the JSON types are a contract too: scripts read `status --json` and
// `events --json`. Add fields freely; never rename or remove one.
package wire
