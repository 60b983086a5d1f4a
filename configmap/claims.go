package configmap

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// A claim is something at most one entry may have: a VRID on an
// interface, an instance name, a VIP, a route, a virtual service. Two
// entries with the same claim clash (rule 2 of the package doc).
type claim struct {
	what claimKind
	val  string
	// iface qualifies a VRID claim: the interface, "" for the node's; of
	// a VIP claim, where the VIP came from if not the entry's own list
	// ("key 10.0.0.50").
	iface string
}

type claimKind uint8

const (
	claimVRID     claimKind = iota + 1 // val "ipv4/61"
	claimName                          // an instance's name
	claimVIP                           // an address held (VRRP or ECMP)
	claimRoute                         // a prefix announced
	claimVSName                        // a virtual server's name (its identity)
	claimService                       // an IPVS virtual service, "10.0.0.1:80/tcp"
	claimNoAccept                      // a VIP whose instance has accept: false
	claimServed                        // a VIP a virtual server serves (not exclusive)
)

// clashes reports whether a and b cannot both be applied.
func (a claim) clashes(b claim) bool {
	switch {
	case a.what == claimNoAccept && b.what == claimServed, a.what == claimServed && b.what == claimNoAccept:
		return a.val == b.val
	case a.what != b.what || a.val != b.val:
		return false
	case a.what == claimServed:
		return false // many virtual servers serve one VIP
	case a.what == claimVRID:
		// The node's interface may be any named one.
		return a.iface == b.iface || a.iface == "" || b.iface == ""
	}
	return true
}

// index finds the claims that clash with a given one.
func (a claim) index() string {
	switch a.what {
	case claimNoAccept, claimServed:
		return "accept/" + a.val
	}
	return strconv.Itoa(int(a.what)) + "/" + a.val
}

// describe says what a claim is, for a problem.
func (a claim) describe() string {
	switch a.what {
	case claimVRID:
		fam, vrid, _ := strings.Cut(a.val, "/")
		on := "the node's interface"
		if a.iface != "" {
			on = a.iface
		}
		return fmt.Sprintf("VRID %s (%s) on %s", vrid, fam, on)
	case claimName:
		return fmt.Sprintf("the instance name %q", a.val)
	case claimVIP:
		if a.iface != "" {
			return "VIP " + a.val + " (from " + a.iface + ")"
		}
		return "VIP " + a.val
	case claimRoute:
		return "the route " + a.val
	case claimVSName:
		return fmt.Sprintf("the virtual server name %q", a.val)
	case claimService:
		return "the virtual service " + a.val
	case claimNoAccept, claimServed:
		return "VIP " + a.val + " (its instance has accept: false, which drops the traffic of its virtual servers before IPVS sees it)"
	}
	return a.val
}

// claimSet indexes the claims of the entries applied so far.
type claimSet map[string][]owned

type owned struct {
	claim
	by *entry
}

// clash returns the first claim of cs that one already in s clashes
// with, and its holder; ignore is an entry whose own claims never count
// against cs (itself).
func (s claimSet) clash(cs []claim, ignore *entry) (claim, *entry, bool) {
	for _, c := range cs {
		for _, o := range s[c.index()] {
			if o.by != ignore && o.clashes(c) {
				return c, o.by, true
			}
		}
	}
	return claim{}, nil, false
}

func (s claimSet) add(cs []claim, by *entry) {
	for _, c := range cs {
		s[c.index()] = append(s[c.index()], owned{c, by})
	}
}

// Claims of each form. They are computed from what can be read, also of
// an entry that is bad: a bad entry still claims its VRID and VIPs, so
// that a newcomer taking them clashes with it rather than with its last
// good form on some nodes only.

