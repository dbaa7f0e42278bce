// Package brood runs one Go program as a self-healing multi-process service, the
// way Egg.js's cluster does for Node.js: a master that only manages processes and
// relays messages, one agent for singleton background work, and N workers that
// serve requests on listeners they share.
//
//	             +--------+          +-------+
//	             | master |<-------->| agent |
//	             +--------+          +-------+
//	             ^   ^    ^
//	            /    |     \        (IPC: one socketpair per child;
//	           v     v      v        worker<->worker and agent<->worker
//	+----------+ +----------+ +----------+   traffic is relayed by the master)
//	| worker 1 | | worker 2 | | worker 3 |
//	+----------+ +----------+ +----------+
//	     \___________|___________/
//	      one listening socket, opened by the master, inherited by every worker
//
// # Writing a program
//
// Call Main (or Run) with a Config naming the Agent and Worker functions. The same
// binary runs in every process: the master starts its own executable again for
// each child, with the role in the environment, and Main calls the function for
// that role. Each function initialises, calls Process.Ready (ServeHTTP does it),
// and returns once its context is cancelled.
//
// # Lifecycle
//
// Start, in Egg's order: the master opens every listener (a port in use is an
// error naming the address, exit code 1); starts the agent and waits for its
// Ready; starts the workers in parallel and waits for all of them; then sends
// brood:ready to every process. A child that fails or times out during this first
// start aborts it: everything started is stopped and the child's error is
// reported. Later, a crashed process is replaced at once (with exponential
// backoff if it keeps crashing) and the others are told (brood:worker-exit, ...).
//
// Stop (SIGTERM, SIGINT, or the end of Run's context): the workers stop accepting
// and drain in parallel (Config.StopTimeout, then SIGKILL), then the agent stops,
// then the master closes the listeners and exits 0. A second SIGINT forces it
// (exit code 130); a stop that had to kill a process after StopTimeout exits 4.
// Children die with the master: they have SIGTERM as parent-death signal and treat
// the end of their IPC channel as a request to stop. As pid 1 (a container
// without an init), or with Config.Subreaper, the master also reaps the orphans
// its children leave, never taking its own children's exit statuses.
//
// # Signals
//
// Master: SIGTERM and SIGINT stop gracefully, a second SIGINT forces, SIGHUP
// reloads every worker (rolling), SIGUSR1 rotates and reopens log files.
// Children: SIGTERM stops gracefully; SIGINT and SIGHUP are ignored (the master
// orchestrates; Ctrl-C reaches the whole process group).
//
// # Messages, schedules, logs, operations
//
// The Messenger's delivery guarantees are documented on its type. Schedules
// (Config.Schedules) run in the egg-schedule model and log rotation
// (Config.LogRotation) in the egg-logrotator model; both are driven by the
// agent. Main gives the program the commands run, start --daemon, stop, status,
// reload, scale, schedule, rotate-logs and events, which talk to the master over
// a unix control socket in Config.RunDir. The supervisor itself lives in
// internal/master; every exit and restart carries a typed reason (exit, signal,
// panic, hang, memory, reload, scale, upgrade, stop).
//
// # Single-process mode
//
// Config.Single (`run --single`) runs the agent and one worker as goroutines of
// this process: the master's own code with in-memory pipes instead of
// socketpairs, so the start order, events, relay and delivery guarantees are
// the same. Each goroutine has a virtual pid (Process.PID) above the kernel's
// pid_max. A crashed or replaced worker is replaced by a new goroutine; a
// goroutine that ignores its stop cannot be killed, only abandoned after
// StopTimeout.
//
// # Environment and descriptors of a child
//
// The contract is defined once, in internal/wire: BROOD_ROLE (agent|worker), BROOD_ID (slot), BROOD_IPC_FD (3, the child's end of
// the socketpair), BROOD_LISTEN_FDS (count n; the listeners are fds 4..3+n in
// Config.Listen order), BROOD_MASTER_PID, BROOD_PROTOCOL and
// BROOD_PROTOCOL_MAX (the range of IPC versions the master speaks),
// BROOD_NAME and BROOD_STOP_TIMEOUT. The child removes the first seven from
// its environment once read, so programs it starts are not mistaken for brood
// children. The wire format, and how the two sides agree on a version, is
// documented in internal/ipc.
//
// # Caveats
//
// `go run` works (the master re-executes the temporary binary), but a rolling
// reload picks up a new build only when the program runs from a stable path.
// Linux only: the master relies on socketpair, SO_PEERCRED, /proc and
// PR_SET_PDEATHSIG.
package brood
