// Command upgradeapp is the program of the upgrade tests and benchmark. Its
// workers answer with their build's version (set with -ldflags "-X
// main.version=..."), so a test can tell which binary serves; its agent
// sends a numbered stream of messages to the workers, which append each
// number they handle (after the agent's pid) to $UPGRADEAPP_DIR/messages; a task every 200 ms
// appends its tick to $UPGRADEAPP_DIR/ticks. The test checks both files for
// gaps and duplicates across upgrades. The versions exit1 and hang are
// broken builds: one exits 1 at once, the other never gets going.
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/brood-go/brood"
)

var version = "v1"

// appendLine appends one line to a file of the test's directory.
func appendLine(name, line string) {
	dir := os.Getenv("UPGRADEAPP_DIR")
	if dir == "" {
		return
	}
	f, err := os.OpenFile(filepath.Join(dir, name), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return
	}
	f.WriteString(line + "\n")
	f.Close()
}

func main() {
	switch version { // the broken builds of the tests
	case "exit1":
		fmt.Fprintln(os.Stderr, "upgradeapp: this build refuses to start")
		os.Exit(1)
	case "hang":
		select {}
	}
	brood.Main(brood.Config{
		Name:   "upgradeapp",
		Listen: []string{"127.0.0.1:0"},
		Schedules: []brood.Schedule{{
			Name: "tick", Every: 200 * time.Millisecond, Type: brood.InAgent,
			Task: func(ctx context.Context, p *brood.Process) error {
				at, _ := brood.TickTime(ctx)
				appendLine("ticks", strconv.FormatInt(at.UnixMilli(), 10))
				return nil
			},
		}},
		Agent: func(ctx context.Context, p *brood.Process) error {
			p.Ready()
			if os.Getenv("UPGRADEAPP_DIR") == "" {
				<-ctx.Done()
				return nil
			}
			// The numbered stream: one message every 5 ms, to one worker.
			n := 0
			t := time.NewTicker(5 * time.Millisecond)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return nil
				case <-t.C:
					n++
					if err := p.Messenger().SendRandom("seq", [2]int{p.PID(), n}); err != nil {
						p.Logger().Error("seq not sent", "n", n, "err", err)
					}
				}
			}
		},
		Worker: func(ctx context.Context, p *brood.Process) error {
			p.Messenger().On("seq", func(m brood.Message) {
				var an [2]int // the agent's pid, the number
				if m.Decode(&an) == nil {
					appendLine("messages", strconv.Itoa(an[0])+" "+strconv.Itoa(an[1]))
				}
			})
			mux := http.NewServeMux()
			mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, "%s %d\n", version, os.Getpid())
			})
			return brood.ServeHTTP(ctx, p, &http.Server{Handler: mux})
		},
	})
}
