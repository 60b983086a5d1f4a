package vrrp

import (
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
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
// what carries AddrProto; an address that was already there is left alone,
// and so are the other addresses of a VIP's subnet when the VIP goes (see
// keepSecondaries).
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
	// promoteOn holds the interfaces where promote_secondaries was last
	// seen on; turnedOn those where this keepvip turned it on, which
	// restorePromote turns off again.
	promoteOn map[int]bool
	turnedOn  map[int]bool
}

type addrKey struct {
	ifindex int
	prefix  netip.Prefix
}

func newNetlinkAddrs(log *slog.Logger) *netlinkAddrs {
	a := &netlinkAddrs{log: log, owned: map[addrKey]bool{}, promoteOn: map[int]bool{}, turnedOn: map[int]bool{}}
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
	if sharesSubnet(p) {
		// Usually done when the instance started (prepare): then this
		// costs nothing. Failing here does not stop the VIP; removing it
		// checks again and refuses to take other addresses with it.
		if err := a.keepSecondaries(ifindex, false); err != nil {
			a.log.Warn("adding a VIP whose removal could remove other addresses of its subnet", "vip", p, "ifindex", ifindex, "err", err)
		}
	}
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
		if err := a.delAddr(ifindex, other.prefix); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
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
	if err := a.delAddr(ifindex, p); err != nil &&
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

// listStale returns the addresses marked AddrProto that this process does
// not own: what a keepvip that did not stop cleanly left.
func (a *netlinkAddrs) listStale() (map[addrKey]bool, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := map[addrKey]bool{}
	var errs []error
	for _, fam := range []Family{IPv4, IPv6} {
		addrs, err := listAddrs(a.sock, fam)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, e := range addrs {
			if key := (addrKey{e.ifindex, e.prefix}); e.proto == AddrProto && !a.owned[key] {
				out[key] = true
			}
		}
	}
	return out, errors.Join(errs...)
}

// adopt makes an address an earlier keepvip left this process's, as if it
// had added it.
func (a *netlinkAddrs) adopt(key addrKey) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.owned[key] = true
}

// removeStale removes the given addresses of listStale that are still not
// owned by this process (an instance may have taken one over since).
func (a *netlinkAddrs) removeStale(keys map[addrKey]bool) ([]netip.Prefix, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	var removed []netip.Prefix
	var errs []error
	for key := range keys {
		if a.owned[key] {
			continue
		}
		if err := a.delAddr(key.ifindex, key.prefix); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("removing stale VIP %s: %w", key.prefix, err))
			continue
		}
		removed = append(removed, key.prefix)
	}
	return removed, errors.Join(errs...)
}

// pruneStale removes every address marked AddrProto that this process
// does not own: what a keepvip that did not stop cleanly left (keepvip
// cleanup).
func (a *netlinkAddrs) pruneStale() ([]netip.Prefix, error) {
	left, err := a.listStale()
	removed, rerr := a.removeStale(left)
	return removed, errors.Join(err, rerr)
}

// releaseAll removes every address this process still owns.
func (a *netlinkAddrs) releaseAll() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []error
	for key := range a.owned {
		if err := a.delAddr(key.ifindex, key.prefix); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("removing VIP %s: %w", key.prefix, err))
		}
		delete(a.owned, key)
	}
	return errors.Join(errs...)
}

// leave forgets the VIPs this process owns, leaving them on their
// interfaces for the keepvip that takes over (Manager.Leave), and returns
// the interfaces where it turned promote_secondaries on, which that
// keepvip is to turn off in the end.
func (a *netlinkAddrs) leave() []int {
	a.mu.Lock()
	defer a.mu.Unlock()
	clear(a.owned)
	promote := slices.Sorted(maps.Keys(a.turnedOn))
	clear(a.turnedOn)
	clear(a.promoteOn)
	return promote
}

// ipv4DevconfPromoteSecondaries is IPV4_DEVCONF_PROMOTE_SECONDARIES
// (include/uapi/linux/ip.h): the index of promote_secondaries among an
// interface's IPv4 settings (IFLA_INET_CONF holds setting i at i-1).
const ipv4DevconfPromoteSecondaries = 20

