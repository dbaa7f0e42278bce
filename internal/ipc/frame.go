// Package ipc is brood's wire format between the master and its children, and the
// buffered reader and batching writer that carry it.
//
// # Channel
//
// Every child inherits one end of a socketpair(AF_UNIX, SOCK_STREAM) as a file
// descriptor (see BROOD_IPC_FD in package brood). There is no other channel between
// processes: traffic between children is relayed by the master.
//
// # Frame layout
//
// All integers are big-endian. A frame is a fixed 36-byte header, the action name and
// an opaque payload:
//
//	offset size field
//	     0    4 size      bytes that follow this field: 32 + len(action) + len(payload)
//	     4    1 kind      see Kind
//	     5    1 dest      see Dest; how the master routes a KindMessage
//	     6    1 role      role of the sender (RoleMaster, RoleAgent, RoleWorker)
//	     7    1 flags     see Flags
//	     8    2 actionLen length of the action name, at most MaxActionLen
//	    10    2 reserved  zero
//	    12    4 from      pid of the sender; the master overwrites it when relaying
//	    16    4 to        pid of the receiver when dest is DestPID; the FleetScope
//	                      when dest is DestFleet; else zero
//	    20    8 id        request id (non-zero for requests), or a ping sequence
//	    28    8 ref       id of the request a KindReply answers; count for KindAck;
//	                      for a DestFleet request, its timeout in milliseconds (0: none)
//	    36    n action    UTF-8 action name
//	  36+n    m payload   opaque bytes (JSON unless FlagRaw)
//
// The size field is checked against the reader's limit (DefaultMaxFrame, 16 MiB)
// before anything is allocated for the body; a reader allocates in proportion to the
// bytes that actually arrive, never to what a header claims.
//
// # Fleet messages
//
// A child sends a message to the fleet as a KindMessage with dest DestFleet and
// the FleetScope in the to field; the master publishes it on NATS. What the
// master delivers from the fleet (messages, requests, and replies to a child's
// fleet request) carries FlagFleet, and its payload starts with the origin
// (see AppendOrigin):
//
//	offset size field
//	     0    2 nodeLen   length of the sending member's node id, 1 to MaxNodeLen
//	     2    n node      the node id
//	   2+n    4 pid       the sending process's pid, on its node
//	   6+n    1 role      the sending process's Role
//	   7+n    m data      the message's data
//
// # Direct channels
//
// Version 3 adds direct channels (DESIGN §3a). The master gives the agent and
// each worker a socketpair between them, over a second channel each child has,
// the channel socket (see package direct), and the two exchange KindMessage,
// KindReply and KindAck frames on it in this same format, addressed DestPID,
// with no master in between. The master stays the router of record: a sender
// that has served a slot directly names it in the FlagExcept list of its
// relayed DestApp or DestAll copy, so the master skips it, and it hands what a
// dead peer did not acknowledge back to the master addressed DestAgent,
// DestWorker (to = the worker id) or DestRandom, which hold it for the slot as
// any role-addressed message. A FlagExcept payload starts with the list:
//
//	uvarint n, then n uvarints: 0 for the agent, k for worker k
//
// # Handshake and version
//
// Versions form a range: a build speaks every version from MinVersion to Version
// (see Speaks). Version 1 is the protocol without the fleet; version 2 adds it
// (DestFleet, FleetScope, FlagFleet and the origin, FleetVersion), with no other
// change. A master announces its range to a child in the environment: BROOD_PROTOCOL
// is the lowest version it speaks and BROOD_PROTOCOL_MAX the highest (absent: the
// same; a binary older than ranges reads BROOD_PROTOCOL alone, as the one version
// its master speaks, so that it keeps working under a newer master while
// MinVersion is 1). The child picks the highest version both speak (Negotiate) and
// sends it as the payload, in decimal, of its first frame, KindHello; if there is
// none, it sends its own highest version in KindHello, then KindFatal saying why,
// and exits.
//
// The master records the version a child speaks and never sends it a frame that
// version cannot decode. A child whose KindHello names a version outside the
// master's range is killed, and its exit detail is "child speaks IPC protocol 7,
// this master speaks 1 to 2": a rolling reload onto such a binary fails with that
// error and the old processes keep serving. A cluster in a fleet refuses children
// below FleetVersion the same way, so fleet frames never reach a process that
// cannot decode them; a cluster not in a fleet sends no fleet frames at all. A
// child must send KindHello before KindReady.
//
// For tests, a build can be made to speak only one version, at link time:
//
//	go build -ldflags "-X github.com/brood-go/brood/internal/ipc.versionOverride=7"
//
// # Ordering
//
// Frames are written in the order they are appended to a Writer, and the master
// relays a sender's frames in the order it reads them, so messages from one sender to
// one receiver arrive in send order.
package ipc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
)

