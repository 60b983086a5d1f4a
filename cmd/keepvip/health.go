package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/keepvip/keepvip/internal/daemon"
)

// runHealth asks the daemon on its status socket whether it is healthy
// (its VRRP instances answer) or, with --ready, ready: the DaemonSet's
// liveness and readiness probes. The socket is root's alone, where the
// metrics port is any local user's to take first and answer in keepvip's
// place. Exit 0 if so, 1 (and why not) otherwise.
func runHealth(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("keepvip health", flag.ContinueOnError)
	sock := fs.String("socket", envOr("KEEPVIP_STATUS_SOCKET", defaultSocket), "status socket of the daemon (env KEEPVIP_STATUS_SOCKET)")
	ready := fs.Bool("ready", false, "ask whether keepvip is ready (its configuration runs), not only healthy")
	// Under the probes' timeoutSeconds (deploy/), and above the 2 s after
	// which keepvip answers that its VRRP instances do not answer: the
	// probe's event then says why.
	timeout := fs.Duration("timeout", 4*time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Sprintf("health: unexpected argument %q", fs.Arg(0))}
	}
	if *timeout <= 0 {
		return usageError{fmt.Sprintf("health: --timeout %v: want a positive duration", *timeout)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := daemon.GetHealth(ctx, *sock, *ready); err != nil {
		return err
	}
	if *ready {
		fmt.Fprintln(stdout, "keepvip is ready")
	} else {
		fmt.Fprintln(stdout, "keepvip is healthy")
	}
	return nil
}
