// Package kube is keepvip's Kubernetes side: it follows the vip-configmap,
// the Services it names with their EndpointSlices, and the Nodes, and turns
// them into the one configuration (package config) that the VRRP and IPVS
// parts run. Those parts know nothing of Kubernetes; this package is the
// only translator.
//
// Its configuration goes to internal/daemon, which runs it (the drawing of
// the whole flow is in package config).
package kube

import (
	"cmp"
	"fmt"
	"net/netip"
	"reflect"
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
	// ClusterIPs returns the ClusterIPs of every Service, each with its
	// Service, for the guardrails; nil for none.
	ClusterIPs func() map[netip.Addr]string
	// Previous is the configuration running on this node, or nil. An
	// instance that cannot be resolved for a reason of the node or the
	// host, not of the ConfigMap (the node's address missing for a
	// moment, its interface not found), keeps its form from there.
	Previous *config.Config
	// BGPSecret is the data of the Secret that BGP passwords come from
	// (passwordSecretKey), named BGPSecretName; nil when it is not there,
	// or not known yet (BGPSecretKnown false).
	BGPSecret      map[string][]byte
	BGPSecretName  string
	BGPSecretKnown bool
}

// Host answers what Resolve must know about this machine.
type Host interface {
	// InterfaceOf returns the interface that holds addr.
	InterfaceOf(addr netip.Addr) (string, error)
	// Gateways returns the next hops of this host's routes, each with
	// what it is, for a problem.
	Gateways() (map[netip.Addr]string, error)
}

// Problem is something in the ConfigMap that cannot be applied on this
// node as the cluster is now: a Service that does not exist, a port it
// does not have.
type Problem struct {
	// Source is where the entry was written (`key 10.0.0.5`,
	// `config.yaml virtual server "web"`).
	Source string
	Reason string
	// Retry: the cause is of this host (an interface not found) and no
	// cluster event will say when it is gone: resolve again soon.
	Retry bool
}

func (p Problem) Error() string { return p.Source + ": " + p.Reason }

// Resolve turns the Spec into this node's configuration. Entries that
// cannot be resolved are left out and reported; the rest apply. Entries
// that clash only once resolved (two virtual servers on one port of a
// Service) are all left out, as configmap.Parse does, and keep what ran
// of them (c.Previous) where it claims nothing applied.
func Resolve(spec *configmap.Spec, c Cluster, host Host) (*config.Config, []Problem) {
	r := resolver{spec: spec, c: c, host: host, out: &config.Config{Kernel: spec.Kernel}}
	if !r.selectNodes() {
		if r.self == nil && c.Previous != nil {
			// A Node deleted and registered again, or not yet seen: what
			// runs stays until it is back.
			return clonePrevious(c.Previous), r.problems
		}
		return r.out, r.problems
	}
	r.surroundings()
	if spec.Routing != nil {
		r.routing(spec.Routing)
	}
	for _, in := range spec.Instances {
		r.instance(in)
	}
	r.instanceClashes()
	r.announcements()
	r.virtualServers()
	r.keptYield()
	// If it does not validate, that is a bug here: the rules above are
	// meant to leave out, one by one, whatever would make it invalid.
	if err := r.out.Validate(); err != nil {
		r.bad("resolved configuration", "%v (a bug: please report it); left out entry by entry", err)
		r.out = r.withoutClashes()
		if err := r.out.Validate(); err != nil {
			return nil, append(r.problems, Problem{Source: "resolved configuration", Reason: err.Error()})
		}
	}
	return r.out, r.problems
}

// clonePrevious copies a configuration in force, so that the caller may
// tell a new one from it.
func clonePrevious(c *config.Config) *config.Config {
	out := *c
	out.Instances = slices.Clone(c.Instances)
	out.VirtualServers = slices.Clone(c.VirtualServers)
	return &out
}

// withoutClashes rebuilds the configuration entry by entry, leaving out
// and reporting each one that makes it invalid; routing first, without
// which announce blocks are dropped too. Only a bug elsewhere gets here.
func (r *resolver) withoutClashes() *config.Config {
	out := &config.Config{Kernel: r.out.Kernel, Routing: r.out.Routing}
	if out.Routing != nil {
		if err := out.Validate(); err != nil {
			r.bad("config.yaml routing", "left out on this node: %v", err)
			out.Routing = nil
		}
	}
	if out.Routing == nil {
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
			r.bad(r.vsSrc[i], "left out: it clashes on this node with an entry before it: %v", err)
			continue
		}
		*out = try
	}
	return out
}

