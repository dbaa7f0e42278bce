package cli

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/brood-go/brood/internal/control"
	"github.com/brood-go/brood/internal/logrotate"
	"github.com/brood-go/brood/internal/wire"
	"github.com/spf13/cobra"
)

// The daemon handshake (wire.EnvNotifyFD) and the log file paths the master
// reopens after rotation (wire.EnvLogFiles) are part of brood's wire contract.

func newStartCmd(app *App, opts *Options) *cobra.Command {
	var daemon bool
	var logDir string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "start",
		Short: "Start the cluster; with --daemon, in the background once it is ready",
		Long: "Start the cluster. Without --daemon it runs in the foreground, like run. With --daemon the master detaches " +
			"(new session, stdin from /dev/null, output to master-stdout.log and master-stderr.log in --log-dir), and start " +
			"waits until the whole cluster is ready: it prints the addresses and pids and exits 0, or prints why the start failed " +
			"and exits 1, leaving nothing running.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if !daemon || app.Preflight {
				// A preflight checks what the detached master would run
				// (daemonArgs: run with these options), here, detaching nothing.
				return runForeground(cmd.Context(), app, *opts)
			}
			return startDaemon(cmd, app, opts, logDir, timeout)
		},
	}
	cmd.Flags().BoolVarP(&daemon, "daemon", "d", false, "run in the background; return once the cluster is ready")
	cmd.Flags().StringVar(&logDir, "log-dir", "", "directory for master-stdout.log and master-stderr.log (default $HOME/logs/<name>, as egg-scripts; "+
		"without $HOME, <run-dir>/logs, mode 0700). The files are never opened through a symbolic link, and must belong to the user brood runs as")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait for the cluster to be ready")
	return cmd
}

// defaultLogDir is where the daemon logs without --log-dir: $HOME/logs/<name>,
// or, without $HOME, the private directory <runDir>/logs (private is true).
// Never a shared directory such as $TMPDIR: another user could plant files or
// links there before us.
func defaultLogDir(name, runDir string) (dir string, private bool) {
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(runDir, "logs"), true
	}
	return filepath.Join(home, "logs", name), false
}

