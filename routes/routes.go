// Package routes is what keepvip announces to the network beyond its own
// segment: the routes this node should have announced, and the small
// interface that exporters implement to make it so. The BGP speaker
// (routes/bgp, GoBGP embedded) announces them to peers; routes/kernel
// installs them into a Linux routing table for a routing daemon the user
// runs (BIRD, FRR) to redistribute.
//
// An exporter is given the full set every time (Sync) and changes only
// what differs; the same set twice changes nothing. Exporters know nothing
// of VRRP or Kubernetes: internal/announce decides which routes follow
// which state, from what the daemon gives it.
package routes

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Route is one prefix to announce, with the BGP attributes a router uses
// to choose among the nodes that announce it.
type Route struct {
	Prefix netip.Prefix
	// NextHop is where the router should send the traffic; invalid: the
	// exporter's own address (BGP: the session's local address).
	NextHop netip.Addr
	// Communities are standard communities (RFC 1997), ASN:value.
	Communities []Community
	// LocalPref is sent to iBGP peers when set (HasLocalPref); higher
	// wins. Routers assume 100 without it.
	LocalPref    uint32
	HasLocalPref bool
	// MED is sent when set (HasMED); lower wins among routes from the
	// same neighbouring AS.
	MED    uint32
	HasMED bool
	// Prepend adds the local ASN this many more times to the AS path
	// (0-10), making the route longer and so less preferred.
	Prepend int
}

// MaxPrepend bounds Route.Prepend.
const MaxPrepend = 10

// Validate returns every problem with r.
func (r Route) Validate() []error {
	var errs []error
	if !r.Prefix.IsValid() {
		errs = append(errs, errors.New("no prefix"))
	} else if r.Prefix != r.Prefix.Masked() {
		errs = append(errs, fmt.Errorf("prefix %s has host bits set (did you mean %s?)", r.Prefix, r.Prefix.Masked()))
	}
	if r.NextHop.IsValid() && r.Prefix.IsValid() && r.NextHop.Is4() != r.Prefix.Addr().Is4() {
		errs = append(errs, fmt.Errorf("next hop %s is not of the prefix's family", r.NextHop))
	}
	if r.NextHop.Zone() != "" {
		errs = append(errs, fmt.Errorf("next hop %s: a zone is not allowed", r.NextHop))
	}
	if r.Prepend < 0 || r.Prepend > MaxPrepend {
		errs = append(errs, fmt.Errorf("prepend %d is outside 0-%d", r.Prepend, MaxPrepend))
	}
	return errs
}

// Equal reports whether r and o announce the same thing.
func (r Route) Equal(o Route) bool {
	return r.Prefix == o.Prefix && r.NextHop == o.NextHop && slices.Equal(r.Communities, o.Communities) &&
		r.HasLocalPref == o.HasLocalPref && (!r.HasLocalPref || r.LocalPref == o.LocalPref) &&
		r.HasMED == o.HasMED && (!r.HasMED || r.MED == o.MED) && r.Prepend == o.Prepend
}

// String is "192.0.2.100/32 via 192.0.2.11 [65000:100] localpref 50 med 10 prepend 2",
// with the parts that are set.
func (r Route) String() string {
	var b strings.Builder
	b.WriteString(r.Prefix.String())
	if r.NextHop.IsValid() {
		b.WriteString(" via " + r.NextHop.String())
	}
	if len(r.Communities) > 0 {
		parts := make([]string, len(r.Communities))
		for i, c := range r.Communities {
			parts[i] = c.String()
		}
		b.WriteString(" [" + strings.Join(parts, " ") + "]")
	}
	if r.HasLocalPref {
		fmt.Fprintf(&b, " localpref %d", r.LocalPref)
	}
	if r.HasMED {
		fmt.Fprintf(&b, " med %d", r.MED)
	}
	if r.Prepend > 0 {
		fmt.Fprintf(&b, " prepend %d", r.Prepend)
	}
	return b.String()
}

// Community is a standard BGP community: the high 16 bits an ASN, the low
// 16 a value.
type Community uint32

// ParseCommunity reads "65000:100".
func ParseCommunity(s string) (Community, error) {
	a, v, ok := strings.Cut(s, ":")
	if !ok {
		return 0, fmt.Errorf("community %q: want ASN:value, e.g. 65000:100", s)
	}
	hi, err1 := strconv.ParseUint(a, 10, 16)
	lo, err2 := strconv.ParseUint(v, 10, 16)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("community %q: both parts must be numbers 0-65535", s)
	}
	return Community(hi<<16 | lo), nil
}

func (c Community) String() string { return fmt.Sprintf("%d:%d", c>>16, c&0xffff) }

// Exporter announces routes.
type Exporter interface {
	// Sync makes the announced routes exactly routes: it announces the
	// new and changed ones and withdraws the others it announced. It
	// never touches routes it did not announce. Invalid routes are
	// reported and skipped; the others are applied.
	Sync(ctx context.Context, routes []Route) error
	// Close stops the exporter. What happens to its routes is the
	// exporter's to document (a BGP session that closes withdraws them).
	Close() error
}

// Diff returns what turns have into want: the routes to announce (new or
// changed) and the prefixes to withdraw. Both inputs are keyed by prefix
// (one route per prefix); the outputs are sorted by prefix.
func Diff(have, want map[netip.Prefix]Route) (announce []Route, withdraw []netip.Prefix) {
	for p, r := range want {
		if h, ok := have[p]; !ok || !h.Equal(r) {
			announce = append(announce, r)
		}
	}
	for p := range have {
		if _, ok := want[p]; !ok {
			withdraw = append(withdraw, p)
		}
	}
	slices.SortFunc(announce, func(a, b Route) int { return ComparePrefixes(a.Prefix, b.Prefix) })
	slices.SortFunc(withdraw, ComparePrefixes)
	return announce, withdraw
}

// ByPrefix indexes routes by prefix after validating them. Invalid routes
// and second routes for a prefix are reported, naming the route, and left
// out.
func ByPrefix(rs []Route) (map[netip.Prefix]Route, []error) {
	out := make(map[netip.Prefix]Route, len(rs))
	var errs []error
	for _, r := range rs {
		if ve := r.Validate(); len(ve) > 0 {
			errs = append(errs, fmt.Errorf("route %s: %w", r, errors.Join(ve...)))
			continue
		}
		if _, dup := out[r.Prefix]; dup {
			errs = append(errs, fmt.Errorf("route %s: the prefix is listed twice", r))
			continue
		}
		r.Communities = slices.Clone(r.Communities)
		out[r.Prefix] = r
	}
	return out, errs
}

// ComparePrefixes orders prefixes: IPv4 first, then by address and length.
func ComparePrefixes(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return cmp.Compare(a.Bits(), b.Bits())
}
