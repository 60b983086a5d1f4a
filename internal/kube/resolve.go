// Package kube is keepvip's Kubernetes side: it follows the vip-configmap,
// the Services it names with their EndpointSlices, and the Nodes, and turns
// them into the one configuration (package config) that the VRRP and IPVS
// parts run. Those parts know nothing of Kubernetes; this package is the
// only translator.
package kube

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"

	"github.com/keepvip/keepvip/config"
	"github.com/keepvip/keepvip/configmap"
	"github.com/keepvip/keepvip/lvs"
)

// Cluster is what Resolve reads of the cluster.
type Cluster struct {
	// NodeName is this node.
	NodeName string
	// Nodes are all nodes (Resolve applies the ConfigMap's selector).
	Nodes []*corev1.Node
	// Service returns a Service, or nil.
	Service func(namespace, name string) *corev1.Service
	// EndpointSlices returns the slices of a Service.
	EndpointSlices func(namespace, name string) []*discoveryv1.EndpointSlice
	// Previous is the configuration running on this node, or nil. An
	// instance that cannot be resolved for a reason of the node or the
	// host, not of the ConfigMap (the node's address missing for a
	// moment, its interface not found), keeps its form from there.
	Previous *config.Config
}

// Host answers what Resolve must know about this machine.
type Host interface {
	// InterfaceOf returns the interface that holds addr.
	InterfaceOf(addr netip.Addr) (string, error)
}

// Problem is something in the ConfigMap that cannot be applied on this
// node as the cluster is now: a Service that does not exist, a port it
// does not have.
type Problem struct {
	// Source is where the entry was written ("key 10.0.0.5",
	// "config.yaml virtualServers[2]").
	Source string
	Reason string
}

func (p Problem) Error() string { return p.Source + ": " + p.Reason }

// Resolve turns the Spec into this node's configuration. Entries that
// cannot be resolved are left out and reported; the rest apply.
func Resolve(spec *configmap.Spec, c Cluster, host Host) (*config.Config, []Problem) {
	r := resolver{spec: spec, c: c, host: host, out: &config.Config{Kernel: spec.Kernel}}
	if !r.selectNodes() {
		return r.out, r.problems
	}
	if spec.Routing != nil {
		r.routing(spec.Routing)
	}
	for _, in := range spec.Instances {
		r.instance(in)
	}
	seen := map[lvs.Key]string{}
	var vsSrc []string
	for _, vs := range spec.VirtualServers {
		for _, out := range r.virtualServer(vs) {
			s, errs := out.Check("")
			if len(errs) > 0 {
				for _, e := range errs {
					r.bad(vs.Source, "%v", e)
				}
				continue
			}
			if other, dup := seen[s.Key]; dup {
				r.bad(vs.Source, "%s is also defined by %s", s.Key, other)
				continue
			}
			seen[s.Key] = vs.Source
			r.out.VirtualServers = append(r.out.VirtualServers, out)
			vsSrc = append(vsSrc, vs.Source)
		}
	}
	// What passed the checks one by one must pass them together: entries
	// that clash with one before them on this node are left out.
	if r.out.Validate() != nil {
		r.out = r.withoutClashes(vsSrc)
	}
	// If it still does not validate, that is a bug here, and nothing of
	// this version applies.
	if err := r.out.Validate(); err != nil {
		return nil, append(r.problems, Problem{Source: "resolved configuration", Reason: err.Error()})
	}
	return r.out, r.problems
}

