package brood

import (
	"fmt"
	"strconv"
	"time"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/wire"
)

// negotiateProtocol picks the IPC protocol version a child speaks with a
// master that announced lo (wire.EnvProtocol) and hi (wire.EnvProtocolMax;
// empty from a master older than version ranges: lo alone).
func negotiateProtocol(lo, hi string) (int, error) {
	mlo, err := strconv.Atoi(lo)
	if err != nil {
		return 0, fmt.Errorf("brood: %s=%q: not an IPC protocol version", wire.EnvProtocol, lo)
	}
	mhi := mlo
	if hi != "" {
		if mhi, err = strconv.Atoi(hi); err != nil {
			return 0, fmt.Errorf("brood: %s=%q: not an IPC protocol version", wire.EnvProtocolMax, hi)
		}
	}
	v, err := ipc.Negotiate(mlo, mhi)
	if err != nil {
		return 0, fmt.Errorf("brood: %w", err)
	}
	return v, nil
}

// refuseProtocol tells the master that this child cannot speak its
// protocol: KindHello with the newest version this build speaks (the
// master's own check then names both), then KindFatal with why. Best effort:
// the child exits right after, and the master sees that exit either way.
func refuseProtocol(cs childSpec, why error) {
	_, hi := ipc.Speaks()
	var buf []byte
	for _, f := range []struct {
		kind    ipc.Kind
		payload string
	}{{ipc.KindHello, strconv.Itoa(hi)}, {ipc.KindFatal, why.Error()}} {
		h := ipc.Header{Kind: f.kind, Role: ipc.Role(cs.role), From: cs.pid}
		buf, _ = ipc.AppendFrame(buf, &h, "", []byte(f.payload), ipc.DefaultMaxFrame)
	}
	_ = cs.conn.SetWriteDeadline(time.Now().Add(time.Second))
	_, _ = cs.conn.Write(buf)
}
