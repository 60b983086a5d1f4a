package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"

	"github.com/keepvip/keepvip/lvs"
	"github.com/keepvip/keepvip/routes/kernel"
	"github.com/keepvip/keepvip/vrrp"
)

// CleanupOptions configures Cleanup.
type CleanupOptions struct {
	// StateDir is the daemon's (Options.StateDir): it says which IPVS
	// services keepvip created, and holds the lock.
	StateDir string
	// RouteProtocol marks the routes of the routing-table exporter: 0 for
	// kernel.Protocol (0x6b), unless a configuration chose another.
	RouteProtocol int
	Logger        *slog.Logger
}

// CleanupReport is what Cleanup removed.
type CleanupReport struct {
	Addresses       []netip.Prefix
	VirtualServices []lvs.Key
	Routes          int
	Files           []string
}

// Cleanup removes, from this network namespace and the state directory,
// exactly what keepvip owns and leaves behind when it is uninstalled or
// killed: its addresses (VIPs and ECMP addresses, by their address
// marks), the IPVS services its state file says it created, its routes
// (by their protocol) in every table, its nftables table, and its state
// files. Nothing else is touched: another program's addresses, services,
// routes and tables stay. It refuses to run beside a keepvip (it takes
// the same lock), and returns every failure, naming the thing.
func Cleanup(ctx context.Context, o CleanupOptions) (CleanupReport, error) {
	var rep CleanupReport
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	unlock, err := vrrp.LockNamespace(o.StateDir, log)
	if err != nil {
		return rep, fmt.Errorf("a keepvip may be running here (stop it first): %w", err)
	}
	defer unlock()
	var errs []error
	rep.Addresses, err = vrrp.RemoveLeftovers(log)
	errs = append(errs, err)

	if o.StateDir != "" {
		state := filepath.Join(o.StateDir, "ipvs.json")
		if _, err := os.Stat(state); err == nil {
			if err := lvs.Available(); err != nil {
				errs = append(errs, fmt.Errorf("removing the IPVS services of %s: %w", state, err))
			} else if d, err := lvs.New(lvs.Options{Logger: log, StateFile: state}); err != nil {
				errs = append(errs, fmt.Errorf("removing the IPVS services of %s: %w", state, err))
			} else {
				rep.VirtualServices = d.Owned()
				if err := d.Sync(ctx, nil); err != nil {
					errs = append(errs, fmt.Errorf("removing the IPVS services of %s: %w", state, err))
				}
				errs = append(errs, d.Close())
			}
		}
	}

	n, err := kernel.RemoveAll(o.RouteProtocol)
	rep.Routes = n
	errs = append(errs, err)

	if errors.Join(errs...) == nil && o.StateDir != "" {
		// The state goes last, and only when all of it went: what is not
		// removed yet must still be known to a next try.
		for _, name := range []string{"ipvs.json", "ipvs.json.bak", kubeCacheFile} {
			path := filepath.Join(o.StateDir, name)
			switch err := os.Remove(path); {
			case err == nil:
				rep.Files = append(rep.Files, path)
			case !errors.Is(err, os.ErrNotExist):
				errs = append(errs, fmt.Errorf("removing %s: %w", path, err))
			}
		}
	}
	return rep, errors.Join(errs...)
}