// withoutClashes rebuilds the configuration entry by entry, leaving out
// and reporting each one that makes it invalid; routing first, without
// which announce blocks are dropped too.
func (r *resolver) withoutClashes(vsSrc []string) *config.Config {
	out := &config.Config{Kernel: r.out.Kernel, Routing: r.out.Routing}
	if out.Routing != nil {
		if err := out.Validate(); err != nil {
			r.bad("config.yaml routing", "left out on this node: %v", err)
			out.Routing = nil
		}
	}
	if out.Routing == nil {
		// Nothing to announce with: announce blocks would make their
		// instances invalid, and the VIPs must still run.
		for i := range r.out.Instances {
			r.out.Instances[i].Announce = nil
		}
	}
	for i, in := range r.out.Instances {
		try := *out
		try.Instances = append(slices.Clone(out.Instances), in)
		if err := try.Validate(); err != nil {
			r.bad(r.instSrc[i], "left out: it clashes on this node with an entry before it: %v", err)
			continue
		}
		*out = try
	}
	for i, vs := range r.out.VirtualServers {
		try := *out
		try.VirtualServers = append(slices.Clone(out.VirtualServers), vs)
		if err := try.Validate(); err != nil {
			r.bad(vsSrc[i], "left out: it clashes on this node with an entry before it: %v", err)
			continue
		}
		*out = try
	}
	return out
}

type resolver struct {
	spec     *configmap.Spec
	c        Cluster
	host     Host
	out      *config.Config
	problems []Problem

	self     *corev1.Node
	selected []*corev1.Node // sorted by name
	instSrc  []string       // the Source of each of out.Instances
	// noNextHop6: BGP is configured and this node has no IPv6 address
	// for the next hop of IPv6 VIPs.
	noNextHop6 bool
}

// add appends a resolved instance.
func (r *resolver) add(in config.Instance, src string) {
	r.out.Instances = append(r.out.Instances, in)
	r.instSrc = append(r.instSrc, src)
}

// keepOrDrop reports an instance this node cannot resolve now for a
// reason of its own (not of the ConfigMap), and keeps the form it runs,
// if any, so that a passing glitch does not release its VIPs.
func (r *resolver) keepOrDrop(in configmap.Instance, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if prev := r.c.Previous; prev != nil {
		for _, old := range prev.Instances {
			if old.Name == in.Name {
				r.bad(in.Source, "%s; it keeps running as it was", msg)
				r.add(old, in.Source)
				return
			}
		}
	}
	r.bad(in.Source, "%s", msg)
}

func (r *resolver) bad(source, format string, args ...any) {
	r.problems = append(r.problems, Problem{Source: source, Reason: fmt.Sprintf(format, args...)})
}

// selectNodes applies the node selector; it reports false when this node
// does not take part.
func (r *resolver) selectNodes() bool {
	sel := labels.Everything()
	if r.spec.NodeSelector != "" {
		s, err := labels.Parse(r.spec.NodeSelector)
		if err != nil { // configmap.Parse checked it
			r.bad("config.yaml nodeSelector", "%v", err)
			return false
		}
		sel = s
	}
	for _, n := range r.c.Nodes {
		if sel.Matches(labels.Set(n.Labels)) {
			r.selected = append(r.selected, n)
		}
		if n.Name == r.c.NodeName {
			r.self = n
		}
	}
	slices.SortFunc(r.selected, func(a, b *corev1.Node) int { return cmp.Compare(a.Name, b.Name) })
	if r.self == nil {
		r.bad("node "+r.c.NodeName, "not found in the cluster: no VRRP instance or virtual server runs here")
		return false
	}
	if !slices.Contains(r.selected, r.self) {
		// Not an error: the selector leaves this node out on purpose.
		return false
	}
	return true
}

// nodeAddress is a node's InternalIP of the family of a.
func nodeAddress(n *corev1.Node, v6 bool) netip.Addr {
	for _, typ := range []corev1.NodeAddressType{corev1.NodeInternalIP, corev1.NodeExternalIP} {
		for _, na := range n.Status.Addresses {
			if na.Type != typ {
				continue
			}
			a, err := netip.ParseAddr(na.Address)
			if err == nil && a.Unmap().Is6() == v6 {
				return a.Unmap()
			}
		}
	}
	return netip.Addr{}
}

