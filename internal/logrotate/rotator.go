package logrotate

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// dayLayout is the date suffix of daily rotation: path.2006-01-02.
const dayLayout = "2006-01-02"

// DefaultCheckEvery is the interval at which Run checks sizes and the date when
// Options.CheckEvery is zero.
const DefaultCheckEvery = time.Second

// Policy says when and how a Rotator rotates. Daily and MaxSize are independent
// triggers and may be combined; each names its rotated files its own way.
type Policy struct {
	// Daily rotates every file at local midnight (in the location of the
	// Clock's times) by renaming path to path.YYYY-MM-DD, the date of the day
	// that ended. If that name is taken (two rotations in one day), it is
	// path.YYYY-MM-DD.1, .2 ...: the higher the suffix, the newer the file.
	Daily bool

	// MaxSize, if positive, rotates a file once it is larger than MaxSize
	// bytes, as checked every Options.CheckEvery: path.N-1 is renamed to
	// path.N ... path.1 to path.2, then path to path.1 (the newest is .1).
	MaxSize int64

	// Keep is how many rotated files to keep per log and per naming (numbered,
	// dated); older ones are deleted after each rotation. 0, the default,
	// keeps all of them.
	Keep int
}

// Clock is the time source of a Rotator; tests inject a fake one. The zero
// Options use the system clock (time.Now, time.After), in the local time zone.
type Clock interface {
	// Now returns the current time; its Location decides when midnight is.
	Now() time.Time
	// After returns a channel that receives once d has elapsed.
	After(d time.Duration) <-chan time.Time
}

type systemClock struct{}

func (systemClock) Now() time.Time                         { return time.Now() }
func (systemClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Options are a Rotator's collaborators. The zero value is usable.
type Options struct {
	// Clock defaults to the system clock.
	Clock Clock
	// Logger receives a line per rotation (Info) and Run's errors (Error);
	// nil discards them.
	Logger *slog.Logger
	// CheckEvery is how often Run checks the sizes and the date;
	// 0 means DefaultCheckEvery.
	CheckEvery time.Duration
	// OnRotate, if set, is called after each rotation with the paths (as given
	// to NewRotator, cleaned) that were renamed and now hold a fresh file. The
	// caller must make every process reopen its Files for these paths, its own
	// included. It is called without any lock held, from Run's goroutine or
	// RotateNow's caller, and may call RotateNow.
	OnRotate func(rotated []string)
}

// Rotator rotates a set of log files that other processes write to, according
// to a Policy. Run it in one process only (the agent): two Rotators over the
// same files would rename each other's work. Its methods are safe for
// concurrent use; rotations are serialised.
type Rotator struct {
	paths    []string
	policy   Policy
	clock    Clock
	log      *slog.Logger
	every    time.Duration
	onRotate func([]string)

	running atomic.Bool

	mu  sync.Mutex // serialises rotations
	day string     // date of the last daily check, guarded by mu
}

// NewRotator returns a Rotator for paths. It checks its arguments but does not
// touch the files; missing files are skipped until they exist.
func NewRotator(paths []string, p Policy, opts Options) (*Rotator, error) {
	switch {
	case len(paths) == 0:
		return nil, errors.New("logrotate: no paths to rotate")
	case p.MaxSize < 0:
		return nil, fmt.Errorf("logrotate: negative MaxSize %d", p.MaxSize)
	case p.Keep < 0:
		return nil, fmt.Errorf("logrotate: negative Keep %d", p.Keep)
	case opts.CheckEvery < 0:
		return nil, fmt.Errorf("logrotate: negative CheckEvery %v", opts.CheckEvery)
	}
	r := &Rotator{policy: p, clock: opts.Clock, log: opts.Logger, every: opts.CheckEvery, onRotate: opts.OnRotate}
	for _, path := range paths {
		if path == "" {
			return nil, errors.New("logrotate: empty path")
		}
		path = filepath.Clean(path)
		if slices.Contains(r.paths, path) {
			return nil, fmt.Errorf("logrotate: path %s given twice", path)
		}
		r.paths = append(r.paths, path)
	}
	if r.clock == nil {
		r.clock = systemClock{}
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.every == 0 {
		r.every = DefaultCheckEvery
	}
	r.day = r.clock.Now().Format(dayLayout)
	return r, nil
}

// Run applies the Policy until ctx is done, then returns nil: every
// CheckEvery (and at midnight, for Daily) it rotates the files that are due
// and calls OnRotate. Rotation errors are logged and retried at the next
// check. Run owns no goroutine: the caller's goroutine runs it. It returns an
// error at once if Run is already running on this Rotator.
func (r *Rotator) Run(ctx context.Context) error {
	if !r.running.CompareAndSwap(false, true) {
		return errors.New("logrotate: Run is already running")
	}
	defer r.running.Store(false)
	if !r.policy.Daily && r.policy.MaxSize == 0 {
		<-ctx.Done() // nothing to watch; RotateNow still works
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.clock.After(r.wait(r.clock.Now())):
			r.check(r.clock.Now())
		}
	}
}

// wait returns how long Run sleeps before the next check: CheckEvery, or less
// to wake at midnight. Polling the date rather than sleeping until midnight
// keeps Daily right across wall clock jumps and suspends.
func (r *Rotator) wait(now time.Time) time.Duration {
	d := r.every
	if r.policy.Daily {
		y, m, day := now.Date()
		if u := time.Date(y, m, day+1, 0, 0, 0, 0, now.Location()).Sub(now); u < d {
			d = u
		}
	}
	return d
}

// check rotates what the Policy says is due at now and calls OnRotate.
func (r *Rotator) check(now time.Time) {
	r.mu.Lock()
	live := r.checkDaily(now)
	for _, path := range r.checkSize() {
		if !slices.Contains(live, path) {
			live = append(live, path)
		}
	}
	r.mu.Unlock()
	r.notify(live)
}

// checkDaily rotates every file to the date that ended, if now is on a later
// day than the last check, and returns the rotated paths. A date going back
// (the wall clock was set back) only moves the mark.
func (r *Rotator) checkDaily(now time.Time) []string {
	today := now.Format(dayLayout)
	if !r.policy.Daily || today == r.day {
		return nil
	}
	ended := r.day
	r.day = today
	if today < ended {
		return nil
	}
	var live []string
	for _, path := range r.paths {
		to, err := r.rotate(path, ended)
		r.report(path, to, "daily", err)
		if to != "" {
			live = append(live, path)
		}
	}
	return live
}

// checkSize rotates the files larger than MaxSize and returns their paths.
func (r *Rotator) checkSize() []string {
	if r.policy.MaxSize <= 0 {
		return nil
	}
	var live []string
	for _, path := range r.paths {
		fi, err := os.Stat(path)
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				r.log.Error("logrotate: check size", "path", path, "err", err)
			}
			continue
		}
		if fi.Size() <= r.policy.MaxSize {
			continue
		}
		to, err := r.rotate(path, "")
		r.report(path, to, "size", err)
		if to != "" {
			live = append(live, path)
		}
	}
	return live
}

