package brood

import "context"

// Single-process mode (Config.Single) is the master's own code with goroutine
// children (see launchGoroutine): the same start order, events, relay and
// delivery guarantees, over in-memory pipes instead of socketpairs. Each
// goroutine has a virtual pid (Process.PID) above the kernel's pid_max. A
// crashed or replaced worker is replaced by a new goroutine; a goroutine that
// ignores its stop cannot be killed, only abandoned after StopTimeout.

// runInMemory runs cfg.Workers workers and the agent as goroutines over
// in-memory pipes (single-process mode without the one-worker limit). Tests use
// it to run the same conformance suite over both transports.
func runInMemory(ctx context.Context, cfg Config, force <-chan struct{}) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	cfg.Single = true
	m, err := newMaster(cfg)
	if err != nil {
		return err
	}
	return m.run(ctx, force)
}
