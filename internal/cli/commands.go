package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/brood-go/brood/internal/control"
	"github.com/brood-go/brood/internal/upgrade"
	"github.com/brood-go/brood/internal/wire"
	"github.com/spf13/cobra"
)

// call makes one request to the running master of opts. If none runs, the
// error carries exit code absent (ExitNotRunning for status, ExitFailure for
// the commands that act).
func call(ctx context.Context, app *App, opts *Options, absent int, method, path string, in, out any) error {
	c, err := control.Dial(app.runDir(opts), opts.Name)
	if err != nil {
		return notRunning(err, absent)
	}
	defer c.Close()
	if err := c.Do(ctx, method, path, in, out); err != nil {
		return notRunning(err, absent)
	}
	return nil
}

func (app *App) runDir(opts *Options) string {
	if opts.RunDir != "" {
		return opts.RunDir
	}
	return app.DefaultRunDir(opts.Name)
}

// notRunning maps "no master" to exit code code with a clear message.
func notRunning(err error, code int) error {
	if errors.Is(err, control.ErrNotRunning) {
		return &ExitError{Code: code, Err: err}
	}
	return &ExitError{Code: ExitFailure, Err: err}
}

func newStatusCmd(app *App, opts *Options) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the running cluster's processes (exit 3 if none runs)",
		Long:  "Show every process of the running cluster: role, id, pid, state, uptime, restarts and the last restart's reason, RSS and CPU. Exit code 3 if no instance runs (LSB).",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var st wire.Status
			if err := call(cmd.Context(), app, opts, ExitNotRunning, "GET", "/status", nil, &st); err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(st)
			}
			printStatus(cmd.OutOrStdout(), st)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON (stable keys, for scripts)")
	return cmd
}

// upgradesText says how many in-place upgrades the master has had.
func upgradesText(n int) string {
	if n == 1 {
		return "1 upgrade"
	}
	return fmt.Sprintf("%d upgrades", n)
}

func printStatus(w io.Writer, st wire.Status) {
	fmt.Fprintf(w, "%s: %s, master pid %d, up %s, %d workers, listening on %s\n",
		st.Name, st.State, st.PID, roundDur(time.Since(st.StartedAt)), st.Workers, strings.Join(orNone(st.Listen), ", "))

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ROLE\tID\tPID\tSTATE\tUPTIME\tRESTARTS\tLAST RESTART\tRSS\tCPU")
	// The master's row alone ends with its build and upgrade count: a cell
	// without a heading, as the children's builds are not known.
	fmt.Fprintf(tw, "master\t-\t%d\t%s\t%s\t-\t-\t%s\t%.1f%%\t%s, %s\n", st.PID, st.State, roundDur(time.Since(st.StartedAt)), mib(st.RSSBytes), st.CPUPercent,
		upgrade.Build(st.Build), upgradesText(st.Upgrades))
	for _, p := range st.Processes {
		pid, up := "-", "-"
		if p.PID != 0 {
			pid, up = strconv.Itoa(p.PID), roundDur(time.Duration(p.Uptime*float64(time.Second)))
		}
		reason := p.LastReason
		if reason == "" {
			reason = "-"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%d\t%s\t%s\t%.1f%%\n", p.Role, p.ID, pid, p.State, up, p.Restarts, reason, mib(p.RSSBytes), p.CPUPercent)
	}
	tw.Flush()
	m := st.Messages
	fmt.Fprintf(w, "messages: %d relayed, %d held for a starting process, %d redelivered, %d refused; %d sent directly\n", m.Relayed, m.Held, m.Redelivered, m.Refused, m.Direct)
	if f := st.Fleet; f != nil {
		server := f.Server
		if server == "" {
			server = "(none; configured " + f.URLs + ")"
		}
		groups := "takes random messages and requests"
		if !f.InQueueGroups {
			groups = "no ready worker: takes no random messages or requests"
		}
		fmt.Fprintf(w, "fleet: node %s, %s to %s, %s\n", f.Node, f.State, server, groups)
		var members []string
		for _, mb := range f.Members {
			s := fmt.Sprintf("%s (%d workers ready)", mb.Node, mb.ReadyWorkers)
			if mb.Self {
				s += " [this one]"
			}
			members = append(members, s)
		}
		fmt.Fprintf(w, "fleet members: %s\n", strings.Join(orNone(members), ", "))
		switch {
		case f.Leader == "":
			fmt.Fprintf(w, "fleet leader: none (no agent uses Fleet.OnLeader, or none holds the lease now)\n")
		case f.Leader == f.Node:
			fmt.Fprintf(w, "fleet leader: %s [this one], token %d\n", f.Leader, f.LeaderToken)
		default:
			fmt.Fprintf(w, "fleet leader: %s\n", f.Leader)
		}
		c := f.Counters
		fmt.Fprintf(w, "fleet messages: %d sent, %d send errors, %d received, %d receive errors; requests %d out, %d in; %d disconnects, %d reconnects\n",
			c.SentOK, c.SendErrors, c.ReceivedOK, c.RecvErrors, c.RequestsOut, c.RequestsIn, c.Disconnects, c.Reconnects)
	}
}

func orNone(s []string) []string {
	if len(s) == 0 {
		return []string{"nothing"}
	}
	return s
}

func mib(b uint64) string {
	if b == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
}

func roundDur(d time.Duration) string {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	default:
		return d.Round(time.Minute).String()
	}
}

