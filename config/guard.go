package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Guardrails: what the configuration refuses because it is almost surely
// a mistake that would take a node or a network down, unless the entry
// says it is meant with allow. They are named by the thing allowed.
const (
	// AllowWidePrefix: a VIP with a prefix shorter than /16 (IPv4) or /48
	// (IPv6), which adds a route to that many addresses on the
	// interface of every master.
	AllowWidePrefix = "widePrefix"
	// AllowDefaultRoute: routing.static 0.0.0.0/0 or ::/0, which
	// announces this node as the way to everywhere.
	AllowDefaultRoute = "defaultRoute"
	// AllowNodeAddress: a VIP (or a virtual server's) equal to a node's
	// own address: taking it over cuts the node off (kubelet, SSH).
	AllowNodeAddress = "nodeAddress"
	// AllowClusterAddress: a VIP inside a Pod CIDR or equal to a
	// Service's ClusterIP, which kube-proxy and the CNI own.
	AllowClusterAddress = "clusterAddress"
	// AllowGateway: a VIP equal to a gateway of this node's routes, which
	// would take the segment's traffic to the outside.
	AllowGateway = "gateway"
)

var allowNames = []string{AllowWidePrefix, AllowDefaultRoute, AllowNodeAddress, AllowClusterAddress, AllowGateway}

// checkAllow reports the unknown names of an allow list.
func checkAllow(path string, allow []string) []error {
	var errs []error
	for i, a := range allow {
		if !slices.Contains(allowNames, a) {
			errs = append(errs, &FieldError{fmt.Sprintf("%s.allow[%d]", path, i), fmt.Sprintf("%q: want one of %s", a, strings.Join(allowNames, ", "))})
		}
	}
	return errs
}

// vipGuard returns why a VIP, as written (s), is refused on its own, or "".
func vipGuard(s string, allow []string) string {
	p, err := parseVIP(s)
	if err != nil {
		return ""
	}
	a, bits := p.Addr(), p.Bits()
	wide := 16
	if a.Is6() {
		wide = 48
	}
	if strings.Contains(s, "/") && bits < wide && !slices.Contains(allow, AllowWidePrefix) {
		return fmt.Sprintf("%s: a /%d VIP adds a route to the whole prefix on the interface of every master (a VIP is usually /32 or /128, or its subnet's length); allow: [%s] if that is meant", s, bits, AllowWidePrefix)
	}
	if bits < a.BitLen()-1 {
		if a == p.Masked().Addr() {
			return fmt.Sprintf("%s is the network address of its prefix, not a host's", s)
		}
		if a.Is4() && a == broadcast(p) {
			return fmt.Sprintf("%s is the broadcast address of its prefix, not a host's", s)
		}
	}
	return ""
}

func broadcast(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().As4()
	for i := p.Bits(); i < 32; i++ {
		b[i/8] |= 1 << (7 - i%8)
	}
	return netip.AddrFrom4(b)
}

// Surroundings is what a node knows of its surroundings that a
// configuration alone does not: addresses of nodes, of the cluster and of
// gateways, each with what it is, for a problem.
type Surroundings struct {
	NodeAddresses map[netip.Addr]string
	ClusterIPs    map[netip.Addr]string
	PodCIDRs      map[netip.Prefix]string
	Gateways      map[netip.Addr]string
}

// GuardVIP returns why VIP a, of an entry that allows allow, is refused in
// these surroundings, or "".
func (g Surroundings) GuardVIP(a netip.Addr, allow []string) string {
	a = a.Unmap()
	if what, ok := g.NodeAddresses[a]; ok && !slices.Contains(allow, AllowNodeAddress) {
		return fmt.Sprintf("%s is %s: a VIP there would take the node's own address (allow: [%s] if that is meant)", a, what, AllowNodeAddress)
	}
	if what, ok := g.Gateways[a]; ok && !slices.Contains(allow, AllowGateway) {
		return fmt.Sprintf("%s is %s: a VIP there would take the traffic to the outside (allow: [%s] if that is meant)", a, what, AllowGateway)
	}
	if slices.Contains(allow, AllowClusterAddress) {
		return ""
	}
	if what, ok := g.ClusterIPs[a]; ok {
		return fmt.Sprintf("%s is %s, which kube-proxy serves (allow: [%s] if that is meant)", a, what, AllowClusterAddress)
	}
	for p, what := range g.PodCIDRs {
		if p.Contains(a) {
			return fmt.Sprintf("%s is inside %s, whose addresses the network plugin gives to pods (allow: [%s] if that is meant)", a, what, AllowClusterAddress)
		}
	}
	return ""
}

// Guard returns the problems of c in these surroundings: VIPs of its
// instances, virtual servers and ECMP routes.
func (c *Config) Guard(g Surroundings) []error {
	var errs []error
	for i, in := range c.Instances {
		for j, v := range in.VIPs {
			if p, err := parseVIP(v); err == nil {
				if why := g.GuardVIP(p.Addr(), in.Allow); why != "" {
					errs = append(errs, &FieldError{fmt.Sprintf("instances[%d].vips[%d]", i, j), why})
				}
			}
		}
	}
	for i, vs := range c.VirtualServers {
		if a, err := netip.ParseAddr(vs.VIP); err == nil {
			if why := g.GuardVIP(a, vs.Allow); why != "" {
				errs = append(errs, &FieldError{fmt.Sprintf("virtualServers[%d].vip", i), why})
			}
		}
	}
	if r := c.Routing; r != nil {
		for i, e := range r.ECMP {
			if a, err := netip.ParseAddr(e.VIP); err == nil {
				if why := g.GuardVIP(a, r.Allow); why != "" {
					errs = append(errs, &FieldError{fmt.Sprintf("routing.ecmp[%d].vip", i), why})
				}
			}
		}
	}
	return errs
}
