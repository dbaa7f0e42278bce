package brood

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"time"

	"github.com/brood-go/brood/internal/control"
	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/master"
	"github.com/brood-go/brood/internal/relay"
	"github.com/brood-go/brood/internal/wire"
)

// Config describes a cluster. The zero value of every optional field is replaced
// by the default its comment names.
type Config struct {
	// Name names the application in process titles (`ps` shows "<name> worker 2"),
	// run-dir files and log lines. Defaults to the executable's base name.
	Name string

	// Workers is the number of worker processes. 0 means runtime.NumCPU().
	Workers int

	// Listen lists the addresses the master opens and every worker inherits, in
	// this order (Process.Listeners): "tcp://host:port", "host:port", ":7001",
	// ":0" (a free port, logged and reported by status), "unix:///run/app.sock".
	//
	// Under socket activation (systemd, systemd-socket-activate: LISTEN_FDS
	// and LISTEN_PID naming the master) a passed socket is used instead of
	// binding: an address equal to a passed socket's bound address takes it
	// (":8080" and "0.0.0.0:8080" match any socket bound to a wildcard
	// address on 8080); "fd://NAME" takes the next socket passed under NAME
	// (a socket unit's FileDescriptorName=); with Listen empty every passed
	// socket is used, in order. A passed socket that nothing takes, or an
	// fd://NAME that was not passed, is an error naming it. Sockets the master
	// bound itself go to systemd's fd store when it offers one ($FDSTORE, or
	// BROOD_FDSTORE=1 before systemd 254) and come back from it on the next
	// start, so a `systemctl restart` refuses no connection.
	Listen []string

	// Agent, if set, runs in the single agent process: timers, schedules,
	// long-lived clients. See Worker for the contract.
	Agent func(ctx context.Context, p *Process) error

	// Worker runs in every worker process; it is required. It should initialise,
	// call p.Ready (ServeHTTP does), and return when ctx is done, having drained
	// its work. Returning an error ends the process with that error (during the
	// first start, it aborts the start). Returning nil before ctx is done marks
	// the process ready and keeps it alive for its message handlers and p.Go
	// goroutines until the cluster stops it, as an Egg agent.js that only
	// registers handlers would.
	Worker func(ctx context.Context, p *Process) error

	// ReadyTimeout bounds the time from starting a process to its Ready.
	// Defaults to 30s.
	ReadyTimeout time.Duration

	// StopTimeout bounds a graceful stop of one process: drain, then SIGKILL.
	// Defaults to 10s.
	StopTimeout time.Duration

	// HeartbeatInterval is how often the master pings every child. Defaults to 1s.
	HeartbeatInterval time.Duration

	// HeartbeatTimeout is how long a child may go without answering before it is
	// killed and replaced as hung. Pings are answered by the IPC reader, off the
	// request path, so busy handlers do not trip it. Defaults to 30s.
	HeartbeatTimeout time.Duration

	// MaxRSS, if non-zero, is the resident memory in bytes above which a worker is
	// replaced gracefully (a new one is started and ready before the old drains).
	MaxRSS uint64

	// Restart is the crash-restart policy. Zero fields take the defaults of
	// DefaultRestartPolicy.
	Restart RestartPolicy

	// MaxFrame bounds one IPC frame (header, action and payload). Sending a larger
	// message is an error to the sender. Defaults to 16 MiB.
	MaxFrame int

	// MaxPending bounds, per process, the messages the master holds for it while it
	// starts or restarts, and those it was sent and has not finished handling.
	// Beyond it a message is refused: the sender's Messenger logs and counts it.
	// It also bounds the messages a process queues for its own handlers (see
	// Messenger). Defaults to 65536.
	MaxPending int

	// MaxPendingBytes bounds the same messages as MaxPending by their size: per
	// process, the bytes the master holds for it while it starts or restarts plus
	// those of the messages it has not finished handling (and, for a slot with no
	// process at all, the bytes held for the slot); and the bytes a process queues
	// for its own handlers. Beyond it a message is refused exactly as beyond
	// MaxPending. It may not be below MaxFrame. Defaults to 64 MiB, or MaxFrame if
	// that is larger.
	MaxPendingBytes int

	// ReusePort gives each TCP listener SO_REUSEPORT. The master still opens one
	// socket per address and every worker shares it; the option exists for
	// deployments that bind the same port from other programs. See the README for
	// the trade-off of per-worker sockets.
	ReusePort bool

	// Schedules are tasks run on timers (egg-schedule model): the agent owns the
	// clock, the tasks run in one worker, all workers or the agent. A cluster
	// with schedules always has an agent (an idle one if Agent is nil).
	Schedules []Schedule

	// LogRotation rotates brood's log files (from `start --daemon`) and the
	// application's own (opened with Process.OpenLog), egg-logrotator style: the
	// agent renames, then every process reopens. A cluster that rotates logs
	// always has an agent.
	LogRotation LogRotation

	// Single runs the agent and one worker as goroutines of this process, with the
	// in-memory messenger: same API, same events. For development and debuggers.
	// Workers is ignored. (`run --single` on the command line.)
	Single bool

	// RelayOnly sends every message through the master, as Egg does. By
	// default the agent and each worker also get a direct channel between
	// them (a socketpair the master makes and hands to both), and agent<->worker
	// messages take it once both are ready: a round trip crosses two
	// processes instead of three. Every guarantee of the Messenger holds on
	// either path and across the switch between them (DESIGN §3a); the
	// master still counts the direct traffic (status "messages.direct",
	// brood_messages_direct_total). Set it to compare, or to have the master
	// see every byte. (`--relay-only`, BROOD_RELAY_ONLY=1.)
	RelayOnly bool

	// Admin, if set, is the address of the master's admin listener ("127.0.0.1:9090",
	// ":9090", "unix:///run/app-admin.sock"; `--admin`, BROOD_ADMIN): /metrics
	// (the master's metrics and every process's prometheus.DefaultGatherer,
	// merged), /livez, /readyz, /events and a live dashboard at /. Workers never
	// serve it. Empty (the default) turns it off.
	Admin string

	// DrainDelay is how long, on a graceful stop, the workers keep serving
	// after /readyz has turned 503 and before they drain (`--drain-delay`,
	// BROOD_DRAIN_DELAY): time for a load balancer (a Kubernetes endpoint
	// controller) to stop sending traffic, without a preStop sleep. A forced
	// stop (a second Ctrl-C) cuts it short. Default 0.
	DrainDelay time.Duration

	// Subreaper makes the master the reaper of orphans its children leave
	// behind (PR_SET_CHILD_SUBREAPER): a grandchild whose parent, a worker,
	// exits is reparented to the master, which reaps it, instead of to init.
	// When the master is pid 1 (a container without an init) it reaps orphans
	// whatever this says. Either way it waits only for processes it did not
	// start itself, so its children's exit statuses (the restart reasons) are
	// never lost; a process the program starts in the master process on its
	// own (os/exec before or beside Run) would lose its status to it, though.
	// Ignored in single-process mode, where the program's code runs in the
	// master. Default false.
	Subreaper bool

	// Fleet joins this cluster to the fleet of brood clusters with the same
	// Name, on this machine or others, over NATS: the server URLs,
	// comma-separated ("nats://10.0.0.1:4222,nats://10.0.0.2:4222"; `--fleet`,
	// BROOD_FLEET). The master holds the connection; processes use
	// Process.Fleet. Empty (the default): not in a fleet, and fleet sends fail
	// with ErrNoFleet. A server that cannot be reached at start fails the
	// start, naming the URLs, unless FleetOptional; losing it later is logged,
	// counted and retried forever, and local messaging keeps working.
	Fleet string
	// FleetAuth are the credentials for the fleet's NATS server.
	FleetAuth FleetAuth
	// FleetOptional starts the cluster even if no fleet server can be reached
	// (`--fleet-optional`); the master keeps trying in the background and
	// fleet messages sent meanwhile are buffered as while disconnected.
	FleetOptional bool
	// FleetLeaseTTL is the lifetime of the fleet's leases (leader and
	// singleton; `--fleet-lease-ttl`, BROOD_FLEET_LEASE_TTL). Defaults to 10s.
	FleetLeaseTTL time.Duration
	// Node is this member's id in the fleet (`--node`, BROOD_NODE): in
	// Message.Node, status and logs. 1 to 255 bytes without control
	// characters; unique in the fleet. Defaults to "<hostname>:<RunDir>",
	// which tells apart clusters on one machine by their run dirs.
	Node string
	// Metrics says how /metrics merges the application's own metrics.
	Metrics Metrics

	// RunDir holds the control socket and pid file. Defaults to
	// $XDG_RUNTIME_DIR/brood/<name>, or /tmp/brood-<uid>/<name>.
	RunDir string

	// Logger receives structured logs; every process adds role, id and pid.
	// Defaults to a text handler on standard error. In the master, its handler
	// is called from one goroutine of its own, in order, so a handler that
	// blocks (a stderr nobody reads) delays log lines, and past a bound drops
	// them (counted in status), but never blocks supervision.
	Logger *slog.Logger

	loggerDefaulted bool // Logger was nil: the master uses its own non-blocking one
}

