package vrrp

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// Config describes one virtual router. Field names in errors are those of the
// keepvip configuration file, which carries this model.
type Config struct {
	// Name identifies the instance in logs, metrics and status.
	Name string
	// Interface is the interface the router advertises on and holds its
	// VIPs on.
	Interface string
	VRID      uint8
	// Priority 1-254 for a backup, 255 for the owner of the addresses.
	Priority uint8
	// Interval is Advertisement_Interval: 10 ms to 40.95 s in steps of
	// 10 ms for version 3, whole seconds for version 2.
	Interval time.Duration
	// Version is 3 (RFC 9568) or 2 (RFC 3768, IPv4 only).
	Version uint8
	// Preempt lets a higher-priority backup take over from a lower-priority
	// master (RFC 9568 Preempt_Mode). PreemptDelay holds preemption off for
	// that long after the router enters Backup from Initialize or Fault
	// (keepalived's preempt_delay).
	Preempt      bool
	PreemptDelay time.Duration
	// Accept is RFC 9568 Accept_Mode: whether a master that does not own
	// the addresses accepts packets sent to them. keepalived turns it on
	// unless vrrp_strict, and so does DefaultConfig: a VIP that load
	// balances must accept. Off, keepvip drops such packets with an
	// nftables table of its own (FilterTable).
	Accept bool
	// Source is the address adverts are sent from and the one compared in
	// equal-priority elections. Zero means the interface's primary IPv4
	// address, or for IPv6 its link-local address (a global one when Peers
	// are global).
	Source netip.Addr
	// Peers, when set, makes the router send its adverts to each peer by
	// unicast and accept adverts only from them. Empty means multicast.
	Peers []netip.Addr
	// VIPs are the virtual addresses, all of one family. The prefix length
	// is the one the address is added with.
	VIPs []netip.Prefix
	// Track lists further interfaces whose link must be up; Interface is
	// always tracked. A tracked link down puts the router in Fault.
	Track []string
	GARP  GARP
	// Checksum selects the version 3 IPv4 checksum form sent.
	Checksum ChecksumMode
	// AuthPassword, for version 2 only, sends and requires simple text
	// authentication (auth type 1, at most 8 bytes), as keepalived's
	// auth_type PASS.
	AuthPassword string
	// LowerPriorityAdvert makes a master that hears a lower-priority
	// master answer at once with an advert and a GARP/NA burst, as
	// keepalived does unless lower_prio_no_advert is set. The lower router
	// then steps down without waiting for the next interval. A master that
	// yields also sends one last advert first, so that the new master
	// re-announces the VIPs to clients that still point at the old one.
	LowerPriorityAdvert bool
	// HandoffHold makes a stopping master keep its VIPs after sending
	// priority 0 until another router advertises as master, or at most
	// 2 × Interval (capped at 10 s), so that clients see no gap during a
	// planned handoff. While it holds them and hears no new master, it
	// sends priority 0 again every Interval, so that one lost packet does
	// not open a gap.
	HandoffHold bool
}

// GARP sets the gratuitous ARP (IPv4) and unsolicited neighbour
// advertisement (IPv6) messages a master sends, with keepalived's meaning.
type GARP struct {
	// Repeat is the number of messages per VIP sent on becoming master
	// (garp_master_repeat).
	Repeat int
	// Delay is when a second burst of Repeat messages follows; 0 for none
	// (garp_master_delay).
	Delay time.Duration
	// Refresh, if not 0, repeats RefreshRepeat messages per VIP that often
	// while master (garp_master_refresh, garp_master_refresh_repeat).
	Refresh       time.Duration
	RefreshRepeat int
	// Interval spaces successive rounds (one message per VIP) of a burst
	// (vrrp_garp_interval); 0 sends a burst at once.
	Interval time.Duration
	// LowerPriorityRepeat is the burst sent when a master hears a
	// lower-priority master (garp_lower_prio_repeat).
	LowerPriorityRepeat int
}

