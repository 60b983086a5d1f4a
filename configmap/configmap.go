// Package configmap reads the vip-configmap. It knows two forms, which may
// be mixed in one ConfigMap:
//
//   - kube-keepalived-vip's: each data key is an IPv4 VIP and its value
//     "namespace/service", optionally followed by ":NAT" (the default) or
//     ":DR"; an empty value holds the VIP without load balancing. These
//     VIPs share one VRRP instance, "vips", configured by the daemon's
//     flags as kube-keepalived-vip's was.
//   - a structured key, "config.yaml", carrying the model of package config
//     (VRRP instances, virtual servers, kernel settings) plus what only
//     makes sense in a cluster: virtual servers whose real servers are a
//     Service's endpoints, priorities that follow node order, unicast peers
//     that follow the Nodes.
//
// Parse is pure: it turns the ConfigMap's data into a Spec and a list of
// problems, each naming the key (and the field) and the reason. A bad
// entry never takes down the others, and an entry that was good before
// keeps its last good form while its new form is bad.
package configmap

import (
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/keepvip/keepvip/config"
)

// StructuredKey is the data key of the structured form.
const StructuredKey = "config.yaml"

// LegacyInstance is the name of the VRRP instance that holds the VIPs of
// kube-keepalived-vip style keys (kube-keepalived-vip's own name for it).
const LegacyInstance = "vips"

// Priority policies (Instance.PriorityFrom).
const (
	// PriorityStatic: the instance's priority field, the same on every
	// node unless the node has its own in NodePriorities.
	PriorityStatic = ""
	// PriorityNodeOrder: 100 + the node's position among the selected
	// nodes sorted by name, at most 254 (kube-keepalived-vip's scheme).
	PriorityNodeOrder = "nodeOrder"
)

// Defaults are the settings of the "vips" instance that
// kube-keepalived-vip style keys create, from the daemon's flags.
type Defaults struct {
	// Interface; "" means the interface holding the node's address.
	Interface string
	// VRID of the instance; kube-keepalived-vip used 50.
	VRID int
	// Unicast sends adverts to the other nodes instead of multicast.
	Unicast bool
	// AdvertInterval, e.g. "1s" (kube-keepalived-vip's fixed value).
	AdvertInterval string
}

// DefaultDefaults are kube-keepalived-vip's settings.
func DefaultDefaults() Defaults {
	return Defaults{VRID: 50, AdvertInterval: "1s"}
}

// Spec is what the ConfigMap asks for, before it meets the cluster.
type Spec struct {
	Instances      []Instance
	VirtualServers []VirtualServer
	Kernel         config.Kernel
	// NodeSelector picks the nodes that take part (unicast peers, node
	// order); empty selects every node.
	NodeSelector string
	// Routing announces the VIPs to routers; nil: nothing is.
	Routing *Routing

	legacyKeys []string // the VIP keys that were good
}

// Instance is a VRRP instance of the vip-configmap. Unlike in a
// configuration file, Interface may be empty (the interface holding the
// node's address), and the priority and the unicast peers may follow the
// cluster's nodes.
type Instance struct {
	config.Instance `json:",inline"`
	// PriorityFrom: "" (the priority field) or "nodeOrder".
	PriorityFrom string `json:"priorityFrom,omitempty"`
	// NodePriorities overrides the priority on the named nodes.
	NodePriorities map[string]int `json:"nodePriorities,omitempty"`
	// UnicastPeersFrom: "nodes" sends adverts to the address of every
	// other selected node of the instance's family, following node
	// changes. It replaces unicastPeers.
	UnicastPeersFrom string `json:"unicastPeersFrom,omitempty"`

	// Source is where it was defined: a key, or "config.yaml
	// instances[N]".
	Source string `json:"-"`
	// id identifies it across versions of the ConfigMap: its name as
	// written, or its interface and VRID.
	id string
}

// VirtualServer is a virtual server of the vip-configmap: as in a
// configuration file, or with Service instead of RealServers.
type VirtualServer struct {
	config.VirtualServer `json:",inline"`
	// Service ("namespace/name") provides the real servers: its ready
	// endpoints, at the target port. With Port 0, every port of the
	// Service is served on the VIP at the same port number.
	Service string `json:"service,omitempty"`
	// ServicePort picks the Service's port by name or number; default:
	// the one whose port is Port.
	ServicePort string `json:"servicePort,omitempty"`

	Source string `json:"-"`
	id     string
}