// Version is the newest protocol version this build speaks (see "Handshake
// and version"): 3, version 2 plus direct channels.
const Version = 3

// MinVersion is the oldest protocol version this build speaks.
const MinVersion = 1

// FleetVersion is the first version with fleet messages (DestFleet,
// FlagFleet).
const FleetVersion = 2

// DirectVersion is the first version with direct agent-worker channels
// (DestWorker, FlagExcept, the channel socket; see "Direct channels").
const DirectVersion = 3

// versionOverride, set at link time (-ldflags -X), makes this build speak that
// one version only, in place of MinVersion to Version: tests build a second
// binary with it to play a build of another protocol.
var versionOverride string

// Speaks returns the range of protocol versions this build speaks:
// MinVersion to Version, unless versionOverride names one.
func Speaks() (lo, hi int) {
	if v, err := strconv.Atoi(versionOverride); err == nil && v > 0 {
		return v, v
	}
	return MinVersion, Version
}

// RangeText renders a range of versions for messages: "1 to 2", or "2".
func RangeText(lo, hi int) string {
	if lo == hi {
		return strconv.Itoa(lo)
	}
	return strconv.Itoa(lo) + " to " + strconv.Itoa(hi)
}

// Negotiate returns the version a child of this build speaks with a master
// that speaks masterLo to masterHi: the highest version both speak, or an
// error naming both ranges if there is none.
func Negotiate(masterLo, masterHi int) (int, error) {
	lo, hi := Speaks()
	v := min(hi, masterHi)
	if masterLo > masterHi || v < max(lo, masterLo) {
		return 0, fmt.Errorf("the master speaks IPC protocol %s, this binary speaks %s", RangeText(masterLo, masterHi), RangeText(lo, hi))
	}
	return v, nil
}

// HeaderSize is the size of the fixed frame header, size field included.
const HeaderSize = 36

// DefaultMaxFrame is the default limit on a whole frame, header included.
const DefaultMaxFrame = 16 << 20

// MaxActionLen is the longest action name a frame can carry.
const MaxActionLen = 1024

// Kind says what a frame is.
type Kind uint8

// Frame kinds.
const (
	KindInvalid Kind = iota
	// KindHello is the child's first frame: payload is the decimal protocol
	// version it speaks (see "Handshake and version").
	KindHello
	// KindReady says the child finished initialising (Process.Ready).
	KindReady
	// KindMessage is a messenger message; dest says where it goes.
	KindMessage
	// KindReply answers the request whose id is in ref.
	KindReply
	// KindAck (child to master) says the child's handlers have finished the first
	// ref messages it was sent; the master forgets its copies of them.
	KindAck
	// KindNack (master to child) says the message with id (and action) could not be
	// delivered; the payload is the reason.
	KindNack
	// KindPing (master to child) asks for a KindPong with the same id.
	KindPing
	// KindPong answers a KindPing.
	KindPong
	// KindFatal (child to master) carries the error a child is about to exit with.
	KindFatal
	// KindReplaceMe (child to master) asks for a graceful replacement; payload is why.
	KindReplaceMe
	// KindMembers (master to child) carries the current process table as JSON.
	KindMembers
	kindEnd
)