// virtualServers expands every virtual server entry on this node and
// leaves out, with all their virtual services, the entries whose virtual
// services clash.
func (r *resolver) virtualServers() {
	type expanded struct {
		src  string
		kept bool
		keys []lvs.Key
		vss  []config.VirtualServer
	}
	var all []expanded
	owners := map[lvs.Key][]int{}
	for _, vs := range r.spec.VirtualServers {
		x := expanded{src: vs.Source, kept: vs.Kept}
		for _, out := range r.virtualServer(vs) {
			s, errs := out.Check("")
			if len(errs) > 0 {
				for _, e := range errs {
					r.bad(vs.Source, "%v", e)
				}
				continue
			}
			if slices.Contains(x.keys, s.Key) {
				continue // one Service port listed twice: once is enough
			}
			x.keys = append(x.keys, s.Key)
			x.vss = append(x.vss, out)
			owners[s.Key] = append(owners[s.Key], len(all))
		}
		all = append(all, x)
	}
	// A last good form yields to an entry applied as written: a node
	// without that history runs the latter. Entries as written that
	// clash are all left out.
	clashed := map[int][]string{}
	for k, idx := range owners {
		if len(idx) < 2 {
			continue
		}
		for _, i := range idx {
			for _, j := range idx {
				if i != j && (all[i].kept || !all[j].kept) {
					clashed[i] = append(clashed[i], fmt.Sprintf("%s is also defined by %s", k, all[j].src))
				}
			}
		}
	}
	taken := map[lvs.Key]bool{}
	for i, x := range all {
		if _, bad := clashed[i]; bad {
			continue
		}
		for j, k := range x.keys {
			taken[k] = true
			r.out.VirtualServers = append(r.out.VirtualServers, x.vss[j])
			r.vsSrc = append(r.vsSrc, x.src)
		}
	}
	// What ran at the keys of the entries left out keeps running.
	prev := map[lvs.Key]config.VirtualServer{}
	if r.c.Previous != nil {
		for _, vs := range r.c.Previous.VirtualServers {
			if s, errs := vs.Check(""); len(errs) == 0 {
				prev[s.Key] = vs
			}
		}
	}
	// What ran at a key is kept: with the Service's endpoints as they are
	// now when an entry left out expands to it unchanged, else as it was.
	outcome := map[int]string{}
	for _, exact := range []bool{true, false} {
		for i, x := range all {
			if _, bad := clashed[i]; !bad || x.kept {
				continue // a last good form lost to one as written
			}
			for j, k := range x.keys {
				// Only what this entry ran: the same name (a removed
				// entry's stays removed, whoever clashes there now).
				old, ok := prev[k]
				if !ok || taken[k] || old.Name != x.vss[j].Name || exact != sameButReals(old, x.vss[j]) {
					continue
				}
				taken[k] = true
				if exact {
					old = x.vss[j]
				}
				r.out.VirtualServers = append(r.out.VirtualServers, old)
				r.vsSrc = append(r.vsSrc, x.src)
				outcome[i] = "what ran of it keeps running"
			}
		}
	}
	for i, x := range all {
		msgs, bad := clashed[i]
		if !bad {
			continue
		}
		slices.Sort(msgs)
		o := cmp.Or(outcome[i], "it is not applied")
		for _, m := range slices.Compact(msgs) {
			r.bad(x.src, "%s; virtual servers that clash are left out, except where one already runs: %s", m, o)
		}
	}
}

// sameButReals reports whether two virtual servers differ at most in
// their real servers (the endpoints of their Service).
func sameButReals(a, b config.VirtualServer) bool {
	a.RealServers, b.RealServers = nil, nil
	return reflect.DeepEqual(a, b)
}

