// Package direct carries the master's direct agent-worker channels to the
// children (DESIGN §3a; package ipc, "Direct channels").
//
// Each child of a cluster with direct channels has a second channel from the
// master besides its IPC socketpair: its channel socket, a SOCK_SEQPACKET
// socketpair whose child end it inherits (BROOD_DIRECT_FD). For each pair of
// an agent and a worker that both speak ipc.DirectVersion, the master makes a
// SOCK_STREAM socketpair and sends one end to each over their channel sockets,
// as one packet each: an Offer naming the peer, with the end attached
// (SCM_RIGHTS). It then closes its own copies: the master never holds a direct
// channel, so nothing of it needs handing over in an upgrade, and a channel
// ends (EOF) exactly when one of its two processes does.
//
// A packet of its own keeps descriptors out of the framed IPC stream, whose
// batching writer would otherwise have to cut its writes at every descriptor.
package direct

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/brood-go/brood/internal/ipc"
)

// ErrMalformed is wrapped by every error about a bad offer.
var ErrMalformed = errors.New("malformed direct-channel offer")

// offerVersion is the first byte of an encoded Offer.
const offerVersion = 1

// OfferSize is the size of an encoded Offer.
const OfferSize = 1 + 4 + 1 + 4

// Offer names the process at the other end of a direct channel.
type Offer struct {
	PeerPID  uint32
	PeerRole ipc.Role // ipc.RoleAgent or ipc.RoleWorker
	PeerID   int      // 0 for the agent, the worker's slot id for a worker
}

// Encode returns the offer's packet.
func (o Offer) Encode() []byte {
	b := make([]byte, 0, OfferSize)
	b = append(b, offerVersion)
	b = binary.BigEndian.AppendUint32(b, o.PeerPID)
	b = append(b, byte(o.PeerRole))
	return binary.BigEndian.AppendUint32(b, uint32(o.PeerID))
}

// DecodeOffer parses an offer's packet. It never panics; anything but a
// well-formed offer of this version is an error wrapping ErrMalformed.
func DecodeOffer(b []byte) (Offer, error) {
	if len(b) != OfferSize {
		return Offer{}, fmt.Errorf("direct: offer of %d bytes, want %d: %w", len(b), OfferSize, ErrMalformed)
	}
	if b[0] != offerVersion {
		return Offer{}, fmt.Errorf("direct: offer version %d, want %d: %w", b[0], offerVersion, ErrMalformed)
	}
	o := Offer{
		PeerPID:  binary.BigEndian.Uint32(b[1:]),
		PeerRole: ipc.Role(b[5]),
		PeerID:   int(binary.BigEndian.Uint32(b[6:])),
	}
	switch {
	case o.PeerPID < 2 || o.PeerPID > 1<<22:
		return Offer{}, fmt.Errorf("direct: offer names pid %d: %w", o.PeerPID, ErrMalformed)
	case o.PeerRole == ipc.RoleAgent && o.PeerID != 0:
		return Offer{}, fmt.Errorf("direct: offer names an agent with id %d: %w", o.PeerID, ErrMalformed)
	case o.PeerRole == ipc.RoleWorker && (o.PeerID < 1 || o.PeerID > ipc.MaxExcept):
		return Offer{}, fmt.Errorf("direct: offer names worker id %d: %w", o.PeerID, ErrMalformed)
	case o.PeerRole != ipc.RoleAgent && o.PeerRole != ipc.RoleWorker:
		return Offer{}, fmt.Errorf("direct: offer names role %d: %w", o.PeerRole, ErrMalformed)
	}
	return o, nil
}