// FleetAuth are credentials for the fleet's NATS server: at most one of
// User/Password, Token and Creds, and optionally TLS files.
type FleetAuth struct {
	User     string // `--fleet-user`, BROOD_FLEET_USER
	Password string // `--fleet-password`; prefer BROOD_FLEET_PASSWORD (argv is visible in ps)
	Token    string // `--fleet-token`; prefer BROOD_FLEET_TOKEN
	Creds    string // a NATS .creds file (JWT + NKey seed): `--fleet-creds`, BROOD_FLEET_CREDS
	TLSCA    string // CA bundle to verify the server: `--fleet-tls-ca`, BROOD_FLEET_TLS_CA
	TLSCert  string // client certificate: `--fleet-tls-cert`, BROOD_FLEET_TLS_CERT
	TLSKey   string // its key: `--fleet-tls-key`, BROOD_FLEET_TLS_KEY
}

// RestartPolicy says how fast a crashed process is replaced. The first crash of
// a slot is replaced at once; each further crash within ResetAfter of the
// previous start waits twice as long as the last, from MinDelay up to MaxDelay.
type RestartPolicy struct {
	MinDelay   time.Duration // defaults to 100ms
	MaxDelay   time.Duration // defaults to 30s
	ResetAfter time.Duration // a process that stays up this long resets the backoff; defaults to 10s
}