// sharesSubnet reports whether removing p can remove other addresses with
// it: an IPv4 address shorter than /32 may be the primary of its subnet.
func sharesSubnet(p netip.Prefix) bool {
	return p.Addr().Is4() && p.Bits() < 32
}

// keepSecondaries turns promote_secondaries on for ifindex unless it is on
// already, so that removing an address there never removes the other
// addresses of its subnet. With check, it reads the setting even when it
// was on before: an operator may have turned it off since.
//
// Releasing a VIP must never lose an address that is not keepvip's. IPv4
// makes that a question of how the VIP is added. The first address of a
// subnet (same prefix length, same network) on an interface is its
// primary; the addresses of that subnet added later are its secondaries.
// Removing the primary removes every secondary with it unless the
// interface's promote_secondaries is on, and it is off by default: a VIP
// added as 198.51.100.100/24 before an operator's 198.51.100.200/24, or
// before another instance's 198.51.100.101/24, would take that address
// with it when released (stop, failover, fault, start-up cleanup), and the
// kernel would not put it back.
//
// A VIP written without a prefix length is /32 (/128): the config model
// makes it so, and such a VIP is alone in its subnet and never a primary
// with secondaries. A prefix length the user wrote is kept (it gives the
// subnet route and the broadcast address they asked for), so for those
// keepvip turns promote_secondaries on for the interface: the kernel then
// makes the next address of the subnet primary instead of removing it. It
// is turned on when an instance with such a VIP starts, and checked again
// before each such address is removed, since an operator may have turned
// it off meanwhile; keepvip refuses to remove the address if it cannot
// turn it on. No address flag does this (IFA_F_* has none), and a VIP
// that is a secondary needs nothing: removing a secondary removes only
// itself. IPv6 has no primaries: its addresses are removed one by one.
//
// The setting is written by netlink (RTM_SETLINK with IFLA_AF_SPEC /
// AF_INET / IFLA_INET_CONF), not through /proc/sys, which is read-only in
// a container (the daemon's --proc-sys root is not the vrrp package's to
// know): it takes the network namespace and the CAP_NET_ADMIN that adding
// the VIP takes. Stop turns it off again where this keepvip turned it on
// (restorePromote); a keepvip that crashed leaves it on, as the systemd
// defaults of many distributions (sysctl.d/50-default.conf) set it anyway.
func (a *netlinkAddrs) keepSecondaries(ifindex int, check bool) error {
	if a.promoteOn[ifindex] && !check {
		return nil
	}
	on, err := promoteSecondaries(a.sock, ifindex)
	if err != nil {
		return err
	}
	if !on {
		if err := setPromoteSecondaries(a.sock, ifindex, true); err != nil {
			return err
		}
		if a.promoteOn[ifindex] {
			a.log.Warn("promote_secondaries was turned off on the interface; keepvip turned it on again, so that removing a VIP does not remove the other addresses of its subnet", "interface", ifName(ifindex))
		} else {
			a.log.Info("turned promote_secondaries on, so that removing a VIP never removes the other addresses of its subnet", "interface", ifName(ifindex))
		}
		a.turnedOn[ifindex] = true
	}
	a.promoteOn[ifindex] = true
	return nil
}

// delAddr removes p from ifindex, an IPv4 address that may be the primary
// of its subnet only once promote_secondaries is on there. An interface
// that is gone is left to the removal to report.
func (a *netlinkAddrs) delAddr(ifindex int, p netip.Prefix) error {
	if sharesSubnet(p) {
		if err := a.keepSecondaries(ifindex, true); err != nil && !errors.Is(err, unix.ENODEV) {
			return fmt.Errorf("keeping the other addresses of its subnet: %w", err)
		}
	}
	return addrRequest(a.sock, unix.RTM_DELADDR, 0, ifindex, p)
}