// DefaultGARP returns keepalived 2.2.7's defaults.
func DefaultGARP() GARP {
	return GARP{Repeat: 5, Delay: 5 * time.Second, RefreshRepeat: 1, LowerPriorityRepeat: 5}
}

// DefaultConfig returns a Config with the defaults of RFC 9568 and
// keepalived: version 3, priority 100, 1 s adverts, preemption on.
func DefaultConfig() Config {
	return Config{
		Priority:            100,
		Interval:            time.Second,
		Version:             3,
		Preempt:             true,
		Accept:              true,
		GARP:                DefaultGARP(),
		LowerPriorityAdvert: true,
		HandoffHold:         true,
	}
}

// Family returns the address family of the router's VIPs.
func (c *Config) Family() Family {
	if len(c.VIPs) == 0 {
		return IPv4
	}
	return FamilyOf(c.VIPs[0].Addr())
}

// FieldError is a problem with one field of a Config.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// Validate returns every problem with c, each naming its field.
func (c *Config) Validate() []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)})
	}
	if c.Interface == "" {
		bad("interface", "is required")
	}
	if c.VRID == 0 {
		bad("vrid", "0 is not a virtual router id (1-255)")
	}
	if c.Priority == 0 {
		bad("priority", "0 is reserved for a stopping master (use 1-255)")
	}
	switch c.Version {
	case 3:
		if _, ok := centiseconds(c.Interval); !ok {
			bad("advertInterval", "%v is not a multiple of 10ms between %v and %v", c.Interval, MinIntervalV3, MaxIntervalV3)
		}
	case 2:
		if c.Interval < MinIntervalV2 || c.Interval > MaxIntervalV2 || c.Interval%time.Second != 0 {
			bad("advertInterval", "%v is not whole seconds between 1s and 255s (VRRP version 2)", c.Interval)
		}
		if c.Family() == IPv6 {
			bad("version", "VRRP version 2 carries IPv4 only; use version 3 for IPv6")
		}
		if len(c.AuthPassword) > 8 {
			bad("authPassword", "%d bytes; VRRPv2 carries at most 8", len(c.AuthPassword))
		}
	default:
		bad("version", "%d is not a VRRP version (2 or 3)", c.Version)
	}
	if c.Version != 2 && c.AuthPassword != "" {
		bad("authPassword", "VRRP version 3 has no authentication (RFC 9568 removed it)")
	}
	if c.PreemptDelay < 0 || c.PreemptDelay > 1000*time.Second {
		bad("preemptDelay", "%v is outside 0-1000s", c.PreemptDelay)
	}
	if len(c.VIPs) == 0 {
		bad("vips", "at least one virtual address is required")
	}
	if len(c.VIPs) > 255 {
		bad("vips", "%d addresses; an advert carries at most 255", len(c.VIPs))
	}
	fam := c.Family()
	seen := map[netip.Addr]bool{}
	for i, p := range c.VIPs {
		field := fmt.Sprintf("vips[%d]", i)
		switch a := p.Addr(); {
		case !p.IsValid():
			bad(field, "not a valid address")
		case a.Zone() != "":
			bad(field, "%s: a zone is not allowed; the instance interface is used", p)
		case a.Is4In6():
			bad(field, "%s is an IPv4-mapped IPv6 address; write it as %s", p, a.Unmap())
		case FamilyOf(a) != fam:
			bad(field, "%s is %s while vips[0] is %s; use one instance per address family", p, FamilyOf(a), fam)
		case a.IsMulticast() || a.IsUnspecified() || a.IsLoopback():
			bad(field, "%s is not a unicast address", p)
		case seen[a]:
			bad(field, "%s is listed twice", a)
		}
		seen[p.Addr()] = true
	}
	if c.Source.Zone() != "" {
		bad("sourceAddress", "%s: a zone is not allowed; the instance interface is used", c.Source)
	} else if c.Source.Is4In6() {
		bad("sourceAddress", "%s is an IPv4-mapped IPv6 address; write it as %s", c.Source, c.Source.Unmap())
	} else if c.Source.IsValid() && len(c.VIPs) > 0 && FamilyOf(c.Source) != fam {
		bad("sourceAddress", "%s is not %s like the VIPs", c.Source, fam)
	}
	peers := map[netip.Addr]bool{}
	for i, p := range c.Peers {
		field := fmt.Sprintf("unicastPeers[%d]", i)
		switch {
		case !p.IsValid():
			bad(field, "not a valid address")
		case p.Zone() != "":
			// Received adverts carry no zone: a zoned peer would never
			// match, and both routers would become master.
			bad(field, "%s: a zone is not allowed; the instance interface is used", p)
		case p.Is4In6():
			bad(field, "%s is an IPv4-mapped IPv6 address; write it as %s", p, p.Unmap())
		case len(c.VIPs) > 0 && FamilyOf(p) != fam:
			bad(field, "%s is not %s like the VIPs", p, fam)
		case p.IsMulticast() || p.IsUnspecified():
			bad(field, "%s is not a unicast address", p)
		case peers[p]:
			bad(field, "%s is listed twice", p)
		case seen[p]:
			bad(field, "%s is one of this instance's VIPs", p)
		}
		peers[p] = true
	}
	for i, t := range c.Track {
		if t == "" {
			bad(fmt.Sprintf("trackInterfaces[%d]", i), "empty interface name")
		}
	}
	g := c.GARP
	if g.Repeat < 1 || g.Repeat > 255 {
		bad("garp.masterRepeat", "%d is outside 1-255", g.Repeat)
	}
	if g.Delay < 0 {
		bad("garp.masterDelay", "%v is negative", g.Delay)
	}
	if g.Refresh < 0 {
		bad("garp.masterRefresh", "%v is negative", g.Refresh)
	}
	if g.Refresh > 0 && g.Refresh < time.Second {
		bad("garp.masterRefresh", "%v is below 1s; refreshes that often flood the segment", g.Refresh)
	}
	if g.RefreshRepeat < 1 || g.RefreshRepeat > 255 {
		bad("garp.masterRefreshRepeat", "%d is outside 1-255", g.RefreshRepeat)
	}
	if g.Interval < 0 || g.Interval > time.Second {
		bad("garp.interval", "%v is outside 0-1s", g.Interval)
	}
	if g.LowerPriorityRepeat < 0 || g.LowerPriorityRepeat > 255 {
		bad("garp.lowerPriorityRepeat", "%d is outside 0-255", g.LowerPriorityRepeat)
	}
	if c.Checksum != ChecksumPseudoHeader && c.Checksum != ChecksumMessageOnly {
		bad("checksum", "unknown checksum mode %d", c.Checksum)
	}
	return errs
}

// vipAddrs returns the VIPs as addresses, in configured order.
func (c *Config) vipAddrs() []netip.Addr {
	out := make([]netip.Addr, len(c.VIPs))
	for i, p := range c.VIPs {
		out[i] = p.Addr()
	}
	return out
}

// unicast reports whether the router sends to peers instead of the group.
func (c *Config) unicast() bool { return len(c.Peers) > 0 }

// destinations returns where adverts go.
func (c *Config) destinations() []netip.Addr {
	if c.unicast() {
		return c.Peers
	}
	if c.Family() == IPv6 {
		return []netip.Addr{GroupIPv6}
	}
	return []netip.Addr{GroupIPv4}
}

// tracked returns every interface whose link the router depends on.
func (c *Config) tracked() []string {
	out := []string{c.Interface}
	for _, t := range c.Track {
		if !slices.Contains(out, t) {
			out = append(out, t)
		}
	}
	return out
}

// sameRouter reports whether b describes the same virtual router as c, so
// that a running instance can take b as a live update. Changing the
// interface, VRID, family or version makes it another router.
func (c *Config) sameRouter(b *Config) bool {
	return c.Interface == b.Interface && c.VRID == b.VRID && c.Family() == b.Family() && c.Version == b.Version
}
