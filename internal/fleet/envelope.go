package fleet

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
)

// The envelope of a fleet message is a set of NATS headers; the message's data
// is the NATS payload, untouched (JSON unless Raw).
const (
	HdrNode    = "Brood-Node"    // the sending member's node id
	HdrPID     = "Brood-Pid"     // the sending process's pid, on its node
	HdrRole    = "Brood-Role"    // "agent" or "worker" (or "master" for the master's own)
	HdrAction  = "Brood-Action"  // the messenger action
	HdrRaw     = "Brood-Raw"     // "1": the data is raw bytes, not JSON
	HdrTimeout = "Brood-Timeout" // requests: how long the requester waits, in milliseconds
	HdrError   = "Brood-Error"   // replies: the request was not answered, and why
)

// MaxNodeLen bounds a node id; MaxActionLen bounds an action (as the IPC frame does).
const (
	MaxNodeLen   = 255
	MaxActionLen = 1024
)

// ErrMalformed is wrapped by every error of DecodeEnvelope.
var ErrMalformed = errors.New("malformed fleet envelope")

// Envelope says who sent a fleet message and what it is.
type Envelope struct {
	Node    string
	PID     uint32
	Role    string
	Action  string
	Raw     bool
	Timeout int64  // requests: milliseconds the requester waits (0: unknown)
	Err     string // replies: why no worker answered
}

// Header encodes e as NATS headers.
func (e Envelope) Header() nats.Header {
	h := nats.Header{}
	h.Set(HdrNode, e.Node)
	h.Set(HdrPID, strconv.FormatUint(uint64(e.PID), 10))
	h.Set(HdrRole, e.Role)
	h.Set(HdrAction, e.Action)
	if e.Raw {
		h.Set(HdrRaw, "1")
	}
	if e.Timeout > 0 {
		h.Set(HdrTimeout, strconv.FormatInt(e.Timeout, 10))
	}
	if e.Err != "" {
		h.Set(HdrError, e.Err)
	}
	return h
}

// DecodeEnvelope reads the envelope from a message's headers. Anything another
// member (or anyone on the NATS server) could get wrong is an error wrapping
// ErrMalformed; it never panics.
func DecodeEnvelope(h nats.Header) (Envelope, error) {
	bad := func(format string, args ...any) (Envelope, error) {
		return Envelope{}, fmt.Errorf("fleet: %s: %w", fmt.Sprintf(format, args...), ErrMalformed)
	}
	var e Envelope
	e.Node = h.Get(HdrNode)
	if err := ValidNode(e.Node); err != nil {
		return bad("%v", err)
	}
	pid, err := strconv.ParseUint(h.Get(HdrPID), 10, 32)
	if err != nil {
		return bad("pid %q", h.Get(HdrPID))
	}
	e.PID = uint32(pid)
	switch e.Role = h.Get(HdrRole); e.Role {
	case "agent", "worker", "master":
	default:
		return bad("role %q", e.Role)
	}
	e.Action = h.Get(HdrAction)
	if e.Action == "" || len(e.Action) > MaxActionLen {
		return bad("action of %d bytes (want 1 to %d)", len(e.Action), MaxActionLen)
	}
	switch v := h.Get(HdrRaw); v {
	case "", "0":
	case "1":
		e.Raw = true
	default:
		return bad("%s %q", HdrRaw, v)
	}
	if v := h.Get(HdrTimeout); v != "" {
		if e.Timeout, err = strconv.ParseInt(v, 10, 64); err != nil || e.Timeout < 0 {
			return bad("%s %q", HdrTimeout, v)
		}
	}
	e.Err = h.Get(HdrError)
	if len(e.Err) > 4096 {
		e.Err = e.Err[:4096]
	}
	return e, nil
}

// ValidNode reports whether s can be a node id: 1 to MaxNodeLen bytes of
// printable text (it travels in NATS headers and in IPC frames).
func ValidNode(s string) error {
	if s == "" || len(s) > MaxNodeLen {
		return fmt.Errorf("node id of %d bytes (want 1 to %d)", len(s), MaxNodeLen)
	}
	if strings.ContainsFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("node id %q has control characters", s)
	}
	return nil
}
