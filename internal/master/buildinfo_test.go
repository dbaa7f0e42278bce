package master

import (
	"runtime"
	"testing"

	"github.com/brood-go/brood/internal/ipc"
	"github.com/brood-go/brood/internal/wire"
)

func TestStatusHasBuildAndUpgrades(t *testing.T) {
	h := startHarness(t, 1, func(ipc.Role, int, int) script { return script{} })
	h.wait("the cluster", is(wire.EventClusterReady))
	st := h.m.Status()
	if st.Upgrades != 0 || st.Build.GoVersion != runtime.Version() {
		t.Fatalf("status of a fresh master: upgrades %d, build %+v", st.Upgrades, st.Build)
	}
	h.m.setUpgrades(3)
	if n := h.m.upgradeCount(); n != 3 {
		t.Fatalf("upgradeCount after setUpgrades(3) = %d", n)
	}
	if st := h.m.Status(); st.Upgrades != 3 {
		t.Fatalf("status after setUpgrades(3): upgrades %d", st.Upgrades)
	}
}