func (r *resolver) instance(in configmap.Instance) {
	out := in.Instance
	v6 := false
	if len(in.VIPs) > 0 {
		if p, err := parseVIP(in.VIPs[0]); err == nil {
			v6 = p.Addr().Is6()
		}
	}
	fam := "IPv4"
	if v6 {
		fam = "IPv6"
	}
	self := nodeAddress(r.self, v6)
	if out.Interface == "" {
		if !self.IsValid() {
			r.keepOrDrop(in, "node %s has no %s address to find its interface by: set interface", r.self.Name, fam)
			return
		}
		ifname, err := r.host.InterfaceOf(self)
		if err != nil {
			r.keepOrDrop(in, "finding the interface of node address %s: %v", self, err)
			return
		}
		out.Interface = ifname
	}
	switch in.PriorityFrom {
	case configmap.PriorityNodeOrder:
		p := min(100+slices.Index(r.selected, r.self), 254)
		out.Priority = &p
	}
	if p, ok := in.NodePriorities[r.self.Name]; ok {
		out.Priority = &p
	}
	if in.UnicastPeersFrom == "nodes" {
		if !self.IsValid() {
			r.keepOrDrop(in, "unicastPeersFrom nodes: node %s has no %s address", r.self.Name, fam)
			return
		}
		if out.SourceAddress == "" {
			out.SourceAddress = self.String()
		}
		out.UnicastPeers = nil
		for _, n := range r.selected {
			if n == r.self {
				continue
			}
			if a := nodeAddress(n, v6); a.IsValid() {
				out.UnicastPeers = append(out.UnicastPeers, a.String())
			}
		}
		if len(out.UnicastPeers) == 0 {
			// A single node: unicast to nobody is still a valid
			// configuration (it becomes master), but say why.
			r.bad(in.Source, "unicastPeersFrom nodes: no other selected node has a %s address; this node advertises to nobody", fam)
		}
	}
	if _, errs := out.Check(""); len(errs) > 0 {
		for _, e := range errs {
			r.bad(in.Source, "%v", e)
		}
		return
	}
	if v6 && r.noNextHop6 && (out.Announce == nil || out.Announce.Mode != "none") {
		// The VIPs run; only their announcement cannot.
		r.bad(in.Source, "not announced: node %s has no IPv6 address to be the next hop (set routing.bgp.nextHop6)", r.self.Name)
		out.Announce = &config.Announce{Mode: "none"}
	}
	r.add(out, in.Source)
}

// routing resolves the routing section for this node: the BGP router ID
// and IPv6 next hop default to its addresses; the Services the ConfigMap
// names have their cluster and external IPs announced if asked.
func (r *resolver) routing(rt *configmap.Routing) {
	out := rt.Routing
	const src = "config.yaml routing"
	if out.BGP != nil {
		b := *out.BGP
		if b.RouterID == "" {
			a := nodeAddress(r.self, false)
			if !a.IsValid() {
				r.bad(src, "node %s has no IPv4 address to be the BGP router ID: set routing.bgp.routerID", r.self.Name)
				if prev := r.c.Previous; prev != nil && prev.Routing != nil {
					p := *prev.Routing
					r.out.Routing = &p // what ran stays
				}
				return
			}
			b.RouterID = a.String()
		}
		if b.NextHop6 == "" {
			if a := nodeAddress(r.self, true); a.IsValid() {
				b.NextHop6 = a.String()
			}
		}
		out.BGP = &b
	}
	out.Static = slices.Clone(out.Static)
	if rt.AdvertiseClusterIPs || rt.AdvertiseExternalIPs {
		// What is announced already, as prefixes ("10.96.0.10" and
		// "10.96.0.10/32" are one): the static list and every VIP, which
		// its instance or ECMP entry announces.
		seen := map[string]bool{}
		mark := func(s string) {
			if p, err := parseVIP(s); err == nil {
				seen[netip.PrefixFrom(p.Addr(), p.Addr().BitLen()).String()] = true
				seen[p.String()] = true
			}
		}
		for _, s := range out.Static {
			mark(s)
		}
		for _, in := range r.spec.Instances {
			for _, v := range in.VIPs {
				mark(v)
			}
		}
		for _, e := range out.ECMP {
			mark(e.VIP)
		}
		var names []string
		for _, vs := range r.spec.VirtualServers {
			if vs.Service != "" && !slices.Contains(names, vs.Service) {
				names = append(names, vs.Service)
			}
		}
		slices.Sort(names)
		for _, name := range names {
			ns, n, _ := strings.Cut(name, "/")
			svc := r.c.Service(ns, n)
			if svc == nil {
				continue // reported with its virtual server
			}
			var ips []string
			if rt.AdvertiseClusterIPs {
				ips = append(ips, svc.Spec.ClusterIPs...)
			}
			if rt.AdvertiseExternalIPs {
				ips = append(ips, svc.Spec.ExternalIPs...)
			}
			for _, ip := range ips {
				a, err := netip.ParseAddr(ip)
				if err != nil {
					continue // "None": a headless Service
				}
				p := netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()).String()
				if !seen[p] {
					seen[p] = true
					out.Static = append(out.Static, p)
				}
			}
		}
	}
	r.out.Routing = &out
	if out.BGP != nil && out.BGP.NextHop6 == "" {
		r.noNextHop6 = true
	}
}