// Problem is one bad entry.
type Problem struct {
	// Key is the data key; Path the field inside config.yaml, if any.
	Key    string
	Path   string
	Reason string
}

func (p Problem) Error() string {
	if p.Path == "" {
		return fmt.Sprintf("key %q: %s", p.Key, p.Reason)
	}
	return fmt.Sprintf("key %q: %s: %s", p.Key, p.Path, p.Reason)
}

// document is the structured key.
type document struct {
	Instances      []Instance      `json:"instances,omitempty"`
	VirtualServers []VirtualServer `json:"virtualServers,omitempty"`
	Kernel         config.Kernel   `json:"kernel,omitempty"`
	NodeSelector   string          `json:"nodeSelector,omitempty"`
	Routing        *Routing        `json:"routing,omitempty"`
}

// Routing is the routing section of a configuration file, in the
// vip-configmap: the BGP router ID and IPv6 next hop default to this
// node's addresses, and the Services the ConfigMap names can have their
// IPs announced from every node (kube-router's --advertise-cluster-ip and
// --advertise-external-ip), off by default.
type Routing struct {
	config.Routing       `json:",inline"`
	AdvertiseClusterIPs  bool `json:"advertiseClusterIPs,omitempty"`
	AdvertiseExternalIPs bool `json:"advertiseExternalIPs,omitempty"`
}

