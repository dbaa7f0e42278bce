package master

import (
	"context"
	"errors"
	"os"
	"strings"
	"time"

	"github.com/brood-go/brood/internal/logrotate"
	"github.com/brood-go/brood/internal/wire"
	"golang.org/x/sys/unix"
)

// RotateLogs rotates what is due (by the agent) and then has every process
// reopen its files: SIGUSR1, `rotate-logs`, and logrotate(8)'s postrotate.
func (m *Master) RotateLogs(why string) error {
	ctx, cancel := context.WithTimeout(m.life, 10*time.Second)
	defer cancel()
	var err error
	if m.cfg.LogRotation {
		var body wire.ErrorBody
		if err = m.askAgent(ctx, wire.ActLogsRotate, nil, &body); err == nil && body.Error != "" {
			err = errors.New(body.Error)
		}
	}
	m.reopenLogs(why)
	return err
}

// DaemonLogFiles are the paths of the master's stdout and stderr files when it
// was started by `start --daemon` (wire.EnvLogFiles), else nil.
func DaemonLogFiles() []string {
	v := os.Getenv(wire.EnvLogFiles)
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}

// reopenOwnLogs points the master's stdout and stderr at fresh files at the
// paths `start --daemon` gave them (after they were renamed).
func (m *Master) reopenOwnLogs() {
	for i, path := range DaemonLogFiles() {
		if i > 1 {
			break
		}
		f, err := logrotate.OpenAppend(path, 0o644) // no symbolic link, no other user's file
		if err != nil {
			m.log.Error("reopen log", "path", path, "err", err)
			continue
		}
		// dup3 replaces fd 1 or 2 atomically: the output goroutines keep
		// writing to the same descriptor number, now the new file.
		err = unix.Dup3(int(f.Fd()), 1+i, 0)
		f.Close()
		if err != nil {
			m.log.Error("reopen log", "path", path, "err", err)
		}
	}
}

// reopenLogs reopens the master's files and has every process reopen theirs.
func (m *Master) reopenLogs(why string) {
	m.reopenOwnLogs()
	m.mu.Lock()
	for _, c := range m.children {
		if c.state != childExited {
			m.router.Event(c.ep, wire.ActLogsReopen, nil)
		}
	}
	m.mu.Unlock()
	m.events.publish(wire.Event{Type: wire.EventLogsRotated, Detail: why})
}