// instanceClashes leaves out every instance that shares a VRID on an
// interface, a name or a VIP with another once resolved on this node,
// keeping what ran of them. configmap.Parse refuses all such clashes it
// can see; this is for the ones only a node can (none today), so that
// the rule is the same: no entry wins by its place.
func (r *resolver) instanceClashes() {
	claims := func(in config.Instance) []string {
		vc, errs := in.Check("")
		if len(errs) > 0 {
			return nil
		}
		out := []string{"name " + in.Name, fmt.Sprintf("VRID %d (%s) on %s", vc.VRID, vc.Family(), vc.Interface)}
		for _, p := range vc.VIPs {
			out = append(out, "VIP "+p.Addr().String())
		}
		return out
	}
	owners := map[string][]int{}
	for i, in := range r.out.Instances {
		for _, c := range claims(in) {
			owners[c] = append(owners[c], i)
		}
	}
	// A form that ran yields to an entry applied as written; entries as
	// written that clash are all left out.
	clashed := map[int][]string{}
	for c, idx := range owners {
		for _, i := range idx {
			for _, j := range idx {
				if i != j && (r.instKept[i] || !r.instKept[j]) {
					clashed[i] = append(clashed[i], fmt.Sprintf("%s is also %s's", c, r.instSrc[j]))
				}
			}
		}
	}
	if len(clashed) == 0 {
		return
	}
	ins, srcs, kept := r.out.Instances, r.instSrc, r.instKept
	r.out.Instances, r.instSrc, r.instKept = nil, nil, nil
	taken := map[string]bool{}
	for i, in := range ins {
		if _, bad := clashed[i]; !bad {
			r.addKept(in, srcs[i], kept[i])
			for _, c := range claims(in) {
				taken[c] = true
			}
		}
	}
	for i, in := range ins {
		msgs, bad := clashed[i]
		if !bad {
			continue
		}
		outcome := "it is not applied"
		if r.c.Previous != nil && !kept[i] {
			for _, old := range r.c.Previous.Instances {
				cs := claims(old)
				if old.Name != in.Name || slices.ContainsFunc(cs, func(c string) bool { return taken[c] }) {
					continue
				}
				for _, c := range cs {
					taken[c] = true
				}
				r.addKept(old, srcs[i], true)
				outcome = "it keeps running as it was"
				break
			}
		}
		slices.Sort(msgs)
		for _, m := range slices.Compact(msgs) {
			r.bad(srcs[i], "%s; instances that clash are left out, except where one already runs: %s", m, outcome)
		}
	}
}

// keptYield leaves out a form that ran (kept through a clash, or a
// glitch) which contradicts what applies now: a VIP with accept: false
// that a virtual server serves, or one that routing has as an ECMP VIP or
// a static route. The sets are built once: this stays linear.
func (r *resolver) keptYield() {
	served := map[netip.Addr]bool{}
	for _, vs := range r.out.VirtualServers {
		if a, err := netip.ParseAddr(vs.VIP); err == nil {
			served[a.Unmap()] = true
		}
	}
	routed := map[netip.Prefix]string{}
	if rt := r.out.Routing; rt != nil {
		for _, e := range rt.ECMP {
			if a, err := netip.ParseAddr(e.VIP); err == nil {
				routed[netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen())] = "an ECMP VIP"
			}
		}
		for _, st := range rt.Static {
			if p, err := parseVIP(st); err == nil {
				routed[p.Masked()] = "a static route"
			}
		}
	}
	var ins []config.Instance
	var srcs []string
	var kept []bool
	for i, in := range r.out.Instances {
		if r.instKept[i] {
			if why := contradicts(in, served, routed); why != "" {
				r.bad(r.instSrc[i], "its form that ran is not kept: %s", why)
				continue
			}
		}
		ins, srcs, kept = append(ins, in), append(srcs, r.instSrc[i]), append(kept, r.instKept[i])
	}
	r.out.Instances, r.instSrc, r.instKept = ins, srcs, kept
}

// contradicts says what of in contradicts what applies: "" if nothing.
func contradicts(in config.Instance, served map[netip.Addr]bool, routed map[netip.Prefix]string) string {
	noAccept := in.Accept != nil && !*in.Accept
	for _, v := range in.VIPs {
		p, err := parseVIP(v)
		if err != nil {
			continue
		}
		a := p.Addr()
		if noAccept && served[a] {
			return fmt.Sprintf("%s has accept: false, and a virtual server serves it now", a)
		}
		if what, ok := routed[netip.PrefixFrom(a, a.BitLen())]; ok {
			return fmt.Sprintf("%s is %s now", a, what)
		}
	}
	return ""
}

