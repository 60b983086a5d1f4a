// Package kernel is the minimal route exporter: it installs the routes
// into a Linux routing table, marked as keepvip's, for a routing daemon
// the user runs to redistribute (BIRD's kernel protocol with `kernel table
// N; learn`, FRR's `ip import-table N`). It speaks no routing protocol, so
// communities, local preference, MED and prepending, which only BGP
// carries, are left to that daemon's policy.
//
// A route with a next hop is "PREFIX via NEXTHOP"; one without is "PREFIX
// dev lo": the node itself. Ownership is the route's protocol field
// (Protocol, 0x6b by default): keepvip lists, changes and deletes only the
// routes of its table with that mark, never others, so the table may be
// shared.
package kernel

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"syscall"

	"github.com/vishvananda/netlink"

	"github.com/keepvip/keepvip/routes"
)

// Protocol is the rtm_protocol keepvip marks its routes with by default
// (`ip route show proto 0x6b`), the same number as its address mark.
const Protocol = 0x6b

// Options configure a Table.
type Options struct {
	// Table is the routing table (1-4294967295, not 255 local). 254 is
	// main: the routes are then used by this node too.
	Table int
	// Protocol marks keepvip's routes; default Protocol. The kernel's own
	// (0-4: unspec, redirect, kernel, boot, static) are refused.
	Protocol int
	// Device carries the routes without a next hop; default "lo".
	Device string
	Logger *slog.Logger
}

// Table installs routes into one routing table.
type Table struct {
	o   Options
	log *slog.Logger
	h   *netlink.Handle

	mu     sync.Mutex
	closed bool
}

// Validate reports bad options, naming the field.
func (o Options) Validate() error {
	var errs []error
	switch {
	case o.Table <= 0 || uint64(o.Table) > 1<<32-1:
		errs = append(errs, fmt.Errorf("table: %d is outside 1-4294967295", o.Table))
	case o.Table == 255:
		errs = append(errs, errors.New("table: 255 is the kernel's local table"))
	}
	if err := CheckProtocol(o.Protocol); err != nil {
		errs = append(errs, fmt.Errorf("protocol: %w", err))
	}
	return errors.Join(errs...)
}

// CheckProtocol reports whether p can mark keepvip's routes: 0 (for
// Protocol) or 5-255; 1-4 are the kernel's.
func CheckProtocol(p int) error {
	if p != 0 && (p <= 4 || p > 255) {
		return fmt.Errorf("%d is not 5-255 (0-4 are the kernel's)", p)
	}
	return nil
}

// New opens a netlink socket for the table.
func New(o Options) (*Table, error) {
	if err := o.Validate(); err != nil {
		return nil, fmt.Errorf("routing table exporter: %w", err)
	}
	if o.Protocol == 0 {
		o.Protocol = Protocol
	}
	if o.Device == "" {
		o.Device = "lo"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return nil, fmt.Errorf("routing table exporter: opening netlink: %w", err)
	}
	return &Table{o: o, log: o.Logger.With("table", o.Table), h: h}, nil
}

// installed returns keepvip's routes in the table, by prefix.
func (t *Table) installed() (map[netip.Prefix]routes.Route, error) {
	filter := &netlink.Route{Table: t.o.Table, Protocol: netlink.RouteProtocol(t.o.Protocol)}
	rs, err := t.h.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return nil, fmt.Errorf("listing the routes of table %d: %w", t.o.Table, err)
	}
	out := make(map[netip.Prefix]routes.Route, len(rs))
	for _, r := range rs {
		if r.Dst == nil {
			continue // a default route: never one of ours
		}
		p, ok := prefixOf(r.Dst)
		if !ok {
			continue
		}
		rt := routes.Route{Prefix: p}
		if gw, ok := netip.AddrFromSlice(r.Gw); ok {
			rt.NextHop = gw.Unmap()
		}
		out[p] = rt
	}
	return out, nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	bits, _ := n.Mask.Size()
	if len(n.IP) == net.IPv4len || a.Is4In6() && bits <= 32 {
		a = a.Unmap()
	}
	return netip.PrefixFrom(a, bits), true
}

// Sync makes keepvip's routes in the table exactly rs. Only the prefix
// and the next hop are installed; the BGP attributes are ignored.
func (t *Table) Sync(ctx context.Context, rs []routes.Route) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return errors.New("routing table exporter closed")
	}
	return t.syncLocked(ctx, rs)
}