// instanceClaims are an instance's claims; withVIPs false leaves its VIPs
// out (the instance of the VIP keys, whose keys claim them).
func instanceClaims(in *Instance, withVIPs bool, yields map[netip.Addr]bool) []claim {
	var out []claim
	addrs := slices.DeleteFunc(in.addrs(), func(a netip.Addr) bool { return yields[a] })
	if in.VRID >= 1 && in.VRID <= 255 {
		// Without a VIP to tell the family (vips: []), both: a newcomer
		// must not take the VRID of an instance that runs.
		fams := []string{"ipv4", "ipv6"}
		if fam, ok := in.family(); ok {
			fams = []string{fam}
		}
		for _, fam := range fams {
			out = append(out, claim{what: claimVRID, val: fmt.Sprintf("%s/%d", fam, in.VRID), iface: in.Interface})
		}
	}
	if withVIPs {
		for _, c := range vipClaims(addrs, in.Announce == nil || in.Announce.Mode != "none", in.Accept != nil && !*in.Accept) {
			if c.what == claimVIP && slices.Contains(in.keyVIPs, c.val) {
				c.iface = "key " + c.val
			}
			out = append(out, c)
		}
	}
	return append(out, claim{what: claimName, val: in.id})
}

func vipClaims(addrs []netip.Addr, announced, noAccept bool) []claim {
	var out []claim
	for _, a := range addrs {
		out = append(out, claim{what: claimVIP, val: a.String()})
		if announced {
			out = append(out, claim{what: claimRoute, val: netip.PrefixFrom(a, a.BitLen()).String()})
		}
		if noAccept {
			out = append(out, claim{what: claimNoAccept, val: a.String()})
		}
	}
	return out
}

func virtualServerClaims(vs *VirtualServer) []claim {
	out := []claim{{what: claimVSName, val: vs.id}}
	if a, err := netip.ParseAddr(vs.VIP); err == nil {
		out = append(out, claim{what: claimServed, val: a.Unmap().String()})
	}
	if k := serviceKey(vs); k != "" {
		out = append(out, claim{what: claimService, val: k})
	}
	return out
}

// serviceKey is the IPVS service of a virtual server as far as it is known
// without the cluster: not for a Service's, whose protocol (and with port
// 0, ports) come from the Service; those clash when resolved on a node.
func serviceKey(vs *VirtualServer) string {
	if vs.Service != "" {
		return ""
	}
	if vs.FWMark != 0 {
		fam := strings.ToLower(vs.Family)
		if fam == "" {
			fam = "ipv4"
		}
		return fmt.Sprintf("fwmark %d/%s", vs.FWMark, fam)
	}
	a, err := netip.ParseAddr(vs.VIP)
	if err != nil || vs.Port < 1 || vs.Port > 65535 {
		return ""
	}
	proto := strings.ToLower(vs.Protocol)
	if proto == "" {
		proto = "tcp"
	}
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(a.Unmap(), uint16(vs.Port)), proto)
}

func routingClaims(r *Routing) []claim {
	var out []claim
	for _, e := range r.ECMP {
		if a, err := netip.ParseAddr(e.VIP); err == nil && a.Zone() == "" {
			out = append(out, vipClaims([]netip.Addr{a.Unmap()}, true, false)...)
		}
	}
	for _, s := range r.Static {
		if p, err := parseVIP(s); err == nil {
			out = append(out, claim{what: claimRoute, val: p.Masked().String()})
		}
	}
	return out
}

// family is the address family of an instance, from its first VIP as
// written: also when that cannot be read ("10.0.0.600" is an IPv4 typo),
// so that a mistake there does not change what the instance claims.
func (in *Instance) family() (string, bool) {
	if len(in.VIPs) == 0 {
		return "", false
	}
	v := in.VIPs[0]
	if p, err := parseVIP(v); err == nil {
		if p.Addr().Is4() {
			return "ipv4", true
		}
		return "ipv6", true
	}
	switch {
	case strings.Contains(v, ":"):
		return "ipv6", true
	case strings.Contains(v, "."):
		return "ipv4", true
	}
	return "", false
}