func parseVIP(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		return netip.ParsePrefix(s)
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a.Unmap(), a.BitLen()), nil
}

// virtualServer expands one entry into the virtual servers it stands for:
// itself, or one per matching port of its Service with the Service's
// endpoints as real servers.
func (r *resolver) virtualServer(vs configmap.VirtualServer) []config.VirtualServer {
	if vs.Service == "" {
		return []config.VirtualServer{vs.VirtualServer}
	}
	ns, name, _ := strings.Cut(vs.Service, "/")
	svc := r.c.Service(ns, name)
	if svc == nil {
		r.bad(vs.Source, "service %s not found", vs.Service)
		return nil
	}
	vip, err := netip.ParseAddr(vs.VIP)
	if err != nil { // configmap.Parse checked it
		r.bad(vs.Source, "vip %q is not an IP address", vs.VIP)
		return nil
	}
	vip = vip.Unmap()
	ports, ok := r.servicePorts(vs, svc)
	if !ok {
		return nil
	}
	eps := r.c.EndpointSlices(ns, name)
	var out []config.VirtualServer
	for _, sp := range ports {
		v := vs.VirtualServer
		port := int(sp.Port)
		if vs.Port != 0 {
			port = vs.Port
		}
		v.Port = port
		v.Protocol = strings.ToLower(string(sp.Protocol))
		if v.Protocol == "" {
			v.Protocol = "tcp"
		}
		if v.Name == "" {
			v.Name = vs.Service + ":" + portName(sp)
		} else if len(ports) > 1 {
			v.Name += ":" + portName(sp)
		}
		reals := endpoints(eps, sp, vip.Is6())
		fwd := strings.ToLower(v.Forwarding)
		v.RealServers = nil
		remapped := false
		for _, rs := range reals {
			if (fwd == "dr" || fwd == "tun") && int(rs.port) != port {
				r.bad(vs.Source, "service %s port %s: %s forwarding cannot send VIP port %d to target port %d (the real server must listen on the VIP's port): use nat, or make targetPort equal the port",
					vs.Service, portName(sp), fwd, port, rs.port)
				remapped = true
				break
			}
			w := rs.weight
			v.RealServers = append(v.RealServers, config.RealServer{Address: rs.addr.String(), Port: int(rs.port), Weight: &w})
		}
		if !remapped {
			out = append(out, v)
		}
	}
	return out
}

func portName(sp corev1.ServicePort) string {
	if sp.Name != "" {
		return sp.Name
	}
	return strconv.Itoa(int(sp.Port))
}

