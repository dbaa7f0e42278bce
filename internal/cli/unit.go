package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

const (
	// DefaultStopTimeout is the default of Config.StopTimeout (--stop-timeout);
	// a test in package brood keeps the two equal. `unit` writes it into the
	// ExecStart it prints when the program sets none, so that the unit's
	// TimeoutStopSec and the master's stop timeout cannot drift apart.
	DefaultStopTimeout = 10 * time.Second

	// DefaultWatchdog is the default of `unit --watchdog` (WatchdogSec=). The
	// master pings every WatchdogSec/2 (30s) and skips its pings from the
	// moment a child is past its heartbeat timeout until that child has been
	// killed (SIGKILL) and replaced. That normally takes one heartbeat tick;
	// 30s of slack is one whole HeartbeatTimeout (30s) more, for a child slow
	// to die (uninterruptible sleep, a machine swapping) or a slow replacement
	// start. A false alarm costs a restart of the whole cluster, while a hung
	// master costs little at first (the workers hold their own copies of the
	// listeners and keep serving), so the default errs on the long side.
	DefaultWatchdog = 60 * time.Second

	// StopMargin is what StopBudget adds for the master's own shutdown after
	// its last child has gone (closing listeners, flushing logs) and for the
	// supervisor's own latency.
	StopMargin = 5 * time.Second
)

// StopBudget is the longest a graceful stop takes with these settings: the
// drain delay (workers keep serving while /readyz fails), then the workers
// drain in parallel (each at most stopTimeout, then SIGKILL), then the agent
// stops (at most stopTimeout), then StopMargin. A supervisor's patience
// (systemd's TimeoutStopSec=, Kubernetes' terminationGracePeriodSeconds)
// should be at least this. A stopTimeout of 0 means DefaultStopTimeout.
func StopBudget(drainDelay, stopTimeout time.Duration) time.Duration {
	if stopTimeout <= 0 {
		stopTimeout = DefaultStopTimeout
	}
	return drainDelay + 2*stopTimeout + StopMargin
}

// unitNameRE is the rule Config.Name follows (config.go): a program with any
// other name would not start, so `unit` refuses it up front.
var unitNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// unitSpec is what a service unit for this program depends on.
type unitSpec struct {
	exe      string        // absolute path of the program
	opts     Options       // the settings ExecStart reproduces
	user     string        // User=; empty: none (the manager's user)
	watchdog time.Duration // WatchdogSec=; 0: none
}

func newUnitCmd(app *App, opts *Options) *cobra.Command {
	var spec unitSpec
	cmd := &cobra.Command{
		Use:   "unit",
		Short: "Print a systemd service unit that runs this program with these flags",
		Long: "Print a systemd .service for this program: ExecStart runs '" + opts.Name + " run' with the settings given here " +
			"(flags, BROOD_* variables, the program's defaults; the stop timeout is always written out), and the unit tells systemd " +
			"what brood does: Type=notify-reload (READY=1 once the cluster is up; on systemctl reload, RELOADING=1, then READY=1 " +
			"when the rolling reload is done), NotifyAccess=main, WatchdogSec=, FileDescriptorStoreMax= (listeners the master binds " +
			"itself survive a restart), KillMode=mixed (SIGTERM to the master only; it stops its children in order), " +
			"TimeoutStopSec (the drain delay + twice the stop timeout, for the workers and then the agent, + 5s), Restart=on-failure.\n\n" +
			"Without --run-dir the control socket lives in RuntimeDirectory=<name> (/run/<name>; $XDG_RUNTIME_DIR/<name> for a user " +
			"unit). A --listen fd://NAME makes the unit require <name>.socket, whose FileDescriptorName=NAME socket it takes.\n\n" +
			"Type=notify-reload needs systemd 253 or later; the unit's header says what to use on older systemd.\n\n" +
			"  " + opts.Name + " unit --user " + opts.Name + " > /etc/systemd/system/" + opts.Name + ".service\n" +
			"  systemctl daemon-reload && systemctl enable --now " + opts.Name,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			spec.opts = *opts
			if spec.exe == "" {
				exe, err := ownExecutable()
				if err != nil {
					return &ExitError{Code: ExitFailure, Err: fmt.Errorf("unit: %w", err)}
				}
				spec.exe = exe
				if strings.Contains(exe, "/go-build") {
					fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s looks like a build of 'go run' or 'go test', which is deleted when it exits; build the program and run its unit command, or pass --executable\n", exe)
				}
			}
			text, err := serviceUnit(spec)
			if err != nil {
				return &ExitError{Code: ExitUsage, Err: fmt.Errorf("unit: %w", err)}
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), text)
			return err
		},
	}
	f := cmd.Flags()
	f.StringVar(&spec.user, "user", "", "User= of the service: the account the cluster runs as (default: none, i.e. root for a system unit)")
	f.DurationVar(&spec.watchdog, "watchdog", DefaultWatchdog, "WatchdogSec=: systemd restarts the service when the master's pings, sent every half of it, stop. "+
		"The master skips them from the moment a child is past its heartbeat timeout until it has killed and replaced that child "+
		"(normally one heartbeat tick): half of this is the slack for that pause; 0 = no watchdog")
	f.StringVar(&spec.exe, "executable", "", "absolute path of the program in ExecStart (default: this executable, symbolic links resolved); for a unit written on another machine")
	return cmd
}