func newReloadCmd(app *App, opts *Options) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "reload",
		Short: "Replace every worker, one at a time, with the binary on disk now; then the agent",
		Long: "Rolling, zero-downtime reload (also SIGHUP to the master): for each worker slot a new process starts from the executable on disk now; " +
			"once it is ready the old one drains and exits. Then the agent is stopped and started again. " +
			"If a new worker fails to start, the reload stops and the old workers keep serving; the error is printed and reload exits 1.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			var res wire.ReloadResult
			if err := call(ctx, app, opts, ExitFailure, "POST", "/reload", nil, &res); err != nil {
				return err
			}
			printReplaced(cmd.OutOrStdout(), res.Replaced)
			fmt.Fprintf(cmd.OutOrStdout(), "reloaded %d processes in %s\n", len(res.Replaced), roundDur(time.Duration(res.Took*float64(time.Second))))
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "give up waiting for the reload after this long")
	return cmd
}

// printReplaced prints one line per process a reload or upgrade replaced.
func printReplaced(w io.Writer, rs []wire.Replacement) {
	for _, r := range rs {
		name := r.Role
		if r.Role == "worker" {
			name += " " + strconv.Itoa(r.ID)
		}
		fmt.Fprintf(w, "%-10s pid %d -> %d\n", name, r.OldPID, r.NewPID)
	}
}

func newUpgradeCmd(app *App, opts *Options) *cobra.Command {
	var timeout, preflight time.Duration
	var keep bool
	cmd := &cobra.Command{
		Use:   "upgrade",
		Short: "Re-execute the master itself in place with the binary on disk now, then roll every process onto it",
		Long: "In-place upgrade of the master (also SIGUSR2): the binary on disk is first run in a check mode (preflight); " +
			"if that passes, the master re-executes it under the same pid and hands it its listeners, control socket, children and messages; " +
			"then every worker and the agent are replaced as by reload (not with --keep-workers). " +
			"A binary that fails the preflight changes nothing; one that fails while restoring is rolled back to the running binary. " +
			"Prints the old and new build and the time taken; exits 1 if the upgrade was refused, failed or rolled back.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			var res wire.UpgradeResult
			if err := call(ctx, app, opts, ExitFailure, "POST", "/upgrade", wire.UpgradeRequest{KeepWorkers: keep, PreflightTimeout: preflight.Seconds()}, &res); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "master pid %d: %s -> %s\n", res.PID, upgrade.Build(res.From), upgrade.Build(res.To))
			printReplaced(out, res.Replaced)
			fmt.Fprintf(out, "upgraded in %s (upgrade %d of this master; %d processes replaced)\n", roundDur(time.Duration(res.Took*float64(time.Second))), res.Upgrades, len(res.Replaced))
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "give up waiting for the upgrade after this long")
	cmd.Flags().DurationVar(&preflight, "preflight-timeout", 10*time.Second, "how long the new binary's check run may take")
	cmd.Flags().BoolVar(&keep, "keep-workers", false, "keep the running workers and agent (adopted by the new master) instead of rolling them onto the new binary")
	return cmd
}

func newScaleCmd(app *App, opts *Options) *cobra.Command {
	return &cobra.Command{
		Use:   "scale N",
		Short: "Change the number of workers of the running cluster",
		Long:  "Change the number of workers live: new workers start and must become ready; removed workers (the highest ids) drain and stop.",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := strconv.Atoi(args[0])
			if err != nil || n < 1 || n > wire.MaxWorkers {
				return &ExitError{Code: ExitUsage, Err: fmt.Errorf("scale: %q is not a worker count (want 1 to %d)", args[0], wire.MaxWorkers)}
			}
			var res wire.ScaleResult
			if err := call(cmd.Context(), app, opts, ExitFailure, "POST", "/scale", wire.ScaleRequest{Workers: n}, &res); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "workers: %d -> %d\n", res.From, res.To)
			return nil
		},
	}
}

func newScheduleCmd(app *App, opts *Options) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "schedule",
		Short: "List scheduled tasks or run one now",
	}
	var asJSON bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List the scheduled tasks with their last run, result and duration",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var rows []wire.ScheduleStatus
			if err := call(cmd.Context(), app, opts, ExitNotRunning, "GET", "/schedules", nil, &rows); err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rows)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tTYPE\tWHEN\tLAST RUN\tRESULT\tDURATION\tNEXT\tRUNS\tFAILED\tSKIPPED")
			for _, r := range rows {
				when := r.Every
				if r.Cron != "" {
					when = r.Cron
				}
				if r.Disabled {
					when += " (disabled)"
				}
				last, next := "-", "-"
				if !r.LastRun.IsZero() {
					last = roundDur(time.Since(r.LastRun)) + " ago"
				}
				if !r.Next.IsZero() {
					next = "in " + roundDur(time.Until(r.Next))
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\n", r.Name, r.Type, when, last, orDash(r.LastResult),
					roundDur(time.Duration(r.LastDuration*float64(time.Second))), next, r.Runs, r.Failures, r.Skips)
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	run := &cobra.Command{
		Use:   "run NAME",
		Short: "Run a scheduled task now (wherever its type says), as an extra tick",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := call(cmd.Context(), app, opts, ExitFailure, "POST", "/schedules/run", wire.ScheduleRunRequest{Name: args[0]}, nil); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: triggered; see `schedule list` for its result\n", args[0])
			return nil
		},
	}
	cmd.AddCommand(list, run)
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newRotateLogsCmd(app *App, opts *Options) *cobra.Command {
	return &cobra.Command{
		Use:   "rotate-logs",
		Short: "Rotate the log files that are due, then make every process reopen its files (as SIGUSR1)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := call(cmd.Context(), app, opts, ExitFailure, "POST", "/logs/rotate", nil, nil); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "log files rotated and reopened")
			return nil
		},
	}
}
