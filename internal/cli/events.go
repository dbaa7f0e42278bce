package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/brood-go/brood/internal/control"
	"github.com/brood-go/brood/internal/wire"
	"github.com/spf13/cobra"
)

func newEventsCmd(app *App, opts *Options) *cobra.Command {
	var asJSON, follow bool
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Show the master's lifecycle events: starts, readiness, exits with typed reasons, restarts, reloads, scales, schedule runs",
		Long: "Show the last lifecycle events the master kept (up to 512): processes started, ready, exited (with a typed reason: " +
			"exit, signal, panic, hang, memory, reload, scale, upgrade, stop), restarts with their backoff, replacements, reloads, scales, " +
			"schedule runs and log rotations. --follow keeps printing new events until interrupted; --json prints one JSON object per line.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := cmd.OutOrStdout()
			print := func(ev wire.Event) error {
				if asJSON {
					b, _ := json.Marshal(ev)
					_, err := fmt.Fprintf(out, "%s\n", b)
					return err
				}
				_, err := fmt.Fprintln(out, formatEvent(ev))
				return err
			}
			if !follow {
				var evs []wire.Event
				if err := call(cmd.Context(), app, opts, ExitNotRunning, "GET", "/events", nil, &evs); err != nil {
					return err
				}
				for _, ev := range evs {
					if err := print(ev); err != nil {
						return err
					}
				}
				return nil
			}
			return followEvents(cmd.Context(), app, opts, print)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON object per event and line (stable keys, for scripts)")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing events as they happen")
	return cmd
}

func followEvents(ctx context.Context, app *App, opts *Options, print func(wire.Event) error) error {
	c, err := control.Dial(app.runDir(opts), opts.Name)
	if err != nil {
		return notRunning(err, ExitNotRunning)
	}
	defer c.Close()
	err = c.Stream(ctx, "/events?follow=1", func(line []byte) error {
		var ev wire.Event
		if err := json.Unmarshal(line, &ev); err != nil {
			return fmt.Errorf("events: bad line from the master: %w", err)
		}
		return print(ev)
	})
	if err != nil {
		return notRunning(err, ExitNotRunning)
	}
	return nil
}

// formatEvent renders an event as one line for people.
func formatEvent(ev wire.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s  %-13s", ev.Time.Local().Format("15:04:05.000"), ev.Type)
	if ev.Role != "" {
		who := ev.Role
		if ev.Role == "worker" {
			who += fmt.Sprintf(" %d", ev.ID)
		}
		fmt.Fprintf(&b, " %s", who)
	}
	kv := func(k string, v any) { fmt.Fprintf(&b, " %s=%v", k, v) }
	if ev.PID != 0 {
		kv("pid", ev.PID)
	}
	if ev.OldPID != 0 {
		kv("old_pid", ev.OldPID)
	}
	if ev.Reason != wire.ReasonNone {
		kv("reason", ev.Reason)
	}
	if ev.Result != "" {
		kv("result", ev.Result)
	}
	if ev.Restarts != 0 {
		kv("restarts", ev.Restarts)
	}
	if ev.Backoff != 0 {
		kv("backoff", time.Duration(ev.Backoff*float64(time.Second)))
	}
	if ev.Type == wire.EventScaled {
		kv("from", ev.From)
		kv("to", ev.To)
	}
	if ev.Task != "" {
		kv("task", ev.Task)
	}
	if ev.Took != 0 {
		kv("took", roundDur(time.Duration(ev.Took*float64(time.Second))))
	}
	if ev.Detail != "" {
		fmt.Fprintf(&b, " %q", ev.Detail)
	}
	return b.String()
}