// prepare gets ifindex ready for vips before the router can become master,
// so that taking them over costs no more than adding them.
func (a *netlinkAddrs) prepare(ifindex int, vips []netip.Prefix) {
	if !slices.ContainsFunc(vips, sharesSubnet) {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.keepSecondaries(ifindex, false); err != nil {
		a.log.Warn("VIPs with a prefix length: their removal could remove other addresses of their subnet, and is refused until this works", "interface", ifName(ifindex), "err", err)
	}
}

// restorePromote turns promote_secondaries off again where keepvip turned
// it on and it is still on. Call it once no VIP of keepvip's is left.
func (a *netlinkAddrs) restorePromote() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	var errs []error
	for ifindex := range a.turnedOn {
		delete(a.turnedOn, ifindex)
		delete(a.promoteOn, ifindex)
		on, err := promoteSecondaries(a.sock, ifindex)
		if errors.Is(err, unix.ENODEV) || err == nil && !on {
			continue
		}
		if err == nil {
			err = setPromoteSecondaries(a.sock, ifindex, false)
		}
		if err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("restoring promote_secondaries: %w", err))
		}
	}
	return errors.Join(errs...)
}

// promoteSecondaries reads promote_secondaries of one interface.
func promoteSecondaries(sock map[int]*nl.SocketHandle, ifindex int) (bool, error) {
	req := nl.NewNetlinkRequest(unix.RTM_GETLINK, 0)
	req.Sockets = sock
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(ifindex)
	req.AddData(msg)
	msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWLINK)
	if err != nil {
		return false, fmt.Errorf("reading promote_secondaries of interface %d: %w", ifindex, err)
	}
	for _, m := range msgs {
		if len(m) < unix.SizeofIfInfomsg {
			continue
		}
		if v, ok := inetConf(m[unix.SizeofIfInfomsg:], ipv4DevconfPromoteSecondaries); ok {
			return v != 0, nil
		}
	}
	return false, fmt.Errorf("reading promote_secondaries of interface %d: the kernel reported no IPv4 settings", ifindex)
}

// inetConf finds IPv4 setting id in the attributes of an RTM_NEWLINK:
// IFLA_AF_SPEC, then AF_INET, then IFLA_INET_CONF, an array of u32.
func inetConf(b []byte, id int) (uint32, bool) {
	path := []uint16{unix.IFLA_AF_SPEC, unix.AF_INET, unix.IFLA_INET_CONF}
	for _, want := range path {
		attrs, err := nl.ParseRouteAttr(b)
		if err != nil {
			return 0, false
		}
		found := false
		for _, at := range attrs {
			if at.Attr.Type&nl.NLA_TYPE_MASK == want {
				b, found = at.Value, true
				break
			}
		}
		if !found {
			return 0, false
		}
	}
	if len(b) < id*4 {
		return 0, false
	}
	return nl.NativeEndian().Uint32(b[(id-1)*4:]), true
}

// setPromoteSecondaries writes promote_secondaries of one interface.
func setPromoteSecondaries(sock map[int]*nl.SocketHandle, ifindex int, on bool) error {
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	req.Sockets = sock
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(ifindex)
	req.AddData(msg)
	v := uint32(0)
	if on {
		v = 1
	}
	spec := nl.NewRtAttr(unix.IFLA_AF_SPEC, nil)
	spec.AddRtAttr(unix.AF_INET, nil).AddRtAttr(unix.IFLA_INET_CONF, nil).AddRtAttr(ipv4DevconfPromoteSecondaries, nl.Uint32Attr(v))
	req.AddData(spec)
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return fmt.Errorf("setting promote_secondaries of interface %d to %d: %w", ifindex, v, err)
	}
	return nil
}

// ifName names an interface in log lines, or gives its index.
func ifName(ifindex int) string {
	if ifi, err := net.InterfaceByIndex(ifindex); err == nil {
		return ifi.Name
	}
	return strconv.Itoa(ifindex)
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
		if sharesSubnet(a.prefix) {
			// As for the VRRP VIPs (keepSecondaries): never remove
			// the primary of a subnet with its secondaries. Left on.
			on, err := promoteSecondaries(nil, ifi.Index)
			if err == nil && !on {
				err = setPromoteSecondaries(nil, ifi.Index, true)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("removing %s from %s: keeping the other addresses of its subnet: %w", a.prefix, ifname, err))
				continue
			}
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