// makeLogDir creates the daemon's log directory. A private one (the fallback
// under the run dir) is created 0700, with the run dir if missing (0700, as the
// master creates it), and refused unless it is a directory, not a symbolic link,
// owned by the effective uid and not writable by group or others. The run dir
// itself was checked by startDaemon (control.PrepareRunDir) just before.
func makeLogDir(dir string, private bool) error {
	if !private {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("log dir: %w", err)
		}
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return fmt.Errorf("log dir: create run dir: %w", err)
	}
	if err := os.Mkdir(dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("log dir: %w", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("log dir: %w", err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 || !fi.IsDir() {
		return fmt.Errorf("log dir %s is not a directory (mode %v); refusing to log there", dir, fi.Mode())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); !ok || int(st.Uid) != os.Geteuid() {
		owner := "unknown"
		if ok {
			owner = strconv.Itoa(int(st.Uid))
		}
		return fmt.Errorf("log dir %s is owned by uid %s, not by the effective uid %d; refusing to log there", dir, owner, os.Geteuid())
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return fmt.Errorf("log dir %s is writable by group or others (mode %#o); refusing to log there", dir, perm)
	}
	return nil
}

// daemonEnv passes the fleet's secrets to the detached master (appended last,
// so they override what the environment had).
func daemonEnv(opts *Options) []string {
	var env []string
	if opts.FleetPassword != "" {
		env = append(env, wire.EnvFleetPassword+"="+opts.FleetPassword)
	}
	if opts.FleetToken != "" {
		env = append(env, wire.EnvFleetToken+"="+opts.FleetToken)
	}
	return env
}

// daemonArgs are the flags that make the detached master run with opts.
func daemonArgs(app *App, opts *Options) []string {
	return append(runArgs(opts), "--run-dir", app.runDir(opts))
}

// runArgs are the arguments of `run` that reproduce opts, but for the run
// dir, which each caller names its own way: the detached master of `start
// --daemon`, and the ExecStart of `unit`.
func runArgs(opts *Options) []string {
	args := []string{"run", "--name", opts.Name, "--workers", strconv.Itoa(opts.Workers)}
	if opts.StopTimeout > 0 {
		args = append(args, "--stop-timeout", opts.StopTimeout.String())
	}
	if len(opts.Listen) == 0 {
		args = append(args, "--listen=")
	}
	for _, l := range opts.Listen {
		args = append(args, "--listen", l)
	}
	if opts.Single {
		args = append(args, "--single")
	}
	if opts.RelayOnly {
		args = append(args, "--relay-only")
	}
	if opts.Admin != "" {
		args = append(args, "--admin", opts.Admin)
	}
	if opts.DrainDelay > 0 {
		args = append(args, "--drain-delay", opts.DrainDelay.String())
	}
	// The fleet's secrets (password, token) go by environment (daemonEnv),
	// not on the command line where ps shows them.
	for _, f := range []struct{ flag, v string }{
		{"--fleet", opts.Fleet}, {"--node", opts.Node}, {"--fleet-user", opts.FleetUser}, {"--fleet-creds", opts.FleetCreds},
		{"--fleet-tls-ca", opts.FleetTLSCA}, {"--fleet-tls-cert", opts.FleetTLSCert}, {"--fleet-tls-key", opts.FleetTLSKey},
	} {
		if f.v != "" {
			args = append(args, f.flag, f.v)
		}
	}
	if opts.FleetOptional {
		args = append(args, "--fleet-optional")
	}
	if opts.FleetLeaseTTL > 0 {
		args = append(args, "--fleet-lease-ttl", opts.FleetLeaseTTL.String())
	}
	return args
}

func startDaemon(cmd *cobra.Command, app *App, opts *Options, logDir string, timeout time.Duration) error {
	fail := func(err error) error { return &ExitError{Code: ExitFailure, Err: err} }
	if pid, err := control.ReadPID(app.runDir(opts)); err == nil && pid > 0 && syscall.Kill(pid, 0) == nil {
		if c, err := control.Dial(app.runDir(opts), opts.Name); err == nil {
			var st wire.Status
			if c.Do(cmd.Context(), "GET", "/status", nil, &st) == nil {
				c.Close()
				return fail(fmt.Errorf("%s is already running (pid %d, run dir %s); stop it first or use another --run-dir", opts.Name, st.PID, app.runDir(opts)))
			}
			c.Close()
		}
	}
	private := false
	if logDir == "" {
		logDir, private = defaultLogDir(opts.Name, app.runDir(opts))
	}
	if private {
		// The fallback log dir is inside the run dir: check the run dir the way
		// the master will, before putting anything there.
		if err := control.PrepareRunDir(app.runDir(opts), opts.Name); err != nil {
			return fail(fmt.Errorf("start: %w", err))
		}
	}
	if err := makeLogDir(logDir, private); err != nil {
		return fail(fmt.Errorf("start: %w", err))
	}
	open := func(name string) (*os.File, error) {
		return logrotate.OpenAppend(filepath.Join(logDir, name), 0o644)
	}
	stdout, err := open("master-stdout.log")
	if err != nil {
		return fail(fmt.Errorf("start: %w", err))
	}
	defer stdout.Close()
	stderrPath := filepath.Join(logDir, "master-stderr.log")
	stderr, err := open("master-stderr.log")
	if err != nil {
		return fail(fmt.Errorf("start: %w", err))
	}
	defer stderr.Close()
	exe, err := os.Executable()
	if err != nil {
		return fail(fmt.Errorf("start: %w", err))
	}
	r, w, err := os.Pipe()
	if err != nil {
		return fail(fmt.Errorf("start: %w", err))
	}
	defer r.Close()
	master := &exec.Cmd{
		Path:        exe,
		Args:        append([]string{opts.Name + " master"}, daemonArgs(app, opts)...),
		Env:         append(append(os.Environ(), wire.EnvNotifyFD+"=3", wire.EnvLogFiles+"="+filepath.Join(logDir, "master-stdout.log")+","+stderrPath), daemonEnv(opts)...),
		ExtraFiles:  []*os.File{w},
		Stdout:      stdout,
		Stderr:      stderr,
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}
	started := time.Now()
	if err := master.Start(); err != nil {
		w.Close()
		return fail(fmt.Errorf("start: exec %s: %w", exe, err))
	}
	w.Close()
	exited := make(chan error, 1)
	go func() { exited <- master.Wait() }()
	line := make(chan string, 1)
	go func() {
		s, _ := bufio.NewReader(r).ReadString('\n')
		line <- strings.TrimSpace(s)
	}()
	select {
	case l := <-line:
		if st, ok := strings.CutPrefix(l, "ready "); ok {
			var status wire.Status
			if err := json.Unmarshal([]byte(st), &status); err != nil {
				return fail(fmt.Errorf("start: bad ready line from the master: %w", err))
			}
			printStarted(cmd, status, time.Since(started), stderrPath)
			return nil
		}
		msg, _ := strings.CutPrefix(l, "error ")
		if msg == "" {
			msg = "the master exited before the cluster was ready"
		}
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
		}
		return fail(fmt.Errorf("start failed: %s (log: %s)", msg, stderrPath))
	case <-time.After(timeout):
		master.Process.Signal(syscall.SIGTERM)
		return fail(fmt.Errorf("start: the cluster was not ready within %v; stopping it (log: %s)", timeout, stderrPath))
	}
}

func printStarted(cmd *cobra.Command, st wire.Status, took time.Duration, logPath string) {
	out := cmd.OutOrStdout()
	fmt.Fprintf(out, "%s started: master pid %d, ready in %s\n", st.Name, st.PID, roundDur(took))
	for _, l := range st.Listen {
		fmt.Fprintf(out, "  listening on %s\n", l)
	}
	for _, p := range st.Processes {
		name := p.Role
		if p.Role == "worker" {
			name += " " + strconv.Itoa(p.ID)
		}
		fmt.Fprintf(out, "  %-10s pid %d\n", name, p.PID)
	}
	fmt.Fprintf(out, "  log: %s\n", logPath)
}
