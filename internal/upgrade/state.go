package upgrade

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// MaxStateSize bounds the state one image hands to the next. It holds every
// message the master keeps for the children (bounded per process by
// MaxPendingBytes), so the bound is generous; a state beyond it is refused
// before the exec, and a state file claiming more is refused on restore.
const MaxStateSize = 1 << 30

// State is everything a master hands to the next image of itself. The
// descriptors it names are inherited through the exec (their numbers do not
// change); every other field is data. Encode and Decode give it a versioned,
// self-describing form.
type State struct {
	Version  int       `json:"version"`
	Started  time.Time `json:"started"`  // when this master first started, before any upgrade
	Upgrades int       `json:"upgrades"` // upgrades done so far, this one included
	From     Build     `json:"from"`     // the build that wrote the state

	RunDirLock    int      `json:"run_dir_lock"`    // the run dir's flock
	Control       int      `json:"control"`         // the control socket's listener
	Sockets       []Socket `json:"sockets"`         // the cluster's listeners, in Config.Listen order
	Admin         *Socket  `json:"admin,omitempty"` // the admin listener, if any
	Slots         []Slot   `json:"slots"`
	ScheduleClock []byte   `json:"schedule_clock,omitempty"`
	Router        Counters `json:"router"`

	// The upgrade being done: the client that asked for it (an HTTP
	// connection waiting for its answer, -1 for SIGUSR2), when it began,
	// whether the children keep running their old binary, and, after a
	// rollback, why the new image failed.
	Client      int       `json:"client"`
	Began       time.Time `json:"began"`
	KeepWorkers bool      `json:"keep_workers"`
	To          Build     `json:"to"`
	Failure     string    `json:"failure,omitempty"`
	// StopRequested is why a stop was asked while the upgrade was under
	// way; the next image stops once restored.
	StopRequested string `json:"stop_requested,omitempty"`
}

// Socket is one listening socket.
type Socket struct {
	FD        int    `json:"fd"`
	Network   string `json:"network"`
	Requested string `json:"requested"`
	Bound     string `json:"bound"`
	Passed    bool   `json:"passed,omitempty"`
	Name      string `json:"name,omitempty"`
	Unlink    bool   `json:"unlink,omitempty"` // remove the socket file on close
}

// Slot is a place of the cluster (the agent, or worker N) and its process.
type Slot struct {
	Role       string  `json:"role"` // "agent" or "worker"
	ID         int     `json:"id"`
	Restarts   int     `json:"restarts"`
	LastReason int     `json:"last_reason"` // wire.Reason
	LastDetail string  `json:"last_detail,omitempty"`
	Crashes    int     `json:"crashes"`
	CPURetired float64 `json:"cpu_retired"`
	Child      Child   `json:"child"`
}

// Child is one running process and the master's side of its channel.
type Child struct {
	PID       int       `json:"pid"`
	Protocol  int       `json:"protocol"` // the IPC version it announced
	StartedAt time.Time `json:"started_at"`
	ReadyAt   time.Time `json:"ready_at"`
	IPC       int       `json:"ipc"`    // the master's end of its socketpair
	Stdout    int       `json:"stdout"` // read end of its stdout pipe, -1 if none
	Stderr    int       `json:"stderr"`
	// Direct is the master's end of its channel socket (package direct);
	// 0 (absent) if it has none.
	Direct int `json:"direct,omitempty"`
	// DirectSent is the count of direct messages it reported last, from
	// which the next image counts on.
	DirectSent uint64 `json:"direct_sent,omitempty"`
	// Unread is what the master had read from the channel but not yet
	// decoded: the start of a frame.
	Unread []byte `json:"unread,omitempty"`
	// Sent counts the messages written to it; Retained are the held ones it
	// has not acknowledged, by sequence; Queued were not written yet.
	Sent     uint64   `json:"sent"`
	Retained []Frame  `json:"retained,omitempty"`
	Queued   [][]byte `json:"queued,omitempty"`
}

// Frame is a message kept for a process, with its sequence number.
type Frame struct {
	Seq uint64 `json:"seq"`
	Raw []byte `json:"raw"`
}

// Counters are the router's statistics, carried so that they only grow,
// and the count of messages the children sent over direct channels.
type Counters struct {
	Relayed, Held, Redelivered, Dropped, LostReplies, Unreachable uint64
	Direct                                                        uint64 `json:"direct,omitempty"`
}

// Encode returns s in its versioned form, with s.Version set to StateVersion.
func Encode(s *State) ([]byte, error) {
	s.Version = StateVersion
	b, err := json.Marshal(s)
	if err != nil {
		return nil, fmt.Errorf("upgrade: encode state: %w", err)
	}
	if len(b) > MaxStateSize {
		return nil, fmt.Errorf("upgrade: state of %d bytes exceeds the %d-byte bound", len(b), MaxStateSize)
	}
	return b, nil
}

// ErrVersion is a state this build cannot read.
var ErrVersion = errors.New("unsupported state version")

// Decode parses a state written by Encode and checks it: a version this
// build reads, and descriptors and pids that can be real. It never panics,
// whatever b holds.
func Decode(b []byte) (*State, error) {
	if len(b) > MaxStateSize {
		return nil, fmt.Errorf("upgrade: state of %d bytes exceeds the %d-byte bound", len(b), MaxStateSize)
	}
	var head struct {
		Version int `json:"version"`
	}
	if err := json.Unmarshal(b, &head); err != nil {
		return nil, fmt.Errorf("upgrade: decode state: %w", err)
	}
	if !Supported(head.Version) {
		return nil, fmt.Errorf("upgrade: state version %d: %w (this build reads %d to %d)", head.Version, ErrVersion, MinStateVersion, StateVersion)
	}
	s := new(State)
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("upgrade: decode state: %w", err)
	}
	if err := s.check(); err != nil {
		return nil, fmt.Errorf("upgrade: state: %w", err)
	}
	return s, nil
}

