package admin

// Temporary stand-in for the handler being built on its own branch.

import (
	"encoding/json"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus/promhttp"
)

type Options struct {
	Name   string
	Logger *slog.Logger
}

func Handler(src Source, opts Options) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(src.Gatherer(), promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	health := func(f func() (bool, string)) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			if ok, why := f(); !ok {
				http.Error(w, why, http.StatusServiceUnavailable)
				return
			}
			w.Write([]byte("ok\n"))
		}
	}
	mux.HandleFunc("GET /livez", health(src.Live))
	mux.HandleFunc("GET /readyz", health(src.Ready))
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) { json.NewEncoder(w).Encode(src.Status()) })
	return mux
}
