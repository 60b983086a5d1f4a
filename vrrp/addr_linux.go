package vrrp

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// AddrProto is the IFA_PROTO value (Linux 6.1+) keepvip marks every address
// it adds with, so that a restarted keepvip can tell its own VIPs, left
// behind by a crash, from addresses an operator or another program added.
// `ip -d address` (iproute2 6.2+) shows it as "proto 0x6b".
const AddrProto = 0x6b

// ifaProto is the IFA_PROTO netlink attribute (include/uapi/linux/if_addr.h).
const ifaProto = 11

// netlinkAddrs adds and removes VIPs. It deletes only what it added, or
// what carries AddrProto; an address that was already there is left alone.
type netlinkAddrs struct {
	log *slog.Logger
	mu  sync.Mutex
	// owned holds the VIPs keepvip added, by interface and full prefix:
	// the kernel keeps 10.0.0.10/24 and 10.0.0.10/32 apart (IPv4 allows
	// both at once), and so does keepvip, so that the late notification
	// that 10.0.0.10/24 was removed does not cost the ownership of
	// 10.0.0.10/32 added in its place.
	owned map[addrKey]bool
	// sock is one netlink socket kept open for every request (nil: a new
	// socket per request), so that adding a VIP costs one round trip.
	sock map[int]*nl.SocketHandle
}

type addrKey struct {
	ifindex int
	prefix  netip.Prefix
}

func newNetlinkAddrs(log *slog.Logger) *netlinkAddrs {
	a := &netlinkAddrs{log: log, owned: map[addrKey]bool{}}
	if s, err := nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_ROUTE); err == nil {
		tv := unix.Timeval{Sec: 5}
		if s.SetSendTimeout(&tv) == nil && s.SetReceiveTimeout(&tv) == nil {
			a.sock = map[int]*nl.SocketHandle{unix.NETLINK_ROUTE: {Socket: s}}
		} else {
			s.Close()
		}
	}
	return a
}

// close releases the netlink socket.
func (a *netlinkAddrs) close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if h := a.sock[unix.NETLINK_ROUTE]; h != nil {
		h.Socket.Close()
	}
	a.sock = nil
}

// ifAddr is one address as the kernel reports it.
type ifAddr struct {
	ifindex int
	prefix  netip.Prefix
	proto   uint8
	flags   uint32
}

// AddVIP puts p on the interface unless it is there already. It tries the
// add first, so that becoming master costs one netlink round trip; only
// when the address exists does it look at who put it there.
//
// IPv6 keeps one prefix length per address: if keepvip's own address is
// there with another prefix length (a live change whose removal of the old
// one failed), it is replaced.
func (a *netlinkAddrs) AddVIP(ifindex int, p netip.Prefix) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	key := addrKey{ifindex, p}
	err := addrRequest(a.sock, unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, ifindex, p)
	if err == nil {
		a.owned[key] = true
		return nil
	}
	if !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding VIP %s to interface %d: %w", p, ifindex, err)
	}
	existing, err := listAddrs(a.sock, FamilyOf(p.Addr()))
	if err != nil {
		return fmt.Errorf("adding VIP %s: %w", p, err)
	}
	var other *ifAddr
	for i, e := range existing {
		if e.ifindex != ifindex || e.prefix.Addr() != p.Addr() {
			continue
		}
		if e.prefix == p {
			if e.proto == AddrProto {
				// Ours, from before a restart or from this run.
				a.owned[key] = true
				return nil
			}
			other = nil
			break
		}
		other = &existing[i]
	}
	if other != nil && (a.owned[addrKey{ifindex, other.prefix}] || other.proto == AddrProto) {
		if err := addrRequest(a.sock, unix.RTM_DELADDR, 0, ifindex, other.prefix); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("adding VIP %s to interface %d: removing it as %s first: %w", p, ifindex, other.prefix, err)
		}
		delete(a.owned, addrKey{ifindex, other.prefix})
		if err := addrRequest(a.sock, unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, ifindex, p); err != nil {
			return fmt.Errorf("adding VIP %s to interface %d: %w", p, ifindex, err)
		}
		a.owned[key] = true
		return nil
	}
	if !a.owned[key] {
		a.log.Warn("VIP is already on the interface and was not added by keepvip; leaving it alone",
			"vip", p, "ifindex", ifindex)
	}
	return nil
}

// DeleteVIP removes p if keepvip added it. Deleting an address that is
// already gone is not an error. If the kernel refuses, keepvip still owns
// the address: the caller retries, and Stop removes it at the latest.
func (a *netlinkAddrs) DeleteVIP(ifindex int, p netip.Prefix) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	key := addrKey{ifindex, p}
	if !a.owned[key] {
		return nil
	}
	if err := addrRequest(a.sock, unix.RTM_DELADDR, 0, ifindex, p); err != nil &&
		!errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENODEV) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("removing VIP %s from interface %d: %w", p, ifindex, err)
	}
	delete(a.owned, key)
	return nil
}