// check validates what Decode cannot take on trust.
func (s *State) check() error {
	fds := map[int]string{}
	claim := func(fd int, what string, optional bool) error {
		if optional && fd == -1 {
			return nil
		}
		if fd < 3 || fd > 1<<20 {
			return fmt.Errorf("%s: descriptor %d out of range", what, fd)
		}
		if prev, dup := fds[fd]; dup {
			return fmt.Errorf("%s: descriptor %d is also %s", what, fd, prev)
		}
		fds[fd] = what
		return nil
	}
	if err := claim(s.RunDirLock, "run dir lock", false); err != nil {
		return err
	}
	if err := claim(s.Control, "control socket", false); err != nil {
		return err
	}
	if err := claim(s.Client, "upgrade client", true); err != nil {
		return err
	}
	for i, sk := range s.Sockets {
		if err := claim(sk.FD, fmt.Sprintf("listener %d", i), false); err != nil {
			return err
		}
	}
	if s.Admin != nil {
		if err := claim(s.Admin.FD, "admin listener", false); err != nil {
			return err
		}
	}
	pids := map[int]bool{}
	agents := 0
	for i, sl := range s.Slots {
		what := fmt.Sprintf("slot %d", i)
		switch {
		case sl.Role == "agent":
			agents++
			if agents > 1 || sl.ID != 0 {
				return fmt.Errorf("%s: a second agent, or an agent with id %d", what, sl.ID)
			}
		case sl.Role == "worker":
			if sl.ID < 1 {
				return fmt.Errorf("%s: worker id %d", what, sl.ID)
			}
		default:
			return fmt.Errorf("%s: role %q", what, sl.Role)
		}
		c := sl.Child
		if c.PID < 2 || pids[c.PID] {
			return fmt.Errorf("%s: pid %d", what, c.PID)
		}
		pids[c.PID] = true
		if err := claim(c.IPC, what+" channel", false); err != nil {
			return err
		}
		if err := claim(c.Stdout, what+" stdout", true); err != nil {
			return err
		}
		if err := claim(c.Stderr, what+" stderr", true); err != nil {
			return err
		}
		if c.Direct != 0 {
			if err := claim(c.Direct, what+" channel socket", false); err != nil {
				return err
			}
		}
		last := uint64(0)
		for _, f := range c.Retained {
			if f.Seq <= last || f.Seq > c.Sent {
				return fmt.Errorf("%s: retained message %d out of order (sent %d)", what, f.Seq, c.Sent)
			}
			last = f.Seq
		}
	}
	return nil
}

// Descriptors returns every descriptor s names, for the exec to keep.
func (s *State) Descriptors() []int {
	fds := []int{s.RunDirLock, s.Control}
	if s.Client >= 0 {
		fds = append(fds, s.Client)
	}
	for _, sk := range s.Sockets {
		fds = append(fds, sk.FD)
	}
	if s.Admin != nil {
		fds = append(fds, s.Admin.FD)
	}
	for _, sl := range s.Slots {
		fds = append(fds, sl.Child.IPC)
		if sl.Child.Stdout >= 0 {
			fds = append(fds, sl.Child.Stdout)
		}
		if sl.Child.Stderr >= 0 {
			fds = append(fds, sl.Child.Stderr)
		}
		if sl.Child.Direct != 0 {
			fds = append(fds, sl.Child.Direct)
		}
	}
	return fds
}

// WriteMemfd writes b to a new memory file and returns it, positioned at 0.
// It is close-on-exec; Inherit clears that for the exec that hands it over.
func WriteMemfd(b []byte) (*os.File, error) {
	fd, err := unix.MemfdCreate("brood-upgrade-state", unix.MFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("upgrade: memfd_create: %w", err)
	}
	f := os.NewFile(uintptr(fd), "brood-upgrade-state")
	if _, err := f.Write(b); err != nil {
		f.Close()
		return nil, fmt.Errorf("upgrade: write state: %w", err)
	}
	if _, err := f.Seek(0, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("upgrade: write state: %w", err)
	}
	return f, nil
}

// ReadFD reads a whole state file from fd, from its start, bounded by
// MaxStateSize. It leaves fd open: a rollback hands the same file on.
func ReadFD(fd int) ([]byte, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("upgrade: state descriptor %d: %w", fd, err)
	}
	if st.Size > MaxStateSize {
		return nil, fmt.Errorf("upgrade: state of %d bytes exceeds the %d-byte bound", st.Size, MaxStateSize)
	}
	b := make([]byte, st.Size)
	for off := 0; off < len(b); {
		n, err := unix.Pread(fd, b[off:], int64(off))
		if err != nil {
			return nil, fmt.Errorf("upgrade: read state: %w", err)
		}
		if n == 0 {
			return nil, fmt.Errorf("upgrade: read state: short file (%d of %d bytes)", off, len(b))
		}
		off += n
	}
	return b, nil
}

// Inherit clears close-on-exec on each descriptor, so that the next image
// gets it under the same number.
func Inherit(fds []int) error {
	for _, fd := range fds {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0); err != nil {
			return fmt.Errorf("upgrade: keep descriptor %d across exec: %w", fd, err)
		}
	}
	return nil
}

// Adopt sets close-on-exec again on a descriptor inherited from the
// previous image, so that processes this one starts do not get it.
func Adopt(fd int) error {
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, unix.FD_CLOEXEC); err != nil {
		return fmt.Errorf("upgrade: inherited descriptor %d: %w", fd, err)
	}
	return nil
}
