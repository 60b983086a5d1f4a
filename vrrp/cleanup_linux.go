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
// when it dies: every address marked AddrProto (VIPs) or HeldAddrProto
// (ECMP addresses) and the nftables table FilterTable. It touches nothing
// else. Call it holding the lock (LockNamespace), so that no keepvip runs
// meanwhile. A failure does not stop the rest: every one is returned.
//
// Removing a VIP with a prefix length may need promote_secondaries on, so
// that the other addresses of its subnet stay (see keepSecondaries): where
// RemoveLeftovers turns it on, it turns it off again once done, leaving
// the interface as it found it. (Where a keepvip that died turned it on,
// it stays on: nothing tells that apart from an operator's choice.)
func RemoveLeftovers(log *slog.Logger) ([]netip.Prefix, error) {
	var errs []error
	if err := pruneFilter(); err != nil {
		errs = append(errs, err)
	}
	if !addrProtoSupported() {
		log.Warn("this kernel does not keep address marks (IFA_PROTO needs Linux 6.1): VIPs left by a keepvip that died are not recognised; remove them by hand")
	}
	a := newNetlinkAddrs(log)
	defer a.close()
	removed, err := a.pruneStale()
	if err != nil {
		errs = append(errs, fmt.Errorf("removing keepvip's addresses: %w", err))
	}
	// And the ECMP addresses, which HoldAddrs marks HeldAddrProto.
	a.mu.Lock()
	for _, fam := range []Family{IPv4, IPv6} {
		addrs, err := listAddrs(a.sock, fam)
		if err != nil {
			errs = append(errs, fmt.Errorf("removing keepvip's held addresses: %w", err))
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
	a.mu.Unlock()
	if err := a.restorePromote(); err != nil {
		errs = append(errs, err)
	}
	return removed, errors.Join(errs...)
}