// check validates r as far as can be known without the node: with a
// router ID and an IPv6 next hop standing in for the node's.
func (r *Routing) check() []error {
	c := r.Routing
	if c.BGP != nil {
		b := *c.BGP
		if b.RouterID == "" {
			b.RouterID = "192.0.2.1"
		}
		if b.NextHop6 == "" {
			b.NextHop6 = "2001:db8::1"
		}
		c.BGP = &b
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

// Parse reads the ConfigMap's data. prev is the Spec in force (nil at
// start): an entry that is bad now but was good then keeps its previous
// form. It returns the new Spec and every problem, sorted by key.
func Parse(data map[string]string, d Defaults, prev *Spec) (*Spec, []Problem) {
	p := &parser{prev: prev, out: &Spec{}, slots: map[string]string{}, names: map[string]string{}, vips: map[netip.Addr]string{}}
	// The running instance of the VIP keys keeps its VRID and name: a
	// new structured instance that takes them is the one refused.
	if old, ok := prev.legacy(); ok && hasLegacyKeys(data) {
		old.reserve(legacyPath, p.slots, p.names)
	}
	// A removed key is removed on purpose: nothing of it is kept.
	if raw, ok := data[StructuredKey]; ok {
		p.structured(raw)
	}
	keys := make([]string, 0, len(data))
	for k := range data {
		if k != StructuredKey {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var legacyVIPs []string
	for _, k := range keys {
		vip, vs, ok := p.legacy(k, data[k])
		if !ok {
			if prev != nil && slices.Contains(prev.legacyKeys, k) {
				legacyVIPs = append(legacyVIPs, k)
				p.out.legacyKeys = append(p.out.legacyKeys, k)
				p.out.VirtualServers = append(p.out.VirtualServers, prev.fromSource(keySource(k))...)
			}
			continue
		}
		legacyVIPs = append(legacyVIPs, vip)
		p.out.legacyKeys = append(p.out.legacyKeys, k)
		p.out.VirtualServers = append(p.out.VirtualServers, vs...)
	}
	p.legacyInstance(legacyVIPs, d)
	slices.SortStableFunc(p.problems, func(a, b Problem) int { return strings.Compare(a.Key, b.Key) })
	return p.out, p.problems
}

type parser struct {
	prev     *Spec
	out      *Spec
	problems []Problem
	// What the instances so far use, to report conflicts.
	slots, names map[string]string
	vips         map[netip.Addr]string
}

func (p *parser) bad(key, path, format string, args ...any) {
	p.problems = append(p.problems, Problem{Key: key, Path: path, Reason: fmt.Sprintf(format, args...)})
}

func keySource(k string) string { return "key " + k }

// legacy reads one kube-keepalived-vip entry. It returns the VIP and its
// virtual servers (none for an empty value), or false after reporting a
// problem.
func (p *parser) legacy(key, value string) (string, []VirtualServer, bool) {
	a, err := netip.ParseAddr(key)
	if err != nil || !a.Is4() {
		p.bad(key, "", "not an IPv4 address: want \"VIP: namespace/service[:NAT|:DR]\", or %s for everything else (IPv6 VIPs go there: a ConfigMap key cannot contain ':')", StructuredKey)
		return "", nil, false
	}
	value = strings.TrimSpace(value)
	if value == "" {
		return a.String(), nil, true
	}
	svc, mode, _ := strings.Cut(value, ":")
	fwd := "nat"
	switch strings.ToUpper(mode) {
	case "", "NAT":
	case "DR":
		fwd = "dr"
	case "PROXY":
		p.bad(key, "", "%q: PROXY (kube-keepalived-vip's HAProxy with the PROXY protocol) is not supported: use NAT or DR", value)
		return "", nil, false
	default:
		p.bad(key, "", "%q: unknown mode %q: want NAT or DR", value, mode)
		return "", nil, false
	}
	if err := checkServiceName(svc); err != nil {
		p.bad(key, "", "%q: %v", value, err)
		return "", nil, false
	}
	vs := VirtualServer{Service: svc, Source: keySource(key)}
	vs.VIP = a.String()
	vs.Forwarding = fwd
	// kube-keepalived-vip's fixed settings: wlc, 30 min persistence,
	// TCP_CHECK with delay_loop 5 and connect_timeout 3.
	vs.Scheduler = "wlc"
	vs.Persistence = &config.Persistence{Timeout: config.D(1800e9)}
	vs.HealthCheck = &config.HealthCheck{Interval: config.D(5e9), Timeout: config.D(3e9)}
	if errs := vs.check("", true); len(errs) > 0 {
		for _, e := range errs {
			p.bad(key, "", "%v", e)
		}
		return "", nil, false
	}
	return a.String(), []VirtualServer{vs}, true
}

// checkServiceName checks "namespace/name".
func checkServiceName(s string) error {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" {
		return errors.New("want namespace/service")
	}
	if msgs := validation.IsDNS1123Label(ns); len(msgs) > 0 {
		return fmt.Errorf("namespace %q: %s", ns, msgs[0])
	}
	if msgs := validation.IsDNS1035Label(name); len(msgs) > 0 {
		return fmt.Errorf("service name %q: %s", name, msgs[0])
	}
	return nil
}

// structured reads config.yaml.
func (p *parser) structured(raw string) {
	var doc document
	if err := yaml.UnmarshalStrict([]byte(raw), &doc); err != nil {
		p.bad(StructuredKey, "", "%s", config.DecodeError(err))
		if p.prev != nil {
			// Keep all of the last good structured configuration.
			for _, in := range p.prev.Instances {
				if in.Source != "" && strings.HasPrefix(in.Source, StructuredKey) {
					p.out.Instances = append(p.out.Instances, in)
				}
			}
			p.out.VirtualServers = append(p.out.VirtualServers, p.prev.fromSourcePrefix(StructuredKey)...)
			p.out.Kernel = p.prev.Kernel
			p.out.NodeSelector = p.prev.NodeSelector
			p.out.Routing = p.prev.Routing
		}
		return
	}
	if doc.NodeSelector != "" {
		if _, err := labels.Parse(doc.NodeSelector); err != nil {
			p.bad(StructuredKey, "nodeSelector", "%q: %v", doc.NodeSelector, err)
			if p.prev != nil {
				p.out.NodeSelector = p.prev.NodeSelector
			}
		} else {
			p.out.NodeSelector = doc.NodeSelector
		}
	}
	if doc.Routing != nil {
		if errs := doc.Routing.check(); len(errs) > 0 {
			for _, e := range errs {
				p.bad(StructuredKey, "", "%v", e)
			}
			if p.prev != nil {
				p.out.Routing = p.prev.Routing // the last good one
			}
		} else {
			p.out.Routing = doc.Routing
		}
	}
	kc := config.Config{Kernel: doc.Kernel}
	if errs := kc.CheckKernel(); len(errs) > 0 {
		for _, e := range errs {
			p.bad(StructuredKey, "", "%v", e)
		}
		if p.prev != nil {
			p.out.Kernel = p.prev.Kernel
		}
	} else {
		p.out.Kernel = doc.Kernel
	}

	// Instances: each one checked alone, then against those before it.
	for i := range doc.Instances {
		in := doc.Instances[i]
		path := fmt.Sprintf("instances[%d]", i)
		in.Source = StructuredKey + " " + path
		in.id = in.Name
		if in.id == "" {
			in.id = fmt.Sprintf("%s/%d", in.Interface, in.VRID)
		}
		errs := in.check(path)
		if len(errs) == 0 {
			errs = in.conflicts(path, p.slots, p.names, p.vips)
		}
		if len(errs) > 0 {
			for _, e := range errs {
				p.bad(StructuredKey, "", "%v", e)
			}
			// The form that ran, found by its identity or, when the
			// mistake is in the fields that identify it, by its place.
			old, ok := p.prev.instance(in.id)
			if !ok {
				old, ok = p.prev.instanceFrom(in.Source)
			}
			if ok && !slices.ContainsFunc(p.out.Instances, func(x Instance) bool { return x.id == old.id }) {
				// It holds its VRID, name and VIPs against those after it.
				old.reserve(path, p.slots, p.names)
				for _, a := range old.addrs() {
					p.vips[a] = path
				}
				p.out.Instances = append(p.out.Instances, old)
			}
			continue
		}
		p.out.Instances = append(p.out.Instances, in)
	}
	for i := range doc.VirtualServers {
		vs := doc.VirtualServers[i]
		path := fmt.Sprintf("virtualServers[%d]", i)
		vs.Source = StructuredKey + " " + path
		vs.id = vs.Name
		if vs.id == "" {
			vs.id = fmt.Sprintf("%s:%d/%s/%s/%d", vs.VIP, vs.Port, vs.Protocol, vs.Service, vs.FWMark)
		}
		if errs := vs.check(path, false); len(errs) > 0 {
			for _, e := range errs {
				p.bad(StructuredKey, "", "%v", e)
			}
			old := p.prev.virtualServer(vs.id)
			if len(old) == 0 {
				old = p.prev.fromSource(vs.Source)
			}
			p.out.VirtualServers = append(p.out.VirtualServers, old...)
			continue
		}
		p.out.VirtualServers = append(p.out.VirtualServers, vs)
	}
}

// legacyInstance adds the VIPs of kube-keepalived-vip style keys: to the
// structured instance that already lists them or is called "vips", or to
// an instance "vips" made from the defaults.
func (p *parser) legacyInstance(vips []string, d Defaults) {
	var rest []string
	for _, v := range vips {
		a := netip.MustParseAddr(v)
		if !slices.ContainsFunc(p.out.Instances, func(in Instance) bool { return in.hasVIP(a) }) {
			rest = append(rest, v)
		}
	}
	if len(rest) == 0 {
		return
	}
	for i := range p.out.Instances {
		if p.out.Instances[i].Name == LegacyInstance {
			p.out.Instances[i].VIPs = append(slices.Clone(p.out.Instances[i].VIPs), rest...)
			return
		}
	}
	in := Instance{PriorityFrom: PriorityNodeOrder, Source: legacySource}
	in.Name = LegacyInstance
	in.Interface = d.Interface
	in.VRID = d.VRID
	in.VIPs = rest
	// kube-keepalived-vip hard-coded nopreempt, so that a node joining
	// (and shifting the node order) does not take the VIPs.
	no := false
	in.Preempt = &no
	if d.AdvertInterval != "" {
		in.AdvertInterval = config.DurationOf(d.AdvertInterval)
	}
	if d.Unicast {
		in.UnicastPeersFrom = "nodes"
	}
	path := legacyPath
	errs := in.check(path)
	if len(errs) == 0 {
		errs = in.conflicts(path, p.slots, p.names, p.vips)
	}
	if len(errs) > 0 {
		for _, e := range errs {
			p.bad(rest[0], "", "%v", e)
		}
		return
	}
	p.out.Instances = append(p.out.Instances, in)
}

func (in *Instance) hasVIP(a netip.Addr) bool {
	for _, s := range in.VIPs {
		if pf, err := parseVIP(s); err == nil && pf.Addr() == a {
			return true
		}
	}
	return false
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

// placeholderInterface stands in for "the node's interface" while an
// instance is checked before it meets a node.
const placeholderInterface = "keepvip0"

// check validates one instance as far as can be known without the
// cluster, and fills in its default name.
func (in *Instance) check(path string) []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &config.FieldError{Path: path + "." + field, Reason: fmt.Sprintf(format, args...)})
	}
	c := in.Instance
	if c.Interface == "" {
		c.Interface = placeholderInterface
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
	vc, ierrs := c.Check(path)
	errs = append(errs, ierrs...)
	if c.Announce != nil {
		errs = append(errs, c.Announce.Check(path+".announce")...)
	}
	if in.Name == "" && len(ierrs) == 0 {
		// As in a configuration file, "<interface>-<vrid>"; with the
		// node's interface, which differs between nodes, "vrid-<vrid>".
		in.Name = fmt.Sprintf("%s-%d", in.Interface, vc.VRID)
		if in.Interface == "" {
			in.Name = fmt.Sprintf("vrid-%d", vc.VRID)
		}
		if len(vc.VIPs) > 0 && !vc.VIPs[0].Addr().Is4() {
			in.Name += "-v6"
		}
	}
	return errs
}

// conflicts reports what in shares with the instances before it, and
// records it.
func (in *Instance) conflicts(path string, slots, names map[string]string, vips map[netip.Addr]string) []error {
	var errs []error
	fam, addrs := in.family(), in.addrs()
	iface := in.Interface
	if iface == "" {
		iface = nodeInterface
	}
	// The node's interface may be any named one: a VRID there clashes
	// with the same VRID on any interface.
	for slot, other := range slots {
		sIface, sFam, sVRID := splitSlot(slot)
		if other == path || sFam != fam || sVRID != in.VRID || (sIface != iface && sIface != nodeInterface && iface != nodeInterface) {
			continue
		}
		errs = append(errs, &config.FieldError{Path: path + ".vrid", Reason: fmt.Sprintf("VRID %d (%s) on %s is also used by %s on %s", in.VRID, fam, iface, other, sIface)})
		break
	}
	if other, dup := names[in.Name]; dup && other != path {
		errs = append(errs, &config.FieldError{Path: path + ".name", Reason: fmt.Sprintf("%q is also the name of %s", in.Name, other)})
	}
	for j, a := range addrs {
		if other, dup := vips[a]; dup && other != path {
			errs = append(errs, &config.FieldError{Path: fmt.Sprintf("%s.vips[%d]", path, j), Reason: fmt.Sprintf("%s is also a VIP of %s", a, other)})
		}
	}
	if len(errs) == 0 {
		in.reserve(path, slots, names)
		for _, a := range addrs {
			vips[a] = path
		}
	}
	return errs
}

// nodeInterface stands for "the interface holding the node's address" in
// conflict checks.
const nodeInterface = "(node interface)"

// legacySource is the Source of the instance of the VIP keys.
const legacySource = "VIP keys"

// legacyPath names the instance of the VIP keys in problems.
const legacyPath = "instance vips (from the daemon's flags)"

func (in *Instance) family() string {
	for _, a := range in.addrs() {
		if !a.Is4() {
			return "ipv6"
		}
	}
	return "ipv4"
}

func (in *Instance) addrs() []netip.Addr {
	var out []netip.Addr
	for _, s := range in.VIPs {
		if pf, err := parseVIP(s); err == nil {
			out = append(out, pf.Addr())
		}
	}
	return out
}

// reserve records in's VRID slot and name for path.
func (in *Instance) reserve(path string, slots, names map[string]string) {
	iface := in.Interface
	if iface == "" {
		iface = nodeInterface
	}
	slots[fmt.Sprintf("%s/%s/%d", iface, in.family(), in.VRID)] = path
	names[in.Name] = path
}

func splitSlot(slot string) (iface, fam string, vrid int) {
	i := strings.LastIndexByte(slot, '/')
	vrid, _ = strconv.Atoi(slot[i+1:])
	rest := slot[:i]
	j := strings.LastIndexByte(rest, '/')
	return rest[:j], rest[j+1:], vrid
}

// check validates one virtual server as far as can be known without the
// cluster. legacy marks one made from a VIP key.
func (vs *VirtualServer) check(path string, legacy bool) []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &config.FieldError{Path: strings.TrimPrefix(path+"."+field, "."), Reason: fmt.Sprintf(format, args...)})
	}
	c := vs.VirtualServer
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