// announcements leaves the VIPs of an instance unannounced where its
// announce block cannot work with this node's routing (backup: worse on
// a routing table, a backup local preference not below the master's):
// the VIPs run; only their announcement cannot.
func (r *resolver) announcements() {
	rt := r.out.Routing
	if rt != nil {
		if err := (&config.Config{Routing: rt}).Validate(); err != nil {
			// What ran stays, if it still can with what applies now.
			outcome := "it is left out on this node"
			rt = nil
			if prev := r.c.Previous; prev != nil && prev.Routing != nil {
				try := config.Config{Instances: r.out.Instances, Routing: prev.Routing}
				for i := range try.Instances {
					try.Instances[i].Announce = nil
				}
				if try.Validate() == nil {
					p := *prev.Routing
					rt, outcome = &p, "what ran keeps running as it was"
				}
			}
			r.bad("config.yaml routing", "%v: %s", err, outcome)
			r.out.Routing = rt
		}
	}
	// Each announce block against the routing without its static routes
	// and ECMP VIPs, which were checked above with the instances, so that
	// this stays linear in the number of instances.
	var bare *config.Routing
	if rt != nil {
		b := *rt
		b.Static, b.ECMP = nil, nil
		bare = &b
	}
	for i := range r.out.Instances {
		in := &r.out.Instances[i]
		switch {
		case in.Announce == nil:
		case rt == nil && in.Announce.Mode == "none":
			in.Announce = nil // nothing to say it to
		case rt == nil:
			r.bad(r.instSrc[i], "announce: there is no routing section to announce with; the VIPs run unannounced")
			in.Announce = nil
		case in.Announce.Mode == "none":
		default:
			try := config.Config{Instances: []config.Instance{*in}, Routing: bare}
			if err := try.Validate(); err != nil {
				r.bad(r.instSrc[i], "not announced: %v", err)
				in.Announce = &config.Announce{Mode: "none"}
			}
		}
	}
}

type resolver struct {
	spec     *configmap.Spec
	c        Cluster
	host     Host
	out      *config.Config
	problems []Problem

	self     *corev1.Node
	selected []*corev1.Node // sorted by name
	around   config.Surroundings
	instSrc  []string // the Source of each of out.Instances
	instKept []bool   // each of out.Instances is a form that ran
	vsSrc    []string // the Source of each of out.VirtualServers
	// noNextHop6: BGP is configured and this node has no IPv6 address
	// for the next hop of IPv6 VIPs.
	noNextHop6 bool
}

// add appends a resolved instance.
func (r *resolver) add(in config.Instance, src string) { r.addKept(in, src, false) }

// addKept appends an instance; kept marks a form that ran (a last good
// form, or one kept through a glitch of this node), which yields to the
// entries applied as written.
func (r *resolver) addKept(in config.Instance, src string, kept bool) {
	r.out.Instances = append(r.out.Instances, in)
	r.instSrc = append(r.instSrc, src)
	r.instKept = append(r.instKept, kept)
}

// ran is the instance of that name that runs on this node, if any.
func (r *resolver) ran(name string) (config.Instance, bool) {
	if prev := r.c.Previous; prev != nil {
		for _, old := range prev.Instances {
			if old.Name == name {
				return old, true
			}
		}
	}
	return config.Instance{}, false
}

// glitch reports what this node cannot find out now for a reason of its
// own, not of the ConfigMap (the node's address missing for a moment, its
// interface not found), and says whether the instance can go on with
// what it found out before: it does, in its new form, where it runs.
// retry: the cause is of the host, which no cluster event will tell is
// gone (a node's address comes back with a Node change, which does).
func (r *resolver) glitch(in configmap.Instance, retry bool, format string, args ...any) (config.Instance, bool) {
	msg := fmt.Sprintf(format, args...)
	old, ok := r.ran(in.Name)
	if ok {
		msg += "; it keeps running with what was found before"
	}
	r.problems = append(r.problems, Problem{Source: in.Source, Reason: msg, Retry: retry})
	return old, ok
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
		if r.c.Previous != nil {
			r.bad("node "+r.c.NodeName, "not found in the cluster (deleted, or not registered yet): what runs here keeps running until it is back")
		} else {
			r.bad("node "+r.c.NodeName, "not found in the cluster: no VRRP instance or virtual server runs here until it is")
		}
		return false
	}
	if r.spec.NoNodes {
		// Reported by configmap.Parse: config.yaml or its nodeSelector
		// cannot be read, and this node has no last good one.
		return false
	}
	if !slices.Contains(r.selected, r.self) {
		// Not an error: the selector leaves this node out on purpose.
		return false
	}
	// Cordoned or excluded: out of the election, as if not selected (its
	// instances stop: a master hands off), but it keeps its place in the
	// node order, so that the others' priorities do not change.
	return excludedBy(r.self) == ""
}

