// Command hello is the smallest brood cluster: an agent that logs when the
// cluster is ready, and workers that answer HTTP on one shared port.
//
//	go run ./examples/hello                      # :7001, one worker per CPU
//	go run ./examples/hello --workers 2 --listen 127.0.0.1:8080
//	curl localhost:7001                           # hello from worker 2 (pid 4242)
package main

import (
	"context"
	"fmt"
	"net/http"

	"github.com/brood-go/brood"
)

func main() {
	brood.Main(brood.Config{
		Name:   "hello",
		Listen: []string{":7001"},
		Agent: func(ctx context.Context, p *brood.Process) error {
			p.Messenger().On(brood.ActionReady, func(brood.Message) {
				p.Logger().Info("brood:ready: the cluster is up", "workers", p.Messenger().WorkerPIDs())
			})
			p.Ready()
			<-ctx.Done()
			return nil
		},
		Worker: func(ctx context.Context, p *brood.Process) error {
			mux := http.NewServeMux()
			mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, "hello from worker %d (pid %d)\n", p.ID(), p.PID())
			})
			return brood.ServeHTTP(ctx, p, &http.Server{Handler: mux})
		},
	})
}
