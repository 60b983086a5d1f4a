package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"

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
	// Before anything is touched: protocols 1-4 mark the kernel's routes,
	// those of ip route add and of other daemons, never keepvip's.
	if err := kernel.CheckProtocol(o.RouteProtocol); err != nil {
		return rep, fmt.Errorf("--route-protocol: %w", err)
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
		var err error
		rep.VirtualServices, err = removeOwnedServices(ctx, filepath.Join(o.StateDir, "ipvs.json"), log)
		errs = append(errs, err)
	}

	n, err := kernel.RemoveAll(o.RouteProtocol)
	rep.Routes = n
	errs = append(errs, err)
	// Kubernetes mode keeps the configuration last applied: the protocol
	// it chose for the routing table, if another, marks keepvip's routes
	// too (deploy/cleanup/ cannot pass --route-protocol per cluster).
	if p := cachedRouteProtocol(o.StateDir, log); p != 0 && p != kernel.Protocol && p != o.RouteProtocol {
		n, err := kernel.RemoveAll(p)
		rep.Routes += n
		errs = append(errs, err)
	}

	if errors.Join(errs...) == nil && o.StateDir != "" {
		// The state goes last, and only when all of it went: what is not
		// removed yet must still be known to a next try. With it go the
		// temporary files of writes a dying keepvip did not finish.
		names := []string{"ipvs.json", "ipvs.json.tmp", "ipvs.json.bak", kubeCacheFile}
		tmps, _ := filepath.Glob(filepath.Join(o.StateDir, kubeCacheFile+".*"))
		for _, t := range tmps {
			names = append(names, filepath.Base(t))
		}
		for _, name := range names {
			path := filepath.Join(o.StateDir, name)
			if name == "ipvs.json.bak" {
				if _, err := os.Lstat(path); err == nil {
					log.Warn("removing a damaged IPVS state file keepvip set aside earlier: the IPVS services it named, if any are left, were not removed; check with ipvsadm -Ln", "file", path)
				}
			}
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

// ipvsState is lvs's state file (lvs.Director's stateFile), read here
// before the Director is, so that cleanup can tell a damaged file (an
// error: the services it named are not known) and a file with nothing to
// remove (none listed, or from before a reboot) from the rest.
type ipvsState struct {
	BootID   string `json:"bootID"`
	Services []struct {
		Addr   netip.Addr `json:"addr"`
		Port   uint16     `json:"port"`
		Proto  string     `json:"protocol"`
		FWMark uint32     `json:"fwmark"`
	} `json:"services"`
}

// removeOwnedServices removes the IPVS services the state file says
// keepvip created, and returns those it removed. The file is kept as it
// is (Cleanup removes it once everything went).
func removeOwnedServices(ctx context.Context, state string, log *slog.Logger) ([]lvs.Key, error) {
	b, err := os.ReadFile(state)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the IPVS state file %s: %w", state, err)
	}
	var f ipvsState
	if err := json.Unmarshal(b, &f); err != nil {
		// lvs.New would set it aside and own nothing: cleanup would then
		// report the node clean while the services stay.
		return nil, fmt.Errorf("the IPVS state file %s is damaged (%v): which IPVS services keepvip created is not known; remove them by hand (ipvsadm -Ln), then the file", state, err)
	}
	if len(f.Services) == 0 {
		return nil, nil
	}
	if boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id"); err == nil && f.BootID != "" && f.BootID != strings.TrimSpace(string(boot)) {
		log.Info("the IPVS state file is from before a reboot: the IPVS services it names are not keepvip's", "file", state)
		return nil, nil
	}
	if _, err := netlink.GenlFamilyGet("IPVS"); errors.Is(err, syscall.ENOENT) {
		// No IPVS in the kernel (ip_vs not loaded since a reboot, or
		// unloaded): no IPVS service exists, keepvip's or anyone's.
		log.Info("the kernel has no IPVS (ip_vs is not loaded): no IPVS service is left", "file", state)
		return nil, nil
	}
	if err := lvs.Available(); err != nil {
		return nil, fmt.Errorf("removing the IPVS services of %s: %w", state, err)
	}
	d, err := lvs.New(lvs.Options{Logger: log, StateFile: state})
	if err != nil {
		return nil, fmt.Errorf("removing the IPVS services of %s: %w", state, err)
	}
	defer d.Close()
	// Keeping every owned service first only reads the table: those
	// removed since (by hand, ip_vs reloaded) are forgotten, so that what
	// is reported removed is what this cleanup removed.
	var errs []error
	if err := d.Sync(ctx, nil, d.Owned()...); err != nil {
		errs = append(errs, err)
	}
	before := d.Owned()
	if err := d.Sync(ctx, nil); err != nil {
		errs = append(errs, err)
	}
	after := d.Owned()
	var removed []lvs.Key
	for _, k := range before {
		if !slices.Contains(after, k) {
			removed = append(removed, k)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return removed, fmt.Errorf("removing the IPVS services of %s: %w", state, err)
	}
	return removed, nil
}

// cachedRouteProtocol returns the kernelTable.protocol of the
// configuration Kubernetes mode last applied (kubeCacheFile), or 0. Only
// that field is read, so that a configuration this version would refuse
// still tells it.
func cachedRouteProtocol(stateDir string, log *slog.Logger) int {
	if stateDir == "" {
		return 0
	}
	path := filepath.Join(stateDir, kubeCacheFile)
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	var c struct {
		Config struct {
			Routing *struct {
				Kernel *struct {
					Protocol int `json:"protocol"`
				} `json:"kernelTable"`
			} `json:"routing"`
		} `json:"config"`
	}
	if err := json.Unmarshal(b, &c); err != nil {
		log.Warn("the last applied configuration is unreadable: if it chose a route protocol other than 0x6b, give it as --route-protocol", "file", path, "err", err)
		return 0
	}
	if c.Config.Routing == nil || c.Config.Routing.Kernel == nil {
		return 0
	}
	p := c.Config.Routing.Kernel.Protocol
	if kernel.CheckProtocol(p) != nil {
		log.Warn("the last applied configuration names a route protocol keepvip never uses; ignored", "file", path, "protocol", p)
		return 0
	}
	return p
}