// gone takes note that the kernel reported p removed from an interface and
// reports whether keepvip owned it (then someone else removed it). A
// notification can arrive late: after keepvip removed the address and added
// it again, the removal is old news. So an owned address is looked up once
// more, and one that is there is kept.
func (a *netlinkAddrs) gone(ifindex int, p netip.Prefix) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	key := addrKey{ifindex, p}
	if !a.owned[key] {
		return false
	}
	if addrs, err := listAddrs(a.sock, FamilyOf(p.Addr())); err == nil {
		for _, e := range addrs {
			if e.ifindex == ifindex && e.prefix == p {
				return false
			}
		}
	}
	delete(a.owned, key)
	return true
}

// missing returns the owned addresses that are not on their interface: the
// removals a lost notification did not report.
func (a *netlinkAddrs) missing() ([]addrKey, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.owned) == 0 {
		return nil, nil
	}
	present := map[addrKey]bool{}
	for _, fam := range []Family{IPv4, IPv6} {
		addrs, err := listAddrs(a.sock, fam)
		if err != nil {
			return nil, err
		}
		for _, e := range addrs {
			present[addrKey{e.ifindex, e.prefix}] = true
		}
	}
	var out []addrKey
	for key := range a.owned {
		if !present[key] {
			out = append(out, key)
		}
	}
	return out, nil
}

// pruneStale removes every address marked AddrProto: at startup no
// instance holds a VIP yet, so any such address is left over from a
// keepvip that did not stop cleanly.
func (a *netlinkAddrs) pruneStale() ([]netip.Prefix, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var removed []netip.Prefix
	var errs []error
	for _, fam := range []Family{IPv4, IPv6} {
		addrs, err := listAddrs(a.sock, fam)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range addrs {
			if e.proto != AddrProto {
				continue
			}
			if a.owned[addrKey{e.ifindex, e.prefix}] {
				continue
			}
			if err := addrRequest(a.sock, unix.RTM_DELADDR, 0, e.ifindex, e.prefix); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
				errs = append(errs, fmt.Errorf("removing stale VIP %s: %w", e.prefix, err))
				continue
			}
			removed = append(removed, e.prefix)
		}
	}
	return removed, errors.Join(errs...)
}

// releaseAll removes every address this process still owns.
func (a *netlinkAddrs) releaseAll() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []error
	for key := range a.owned {
		if err := addrRequest(a.sock, unix.RTM_DELADDR, 0, key.ifindex, key.prefix); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("removing VIP %s: %w", key.prefix, err))
		}
		delete(a.owned, key)
	}
	return errors.Join(errs...)
}

// addrRequest adds or deletes one address. Added addresses carry
// AddrProto; IPv6 ones skip duplicate address detection, so they are usable
// at once (IFA_F_NODAD), as keepalived does.
func addrRequest(sock map[int]*nl.SocketHandle, op, flags, ifindex int, p netip.Prefix) error {
	return addrRequestProto(sock, op, flags, ifindex, p, AddrProto)
}

// addrRequestProto is addrRequest with another mark for added addresses.
func addrRequestProto(sock map[int]*nl.SocketHandle, op, flags, ifindex int, p netip.Prefix, proto uint8) error {
	fam := unix.AF_INET
	if FamilyOf(p.Addr()) == IPv6 {
		fam = unix.AF_INET6
	}
	req := nl.NewNetlinkRequest(op, flags|unix.NLM_F_ACK)
	req.Sockets = sock
	msg := nl.NewIfAddrmsg(fam)
	msg.Index = uint32(ifindex)
	msg.Prefixlen = uint8(p.Bits())
	req.AddData(msg)
	addr := p.Addr().Unmap().AsSlice()
	req.AddData(nl.NewRtAttr(unix.IFA_LOCAL, addr))
	req.AddData(nl.NewRtAttr(unix.IFA_ADDRESS, addr))
	if op == unix.RTM_NEWADDR {
		if fam == unix.AF_INET6 {
			req.AddData(nl.NewRtAttr(unix.IFA_FLAGS, nl.Uint32Attr(unix.IFA_F_NODAD)))
		}
		req.AddData(nl.NewRtAttr(ifaProto, nl.Uint8Attr(proto)))
	}
	_, err := req.Execute(unix.NETLINK_ROUTE, 0)
	return err
}