func (r *Rotator) report(path, to, reason string, err error) {
	if to != "" {
		r.log.Info("logrotate: rotated", "path", path, "to", to, "reason", reason)
	}
	if err != nil {
		r.log.Error("logrotate: rotate", "path", path, "reason", reason, "err", err)
	}
}

func (r *Rotator) notify(live []string) {
	if len(live) > 0 && r.onRotate != nil {
		r.onRotate(live)
	}
}

// RotateNow rotates every file at once, whatever its size or the date, as for
// SIGUSR1. Files are numbered as for MaxSize (path -> path.1), unless the
// Policy is Daily only, in which case they get today's date (path.YYYY-MM-DD,
// or .1, .2 ... if taken). Missing and empty files are skipped. It returns the
// new names of the rotated files, calls OnRotate with their paths if there are
// any, and reports the files it could not rotate as one joined error.
func (r *Rotator) RotateNow() ([]string, error) {
	day := ""
	if r.policy.Daily && r.policy.MaxSize == 0 {
		day = r.clock.Now().Format(dayLayout)
	}
	var names, live []string
	var errs []error
	r.mu.Lock()
	for _, path := range r.paths {
		to, err := r.rotate(path, day)
		if to != "" {
			r.log.Info("logrotate: rotated", "path", path, "to", to, "reason", "forced")
			names = append(names, to)
			live = append(live, path)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	r.mu.Unlock()
	r.notify(live)
	return names, errors.Join(errs...)
}

// rotate renames path to path.1 (shifting older numbers) or, if day is set, to
// path.day[.n]; then creates a fresh path with the same mode and prunes. It
// returns the new name, or "" if path is missing or empty or could not be
// renamed. An error with a non-empty name means the rename happened but the
// fresh file or the pruning failed.
func (r *Rotator) rotate(path, day string) (string, error) {
	fi, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("logrotate: %w", err)
	}
	if fi.Size() == 0 {
		return "", nil
	}
	var to string
	if day != "" {
		to, err = freeDated(path, day)
	} else {
		to, err = shiftNumbered(path)
	}
	if err != nil {
		return "", err
	}
	if err := rename(path, to); err != nil {
		return "", err
	}
	err = createEmpty(path, fi.Mode().Perm())
	if r.policy.Keep > 0 {
		err = errors.Join(err, prune(path, day != "", r.policy.Keep))
	}
	return to, err
}

// shiftNumbered frees path.1 by renaming path.n to path.n+1 for the run of
// existing numbers from 1 (older numbers past a gap are left alone).
func shiftNumbered(path string) (string, error) {
	n := 1
	for {
		ok, err := exists(numbered(path, n))
		if err != nil {
			return "", err
		}
		if !ok {
			break
		}
		n++
	}
	for ; n > 1; n-- {
		if err := rename(numbered(path, n-1), numbered(path, n)); err != nil {
			return "", err
		}
	}
	return numbered(path, 1), nil
}

// freeDated returns path.day, or path.day.1, .2 ... if taken.
func freeDated(path, day string) (string, error) {
	base := path + "." + day
	to := base
	for n := 1; ; n++ {
		ok, err := exists(to)
		if err != nil || !ok {
			return to, err
		}
		to = numbered(base, n)
	}
}

func numbered(path string, n int) string { return path + "." + strconv.Itoa(n) }

func exists(path string) (bool, error) {
	_, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("logrotate: %w", err)
	}
	return true, nil
}