// ownExecutable is the absolute path of this program with symbolic links
// resolved, so that the unit does not follow a link that later moves.
func ownExecutable() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	return filepath.EvalSymlinks(exe)
}

// serviceUnit renders the .service for s.
func serviceUnit(s unitSpec) (string, error) {
	o := s.opts
	switch {
	case !unitNameRE.MatchString(o.Name):
		return "", fmt.Errorf("name %q: use letters, digits, '.', '_' or '-' (at most 64), as the program itself requires", o.Name)
	case !filepath.IsAbs(s.exe):
		return "", fmt.Errorf("executable %q is not an absolute path", s.exe)
	case s.watchdog < 0:
		return "", fmt.Errorf("--watchdog %v is negative", s.watchdog)
	case o.DrainDelay < 0:
		return "", fmt.Errorf("drain delay %v is negative", o.DrainDelay)
	case s.user != "" && strings.ContainsAny(s.user, " \t\r\n\"'\\%$:/"):
		return "", fmt.Errorf("user %q is not a user name or uid", s.user)
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = DefaultStopTimeout
	}
	args := runArgs(&o)
	words := make([]string, 0, len(args)+3)
	exe, err := execWord(s.exe)
	if err != nil {
		return "", err
	}
	words = append(words, exe)
	for _, a := range args {
		w, err := execWord(a)
		if err != nil {
			return "", err
		}
		words = append(words, w)
	}
	runDir, runDirShown := "%t/"+o.Name, "/run/"+o.Name+" ($XDG_RUNTIME_DIR/"+o.Name+" for a user unit)"
	if o.RunDir != "" {
		abs, err := filepath.Abs(o.RunDir)
		if err != nil {
			return "", fmt.Errorf("run dir: %w", err)
		}
		if runDir, err = execWord(abs); err != nil {
			return "", err
		}
		runDirShown = abs
	}
	words = append(words, "--run-dir", runDir)

	// Listeners from a socket unit (fd://NAME) come from <name>.socket; the
	// master binds the others itself and keeps them in the fd store.
	var fromSocket bool
	stored := 0
	for _, l := range o.Listen {
		if strings.HasPrefix(l, "fd://") {
			fromSocket = true
		} else {
			stored++
		}
	}
	if o.Admin != "" && !strings.HasPrefix(o.Admin, "fd://") {
		stored++
	}

	var b strings.Builder
	line := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	reload, err := execWord(s.exe)
	if err != nil {
		return "", err
	}
	line("# %s.service: the brood cluster %s under systemd, as printed by `%s unit`.", o.Name, o.Name, o.Name)
	line("# Print it again rather than edit it; put local changes in a drop-in (systemctl edit %s).", o.Name)
	line("#")
	line("# Type=notify-reload needs systemd 253 or later. On older systemd use")
	line("#   Type=notify")
	line("#   ExecReload=%s reload --name %s --run-dir %s", reload, o.Name, runDir)
	line("# which waits for the rolling reload and fails if it fails; with the usual")
	line("#   ExecReload=/bin/kill -HUP $MAINPID")
	line("# `systemctl reload` returns as soon as the signal is sent, before the reload")
	line("# is done, and reports success whatever its outcome.")
	line("")
	line("[Unit]")
	line("Description=%s (brood cluster)", o.Name)
	line("After=network.target")
	if fromSocket {
		line("# --listen fd://NAME takes the socket of %s.socket named NAME (FileDescriptorName=).", o.Name)
		line("Requires=%s.socket", o.Name)
		line("After=%s.socket", o.Name)
	}
	line("")
	line("[Service]")
	line("# READY=1 once the agent and every worker are ready. systemctl reload sends SIGHUP;")
	line("# the master answers RELOADING=1, and READY=1 once the rolling reload is done, so")
	line("# systemctl reload waits for it and reports its real outcome.")
	line("Type=notify-reload")
	line("# Only the master talks to systemd: its children never see NOTIFY_SOCKET.")
	line("NotifyAccess=main")
	line("ExecStart=%s", strings.Join(words, " "))
	if o.RunDir == "" {
		line("# The control socket and pid file: %s status --run-dir %s", o.Name, runDirShown)
		line("RuntimeDirectory=%s", o.Name)
		line("RuntimeDirectoryMode=0700")
	}
	if s.user != "" {
		line("User=%s", s.user)
	}
	if s.watchdog > 0 {
		line("# WATCHDOG=1 every %s while the master's loop runs and its children answer", sdSpan(s.watchdog/2))
		line("# heartbeats. The pings pause while a child is past its heartbeat timeout, until")
		line("# the master has killed and replaced it; systemd steps in only if that fails.")
		line("WatchdogSec=%s", sdSpan(s.watchdog))
	}
	if stored > 0 {
		line("# The listeners the master binds itself (%d here) wait in systemd's fd store while", stored)
		line("# it restarts and come back to the next start: a restart refuses no connection.")
		line("FileDescriptorStoreMax=%d", stored)
		line("# systemd 254 and later announce the store ($FDSTORE); this says so to older ones.")
		line("Environment=BROOD_FDSTORE=1")
	}
	line("# SIGTERM to the master only: it drains the workers, then stops the agent.")
	line("# SIGKILL to every process still there after TimeoutStopSec.")
	line("KillMode=mixed")
	line("# drain delay %s + stop timeout %s (workers) + stop timeout %s (agent) + %s",
		sdSpan(o.DrainDelay), sdSpan(o.StopTimeout), sdSpan(o.StopTimeout), sdSpan(StopMargin))
	line("TimeoutStopSec=%s", sdSpan(StopBudget(o.DrainDelay, o.StopTimeout)))
	line("# The master exits non-zero when it cannot start or fails.")
	line("Restart=on-failure")
	line("")
	line("[Install]")
	line("WantedBy=multi-user.target")
	if fromSocket {
		line("Also=%s.socket", o.Name)
	}
	return b.String(), nil
}

