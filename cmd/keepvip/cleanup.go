package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/keepvip/keepvip/internal/daemon"
)

// cleanedMarker is written by cleanup --wait once it is done, for a
// readiness probe (cleanup --done) to see.
const cleanedMarker = "/run/keepvip/cleaned"

// runCleanup removes what keepvip owns on this node (see daemon.Cleanup).
func runCleanup(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("keepvip cleanup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	stateDir := fs.String("state-dir", envOr("KEEPVIP_STATE_DIR", "/var/lib/keepvip"), "the daemon's state directory (env KEEPVIP_STATE_DIR)")
	proto := fs.Int("route-protocol", 0, "the protocol number of keepvip's routes if kernelTable.protocol chose one; default 0x6b")
	wait := fs.Bool("wait", false, "then wait for SIGTERM, so that a DaemonSet's pods stay (Ready once done: cleanup --done)")
	done := fs.Bool("done", false, "only say whether a cleanup --wait on this node is done (exit 0) or not (exit 1)")
	marker := fs.String("marker", cleanedMarker, "the file cleanup --wait writes when done")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return usageError{"cleanup: takes no arguments"}
	}
	if *done {
		if _, err := os.Stat(*marker); err != nil {
			return fmt.Errorf("cleanup not done yet: %w", err)
		}
		return nil
	}
	if *wait {
		// Ready only once this run is done: a marker from an earlier
		// run of the pod's container (the emptyDir outlives it) or of
		// the node must not make it so before, nor after a failure.
		if err := os.Remove(*marker); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("cleanup: removing the old %s: %w", *marker, err)
		}
	}
	log := slog.New(slog.NewTextHandler(stderr, nil))
	rep, err := daemon.Cleanup(context.Background(), daemon.CleanupOptions{StateDir: *stateDir, RouteProtocol: *proto, Logger: log})
	for _, a := range rep.Addresses {
		fmt.Fprintln(stdout, "removed address", a)
	}
	for _, k := range rep.VirtualServices {
		fmt.Fprintln(stdout, "removed IPVS service", k)
	}
	if rep.Routes > 0 {
		fmt.Fprintln(stdout, "removed", rep.Routes, "routes")
	}
	for _, f := range rep.Files {
		fmt.Fprintln(stdout, "removed", f)
	}
	if err != nil {
		return fmt.Errorf("cleanup: %w", err)
	}
	fmt.Fprintln(stdout, "nothing of keepvip's is left on this node")
	if !*wait {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(*marker), 0o700); err != nil {
		return fmt.Errorf("cleanup: writing %s: %w", *marker, err)
	}
	if err := os.WriteFile(*marker, nil, 0o600); err != nil {
		return fmt.Errorf("cleanup: writing %s: %w", *marker, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	<-ctx.Done()
	return nil
}
