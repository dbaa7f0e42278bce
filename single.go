package brood

import (
	"context"
	"errors"
)

func runSingle(ctx context.Context, cfg Config) error {
	return errors.New("brood: single-process mode is not implemented yet")
}