func (t *Table) syncLocked(ctx context.Context, rs []routes.Route) error {
	want, errs := routes.ByPrefix(rs)
	for p, r := range want {
		// What the kernel keeps, so that an unchanged route compares
		// equal to what it lists.
		want[p] = routes.Route{Prefix: r.Prefix, NextHop: r.NextHop}
	}
	have, err := t.installed()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	add, del := routes.Diff(have, want)
	link, linkErr := t.h.LinkByName(t.o.Device)
	for _, r := range add {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, err)...)
		}
		nr := t.kernelRoute(r.Prefix)
		if r.NextHop.IsValid() {
			nr.Gw = r.NextHop.AsSlice()
		} else {
			if linkErr != nil {
				errs = append(errs, fmt.Errorf("installing %s: the device %s: %w", r, t.o.Device, linkErr))
				continue
			}
			nr.LinkIndex = link.Attrs().Index
			nr.Scope = netlink.SCOPE_LINK
		}
		// A route of keepvip's is replaced; a new one is only added:
		// replacing would take over a route of the same prefix that is
		// not keepvip's (a connected route in main, a daemon's).
		var err error
		if _, ours := have[r.Prefix]; ours {
			err = t.h.RouteReplace(nr)
		} else {
			err = t.h.RouteAdd(nr)
			if errors.Is(err, syscall.EEXIST) {
				err = fmt.Errorf("table %d has a route for %s that keepvip did not install; leaving it", t.o.Table, r.Prefix)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("installing %s in table %d: %w", r, t.o.Table, err))
			continue
		}
		t.log.Debug("route installed", "route", r.String())
	}
	for _, p := range del {
		dr := t.kernelRoute(p)
		// IPv4 deletes match the scope unless it is "nowhere" (as ip
		// route del sends): ours are link or universe.
		dr.Scope = netlink.SCOPE_NOWHERE
		if err := t.h.RouteDel(dr); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("removing %s from table %d: %w", p, t.o.Table, err))
			continue
		}
		t.log.Debug("route removed", "prefix", p.String())
	}
	return errors.Join(errs...)
}

func (t *Table) kernelRoute(p netip.Prefix) *netlink.Route {
	fam := netlink.FAMILY_V4
	if p.Addr().Is6() {
		fam = netlink.FAMILY_V6
	}
	return &netlink.Route{
		Dst:      &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
		Table:    t.o.Table,
		Protocol: netlink.RouteProtocol(t.o.Protocol),
		Family:   fam,
	}
}

// Routes returns keepvip's routes in the table now, sorted.
func (t *Table) Routes() ([]routes.Route, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	have, err := t.installed()
	if err != nil {
		return nil, err
	}
	out, _ := routes.Diff(nil, have)
	return out, nil
}

// Close removes keepvip's routes from the table, so that the routing
// daemon withdraws them, and closes the netlink socket.
func (t *Table) Close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	// Closed first, under the lock: a Sync waiting for it cannot put
	// routes back afterwards.
	t.closed = true
	err := t.syncLocked(context.Background(), nil)
	t.h.Close()
	return err
}

// RemoveAll deletes every route marked protocol (keepvip's: Protocol, or
// the one a configuration chose) in every table: what a routing-table
// exporter leaves when keepvip dies. Routes of other protocols are never
// touched. It returns how many it deleted.
//
// A protocol of the kernel's own (1-4: redirect, kernel, boot, static) or
// outside 0-255 is refused: keepvip never marks its routes so (see
// Options.Validate), and those mark the routes of every address, of ip
// route add, of other daemons.
func RemoveAll(protocol int) (int, error) {
	if err := CheckProtocol(protocol); err != nil {
		return 0, err
	}
	if protocol == 0 {
		protocol = Protocol
	}
	filter := &netlink.Route{Table: syscall.RT_TABLE_UNSPEC, Protocol: netlink.RouteProtocol(protocol)}
	rs, err := netlink.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return 0, fmt.Errorf("listing routes of protocol %d: %w", protocol, err)
	}
	n := 0
	var errs []error
	for i := range rs {
		if int(rs[i].Protocol) != protocol {
			continue // a kernel that ignores the filter
		}
		if err := netlink.RouteDel(&rs[i]); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("deleting the route %s (table %d): %w", rs[i].Dst, rs[i].Table, err))
			continue
		}
		n++
	}
	return n, errors.Join(errs...)
}