var kindNames = [...]string{"invalid", "hello", "ready", "message", "reply", "ack", "nack", "ping", "pong", "fatal", "replace-me", "members"}

func (k Kind) String() string {
	if k < kindEnd {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Dest says how the master routes a KindMessage.
type Dest uint8

// Destinations.
const (
	DestNone   Dest = iota
	DestPID         // the process whose pid is in the to field
	DestAgent       // the agent
	DestApp         // every worker
	DestAll         // the agent and every worker
	DestRandom      // one worker picked by the master
	DestMaster      // the master itself (brood's own coordination)
	DestFleet       // the fleet, through the master; to holds the FleetScope
	DestWorker      // worker slot to, held for whichever process fills it (a direct channel's unacknowledged messages)
	destEnd
)

var destNames = [...]string{"none", "pid", "agent", "app", "all", "random", "master", "fleet", "worker"}

// FleetScope says where in the fleet a DestFleet message goes.
type FleetScope uint32

// Fleet scopes.
const (
	FleetAll     FleetScope = iota + 1 // every process of every member
	FleetApp                           // every worker of every member
	FleetAgent                         // every member's agent
	FleetRandom                        // one worker somewhere
	FleetRequest                       // one worker somewhere answers (with FlagRequest)
)

func (d Dest) String() string {
	if d < destEnd {
		return destNames[d]
	}
	return fmt.Sprintf("dest(%d)", uint8(d))
}

// Role is the role of a frame's sender.
type Role uint8

// Roles on the wire.
const (
	RoleNone Role = iota
	RoleMaster
	RoleAgent
	RoleWorker
	roleEnd
)

// Flags modify a frame.
type Flags uint8

// Frame flags.
const (
	// FlagRaw marks a payload that is raw bytes rather than JSON.
	FlagRaw Flags = 1 << iota
	// FlagHeld is set by the master on a message addressed to a role rather than a
	// pid: if the receiver dies before acknowledging it, the master delivers it again
	// to the process that takes the receiver's slot.
	FlagHeld
	// FlagRequest marks a message whose sender waits for a KindReply.
	FlagRequest
	// FlagFleet marks a message (or reply) that came from the fleet: its
	// payload starts with the origin (see AppendOrigin).
	FlagFleet
	// FlagExcept marks a DestApp or DestAll message whose payload starts with
	// the slots its sender served over direct channels (see AppendExcept):
	// the master strips the list and skips those slots.
	FlagExcept
	flagsAll = FlagRaw | FlagHeld | FlagRequest | FlagFleet | FlagExcept
)

// Header is the fixed part of a frame, without the size field.
type Header struct {
	Kind  Kind
	Dest  Dest
	Role  Role
	Flags Flags
	From  uint32
	To    uint32
	ID    uint64
	Ref   uint64
}

// Frame is a decoded frame. Action and Payload alias the reader's buffer and are
// valid only until the next call to Reader.Next; Raw is the whole encoded frame.
type Frame struct {
	Header
	Action  []byte
	Payload []byte
	Raw     []byte
}

// Errors returned by the codec. They are wrapped with context; test with errors.Is.
var (
	ErrTooLarge   = errors.New("frame too large")
	ErrMalformed  = errors.New("malformed frame")
	ErrActionLong = errors.New("action name too long")
)

// SizeError reports a frame over the size limit.
type SizeError struct {
	Size, Limit int
}

func (e *SizeError) Error() string {
	return fmt.Sprintf("ipc: frame too large: %d bytes, limit %d", e.Size, e.Limit)
}

// Unwrap makes errors.Is(err, ErrTooLarge) true.
func (e *SizeError) Unwrap() error { return ErrTooLarge }

// EncodedLen is the size of the frame that AppendFrame would produce.
func EncodedLen(action string, payloadLen int) int {
	return HeaderSize + len(action) + payloadLen
}

// AppendFrame appends the encoding of one frame to dst. It fails, leaving dst as it
// was, if the action is too long or the frame would exceed limit bytes.
func AppendFrame(dst []byte, h *Header, action string, payload []byte, limit int) ([]byte, error) {
	if len(action) > MaxActionLen {
		return dst, fmt.Errorf("ipc: action of %d bytes: %w (limit %d)", len(action), ErrActionLong, MaxActionLen)
	}
	n := EncodedLen(action, len(payload))
	if n > limit {
		return dst, &SizeError{Size: n, Limit: limit}
	}
	dst = putHeader(dst, h, len(action), n)
	dst = append(dst, action...)
	return append(dst, payload...), nil
}

func putHeader(dst []byte, h *Header, actionLen, n int) []byte {
	var b [HeaderSize]byte
	binary.BigEndian.PutUint32(b[0:], uint32(n-4))
	b[4] = byte(h.Kind)
	b[5] = byte(h.Dest)
	b[6] = byte(h.Role)
	b[7] = byte(h.Flags)
	binary.BigEndian.PutUint16(b[8:], uint16(actionLen))
	binary.BigEndian.PutUint32(b[12:], h.From)
	binary.BigEndian.PutUint32(b[16:], h.To)
	binary.BigEndian.PutUint64(b[20:], h.ID)
	binary.BigEndian.PutUint64(b[28:], h.Ref)
	return append(dst, b[:]...)
}

// SetSender overwrites the role and from fields of an encoded frame in place.
func SetSender(raw []byte, role Role, from uint32) {
	raw[6] = byte(role)
	binary.BigEndian.PutUint32(raw[12:], from)
}

// SetFlags overwrites the flags of an encoded frame in place.
func SetFlags(raw []byte, f Flags) { raw[7] = byte(f) }

// SetDest overwrites the dest of an encoded frame in place.
func SetDest(raw []byte, d Dest) { raw[5] = byte(d) }

// SetTo overwrites the to field of an encoded frame in place.
func SetTo(raw []byte, to uint32) { binary.BigEndian.PutUint32(raw[16:], to) }

// Decode parses one whole encoded frame (as found in Frame.Raw). It never panics;
// any inconsistency is an error wrapping ErrMalformed.
func Decode(raw []byte) (Frame, error) {
	if len(raw) < HeaderSize {
		return Frame{}, fmt.Errorf("ipc: %d-byte frame is shorter than the %d-byte header: %w", len(raw), HeaderSize, ErrMalformed)
	}
	size := int(binary.BigEndian.Uint32(raw[0:]))
	if size+4 != len(raw) {
		return Frame{}, fmt.Errorf("ipc: frame says %d bytes, has %d: %w", size+4, len(raw), ErrMalformed)
	}
	var f Frame
	f.Kind = Kind(raw[4])
	f.Dest = Dest(raw[5])
	f.Role = Role(raw[6])
	f.Flags = Flags(raw[7])
	alen := int(binary.BigEndian.Uint16(raw[8:]))
	if raw[10] != 0 || raw[11] != 0 {
		return Frame{}, fmt.Errorf("ipc: reserved bytes are not zero: %w", ErrMalformed)
	}
	f.From = binary.BigEndian.Uint32(raw[12:])
	f.To = binary.BigEndian.Uint32(raw[16:])
	f.ID = binary.BigEndian.Uint64(raw[20:])
	f.Ref = binary.BigEndian.Uint64(raw[28:])
	switch {
	case f.Kind == KindInvalid || f.Kind >= kindEnd:
		return Frame{}, fmt.Errorf("ipc: unknown frame kind %d: %w", raw[4], ErrMalformed)
	case f.Dest >= destEnd:
		return Frame{}, fmt.Errorf("ipc: unknown destination %d: %w", raw[5], ErrMalformed)
	case f.Role >= roleEnd:
		return Frame{}, fmt.Errorf("ipc: unknown role %d: %w", raw[6], ErrMalformed)
	case f.Flags&^flagsAll != 0:
		return Frame{}, fmt.Errorf("ipc: unknown flags %#x: %w", raw[7], ErrMalformed)
	case alen > MaxActionLen:
		return Frame{}, fmt.Errorf("ipc: action of %d bytes: %w", alen, ErrMalformed)
	case HeaderSize+alen > len(raw):
		return Frame{}, fmt.Errorf("ipc: action of %d bytes overruns the %d-byte frame: %w", alen, len(raw), ErrMalformed)
	}
	f.Action = raw[HeaderSize : HeaderSize+alen]
	f.Payload = raw[HeaderSize+alen:]
	f.Raw = raw
	return f, nil
}

// MaxNodeLen is the longest node id an origin can carry.
const MaxNodeLen = 255

// AppendOrigin appends the origin of a fleet message (see the package
// comment) to dst.
func AppendOrigin(dst []byte, node string, pid uint32, role Role) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(node)))
	dst = append(dst, node...)
	dst = binary.BigEndian.AppendUint32(dst, pid)
	return append(dst, byte(role))
}