func rename(from, to string) error {
	if err := os.Rename(from, to); err != nil {
		if le, ok := errors.AsType[*os.LinkError](err); ok {
			err = le.Err
		}
		return fmt.Errorf("logrotate: rename %s to %s: %w", from, to, err)
	}
	return nil
}

// createEmpty creates path, if a writer's Reopen has not already, with exactly
// perm (whatever the umask), for readers that follow the name. Like every log
// file, it is opened with OpenAppend: a symbolic link or another user's file
// planted at path between the rename and here is refused, not chmod-ed.
func createEmpty(path string, perm fs.FileMode) error {
	f, err := OpenAppend(path, perm)
	if err != nil {
		return err // names path
	}
	err = f.Chmod(perm)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("logrotate: create %s: %w", path, err)
	}
	return nil
}

// prune deletes path's oldest rotated files of one naming (numbered or dated)
// beyond keep.
func prune(path string, dated bool, keep int) error {
	type rotated struct {
		name string
		day  string // dated only
		n    int    // the number, or the collision suffix of a dated name
	}
	dir, base := filepath.Split(path)
	entries, err := os.ReadDir(filepath.Clean(dir + "."))
	if err != nil {
		return fmt.Errorf("logrotate: prune: %w", err)
	}
	var files []rotated
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), base+".")
		if !ok {
			continue
		}
		f := rotated{name: filepath.Join(dir, e.Name())}
		if dated {
			day, suffix, _ := strings.Cut(rest, ".")
			if _, err := time.Parse(dayLayout, day); err != nil {
				continue
			}
			f.day = day
			if suffix != "" {
				if f.n, ok = parseNumber(suffix); !ok {
					continue
				}
			}
		} else if f.n, ok = parseNumber(rest); !ok {
			continue
		}
		files = append(files, f)
	}
	// Oldest first: numbered by number, descending; dated by date, then suffix.
	slices.SortFunc(files, func(a, b rotated) int {
		if dated {
			return cmp.Or(strings.Compare(a.day, b.day), cmp.Compare(a.n, b.n))
		}
		return cmp.Compare(b.n, a.n)
	})
	var errs []error
	for i := 0; i < len(files)-keep; i++ {
		if err := os.Remove(files[i].name); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("logrotate: prune: %w", err))
		}
	}
	return errors.Join(errs...)
}

// parseNumber parses a positive decimal number without leading zeros.
func parseNumber(s string) (int, bool) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || strconv.Itoa(n) != s {
		return 0, false
	}
	return n, true
}