// listAddrs dumps the addresses of one family on every interface, with the
// IFA_PROTO mark that the netlink library does not decode.
func listAddrs(sock map[int]*nl.SocketHandle, fam Family) ([]ifAddr, error) {
	af := unix.AF_INET
	if fam == IPv6 {
		af = unix.AF_INET6
	}
	req := nl.NewNetlinkRequest(unix.RTM_GETADDR, unix.NLM_F_DUMP)
	req.Sockets = sock
	req.AddData(nl.NewIfAddrmsg(af))
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWADDR)
	if err != nil && !errors.Is(err, nl.ErrDumpInterrupted) {
		return nil, fmt.Errorf("listing %s addresses: %w", fam, err)
	}
	out := make([]ifAddr, 0, len(msgs))
	for _, m := range msgs {
		if len(m) < unix.SizeofIfAddrmsg {
			continue
		}
		h := nl.DeserializeIfAddrmsg(m)
		attrs, err := nl.ParseRouteAttr(m[unix.SizeofIfAddrmsg:])
		if err != nil {
			return nil, fmt.Errorf("decoding %s address: %w", fam, err)
		}
		e := ifAddr{ifindex: int(h.Index), flags: uint32(h.Flags)}
		var local, address netip.Addr
		for _, a := range attrs {
			switch a.Attr.Type {
			case unix.IFA_LOCAL:
				local, _ = netip.AddrFromSlice(a.Value)
			case unix.IFA_ADDRESS:
				address, _ = netip.AddrFromSlice(a.Value)
			case unix.IFA_FLAGS:
				if len(a.Value) >= 4 {
					e.flags = nl.NativeEndian().Uint32(a.Value)
				}
			case ifaProto:
				if len(a.Value) >= 1 {
					e.proto = a.Value[0]
				}
			}
		}
		ad := local
		if !ad.IsValid() {
			ad = address
		}
		if !ad.IsValid() {
			continue
		}
		e.prefix = netip.PrefixFrom(ad.Unmap(), int(h.Prefixlen))
		out = append(out, e)
	}
	return out, nil
}

// HeldAddrProto marks the addresses HoldAddrs keeps: VIPs that every node
// holds at once (ECMP routing), apart from the VRRP VIPs (AddrProto),
// which a starting Manager prunes.
const HeldAddrProto = 0x6c

// HoldAddrs makes the addresses marked proto on the interface exactly
// want: it adds the missing ones (marked proto) and removes the others it
// finds marked so, never an address without the mark. An address already
// there without the mark is left alone and not added again.
func HoldAddrs(ifname string, proto uint8, want []netip.Prefix) error {
	ifi, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("holding addresses on %s: %w", ifname, err)
	}
	var have []ifAddr
	for _, fam := range []Family{IPv4, IPv6} {
		as, err := listAddrs(nil, fam)
		if err != nil {
			return fmt.Errorf("holding addresses on %s: %w", ifname, err)
		}
		for _, a := range as {
			if a.ifindex == ifi.Index {
				have = append(have, a)
			}
		}
	}
	var errs []error
	for _, w := range want {
		present := slices.ContainsFunc(have, func(a ifAddr) bool { return a.prefix.Addr() == w.Addr() })
		if present {
			continue
		}
		if err := addrRequestProto(nil, unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, ifi.Index, w, proto); err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("adding %s to %s: %w", w, ifname, err))
		}
	}
	for _, a := range have {
		if a.proto != proto || slices.ContainsFunc(want, func(w netip.Prefix) bool { return w.Addr() == a.prefix.Addr() }) {
			continue
		}
		if err := addrRequestProto(nil, unix.RTM_DELADDR, 0, ifi.Index, a.prefix, proto); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			errs = append(errs, fmt.Errorf("removing %s from %s: %w", a.prefix, ifname, err))
		}
	}
	return errors.Join(errs...)
}

// sourceAddr picks the address adverts go out from on ifindex, as keepalived
// does when neither unicast_src_ip nor mcast_src_ip is set: the primary IPv4
// address; for IPv6 the link-local address, or a global one when the peers
// are global. VIPs and tentative addresses are never chosen.
func sourceAddr(ifindex int, fam Family, peers []netip.Addr, vips map[netip.Addr]bool) (netip.Addr, error) {
	addrs, err := listAddrs(nil, fam)
	if err != nil {
		return netip.Addr{}, err
	}
	wantLinkLocal := fam == IPv6 && (len(peers) == 0 || peers[0].IsLinkLocalUnicast())
	for _, e := range addrs {
		a := e.prefix.Addr()
		switch {
		case e.ifindex != ifindex, vips[a], e.proto == AddrProto:
			continue
		case e.flags&(unix.IFA_F_TENTATIVE|unix.IFA_F_DADFAILED) != 0:
			continue
		case fam == IPv4 && e.flags&unix.IFA_F_SECONDARY != 0:
			continue
		case fam == IPv6 && a.IsLinkLocalUnicast() != wantLinkLocal:
			continue
		}
		return a, nil
	}
	what := "IPv4"
	if fam == IPv6 {
		what = "global IPv6"
		if wantLinkLocal {
			what = "usable IPv6 link-local"
		}
	}
	return netip.Addr{}, fmt.Errorf("interface %d has no %s address", ifindex, what)
}

// warmUp runs one address dump, which exercises the netlink path that
// adding a VIP takes.
func (a *netlinkAddrs) warmUp(fam Family) {
	a.mu.Lock()
	defer a.mu.Unlock()
	_, _ = listAddrs(a.sock, fam)
}
