// Command reloadapp answers with its build's version, so a test can tell which
// binary each worker runs before and after a reload. Built by cli_test.go with
// -ldflags "-X main.version=v2".
package main

import (
	"context"
	"fmt"
	"net/http"
	"os"

	"github.com/brood-go/brood"
)

var version = "v1"

func main() {
	brood.Main(brood.Config{
		Name:   "reloadapp",
		Listen: []string{"127.0.0.1:0"},
		Agent: func(ctx context.Context, p *brood.Process) error {
			p.Ready()
			<-ctx.Done()
			return nil
		},
		Worker: func(ctx context.Context, p *brood.Process) error {
			if version == "broken" {
				return fmt.Errorf("version %s cannot start", version)
			}
			mux := http.NewServeMux()
			mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, "%s %d\n", version, os.Getpid())
			})
			return brood.ServeHTTP(ctx, p, &http.Server{Handler: mux})
		},
	})
}
