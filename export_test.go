package brood

import "context"

// RunInMemory exposes runInMemory to the external tests: the cluster of cfg
// (with its worker count) as goroutines of the test process.
func RunInMemory(ctx context.Context, cfg Config) error { return runInMemory(ctx, cfg, nil) }
