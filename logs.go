package brood

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/brood-go/brood/internal/cli"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/logrotate"
	"golang.org/x/sys/unix"
)

// LogRotation says how brood rotates log files, egg-logrotator style. The agent
// checks the files (every CheckEvery) and renames the ones due; then every
// process, the master included, reopens its files, so that no line is lost or
// split: until a process reopens, its lines go to the renamed file (O_APPEND,
// one write per line).
//
// The files rotated are brood's own (master-stdout.log and master-stderr.log
// when started with `start --daemon`) and Files. Rotation is on when Daily or
// MaxSize is set. SIGUSR1 to the master rotates what is due by the policy and
// then makes every process reopen its files, so an external logrotate(8) with a
// `postrotate kill -USR1 <master pid>` works too.
type LogRotation struct {
	// Files are the application's own log files, opened in any process with
	// Process.OpenLog.
	Files []string
	// Daily renames each file to <path>.YYYY-MM-DD at local midnight.
	Daily bool
	// MaxSize renames a file bigger than this to <path>.1 (older ones shift to
	// .2, .3, ...).
	MaxSize int64
	// Keep is how many rotated files of each log to keep; 0 keeps all.
	Keep int
	// CheckEvery is how often sizes are checked; 0 means one second.
	CheckEvery time.Duration
}

func (l LogRotation) enabled() bool { return l.Daily || l.MaxSize > 0 }

// Internal actions of log rotation (reserved prefix).
const (
	actLogsReopen  = "brood:logs-reopen"  // master -> everyone: reopen your files
	actLogsRotated = "brood:logs-rotated" // agent -> master: I renamed files
	actLogsRotate  = "brood:logs-rotate"  // master -> agent (request): rotate what is due now
)

// LogFile is a log file that survives rotation: after the agent renames it,
// the next write goes to a fresh file at the same path. Safe for concurrent
// use; each Write is one write(2) in append mode, so a line written in one call
// is never split or interleaved with another process's.
type LogFile struct{ f *logrotate.File }

// Write appends p to the file.
func (l *LogFile) Write(p []byte) (int, error) { return l.f.Write(p) }

// Close closes the file; the process stops reopening it.
func (l *LogFile) Close() error { return l.f.Close() }

// Path is the file's path.
func (l *LogFile) Path() string { return l.f.Path() }

// logRegistry holds a process's open LogFiles.
type logRegistry struct {
	mu    sync.Mutex
	files map[*logrotate.File]bool
}

// OpenLog opens (creating it and its directory if needed) a log file that is
// reopened whenever brood rotates logs. List the path in
// Config.LogRotation.Files for the agent to rotate it.
func (p *Process) OpenLog(path string) (*LogFile, error) {
	f, err := logrotate.Open(path, 0o644)
	if err != nil {
		return nil, fmt.Errorf("brood: open log: %w", err)
	}
	p.logs.mu.Lock()
	p.logs.files[f] = true
	p.logs.mu.Unlock()
	return &LogFile{f}, nil
}

// reopenLogs reopens every open LogFile of the process.
func (p *Process) reopenLogs() {
	p.logs.mu.Lock()
	var files []*logrotate.File
	for f := range p.logs.files {
		files = append(files, f)
	}
	p.logs.mu.Unlock()
	for _, f := range files {
		if err := f.Reopen(); err != nil {
			if errors.Is(err, os.ErrClosed) {
				p.logs.mu.Lock()
				delete(p.logs.files, f)
				p.logs.mu.Unlock()
				continue
			}
			p.log.Error("reopen log", "path", f.Path(), "err", err)
		}
	}
}

// installLogReopen makes a process reopen its log files on brood:logs-reopen.
func installLogReopen(p *Process) {
	p.logs = &logRegistry{files: map[*logrotate.File]bool{}}
	p.Messenger().On(actLogsReopen, func(Message) { p.reopenLogs() })
}

// installAgentRotation runs the rotator in the agent; after a rotation it tells
// the master, which reopens its own files and has every process reopen theirs.
func installAgentRotation(p *Process, lr LogRotation) error {
	paths := append(daemonLogFiles(), lr.Files...)
	for i, path := range paths {
		if abs, err := filepath.Abs(path); err == nil {
			paths[i] = abs
		}
	}
	m := p.Messenger()
	tellMaster := func(rotated []string) {
		if err := m.post(ipc.DestMaster, 0, m.nextID.Add(1), 0, actLogsRotated, rotated, "the master"); err != nil {
			p.log.Error("logs rotated, but the master was not told", "err", err)
		}
	}
	var r *logrotate.Rotator
	if lr.enabled() && len(paths) > 0 {
		var err error
		r, err = logrotate.NewRotator(paths, logrotate.Policy{Daily: lr.Daily, MaxSize: lr.MaxSize, Keep: lr.Keep},
			logrotate.Options{Logger: p.log, CheckEvery: lr.CheckEvery, OnRotate: tellMaster})
		if err != nil {
			return fmt.Errorf("brood: log rotation: %w", err)
		}
		p.Go(func(ctx context.Context) { r.Run(ctx) })
	}
	m.On(actLogsRotate, func(msg Message) {
		var err error
		if r != nil {
			_, err = r.RotateNow()
		}
		msg.Reply(errorReply(err))
	})
	return nil
}

// daemonLogFiles are brood's own log files, if the master was started with
// `start --daemon`.
func daemonLogFiles() []string {
	v := os.Getenv(cli.EnvLogFiles)
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}

// reopenOwnLogs points the master's stdout and stderr at fresh files at the
// paths `start --daemon` gave them (after they were renamed).
func (m *master) reopenOwnLogs() {
	files := daemonLogFiles()
	for i, path := range files {
		if i > 1 {
			break
		}
		f, err := logrotate.OpenAppend(path, 0o644) // no symbolic link, no other user's file
		if err != nil {
			m.log.Error("reopen log", "path", path, "err", err)
			continue
		}
		m.outMu.Lock()
		err = unix.Dup3(int(f.Fd()), 1+i, 0)
		m.outMu.Unlock()
		f.Close()
		if err != nil {
			m.log.Error("reopen log", "path", path, "err", err)
		}
	}
}

// logsReopen reopens the master's files and has every process reopen theirs.
func (m *master) logsReopen(why string) {
	m.reopenOwnLogs()
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, c := range m.children {
		if c.state != childExited {
			m.router.Event(c.ep, actLogsReopen, nil)
		}
	}
	m.log.Info("log files reopened", "why", why)
}