// SplitOrigin parses the origin at the start of a FlagFleet payload and
// returns it and the data after it (aliasing payload). It never panics; any
// inconsistency is an error wrapping ErrMalformed.
func SplitOrigin(payload []byte) (node string, pid uint32, role Role, data []byte, err error) {
	if len(payload) < 2 {
		return "", 0, 0, nil, fmt.Errorf("ipc: fleet origin of %d bytes: %w", len(payload), ErrMalformed)
	}
	n := int(binary.BigEndian.Uint16(payload))
	if n == 0 || n > MaxNodeLen {
		return "", 0, 0, nil, fmt.Errorf("ipc: fleet origin: node id of %d bytes: %w", n, ErrMalformed)
	}
	if len(payload) < 2+n+5 {
		return "", 0, 0, nil, fmt.Errorf("ipc: fleet origin overruns the %d-byte payload: %w", len(payload), ErrMalformed)
	}
	node = string(payload[2 : 2+n])
	pid = binary.BigEndian.Uint32(payload[2+n:])
	role = Role(payload[6+n])
	if role == RoleNone || role >= roleEnd {
		return "", 0, 0, nil, fmt.Errorf("ipc: fleet origin: unknown role %d: %w", role, ErrMalformed)
	}
	return node, pid, role, payload[7+n:], nil
}

// MaxExcept bounds the slots a FlagExcept list names: the agent and every
// worker id an operator could configure.
const MaxExcept = 1 << 16

// AppendExcept appends a FlagExcept list (see "Direct channels") naming the
// slots in except (0 the agent, k worker k) to dst.
func AppendExcept(dst []byte, except []int) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(except)))
	for _, s := range except {
		dst = binary.AppendUvarint(dst, uint64(s))
	}
	return dst
}

// SplitExcept parses the FlagExcept list at the start of payload, appending
// its slots to into, and returns them and the data after the list (aliasing
// payload). It never panics; any inconsistency is an error wrapping
// ErrMalformed.
func SplitExcept(payload []byte, into []int) (except []int, data []byte, err error) {
	n, k := binary.Uvarint(payload)
	if k <= 0 || n > MaxExcept {
		return into, nil, fmt.Errorf("ipc: except list: bad count: %w", ErrMalformed)
	}
	payload = payload[k:]
	for range n {
		s, k := binary.Uvarint(payload)
		if k <= 0 || s > MaxExcept {
			return into, nil, fmt.Errorf("ipc: except list overruns the payload: %w", ErrMalformed)
		}
		into = append(into, int(s))
		payload = payload[k:]
	}
	return into, payload, nil
}