// DefaultRestartPolicy is the policy used for zero fields of Config.Restart.
var DefaultRestartPolicy = RestartPolicy{MinDelay: 100 * time.Millisecond, MaxDelay: 30 * time.Second, ResetAfter: 10 * time.Second}

// userLogger is Logger if the program set it, else nil.
func (c Config) userLogger() *slog.Logger {
	if c.loggerDefaulted {
		return nil
	}
	return c.Logger
}

// master is the supervisor's view of a resolved cluster configuration.
func (c Config) master() master.Config {
	return master.Config{
		Name: c.Name, Workers: c.Workers, Listen: c.Listen, ReusePort: c.ReusePort, Agent: c.Agent != nil,
		Args:   os.Args[1:],
		Single: c.Single, RelayOnly: c.RelayOnly,
		RunInProcess: func(ctx context.Context, ip master.InProcess) error {
			return runChild(ctx, c, childSpec{role: Role(ip.Role), id: ip.ID, pid: ip.PID, conn: ip.Conn, listeners: ip.Listeners, single: true,
				masterPID: uint32(os.Getpid()), fleetNode: ip.FleetNode})
		},
		ReadyTimeout: c.ReadyTimeout, StopTimeout: c.StopTimeout,
		HeartbeatInterval: c.HeartbeatInterval, HeartbeatTimeout: c.HeartbeatTimeout,
		MaxRSS:   c.MaxRSS,
		Restart:  master.Backoff{MinDelay: c.Restart.MinDelay, MaxDelay: c.Restart.MaxDelay, ResetAfter: c.Restart.ResetAfter},
		MaxFrame: c.MaxFrame, MaxPending: c.MaxPending, MaxPendingBytes: c.MaxPendingBytes,
		Schedules: len(c.Schedules) > 0, LogRotation: c.LogRotation.enabled(),
		RunDir: c.RunDir, Logger: c.userLogger(),
		Admin: c.Admin, Metrics: c.Metrics.policies(),
		DrainDelay: c.DrainDelay, Subreaper: c.Subreaper,
		Fleet: master.FleetConfig{
			URLs: c.Fleet, Node: c.Node, Optional: c.FleetOptional, LeaseTTL: c.FleetLeaseTTL,
			Auth: fleetAuth(c.FleetAuth),
		},
	}
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// withDefaults returns a copy of c with defaults applied, or an error naming the
// bad field.
func (c Config) withDefaults() (Config, error) {
	if c.Worker == nil {
		return c, errors.New("brood: Config.Worker is required")
	}
	if c.Name == "" {
		c.Name = defaultName()
	}
	if !nameRE.MatchString(c.Name) {
		return c, fmt.Errorf("brood: Config.Name %q: use letters, digits, '.', '_' or '-' (at most 64)", c.Name)
	}
	switch {
	case c.Single:
		c.Workers = 1 // single-process mode: the agent and one worker
	case c.Workers == 0:
		c.Workers = runtime.NumCPU()
	case c.Workers < 0 || c.Workers > wire.MaxWorkers:
		return c, fmt.Errorf("brood: Config.Workers is %d; want 0 (one per CPU) to %d", c.Workers, wire.MaxWorkers)
	}
	if c.DrainDelay < 0 {
		return c, fmt.Errorf("brood: Config.DrainDelay is %v; want 0 (none) or more", c.DrainDelay)
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.ReadyTimeout, 30*time.Second)
	def(&c.StopTimeout, 10*time.Second)
	def(&c.HeartbeatInterval, time.Second)
	def(&c.HeartbeatTimeout, 30*time.Second)
	def(&c.Restart.MinDelay, DefaultRestartPolicy.MinDelay)
	def(&c.Restart.MaxDelay, DefaultRestartPolicy.MaxDelay)
	def(&c.Restart.ResetAfter, DefaultRestartPolicy.ResetAfter)
	if c.MaxFrame <= 0 {
		c.MaxFrame = ipc.DefaultMaxFrame
	}
	if c.MaxFrame < ipc.HeaderSize+ipc.MaxActionLen {
		return c, fmt.Errorf("brood: Config.MaxFrame %d is below the minimum of %d", c.MaxFrame, ipc.HeaderSize+ipc.MaxActionLen)
	}
	if c.MaxPending <= 0 {
		c.MaxPending = relay.DefaultMaxPending
	}
	switch {
	case c.MaxPendingBytes <= 0:
		c.MaxPendingBytes = max(relay.DefaultMaxPendingBytes, c.MaxFrame)
	case c.MaxPendingBytes < c.MaxFrame:
		return c, fmt.Errorf("brood: Config.MaxPendingBytes %d is below Config.MaxFrame %d: a message of the largest size could never be held", c.MaxPendingBytes, c.MaxFrame)
	}
	if c.RunDir == "" {
		c.RunDir = DefaultRunDir(c.Name)
	}
	if c.FleetLeaseTTL < 0 {
		return c, fmt.Errorf("brood: Config.FleetLeaseTTL is %v; want 0 (10s) or more", c.FleetLeaseTTL)
	}
	def(&c.FleetLeaseTTL, 10*time.Second)
	if c.Node == "" && c.Fleet != "" {
		host, err := os.Hostname()
		if err != nil || host == "" {
			host = "localhost"
		}
		c.Node = host + ":" + c.RunDir
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
		c.loggerDefaulted = true
	}
	if _, err := scheduleSpecs(c.Schedules); err != nil {
		return c, err
	}
	if c.Agent == nil && (len(c.Schedules) > 0 || c.LogRotation.enabled()) {
		c.Agent = idleAgent
	}
	return c, nil
}

// DefaultRunDir is where a cluster named name keeps its control socket and pid
// file when Config.RunDir is empty: $XDG_RUNTIME_DIR/brood/<name>, or
// $TMPDIR/brood-<uid>/<name> ($TMPDIR defaulting to /tmp).
//
// brood creates the last two components itself and, in the master and in the
// CLI, refuses them unless they are real directories of the effective uid not
// writable by group or others; every directory above them must belong to root
// or the effective uid and not be writable by group or others unless sticky.
func DefaultRunDir(name string) string { return control.DefaultRunDir(name) }

// defaultName is the executable's base name, as a valid Name.
func defaultName() string {
	exe, err := os.Executable()
	if err != nil {
		exe = os.Args[0]
	}
	name := regexp.MustCompile(`[^A-Za-z0-9._-]`).ReplaceAllString(filepath.Base(exe), "-")
	if name == "" || !nameRE.MatchString(name) {
		return "brood"
	}
	return name
}

// idleAgent is the agent of a cluster that needs one for brood's own work
// (schedules, log rotation) but has no Config.Agent.
func idleAgent(ctx context.Context, p *Process) error {
	p.Ready()
	<-ctx.Done()
	return nil
}

func fleetAuth(a FleetAuth) master.FleetAuth {
	return master.FleetAuth{User: a.User, Password: a.Password, Token: a.Token, Creds: a.Creds, TLSCA: a.TLSCA, TLSCert: a.TLSCert, TLSKey: a.TLSKey}
}
