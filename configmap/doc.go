// Package configmap reads the vip-configmap into the model of package
// config; internal/kube resolves what it names in the cluster (Services,
// EndpointSlices, Nodes). It knows nothing of the API server: Parse takes
// the ConfigMap's data and the last good entries. It knows two forms, which
// may be mixed in one ConfigMap:
//
//   - kube-keepalived-vip's: each data key is an IPv4 VIP and its value
//     "namespace/service", optionally followed by ":NAT" (the default) or
//     ":DR"; an empty value holds the VIP without load balancing. These
//     VIPs share one VRRP instance, "vips", configured by the daemon's
//     flags as kube-keepalived-vip's was.
//   - a structured key, "config.yaml", carrying the model of package config
//     (VRRP instances, virtual servers, kernel settings, routing) plus what
//     only makes sense in a cluster: virtual servers whose real servers are
//     a Service's endpoints, priorities that follow node order, unicast
//     peers that follow the Nodes.
//
// # Entries, and what a bad one costs
//
// The ConfigMap is a set of entries, each known by its identity, never by
// its place: a VIP key by its VIP; an instance by its name (default
// "<interface>-<vrid>", or "vrid-<vrid>" on the node's interface, with
// "-v6" for IPv6); a virtual server by its name (default its VIP, port and
// protocol, or its Service); routing, kernel and nodeSelector each by
// itself. Parse applies three rules:
//
//  1. An entry is checked alone. A bad one is reported under its own key
//     and name and is not applied; nothing else is. A VIP key stands
//     alone: a bad key costs only itself, and a bad value only its
//     virtual server.
//  2. Entries that claim the same thing (a VRID on an interface, a name,
//     a VIP, a route, a virtual service) clash. Every entry in a clash is
//     reported and not applied: the ConfigMap alone cannot tell which of
//     two came first, and a node that never ran either must decide as
//     every other node does.
//  3. An entry not applied, because it is bad or clashes, keeps its last
//     good form where that form runs (prev), as long as that form claims
//     nothing the entries applied by rules 1 and 2 claim. So an edit
//     that breaks an entry, or that adds a newcomer clashing with it,
//     costs nothing that runs; and what runs on a node with history
//     never contradicts what a node starting fresh runs: the fresh node
//     runs the same entries, or nothing where the history keeps one.
//
// Parse is pure: ConfigMap data (and the Spec in force) in, the Spec and
// every problem out.
//
// # Data flow
//
//	vip-configmap ─► Parse ─► Spec ─► kube.Resolve (+ Services, EndpointSlices, Nodes) ─► config.Config ─► daemon
package configmap
