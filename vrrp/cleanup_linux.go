package vrrp

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"

	"golang.org/x/sys/unix"
)

// LockNamespace takes the one-keepvip-per-network-namespace lock in dir,
// as a Manager's Start does (see Options.LockDir), for a tool that must
// not run beside a keepvip (keepvip cleanup). The func releases it.
func LockNamespace(dir string, log *slog.Logger) (func(), error) {
	if dir == "" {
		dir = DefaultLockDir
	}
	lk, err := lockNetns(dir, log)
	if err != nil {
		return nil, err
	}
	return lk.release, nil
}

// RemoveLeftovers removes what keepvip leaves in this network namespace
// when it dies: every address marked AddrProto (VIPs, ECMP addresses)
// and the nftables table FilterTable. It touches nothing else. Call it
// holding the lock (LockNamespace), so that no keepvip runs meanwhile.
func RemoveLeftovers(log *slog.Logger) ([]netip.Prefix, error) {
	if err := pruneFilter(); err != nil {
		return nil, err
	}
	a := newNetlinkAddrs(log)
	defer a.close()
	removed, err := a.pruneStale()
	if err != nil {
		return removed, fmt.Errorf("removing keepvip's addresses: %w", err)
	}
	// And the ECMP addresses, which HoldAddrs marks HeldAddrProto.
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []error
	for _, fam := range []Family{IPv4, IPv6} {
		addrs, err := listAddrs(a.sock, fam)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range addrs {
			if e.proto != HeldAddrProto {
				continue
			}
			if err := a.delAddr(e.ifindex, e.prefix); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				errs = append(errs, fmt.Errorf("removing held address %s: %w", e.prefix, err))
				continue
			}
			removed = append(removed, e.prefix)
		}
	}
	return removed, errors.Join(errs...)
}
