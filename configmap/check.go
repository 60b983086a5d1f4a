package configmap

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/keepvip/keepvip/config"
)

// Each entry checked alone, as far as can be known without the cluster.

// placeholderInterface stands in for "the node's interface" while an
// instance is checked before it meets a node.
const placeholderInterface = "keepvip0"

// check validates one instance.
func (in *Instance) check(path string) []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &config.FieldError{Path: path + "." + field, Reason: fmt.Sprintf(format, args...)})
	}
	c := in.Instance
	if c.Interface == "" {
		c.Interface = placeholderInterface
	}
	if !config.ValidName(in.Name) {
		bad("name", "%q: use letters, digits, '.', '_' and '-' (at most 63)", in.Name)
	}
	switch in.PriorityFrom {
	case PriorityStatic:
	case PriorityNodeOrder:
		if c.Priority != nil {
			bad("priority", "cannot be set with priorityFrom: nodeOrder")
		}
	default:
		bad("priorityFrom", "%q: want nodeOrder, or leave it out for the priority field", in.PriorityFrom)
	}
	for node, pr := range in.NodePriorities {
		if pr < 1 || pr > 255 {
			bad("nodePriorities."+node, "%d is outside 1-255", pr)
		}
		if msgs := validation.IsDNS1123Subdomain(node); len(msgs) > 0 {
			bad("nodePriorities", "%q is not a node name: %s", node, msgs[0])
		}
	}
	switch in.UnicastPeersFrom {
	case "":
	case "nodes":
		if len(c.UnicastPeers) > 0 {
			bad("unicastPeersFrom", "nodes and unicastPeers cannot both be given")
		}
	default:
		bad("unicastPeersFrom", "%q: want nodes", in.UnicastPeersFrom)
	}
	_, ierrs := c.Check(path)
	errs = append(errs, ierrs...)
	if c.Announce != nil {
		errs = append(errs, c.Announce.Check(path+".announce")...)
	}
	return errs
}

func (in *Instance) hasVIP(a netip.Addr) bool {
	for _, s := range in.VIPs {
		if pf, err := parseVIP(s); err == nil && pf.Addr() == a {
			return true
		}
	}
	return false
}

// addrs are the VIPs that can be read.
func (in *Instance) addrs() []netip.Addr {
	var out []netip.Addr
	for _, s := range in.VIPs {
		if pf, err := parseVIP(s); err == nil {
			out = append(out, pf.Addr())
		}
	}
	return out
}

func parseVIP(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return p, err
		}
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// check validates one virtual server. legacy marks one made from a VIP
// key.
func (vs *VirtualServer) check(path string, legacy bool) []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &config.FieldError{Path: strings.TrimPrefix(path+"."+field, "."), Reason: fmt.Sprintf(format, args...)})
	}
	c := vs.VirtualServer
	if !legacy && strings.HasPrefix(c.Name, "key ") {
		bad("name", "%q: names starting with \"key \" are reserved for the virtual servers of VIP keys", c.Name)
	}
	if vs.Service != "" {
		if err := checkServiceName(vs.Service); err != nil {
			bad("service", "%q: %v", vs.Service, err)
		}
		if len(c.RealServers) > 0 {
			bad("realServers", "cannot be given with service: the Service's endpoints are the real servers")
		}
		if c.FWMark != 0 {
			bad("fwmark", "cannot be given with service")
		}
		if c.Protocol != "" {
			bad("protocol", "comes from the Service's port; leave it out")
		}
		if vs.ServicePort != "" && c.Port == 0 {
			bad("servicePort", "needs port: the VIP's port for that Service port")
		}
		// Check the rest with a stand-in real server and port.
		if c.Port == 0 {
			c.Port = 1
		}
		c.RealServers = []config.RealServer{{Address: placeholderReal(c.VIP)}}
	} else if vs.ServicePort != "" {
		bad("servicePort", "only with service")
	}
	_, verrs := c.Check(path)
	for _, e := range verrs {
		var fe *config.FieldError
		if errors.As(e, &fe) {
			fe.Path = strings.TrimPrefix(fe.Path, ".")
		}
	}
	return append(errs, verrs...)
}

// placeholderReal is an address of the VIP's family that stands in for
// the endpoints while a Service-backed virtual server is checked.
func placeholderReal(vip string) string {
	if a, err := netip.ParseAddr(vip); err == nil && a.Is6() && !a.Is4In6() {
		return "2001:db8::1"
	}
	return "192.0.2.1"
}

// check validates r as far as can be known without the node: with a
// router ID and an IPv6 next hop standing in for the node's.
func (r *Routing) check() []error {
	c := r.Routing
	var errs []error
	if c.BGP != nil {
		b := *c.BGP
		if b.RouterID == "" {
			b.RouterID = "192.0.2.1"
		}
		if b.NextHop6 == "" {
			b.NextHop6 = "2001:db8::1"
		}
		// A password from the Secret stands in as one written here.
		b.Peers = slices.Clone(b.Peers)
		for i, p := range b.Peers {
			if p.PasswordSecretKey == "" {
				continue
			}
			if p.Password != "" {
				errs = append(errs, &config.FieldError{Path: fmt.Sprintf("routing.bgp.peers[%d]", i), Reason: "password and passwordSecretKey cannot both be given"})
			}
			if msgs := validation.IsConfigMapKey(p.PasswordSecretKey); len(msgs) > 0 {
				errs = append(errs, &config.FieldError{Path: fmt.Sprintf("routing.bgp.peers[%d].passwordSecretKey", i), Reason: fmt.Sprintf("%q is not a Secret key: %s", p.PasswordSecretKey, msgs[0])})
			}
			b.Peers[i].Password, b.Peers[i].PasswordSecretKey = "secret", ""
		}
		c.BGP = &b
	}
	if len(errs) > 0 {
		return errs
	}
	cfg := config.Config{Routing: &c}
	if err := cfg.Validate(); err != nil {
		var out []error
		for _, m := range strings.Split(err.Error(), "\n") {
			out = append(out, errors.New(m))
		}
		return out
	}
	return nil
}

// warnings are what applies but should not be written so: a BGP password
// in the ConfigMap, readable by whoever can read it.
func (r *Routing) warnings() []string {
	var out []string
	if r.BGP == nil {
		return nil
	}
	for i, p := range r.BGP.Peers {
		if p.Password != "" {
			out = append(out, fmt.Sprintf("routing.bgp.peers[%d].password: readable by whoever can read this ConfigMap; put it in the Secret keepvip reads (--bgp-secret, default keepvip-bgp) and name its key in passwordSecretKey", i))
		}
	}
	return out
}
