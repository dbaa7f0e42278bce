package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/brood-go/brood/internal/control"
	"github.com/brood-go/brood/internal/proc"
	"github.com/brood-go/brood/internal/wire"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// killGrace is how long stop waits for the processes it killed to exit.
const killGrace = 5 * time.Second

func newStopCmd(app *App, opts *Options) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "stop",
		Short: "Stop the running cluster gracefully and wait until every process is gone",
		Long: "Ask the running master to stop: workers drain, then the agent stops, then the master exits. " +
			"stop returns once every process is gone. If that takes longer than --timeout, the remaining processes are killed (SIGKILL) and stop exits 1. " +
			"Only the master that serves the control socket and its own children are waited for and killed.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return stop(cmd.Context(), app.runDir(opts), opts.Name, timeout, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 60*time.Second, "how long to wait for every process to exit before killing them")
	return cmd
}

// stop asks the master of runDir to stop and waits until it and its children
// have exited; after timeout it kills those left. It signals only processes
// it has pinned with a pidfd and verified: the master is the process that
// serves the control socket (its SO_PEERCRED pid, which must be the pid the
// master reports), pinned before the stop request is sent; each child the
// master reports is pinned, then shown to be that master's child by its parent
// pid while the master still runs. A reported pid that fails the check is
// named on errOut and left alone.
func stop(ctx context.Context, runDir, name string, timeout time.Duration, out, errOut io.Writer) error {
	start := time.Now()
	c, err := control.Dial(runDir, name)
	if err != nil {
		return notRunning(err, ExitFailure)
	}
	defer c.Close()

	var master *proc.Pidfd
	var pinErr error
	defer func() {
		if master != nil {
			master.Close()
		}
	}()
	var st wire.Status
	err = c.DoPeer(ctx, "POST", "/stop", nil, &st, func(p control.Peer) {
		if master != nil { // a retry on another connection
			master.Close()
		}
		master, pinErr = proc.OpenPidfd(p.PID)
	})
	if err != nil {
		return notRunning(err, ExitFailure)
	}
	switch {
	case pinErr != nil:
		return &ExitError{Code: ExitFailure, Err: fmt.Errorf("stop %s: cannot pin the master serving %s: %w", name, control.SocketPath(runDir), pinErr)}
	case master == nil:
		return &ExitError{Code: ExitFailure, Err: fmt.Errorf("stop %s: no credentials for the server on %s", name, control.SocketPath(runDir))}
	case st.PID != master.PID():
		return &ExitError{Code: ExitFailure, Err: fmt.Errorf("stop %s: the control socket %s is served by pid %d, but it names pid %d as the master; not signalling anything", name, control.SocketPath(runDir), master.PID(), st.PID)}
	}

	procs := []*proc.Pidfd{master} // closed by the deferred Close of master
	defer func() {
		for _, p := range procs[1:] {
			p.Close()
		}
	}()
	seen := map[int]bool{master.PID(): true}
	skipped := 0
	for _, p := range st.Processes {
		if p.PID <= 0 || seen[p.PID] {
			continue
		}
		seen[p.PID] = true
		child, err := proc.OpenChild(p.PID, master)
		switch {
		case err == nil:
			procs = append(procs, child)
		case errors.Is(err, unix.ESRCH): // already gone (or a goroutine of --single)
		default:
			skipped++
			fmt.Fprintf(errOut, "%s: not waiting for %s %d (pid %d): %v\n", name, p.Role, p.ID, p.PID, err)
		}
	}

	if alive := proc.WaitExit(procs, timeout); len(alive) > 0 {
		var killed []int
		for _, p := range alive {
			if err := p.Signal(unix.SIGKILL); err == nil {
				killed = append(killed, p.PID())
			}
		}
		if left := proc.WaitExit(alive, killGrace); len(left) > 0 {
			fmt.Fprintf(errOut, "%s: pid %d still running %v after SIGKILL\n", name, left[0].PID(), killGrace)
		}
		return &ExitError{Code: ExitFailure, Err: fmt.Errorf("%s did not stop within %v; killed (SIGKILL) pids %v", st.Name, timeout, killed)}
	}
	fmt.Fprintf(out, "%s stopped (master pid %d, %d processes) in %s\n", st.Name, st.PID, len(seen)-skipped, roundDur(time.Since(start)))
	return nil
}