// execWord renders s as one word of a systemd command line (ExecStart=): %
// and $ doubled, so that systemd expands no specifier or variable in it, and
// the word in double quotes with C escapes if it holds anything else systemd
// would split or unescape (whitespace, quotes, backslashes, control
// characters), or is empty or a lone ";" (the command separator).
func execWord(s string) (string, error) {
	if strings.IndexByte(s, 0) >= 0 {
		return "", errors.New("an argument holds a NUL byte, which no command line can carry")
	}
	s = strings.NewReplacer("%", "%%", "$", "$$").Replace(s)
	plain := s != "" && s != ";"
	for i := 0; i < len(s) && plain; i++ {
		c := s[i]
		plain = c > ' ' && c != 0x7f && c != '"' && c != '\'' && c != '\\'
	}
	if plain {
		return s, nil
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\t':
			b.WriteString(`\t`)
		case c < ' ' || c == 0x7f:
			fmt.Fprintf(&b, `\x%02x`, c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
	return b.String(), nil
}

// sdSpan renders d as a systemd time span in whole units ("25s", "1500ms"):
// Go's "1m0s" would read as one minute to systemd, but "1M" is a month.
func sdSpan(d time.Duration) string {
	switch {
	case d%time.Second == 0:
		return fmt.Sprintf("%ds", d/time.Second)
	case d%time.Millisecond == 0:
		return fmt.Sprintf("%dms", d/time.Millisecond)
	default:
		return fmt.Sprintf("%dus", (d+time.Microsecond-1)/time.Microsecond)
	}
}
