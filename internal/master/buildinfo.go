package master

import (
	"github.com/brood-go/brood/internal/upgrade"
	"github.com/brood-go/brood/internal/wire"
)

// setUpgrades records how many in-place upgrades this master process has had
// (the restore of an upgrade sets it from the state handed over, plus one).
func (m *Master) setUpgrades(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.upgrades = n
}

// upgradeCount is how many in-place upgrades this master process has had.
func (m *Master) upgradeCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.upgrades
}

// statusBuildLocked fills the master's build and upgrade count into st.
func (m *Master) statusBuildLocked(st *wire.Status) {
	st.Build = wire.Build(upgrade.CurrentBuild())
	st.Upgrades = m.upgrades
}