// servicePorts picks the Service ports an entry serves.
func (r *resolver) servicePorts(vs configmap.VirtualServer, svc *corev1.Service) ([]corev1.ServicePort, bool) {
	if vs.Port == 0 {
		if len(svc.Spec.Ports) == 0 {
			r.bad(vs.Source, "service %s has no ports", vs.Service)
			return nil, false
		}
		return svc.Spec.Ports, true
	}
	var match func(sp corev1.ServicePort) bool
	switch {
	case vs.ServicePort == "":
		match = func(sp corev1.ServicePort) bool { return int(sp.Port) == vs.Port }
	default:
		n, err := strconv.Atoi(vs.ServicePort)
		match = func(sp corev1.ServicePort) bool {
			return sp.Name == vs.ServicePort || err == nil && int(sp.Port) == n
		}
	}
	var out []corev1.ServicePort
	for _, sp := range svc.Spec.Ports {
		if match(sp) {
			out = append(out, sp)
		}
	}
	if len(out) == 0 {
		want := strconv.Itoa(vs.Port)
		if vs.ServicePort != "" {
			want = strconv.Quote(vs.ServicePort)
		}
		var have []string
		for _, sp := range svc.Spec.Ports {
			have = append(have, fmt.Sprintf("%s=%d/%s", portName(sp), sp.Port, sp.Protocol))
		}
		r.bad(vs.Source, "service %s has no port %s (it has %s)", vs.Service, want, strings.Join(have, ", "))
		return nil, false
	}
	return out, true
}

type endpoint struct {
	addr   netip.Addr
	port   uint16
	weight int
}

// endpoints returns the real servers of one Service port: ready endpoints
// with weight 1; endpoints that are terminating but still serving with
// weight 0, so that their connections drain — or weight 1 when no endpoint
// is ready, as kube-proxy falls back to them. Endpoints that do not serve
// are left out.
func endpoints(eps []*discoveryv1.EndpointSlice, sp corev1.ServicePort, v6 bool) []endpoint {
	want := discoveryv1.AddressTypeIPv4
	if v6 {
		want = discoveryv1.AddressTypeIPv6
	}
	type state struct {
		endpoint
		ready bool
	}
	found := map[netip.AddrPort]*state{}
	var order []netip.AddrPort
	for _, s := range eps {
		if s.AddressType != want {
			continue
		}
		var port *discoveryv1.EndpointPort
		for i := range s.Ports {
			p := &s.Ports[i]
			name := ""
			if p.Name != nil {
				name = *p.Name
			}
			if name == sp.Name && (p.Protocol == nil || *p.Protocol == sp.Protocol || sp.Protocol == "") {
				port = p
				break
			}
		}
		if port == nil || port.Port == nil || *port.Port < 1 || *port.Port > 65535 {
			continue
		}
		for _, ep := range s.Endpoints {
			c := ep.Conditions
			ready := c.Ready == nil || *c.Ready
			serving := ready
			if c.Serving != nil {
				serving = *c.Serving
			}
			if !serving {
				continue
			}
			for _, a := range ep.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil || ip.Unmap().Is6() != v6 {
					continue
				}
				k := netip.AddrPortFrom(ip.Unmap(), uint16(*port.Port))
				if st, ok := found[k]; ok {
					st.ready = st.ready || ready
					continue
				}
				found[k] = &state{endpoint{addr: k.Addr(), port: k.Port()}, ready}
				order = append(order, k)
			}
		}
	}
	anyReady := false
	for _, st := range found {
		anyReady = anyReady || st.ready
	}
	slices.SortFunc(order, func(x, y netip.AddrPort) int { return x.Compare(y) })
	out := make([]endpoint, 0, len(order))
	for _, k := range order {
		st := found[k]
		st.weight = 0
		if st.ready || !anyReady {
			st.weight = 1
		}
		out = append(out, st.endpoint)
	}
	return out
}
