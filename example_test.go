package brood_test

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/brood-go/brood"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
)

// The agent tells every worker something once the cluster is up. Single-process
// mode runs the same cluster as goroutines, which makes it runnable here.
func ExampleRun() {
	ctx, cancel := context.WithCancel(context.Background())
	err := brood.Run(ctx, brood.Config{
		Name:   "example",
		Single: true,                          // agent + one worker in this process
		Logger: slog.New(slog.DiscardHandler), // keep the example's output clean
		RunDir: exampleRunDir(),
		Agent: func(ctx context.Context, p *brood.Process) error {
			p.Messenger().On(brood.ActionReady, func(brood.Message) {
				p.Messenger().SendToApp("greeting", "hello from the agent")
			})
			p.Ready()
			<-ctx.Done()
			return nil
		},
		Worker: func(ctx context.Context, p *brood.Process) error {
			p.Messenger().On("greeting", func(msg brood.Message) {
				var text string
				msg.Decode(&text)
				fmt.Printf("worker %d got: %s\n", p.ID(), text)
				cancel() // the example is done: stop the cluster
			})
			p.Ready()
			<-ctx.Done()
			return nil
		},
	})
	fmt.Println("stopped, err =", err)
	// Output:
	// worker 1 got: hello from the agent
	// stopped, err = <nil>
}

// A worker asks the agent and waits for the answer.
func ExampleMessenger_Request() {
	ctx, cancel := context.WithCancel(context.Background())
	brood.Run(ctx, brood.Config{
		Name:   "example",
		Single: true,
		Logger: slog.New(slog.DiscardHandler),
		RunDir: exampleRunDir(),
		Agent: func(ctx context.Context, p *brood.Process) error {
			p.Messenger().On("add", func(msg brood.Message) {
				var xs []int
				msg.Decode(&xs)
				msg.Reply(xs[0] + xs[1])
			})
			p.Ready()
			<-ctx.Done()
			return nil
		},
		Worker: func(ctx context.Context, p *brood.Process) error {
			p.Ready()
			p.Go(func(ctx context.Context) {
				defer cancel()
				reqCtx, done := context.WithTimeout(ctx, 5*time.Second)
				defer done()
				reply, err := p.Messenger().Request(reqCtx, p.Messenger().AgentPID(), "add", []int{20, 22})
				if err != nil {
					fmt.Println(err)
					return
				}
				var sum int
				reply.Decode(&sum)
				fmt.Println("the agent says", sum)
			})
			<-ctx.Done()
			return nil
		},
	})
	// Output: the agent says 42
}

// A complete HTTP service: workers share the listeners, ServeHTTP calls Ready
// and drains on stop. Main gives the program its command line (run, start
// --daemon, stop, status, reload, scale ...).
func ExampleServeHTTP() {
	brood.Main(brood.Config{
		Name:   "web",
		Listen: []string{":8080"},
		Worker: func(ctx context.Context, p *brood.Process) error {
			mux := http.NewServeMux()
			mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
				fmt.Fprintf(w, "hello from worker %d\n", p.ID())
			})
			return brood.ServeHTTP(ctx, p, &http.Server{Handler: mux})
		},
	})
}

// A task every minute in one worker, and one at 03:00 Shanghai time in all.
func ExampleSchedule() {
	brood.Main(brood.Config{
		Name: "jobs",
		Schedules: []brood.Schedule{
			{Name: "refresh-cache", Every: time.Minute, Type: brood.OneWorker,
				Task: func(ctx context.Context, p *brood.Process) error { return nil }},
			{Name: "nightly", Cron: "CRON_TZ=Asia/Shanghai 0 3 * * *", Type: brood.AllWorkers,
				Task: func(ctx context.Context, p *brood.Process) error { return nil }},
		},
		Worker: func(ctx context.Context, p *brood.Process) error {
			p.Ready()
			<-ctx.Done()
			return nil
		},
	})
}

// The application's own metrics, with no code beyond promauto: the master
// serves them on the admin listener, summed over the workers (requests_total),
// or merged as the program says (pool_connections, summed here instead of one
// series per worker).
func ExampleMetrics() {
	requests := promauto.NewCounter(prometheus.CounterOpts{Name: "requests_total", Help: "Requests served."})
	pool := promauto.NewGauge(prometheus.GaugeOpts{Name: "pool_connections", Help: "Open connections of this worker's pool."})
	brood.Main(brood.Config{
		Name:    "web",
		Listen:  []string{":8080"},
		Admin:   "127.0.0.1:9090", // GET /metrics, /livez, /readyz, /events, and a dashboard at /
		Metrics: brood.Metrics{Gauges: map[string]brood.GaugeMerge{"pool_connections": brood.GaugeSum}},
		Worker: func(ctx context.Context, p *brood.Process) error {
			pool.Set(4)
			mux := http.NewServeMux()
			mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
				requests.Inc()
				fmt.Fprintf(w, "hello from worker %d\n", p.ID())
			})
			return brood.ServeHTTP(ctx, p, &http.Server{Handler: mux})
		},
	})
}

// exampleRunDir keeps the examples' control sockets apart from a real "example".
func exampleRunDir() string { return filepath.Join(os.TempDir(), "brood-example-run") }