// Helpers on the previous Spec; all accept a nil Spec.

func (s *Spec) instance(id string) (Instance, bool) {
	if s == nil {
		return Instance{}, false
	}
	for _, in := range s.Instances {
		if in.id == id && strings.HasPrefix(in.Source, StructuredKey) {
			return in, true
		}
	}
	return Instance{}, false
}

// instanceFrom is the structured instance defined at src.
func (s *Spec) instanceFrom(src string) (Instance, bool) {
	if s == nil {
		return Instance{}, false
	}
	for _, in := range s.Instances {
		if in.Source == src {
			return in, true
		}
	}
	return Instance{}, false
}

// legacy is the instance of the VIP keys, if it ran.
func (s *Spec) legacy() (Instance, bool) {
	if s == nil {
		return Instance{}, false
	}
	for _, in := range s.Instances {
		if in.Source == legacySource {
			return in, true
		}
	}
	return Instance{}, false
}

func hasLegacyKeys(data map[string]string) bool {
	for k := range data {
		if k != StructuredKey {
			return true
		}
	}
	return false
}

func (s *Spec) virtualServer(id string) []VirtualServer {
	if s == nil {
		return nil
	}
	for _, vs := range s.VirtualServers {
		if vs.id == id && strings.HasPrefix(vs.Source, StructuredKey) {
			return []VirtualServer{vs}
		}
	}
	return nil
}