// excludedBy says why a selected node takes no part — cordoned (kubectl
// cordon, kubectl drain) or labelled
// node.kubernetes.io/exclude-from-external-load-balancers, as Kubernetes'
// own load balancers read it — or "" if it does.
func excludedBy(n *corev1.Node) string {
	if _, ok := n.Labels[corev1.LabelNodeExcludeBalancers]; ok {
		return "labelled " + corev1.LabelNodeExcludeBalancers
	}
	if n.Spec.Unschedulable {
		return "cordoned"
	}
	return ""
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
			old, ok := r.glitch(in, false, "node %s has no %s address to find its interface by: set interface", r.self.Name, fam)
			if !ok {
				return
			}
			out.Interface = old.Interface
		} else if ifname, err := r.host.InterfaceOf(self); err != nil {
			old, ok := r.glitch(in, true, "finding the interface of node address %s: %v", self, err)
			if !ok {
				return
			}
			out.Interface = old.Interface
		} else {
			out.Interface = ifname
		}
	}
	switch in.PriorityFrom {
	case configmap.PriorityNodeOrder:
		p := min(100+slices.Index(r.selected, r.self), 254)
		out.Priority = &p
	}
	if p, ok := in.NodePriorities[r.self.Name]; ok {
		out.Priority = &p
	}
	if in.UnicastPeersFrom == "nodes" && !self.IsValid() {
		old, ok := r.glitch(in, false, "unicastPeersFrom nodes: node %s has no %s address", r.self.Name, fam)
		if !ok {
			return
		}
		if out.SourceAddress == "" {
			out.SourceAddress = old.SourceAddress
		}
		out.UnicastPeers = old.UnicastPeers
	} else if in.UnicastPeersFrom == "nodes" {
		if out.SourceAddress == "" {
			out.SourceAddress = self.String()
		}
		out.UnicastPeers = nil
		for _, n := range r.selected {
			if n == r.self || excludedBy(n) != "" {
				continue
			}
			// One peer per address, and never this node's own: two Node
			// objects may have one address for a while (a node
			// registered again under another name, a vanished one kept).
			a := nodeAddress(n, v6)
			if p := a.String(); a.IsValid() && a != self && !slices.Contains(out.UnicastPeers, p) {
				out.UnicastPeers = append(out.UnicastPeers, p)
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
	for _, v := range out.VIPs {
		if p, err := parseVIP(v); err == nil {
			if why := r.around.GuardVIP(p.Addr(), out.Allow); why != "" {
				r.bad(in.Source, "vip %s; it is not applied", why)
				return
			}
		}
	}
	r.addKept(out, in.Source, in.Kept)
}

// surroundings gathers what the guardrails need: every node's addresses
// and Pod CIDRs, the Services' ClusterIPs, this host's gateways.
func (r *resolver) surroundings() {
	g := config.Surroundings{NodeAddresses: map[netip.Addr]string{}, PodCIDRs: map[netip.Prefix]string{}}
	for _, n := range r.c.Nodes {
		for _, na := range n.Status.Addresses {
			if a, err := netip.ParseAddr(na.Address); err == nil && (na.Type == corev1.NodeInternalIP || na.Type == corev1.NodeExternalIP) {
				g.NodeAddresses[a.Unmap()] = fmt.Sprintf("node %s's %s", n.Name, na.Type)
			}
		}
		for _, c := range n.Spec.PodCIDRs {
			if p, err := netip.ParsePrefix(c); err == nil {
				g.PodCIDRs[p.Masked()] = fmt.Sprintf("node %s's Pod CIDR %s", n.Name, p)
			}
		}
	}
	if r.c.ClusterIPs != nil {
		g.ClusterIPs = r.c.ClusterIPs()
	}
	if gws, err := r.host.Gateways(); err == nil {
		g.Gateways = gws
	}
	r.around = g
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
			switch prev := r.c.Previous; {
			case a.IsValid():
				b.RouterID = a.String()
			case prev != nil && prev.Routing != nil && prev.Routing.BGP != nil && prev.Routing.BGP.RouterID != "":
				// The node's address is gone for a moment: the router ID
				// found before stays, and the rest follows the ConfigMap.
				b.RouterID = prev.Routing.BGP.RouterID
				r.bad(src, "node %s has no IPv4 address to be the BGP router ID: it keeps %s, found before", r.self.Name, b.RouterID)
			default:
				r.bad(src, "node %s has no IPv4 address to be the BGP router ID: set routing.bgp.routerID", r.self.Name)
				return
			}
		}
		if b.NextHop6 == "" {
			if a := nodeAddress(r.self, true); a.IsValid() {
				b.NextHop6 = a.String()
			}
		}
		b.Peers = r.passwords(b.Peers)
		out.BGP = &b
	}
	out.Static = slices.Clone(out.Static)
	out.ECMP = slices.DeleteFunc(slices.Clone(out.ECMP), func(e config.ECMPVIP) bool {
		a, err := netip.ParseAddr(e.VIP)
		if err != nil {
			return false
		}
		if why := r.around.GuardVIP(a, out.Allow); why != "" {
			r.bad(src, "ECMP vip %s; it is not applied", why)
			return true
		}
		return false
	})
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
	if out.BGP != nil && out.BGP.NextHop6 == "" {
		// Without an IPv6 address for the next hop, IPv6 prefixes and
		// ECMP VIPs cannot be announced from this node; the rest can.
		r.noNextHop6 = true
		why := fmt.Sprintf("not announced from node %s, which has no IPv6 address to be the next hop (set routing.bgp.nextHop6)", r.self.Name)
		out.Static = slices.DeleteFunc(out.Static, func(p string) bool {
			if pf, err := parseVIP(p); err == nil && pf.Addr().Is6() {
				r.bad(src, "static prefix %s %s", p, why)
				return true
			}
			return false
		})
		out.ECMP = slices.DeleteFunc(slices.Clone(out.ECMP), func(e config.ECMPVIP) bool {
			if a, err := netip.ParseAddr(e.VIP); err == nil && a.Unmap().Is6() {
				r.bad(src, "ECMP VIP %s %s", e.VIP, why)
				return true
			}
			return false
		})
	}
	r.out.Routing = &out
}

