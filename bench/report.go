package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// row is one line of the table.
type row struct {
	figure string
	unit   string    // ms, µs, req/s, msgs/s, MiB, count, % (of one core)
	vals   []float64 // one per run
	floor  []float64 // the floor's runs, if the figure has one
	ratio  string
	goal   string
	pass   string // PASS, FAIL, n/a, info, error
	note   string
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func passFail(ok bool) string {
	if ok {
		return "PASS"
	}
	return "FAIL"
}

// ratioRow is a figure judged by its ratio to the floor: the median of the
// per-run ratios (each run's figure over the floor run next to it, so that a
// noisy minute weighs on both), or the ratio of the medians if the runs are not
// paired. atMost: ratio ≤ limit; otherwise ratio ≥ limit.
func ratioRow(figure, unit string, vals, floor []float64, atMost bool, limit float64) row {
	r := row{figure: figure, unit: unit, vals: vals, floor: floor}
	q := medianRatio(vals, floor)
	r.ratio = fmt.Sprintf("%.2f×", q)
	if atMost {
		r.goal = fmt.Sprintf("≤ %g× floor", limit)
		r.pass = passFail(q <= limit)
	} else {
		r.goal = fmt.Sprintf("≥ %g× floor", limit)
		r.pass = passFail(q >= limit)
	}
	return r
}

// medianRatio is the median of the per-run ratios vals[i]/floor[i] (each run
// against the floor run next to it), or the ratio of the medians when the
// counts differ.
func medianRatio(vals, floor []float64) float64 {
	if len(vals) != len(floor) {
		return median(vals) / median(floor)
	}
	per := make([]float64, len(vals))
	for i := range vals {
		per[i] = vals[i] / floor[i]
	}
	return median(per)
}

func errorRow(figure string, err error) row {
	return row{figure: figure, pass: "error", note: err.Error()}
}

func (r row) cell(v float64) string {
	if math.IsNaN(v) {
		return "—"
	}
	switch r.unit {
	case "ms", "MiB":
		return fmt.Sprintf("%.1f %s", v, r.unit)
	case "µs":
		return fmt.Sprintf("%.0f µs", v)
	case "req/s", "msgs/s":
		if v >= 1e6 {
			return fmt.Sprintf("%.2f M/s", v/1e6)
		}
		return fmt.Sprintf("%.0f k/s", v/1e3)
	case "count":
		return fmt.Sprintf("%.0f", v)
	case "%":
		return fmt.Sprintf("%.1f%%", v)
	}
	return fmt.Sprint(v)
}

func (r row) columns() []string {
	if len(r.vals) == 0 {
		return []string{r.figure, "—", "—", "—", "—", orDash(r.ratio), orDash(r.goal), r.pass}
	}
	floor := "—"
	if len(r.floor) > 0 {
		floor = r.cell(median(r.floor))
	}
	return []string{r.figure, r.cell(median(r.vals)), r.cell(slices.Min(r.vals)), r.cell(slices.Max(r.vals)),
		floor, orDash(r.ratio), orDash(r.goal), r.pass}
}

func orDash(s string) string {
	if s == "" {
		return "—"
	}
	return s
}

var header = []string{"figure", "median", "min", "max", "floor", "ratio", "goal", "pass?"}

// printTable writes the table aligned for a terminal, then the notes.
func printTable(w io.Writer, rows []row) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		fmt.Fprintln(tw, strings.Join(r.columns(), "\t"))
	}
	tw.Flush()
	fmt.Fprintln(w)
	for i, r := range rows {
		if r.note != "" {
			fmt.Fprintf(w, "[%d] %s: %s\n", i+1, r.figure, r.note)
		}
	}
}

func markdownTable(rows []row) string {
	var b strings.Builder
	fmt.Fprintf(&b, "| # | %s |\n|---|%s\n", strings.Join(header, " | "), strings.Repeat("---|", len(header)))
	for i, r := range rows {
		fmt.Fprintf(&b, "| %d | %s |\n", i+1, strings.Join(r.columns(), " | "))
	}
	b.WriteString("\nNotes:\n\n")
	for i, r := range rows {
		if r.note != "" {
			fmt.Fprintf(&b, "- [%d] %s: %s\n", i+1, r.figure, r.note)
		}
	}
	return b.String()
}

// machine describes where the bench ran.
func machine() string {
	model := "unknown CPU"
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	kernel, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	goVersion := runtime.Version()
	if out, err := exec.Command("go", "version").Output(); err == nil {
		goVersion = strings.TrimSpace(string(out))
	}
	return fmt.Sprintf("%s, %d cores; Linux %s; %s", model, runtime.NumCPU(), strings.TrimSpace(string(kernel)), goVersion)
}

const (
	beginMark = "<!-- bench:begin (written by go run ./bench; edit outside these marks) -->"
	endMark   = "<!-- bench:end -->"
)

// writeResults replaces the generated part of path (between the marks) and
// keeps the rest, where the analysis is written by hand.
func writeResults(path, generated string) error {
	block := beginMark + "\n" + generated + "\n" + endMark
	old, err := os.ReadFile(path)
	var doc string
	switch {
	case err == nil && strings.Contains(string(old), beginMark) && strings.Contains(string(old), endMark):
		s := string(old)
		i := strings.Index(s, beginMark)
		j := strings.Index(s, endMark) + len(endMark)
		doc = s[:i] + block + s[j:]
	default:
		doc = "# brood benchmark results\n\n" + block + "\n"
	}
	return os.WriteFile(path, []byte(doc), 0o644)
}

// loadAvg returns the 1-minute load average: how busy the machine was with
// work other than ours, too.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "?"
}

func generated(b *bench, rows []row, micro []string, took time.Duration) string {
	var s strings.Builder
	command := strings.Join(append([]string{"go run ./bench"}, os.Args[1:]...), " ")
	fmt.Fprintf(&s, "Latest run: %s (UTC), `%s`, %d runs per figure, took %v; 1-minute load average %s before, %s after (other work shares this machine).\n\n",
		time.Now().UTC().Format("2006-01-02 15:04"), command, b.runs, took.Round(time.Second), b.loadBefore, loadAvg())
	fmt.Fprintf(&s, "Machine: %s. Load generator: %s (%d connections, 2 threads, %v per run).\n\n", machine(), b.toolDesc(), b.conns, b.httpDur)
	s.WriteString(markdownTable(rows))
	if len(micro) > 0 {
		s.WriteString("\nMicrobenchmarks (`go test -run '^$' -bench . -benchmem ./internal/ipc ./internal/relay`):\n\n```\n")
		s.WriteString(strings.Join(micro, "\n"))
		s.WriteString("\n```\n")
	}
	return s.String()
}
