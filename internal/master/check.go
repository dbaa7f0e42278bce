package master

import (
	"fmt"

	"github.com/brood-go/brood/internal/fleet"
	"github.com/brood-go/brood/internal/listener"
)

// Check validates cfg as New does first, without opening, creating or
// starting anything: the fleet's name and node id, the listen addresses and
// the admin listener's. New calls it; a preflight (upgrade.EnvPreflight)
// calls it alone.
func Check(cfg Config) error {
	if cfg.Fleet.URLs != "" {
		if err := fleet.ValidName(cfg.Name); err != nil {
			return fmt.Errorf("brood: %w", err)
		}
		if err := fleet.ValidNode(cfg.Fleet.Node); err != nil {
			return fmt.Errorf("brood: fleet: --node: %w", err)
		}
	}
	for _, l := range cfg.Listen {
		if _, err := listener.Parse(l); err != nil {
			return fmt.Errorf("brood: %w", err)
		}
	}
	if cfg.Admin != "" {
		if _, err := listener.Parse(cfg.Admin); err != nil {
			return fmt.Errorf("brood: admin listener: %w", err)
		}
	}
	return nil
}