// passwords gives the peers whose password is in the Secret their
// password. A peer whose key is not there (the Secret deleted and created
// again, or not known yet) keeps the password it had, if it ran; else it
// is left out: it could not open its session anyway.
func (r *resolver) passwords(peers []config.BGPPeer) []config.BGPPeer {
	const src = "config.yaml routing"
	out := make([]config.BGPPeer, 0, len(peers))
	for _, p := range peers {
		key := p.PasswordSecretKey
		if key == "" {
			out = append(out, p)
			continue
		}
		p.PasswordSecretKey = ""
		if v, ok := r.c.BGPSecret[key]; ok {
			p.Password = string(v)
			out = append(out, p)
			continue
		}
		why := fmt.Sprintf("the Secret %s has no key %q", r.c.BGPSecretName, key)
		switch {
		case !r.c.BGPSecretKnown:
			why = fmt.Sprintf("the Secret %s is not known yet", r.c.BGPSecretName)
		case r.c.BGPSecret == nil:
			why = fmt.Sprintf("the Secret %s does not exist (or keepvip may not read it)", r.c.BGPSecretName)
		}
		if old, ok := r.ranPeer(p.Address); ok && old.Password != "" {
			p.Password = old.Password
			r.bad(src, "peer %s: %s: it keeps the password it had", p.Address, why)
			out = append(out, p)
			continue
		}
		r.bad(src, "peer %s: %s: left out until it is", p.Address, why)
	}
	return out
}

// ranPeer is the BGP peer at addr as it runs on this node.
func (r *resolver) ranPeer(addr string) (config.BGPPeer, bool) {
	if prev := r.c.Previous; prev != nil && prev.Routing != nil && prev.Routing.BGP != nil {
		for _, p := range prev.Routing.BGP.Peers {
			if p.Address == addr {
				return p, true
			}
		}
	}
	return config.BGPPeer{}, false
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
	if a, err := netip.ParseAddr(vs.VIP); err == nil {
		if why := r.around.GuardVIP(a, vs.Allow); why != "" {
			r.bad(vs.Source, "vip %s; it is not applied", why)
			return nil
		}
	}
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
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		r.bad(vs.Source, "service %s is of type ExternalName: it has no endpoints to balance; left out", vs.Service)
		return nil
	}
	if fams := svc.Spec.IPFamilies; len(fams) > 0 {
		want := corev1.IPv4Protocol
		if vip.Is6() {
			want = corev1.IPv6Protocol
		}
		if !slices.Contains(fams, want) {
			r.bad(vs.Source, "service %s has no %s endpoints (its families: %v) for VIP %s, which serves those of its own family: use a VIP of the Service's family, or make the Service dual-stack; left out", vs.Service, want, fams, vip)
			return nil
		}
	}
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
