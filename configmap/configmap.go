package configmap

import (
	"errors"
	"fmt"
	"strings"

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

// Check reports bad flags for the "vips" instance.
func (d Defaults) Check() error {
	in := d.instance([]string{"192.0.2.1"})
	if errs := in.check("flags"); len(errs) > 0 {
		return fmt.Errorf("the instance %q of VIP keys: %w", LegacyInstance, errors.Join(errs...))
	}
	return nil
}

// instance is the instance of the VIP keys, holding vips.
func (d Defaults) instance(vips []string) Instance {
	in := Instance{PriorityFrom: PriorityNodeOrder, Source: keyInstanceSource, id: LegacyInstance}
	in.Name = LegacyInstance
	in.Interface = d.Interface
	in.VRID = d.VRID
	in.VIPs = vips
	in.keyVIPs = vips
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
	return in
}

// Spec is what the ConfigMap asks for, before it meets the cluster: the
// entries applied, and the last good forms kept for those that are not.
type Spec struct {
	Instances      []Instance
	VirtualServers []VirtualServer
	Kernel         config.Kernel
	// NodeSelector picks the nodes that take part (unicast peers, node
	// order); empty selects every node.
	NodeSelector string
	// NoNodes: which nodes take part cannot be known (config.yaml cannot
	// be read, or its nodeSelector is bad) and there is no last good
	// selector: no node does, rather than nodes that may not be meant to.
	NoNodes bool
	// Routing announces the VIPs to routers; nil: nothing is.
	Routing *Routing
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

	// Source names the entry in problems: `config.yaml instance "web"`,
	// or "VIP keys".
	Source string `json:"-"`
	// Kept: this is the last good form of an entry that is not applied
	// as written; it yields to the entries that are, also where only a
	// node can see a clash.
	Kept bool `json:"-"`
	// id identifies it across versions of the ConfigMap: its name, as
	// written or by default.
	id string
	// keyVIPs are the VIPs that VIP keys added.
	keyVIPs []string
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

	// Source names the entry in problems: `config.yaml virtual server
	// "web"`, or "key 10.0.0.5".
	Source string `json:"-"`
	// Kept: as Instance.Kept.
	Kept bool `json:"-"`
	id   string
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

// Problem is one bad entry, or one clash between two.
type Problem struct {
	// Key is the data key: a VIP, or config.yaml.
	Key string
	// Entry names the entry inside config.yaml (`instance "web"`,
	// `virtual server "10.0.0.1:80/tcp"`, "routing"); "" for a VIP key,
	// or when config.yaml cannot be read at all.
	Entry string
	// Path is where the entry is written now ("instances[2]"), to find it.
	Path   string
	Reason string
	// Outcome says what runs of the entry on this node: "it is not
	// applied", "it keeps running as it was", ...
	Outcome string
}

func (p Problem) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "key %q", p.Key)
	if p.Entry != "" {
		b.WriteString(", " + p.Entry)
		if p.Path != "" && p.Path != p.Entry {
			b.WriteString(" (" + p.Path + ")")
		}
	}
	b.WriteString(": " + p.Reason)
	if p.Outcome != "" {
		b.WriteString(": " + p.Outcome)
	}
	return b.String()
}

// Outcomes of a problem.
const (
	outcomeNotApplied = "it is not applied"
	outcomeKept       = "it keeps running here as it was"
	// outcomeVIPOnly: a VIP key's value is refused, its VIP is held.
	outcomeVIPOnly = "its virtual server is not applied; the VIP is held"
)

// keyInstanceSource is the Source of the instance of the VIP keys.
const keyInstanceSource = "VIP keys"

func keySource(k string) string { return "key " + k }

// Parse reads the ConfigMap's data. prev is the Spec in force (nil when
// this node has none): an entry that is not applied now keeps its form
// from there where it can (see the package documentation). It returns
// the new Spec and every problem, sorted by key and entry.
func Parse(data map[string]string, d Defaults, prev *Spec) (*Spec, []Problem) {
	p := newParser(data, d, prev)
	p.read()
	if p.unreadable {
		return p.frozen(), p.sortedProblems()
	}
	p.clash()
	return p.assemble(), p.sortedProblems()
}

// ID is the instance's identity: its name, as written or by default.
func (in *Instance) ID() string { return in.id }

// ID is the virtual server's identity: its name, or what identifies it
// without one (VIP, port and protocol, or VIP, port and Service).
func (vs *VirtualServer) ID() string { return vs.id }
