package brood

import (
	"context"
	"slices"
)

// RunInMemory exposes runInMemory to the external tests: the cluster of cfg
// (with its worker count) as goroutines of the test process.
func RunInMemory(ctx context.Context, cfg Config) error { return runInMemory(ctx, cfg, nil) }

// DirectPeers returns, sorted, the pids m has a direct channel to that has
// not ended: the processes its sends to may take the channel.
func DirectPeers(m *Messenger) []int {
	m.dmu.Lock()
	defer m.dmu.Unlock()
	out := make([]int, 0, len(m.peers))
	for pid, p := range m.peers {
		if !p.dead {
			out = append(out, int(pid))
		}
	}
	slices.Sort(out)
	return out
}
