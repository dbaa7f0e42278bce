// Package control is the master's control plane: the files a running master
// keeps in its run dir, and the HTTP+JSON transport over a unix socket that the
// CLI subcommands (stop, status, reload, scale, ...) use to talk to it. The
// endpoints themselves are an http.Handler supplied by the master.
//
// # Run dir
//
// A run dir (for example $XDG_RUNTIME_DIR/brood/<name> or /tmp/brood-<uid>/<name>)
// belongs to one master at a time and holds:
//
//	master.lock   flock(2)ed exclusively by the running master; never removed
//	master.pid    the master's pid in decimal, written atomically (temp + rename)
//	control.sock  the unix socket the master serves its control API on
//
// # Liveness
//
// The lock decides whether a master is running, not the pid file or the socket:
// the kernel releases a flock when the last descriptor of its open file is
// closed, which includes the holder being killed with SIGKILL. A killed master
// leaves a stale master.pid and control.sock behind; the next Acquire takes the
// free lock and replaces them. The lock file itself is never removed: removing
// it would let two masters lock two different files of the same name.
//
// # Security model
//
//   - Acquire and Dial check every component of the run dir's path (see
//     Acquire): ancestors owned by root or the effective uid and not writable
//     by group or others unless sticky; the directories brood creates real
//     directories of the effective uid, created one at a time with mode 0700.
//   - The client talks only to a server whose SO_PEERCRED uid owns the run
//     dir, which must be the client's own uid unless the client is root.
//   - The socket is chmodded to 0600 right after it is bound, so its mode does
//     not depend on the umask; no connection is served before that.
//   - Every accepted connection's peer credentials are read with SO_PEERCRED. A
//     peer whose uid is not the master's effective uid is answered 403 before
//     any of its request is read, and the refusal is logged. Root gets no
//     exemption: root's connections are served only by a master running as root.
//   - A request must arrive within 10 seconds, and at most 32 connections are
//     served at once (the next is answered 503).
//
// The permissions keep other users away from the socket; the SO_PEERCRED check
// holds even when they do not (a run dir or socket mode loosened by hand, or root
// connecting to another user's master).
package control