func (s *Spec) fromSource(src string) []VirtualServer {
	if s == nil {
		return nil
	}
	var out []VirtualServer
	for _, vs := range s.VirtualServers {
		if vs.Source == src {
			out = append(out, vs)
		}
	}
	return out
}

func (s *Spec) fromSourcePrefix(prefix string) []VirtualServer {
	if s == nil {
		return nil
	}
	var out []VirtualServer
	for _, vs := range s.VirtualServers {
		if strings.HasPrefix(vs.Source, prefix) {
			out = append(out, vs)
		}
	}
	return out
}

// Check reports bad flags for the "vips" instance.
func (d Defaults) Check() error {
	in := Instance{PriorityFrom: PriorityNodeOrder}
	in.Interface, in.VRID = d.Interface, d.VRID
	in.VIPs = []string{"192.0.2.1"}
	if d.AdvertInterval != "" {
		in.AdvertInterval = config.DurationOf(d.AdvertInterval)
	}
	if errs := in.check("flags"); len(errs) > 0 {
		return fmt.Errorf("the instance %q of VIP keys: %w", LegacyInstance, errors.Join(errs...))
	}
	return nil
}

// Data renders s as ConfigMap data that parses back (with no previous
// Spec) to s: the good entries, and the last good forms kept for bad ones.
// The daemon saves it, so that after a restart an entry that is bad in the
// live ConfigMap still has the form that ran.
func (s *Spec) Data() (map[string]string, error) {
	out := map[string]string{}
	legacyVIPs := map[string]bool{}
	for _, k := range s.legacyKeys {
		legacyVIPs[k] = true
		value := ""
		if vss := s.fromSource(keySource(k)); len(vss) > 0 {
			value = vss[0].Service
			if vss[0].Forwarding == "dr" {
				value += ":DR"
			}
		}
		out[k] = value
	}
	var doc document
	for _, in := range s.Instances {
		if !strings.HasPrefix(in.Source, StructuredKey) {
			continue
		}
		if in.id != in.Name {
			in.Name = "" // a default name: written as it was, left out
		}
		// VIPs that VIP keys added to an instance of that name come back
		// from the keys.
		in.VIPs = slices.DeleteFunc(slices.Clone(in.VIPs), func(v string) bool { return legacyVIPs[v] && in.Name == LegacyInstance })
		doc.Instances = append(doc.Instances, in)
	}
	doc.VirtualServers = s.fromSourcePrefix(StructuredKey)
	doc.Kernel, doc.NodeSelector, doc.Routing = s.Kernel, s.NodeSelector, s.Routing
	if len(doc.Instances) > 0 || len(doc.VirtualServers) > 0 || doc.NodeSelector != "" || !reflect.ValueOf(doc.Kernel).IsZero() || doc.Routing != nil {
		b, err := yaml.Marshal(doc)
		if err != nil {
			return nil, fmt.Errorf("rendering the configuration: %w", err)
		}
		out[StructuredKey] = string(b)
	}
	return out, nil
}
