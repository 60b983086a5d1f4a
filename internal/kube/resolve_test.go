package kube

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/keepvip/keepvip/config"
	"github.com/keepvip/keepvip/configmap"
)

type fakeHost map[netip.Addr]string

// Gateways: 192.168.1.254, the gateway of the nodes' segment.
func (h fakeHost) Gateways() (map[netip.Addr]string, error) {
	return map[netip.Addr]string{netip.MustParseAddr("192.168.1.254"): "the gateway of this node's route to everywhere (default)"}, nil
}

func (h fakeHost) InterfaceOf(a netip.Addr) (string, error) {
	if n, ok := h[a]; ok {
		return n, nil
	}
	return "", fmt.Errorf("no interface holds %s", a)
}

func node(name string, labels map[string]string, addrs ...string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	for _, a := range addrs {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: a})
	}
	return n
}

func service(ns, name string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: corev1.ServiceSpec{Ports: ports}}
}

func port(name string, p, target int32, proto corev1.Protocol) corev1.ServicePort {
	return corev1.ServicePort{Name: name, Port: p, TargetPort: intstr.FromInt32(target), Protocol: proto}
}

type ep struct {
	addr                        string
	ready, serving, terminating *bool
}

func b(v bool) *bool { return &v }

func slice(svc string, typ discoveryv1.AddressType, proto corev1.Protocol, ports map[string]int32, eps ...ep) *discoveryv1.EndpointSlice {
	s := &discoveryv1.EndpointSlice{AddressType: typ, ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{discoveryv1.LabelServiceName: svc}}}
	for name, p := range ports {
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{Name: &name, Port: &p, Protocol: &proto})
	}
	for _, e := range eps {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{Addresses: []string{e.addr}, Conditions: discoveryv1.EndpointConditions{Ready: e.ready, Serving: e.serving, Terminating: e.terminating}})
	}
	return s
}

type world struct {
	nodes    []*corev1.Node
	services map[string]*corev1.Service
	slices   map[string][]*discoveryv1.EndpointSlice
}

func (w *world) cluster(self string) Cluster {
	return Cluster{
		NodeName:       self,
		Nodes:          w.nodes,
		Service:        func(ns, name string) *corev1.Service { return w.services[ns+"/"+name] },
		EndpointSlices: func(ns, name string) []*discoveryv1.EndpointSlice { return w.slices[ns+"/"+name] },
		ClusterIPs: func() map[netip.Addr]string {
			out := map[netip.Addr]string{}
			for k, s := range w.services {
				for _, ip := range s.Spec.ClusterIPs {
					if a, err := netip.ParseAddr(ip); err == nil {
						out[a] = "the ClusterIP of Service " + k
					}
				}
			}
			return out
		},
	}
}

func threeNodes() *world {
	return &world{
		nodes: []*corev1.Node{
			node("node-b", nil, "192.168.1.2", "fd00::2"),
			node("node-a", nil, "192.168.1.1", "fd00::1"),
			node("node-c", map[string]string{"lb": "no"}, "192.168.1.3"),
		},
		services: map[string]*corev1.Service{
			"default/web": service("default", "web", port("http", 80, 8080, corev1.ProtocolTCP), port("https", 443, 8443, corev1.ProtocolTCP)),
			"default/dns": service("default", "dns", port("", 53, 53, corev1.ProtocolUDP)),
		},
		slices: map[string][]*discoveryv1.EndpointSlice{
			"default/web": {
				slice("web", discoveryv1.AddressTypeIPv4, corev1.ProtocolTCP, map[string]int32{"http": 8080, "https": 8443},
					ep{addr: "10.1.0.1"}, ep{addr: "10.1.0.2", ready: b(true)},
					ep{addr: "10.1.0.3", ready: b(false), serving: b(true), terminating: b(true)},
					ep{addr: "10.1.0.4", ready: b(false), serving: b(false)}),
				slice("web", discoveryv1.AddressTypeIPv6, corev1.ProtocolTCP, map[string]int32{"http": 8080}, ep{addr: "fd01::1"}),
			},
			"default/dns": {slice("dns", discoveryv1.AddressTypeIPv4, corev1.ProtocolUDP, map[string]int32{"": 53}, ep{addr: "10.2.0.1"})},
		},
	}
}

var host = fakeHost{
	netip.MustParseAddr("192.168.1.1"): "eth0", netip.MustParseAddr("192.168.1.2"): "eth0",
	netip.MustParseAddr("fd00::1"): "eth0", netip.MustParseAddr("fd00::2"): "eth0",
}

func parse(t *testing.T, data map[string]string, d configmap.Defaults) *configmap.Spec {
	t.Helper()
	spec, ps := configmap.Parse(data, d, nil)
	if len(ps) > 0 {
		t.Fatalf("parse: %v", ps)
	}
	return spec
}

func reals(vs config.VirtualServer) string {
	var out []string
	for _, r := range vs.RealServers {
		w := 1
		if r.Weight != nil {
			w = *r.Weight
		}
		out = append(out, fmt.Sprintf("%s:%d*%d", r.Address, r.Port, w))
	}
	return strings.Join(out, " ")
}

func TestResolveLegacy(t *testing.T) {
	w := threeNodes()
	d := configmap.DefaultDefaults()
	d.Unicast = true
	spec := parse(t, map[string]string{"10.0.0.50": "default/web", "10.0.0.51": "default/dns:DR"}, d)
	cfg, ps := Resolve(spec, w.cluster("node-b"), host)
	if len(ps) != 0 {
		t.Fatalf("problems: %v", ps)
	}
	if len(cfg.Instances) != 1 {
		t.Fatalf("instances %+v", cfg.Instances)
	}
	in := cfg.Instances[0]
	// node-b is second of node-a, node-b, node-c by name.
	if in.Interface != "eth0" || *in.Priority != 101 || in.SourceAddress != "192.168.1.2" ||
		strings.Join(in.UnicastPeers, ",") != "192.168.1.1,192.168.1.3" {
		t.Errorf("instance: %+v peers %v", in, in.UnicastPeers)
	}
	got := map[string]string{}
	for _, vs := range cfg.VirtualServers {
		got[fmt.Sprintf("%s:%d/%s %s", vs.VIP, vs.Port, vs.Protocol, vs.Forwarding)] = reals(vs)
	}
	want := map[string]string{
		// Ready and unknown-ready endpoints weight 1, terminating but
		// serving weight 0 (draining), not serving left out.
		"10.0.0.50:80/tcp nat":  "10.1.0.1:8080*1 10.1.0.2:8080*1 10.1.0.3:8080*0",
		"10.0.0.50:443/tcp nat": "10.1.0.1:8443*1 10.1.0.2:8443*1 10.1.0.3:8443*0",
		"10.0.0.51:53/udp dr":   "10.2.0.1:53*1",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("virtual servers:\n got %v\nwant %v", got, want)
	}
	// The result is a valid configuration for the VRRP and IPVS parts.
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
}

func TestResolveStructured(t *testing.T) {
	w := threeNodes()
	spec := parse(t, map[string]string{configmap.StructuredKey: `
nodeSelector: lb!=no
instances:
- name: web6
  vrid: 7
  priority: 90
  nodePriorities: {node-a: 200}
  unicastPeersFrom: nodes
  vips: ["2001:db8::50"]
virtualServers:
- vip: "2001:db8::50"
  port: 8000
  servicePort: http
  service: default/web
  scheduler: mh
`}, configmap.DefaultDefaults())
	for _, tc := range []struct {
		node, prio, peers string
	}{{"node-a", "200", "fd00::2"}, {"node-b", "90", "fd00::1"}} {
		cfg, ps := Resolve(spec, w.cluster(tc.node), host)
		if len(ps) != 0 {
			t.Fatalf("%s: problems %v", tc.node, ps)
		}
		in := cfg.Instances[0]
		if fmt.Sprint(*in.Priority) != tc.prio || strings.Join(in.UnicastPeers, ",") != tc.peers || in.Name != "web6" {
			t.Errorf("%s: priority %d peers %v", tc.node, *in.Priority, in.UnicastPeers)
		}
		if len(cfg.VirtualServers) != 1 || reals(cfg.VirtualServers[0]) != "fd01::1:8080*1" || cfg.VirtualServers[0].Port != 8000 {
			t.Errorf("%s: %+v", tc.node, cfg.VirtualServers)
		}
	}
	// node-c is not selected: nothing runs there, and that is no error.
	cfg, ps := Resolve(spec, w.cluster("node-c"), host)
	if len(ps) != 0 || len(cfg.Instances) != 0 || len(cfg.VirtualServers) != 0 {
		t.Errorf("node-c: %+v %v", cfg, ps)
	}
}

func TestResolveProblems(t *testing.T) {
	w := threeNodes()
	// No endpoint is ready: the terminating ones that still serve take
	// the traffic (weight 1), as kube-proxy does.
	w.slices["default/term"] = []*discoveryv1.EndpointSlice{slice("term", discoveryv1.AddressTypeIPv4, corev1.ProtocolTCP, map[string]int32{"": 80},
		ep{addr: "10.3.0.1", ready: b(false), serving: b(true), terminating: b(true)})}
	w.services["default/term"] = service("default", "term", port("", 80, 80, corev1.ProtocolTCP))
	spec := parse(t, map[string]string{
		"10.0.0.50": "default/missing",
		"10.0.0.51": "default/web:DR",
		"10.0.0.52": "default/term",
		configmap.StructuredKey: `
virtualServers:
- {vip: 10.0.0.52, port: 9, service: default/web}
- {vip: 10.0.0.52, port: 9, servicePort: "443", service: default/web}
- {vip: 10.0.0.53, port: 80, realServers: [{address: 10.9.0.1}]}
- {vip: 10.0.0.52, port: 80, realServers: [{address: 10.9.0.2}]}
`}, configmap.DefaultDefaults())
	cfg, ps := Resolve(spec, w.cluster("node-a"), host)
	var text []string
	for _, p := range ps {
		text = append(text, p.Error())
	}
	all := strings.Join(text, "\n")
	for _, want := range []string{
		"key 10.0.0.50: service default/missing not found",
		"key 10.0.0.51: service default/web port http: dr forwarding cannot send VIP port 80 to target port 8080",
		`config.yaml virtual server "10.0.0.52:9 default/web": service default/web has no port 9 (it has http=80/TCP, https=443/TCP)`,
		// 10.0.0.52:80 is also key 10.0.0.52's (its Service's only
		// port): both are left out, neither winning by its place.
		`config.yaml virtual server "10.0.0.52:80/tcp": 10.0.0.52:80/tcp is also defined by key 10.0.0.52`,
		`key 10.0.0.52: 10.0.0.52:80/tcp is also defined by config.yaml virtual server "10.0.0.52:80/tcp"`,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("missing problem %q in:\n%s", want, all)
		}
	}
	got := map[string]string{}
	for _, vs := range cfg.VirtualServers {
		got[fmt.Sprintf("%s:%d", vs.VIP, vs.Port)] = reals(vs)
	}
	want := map[string]string{"10.0.0.52:9": "10.1.0.1:8443*1 10.1.0.2:8443*1 10.1.0.3:8443*0", "10.0.0.53:80": "10.9.0.1:0*1"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("applied:\n got %v\nwant %v", got, want)
	}
	// The VIPs are all held even where their services are not.
	if len(cfg.Instances) != 1 || len(cfg.Instances[0].VIPs) != 3 {
		t.Errorf("instances: %+v", cfg.Instances)
	}
}

func TestResolveNodeProblems(t *testing.T) {
	w := threeNodes()
	spec := parse(t, map[string]string{"10.0.0.50": ""}, configmap.DefaultDefaults())
	if _, ps := Resolve(spec, w.cluster("node-x"), host); len(ps) != 1 || !strings.Contains(ps[0].Error(), "node node-x: not found") {
		t.Errorf("unknown node: %v", ps)
	}
	delete(host, netip.MustParseAddr("192.168.1.3"))
	w.nodes[2].Labels = nil
	cfg, ps := Resolve(spec, w.cluster("node-c"), host)
	if len(ps) != 1 || !strings.Contains(ps[0].Error(), "finding the interface of node address 192.168.1.3") || len(cfg.Instances) != 0 {
		t.Errorf("no interface: %v %+v", ps, cfg)
	}
}

// A Service that cannot have endpoints for the VIP — of type ExternalName,
// or of the other address family — is reported, not accepted silently
// with no real servers.
func TestResolveServiceWithoutEndpointsForTheVIP(t *testing.T) {
	w := threeNodes()
	ext := service("default", "ext", port("http", 80, 80, corev1.ProtocolTCP))
	ext.Spec.Type, ext.Spec.ExternalName = corev1.ServiceTypeExternalName, "example.com"
	w.services["default/ext"] = ext
	v6 := service("default", "v6", port("http", 80, 80, corev1.ProtocolTCP))
	v6.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol}
	w.services["default/v6"] = v6
	dual := service("default", "dual", port("http", 80, 80, corev1.ProtocolTCP))
	dual.Spec.IPFamilies = []corev1.IPFamily{corev1.IPv6Protocol, corev1.IPv4Protocol}
	w.services["default/dual"] = dual
	spec := parse(t, map[string]string{"10.0.0.50": "default/ext", "10.0.0.51": "default/v6", "10.0.0.52": "default/dual"}, configmap.DefaultDefaults())
	cfg, ps := Resolve(spec, w.cluster("node-a"), host)
	all := fmt.Sprint(ps)
	for _, want := range []string{
		"key 10.0.0.50: service default/ext is of type ExternalName: it has no endpoints to balance; left out",
		"key 10.0.0.51: service default/v6 has no IPv4 endpoints (its families: [IPv6]) for VIP 10.0.0.51",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("problems %s; want %q", all, want)
		}
	}
	if len(ps) != 2 || len(cfg.VirtualServers) != 1 || cfg.VirtualServers[0].VIP != "10.0.0.52" {
		t.Errorf("virtual servers %+v, problems %v; want only the dual-stack one, silently", cfg.VirtualServers, ps)
	}
}

// BGP passwords come from the Secret (passwordSecretKey), not from the
// ConfigMap; a key missing for a moment keeps the password that ran, and
// a peer without one is left out and said so.
func TestResolveBGPPasswordsFromTheSecret(t *testing.T) {
	w := threeNodes()
	spec := parse(t, map[string]string{configmap.StructuredKey: `
instances: [{name: web, vrid: 61, vips: [10.0.0.60]}]
routing:
  bgp:
    asn: 65001
    peers:
    - {address: 192.168.1.254, asn: 65000, passwordSecretKey: tor-a}
    - {address: 192.168.1.253, asn: 65000, passwordSecretKey: tor-b}
`}, configmap.DefaultDefaults())
	c := w.cluster("node-a")
	c.BGPSecretName, c.BGPSecretKnown = "keepvip/keepvip-bgp", true
	c.BGPSecret = map[string][]byte{"tor-a": []byte("a-secret"), "tor-b": []byte("b-secret")}
	cfg, ps := Resolve(spec, c, host)
	if len(ps) != 0 || cfg.Routing == nil {
		t.Fatalf("%v %+v", ps, cfg)
	}
	got := map[string]string{}
	for _, p := range cfg.Routing.BGP.Peers {
		got[p.Address] = p.Password
		if p.PasswordSecretKey != "" {
			t.Errorf("peer %s keeps its key: %+v", p.Address, p)
		}
	}
	if got["192.168.1.254"] != "a-secret" || got["192.168.1.253"] != "b-secret" {
		t.Errorf("passwords %v", got)
	}
	// tor-b gone from the Secret: the password that ran stays.
	c.Previous = cfg
	c.BGPSecret = map[string][]byte{"tor-a": []byte("a-secret")}
	cfg2, ps := Resolve(spec, c, host)
	if len(cfg2.Routing.BGP.Peers) != 2 || cfg2.Routing.BGP.Peers[1].Password != "b-secret" || len(ps) != 1 || !strings.Contains(ps[0].Reason, `has no key "tor-b": it keeps the password it had`) {
		t.Errorf("peers %+v, problems %v", cfg2.Routing.BGP.Peers, ps)
	}
	// Without a password that ran: left out.
	c.Previous = nil
	cfg3, ps := Resolve(spec, c, host)
	if len(cfg3.Routing.BGP.Peers) != 1 || len(ps) != 1 || !strings.Contains(ps[0].Reason, "left out until it is") {
		t.Errorf("peers %+v, problems %v", cfg3.Routing.BGP.Peers, ps)
	}
	for _, p := range ps {
		if strings.Contains(p.Error(), "secret") && strings.Contains(p.Error(), "a-secret") {
			t.Errorf("a problem shows a password: %v", p)
		}
	}
	// In the ConfigMap both ways at once is refused; the password alone
	// applies, with a warning.
	_, pps := configmap.Parse(map[string]string{configmap.StructuredKey: "routing:\n  bgp: {asn: 65001, peers: [{address: 192.168.1.254, asn: 65000, password: x, passwordSecretKey: k}]}\n"}, configmap.DefaultDefaults(), nil)
	if len(pps) != 1 || !strings.Contains(pps[0].Reason, "password and passwordSecretKey cannot both be given") {
		t.Errorf("both: %v", pps)
	}
	s, pps := configmap.Parse(map[string]string{configmap.StructuredKey: "routing:\n  bgp: {asn: 65001, peers: [{address: 192.168.1.254, asn: 65000, password: x}]}\n"}, configmap.DefaultDefaults(), nil)
	if s.Routing == nil || len(pps) != 1 || pps[0].Outcome != "it applies" || !strings.Contains(pps[0].Reason, "readable by whoever can read this ConfigMap") {
		t.Errorf("password in the ConfigMap: routing %v, problems %v", s.Routing != nil, pps)
	}
}

// Guardrails that need the cluster and the host: a VIP (of an instance, a
// virtual server, an ECMP route) that is a node's address, inside a Pod
// CIDR, a Service's ClusterIP or this host's gateway is refused and named
// (the entry is not applied, the rest is); allow lets it pass on purpose.
func TestResolveGuardrails(t *testing.T) {
	w := threeNodes()
	w.nodes[0].Spec.PodCIDRs = []string{"10.244.1.0/24"}
	w.services["default/web"].Spec.ClusterIPs = []string{"10.96.0.10"}
	for _, tc := range []struct {
		name, doc, want string
	}{
		{"node address", "instances: [{name: bad, vrid: 62, vips: [192.168.1.2]}]", `config.yaml instance "bad": vip 192.168.1.2 is node node-b's InternalIP`},
		{"node address allowed", "instances: [{name: bad, vrid: 62, allow: [nodeAddress], vips: [192.168.1.2]}]", ""},
		{"pod CIDR", "instances: [{name: bad, vrid: 62, vips: [10.244.1.7]}]", "10.244.1.7 is inside node node-b's Pod CIDR 10.244.1.0/24"},
		{"ClusterIP", "instances: [{name: bad, vrid: 62, vips: [10.96.0.10]}]", "10.96.0.10 is the ClusterIP of Service default/web"},
		{"ClusterIP allowed", "instances: [{name: bad, vrid: 62, allow: [clusterAddress], vips: [10.96.0.10]}]", ""},
		{"gateway", "instances: [{name: bad, vrid: 62, vips: [192.168.1.254]}]", "192.168.1.254 is the gateway of this node's route to everywhere (default)"},
		{"virtual server on a node address", "virtualServers: [{name: kubelet, vip: 192.168.1.1, port: 10250, realServers: [{address: 10.9.0.1}]}]", `config.yaml virtual server "kubelet": vip 192.168.1.1 is node node-a's InternalIP`},
		{"ECMP on a ClusterIP", "routing: {exporter: kernel, kernelTable: {table: 100}, ecmp: [{vip: 10.96.0.10}]}", "ECMP vip 10.96.0.10 is the ClusterIP of Service default/web"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			doc := "instances: [{name: good, vrid: 61, vips: [10.0.0.60]}]\n"
			if strings.HasPrefix(tc.doc, "instances:") {
				doc = strings.Replace(tc.doc, "[{name: bad", "[{name: good, vrid: 61, vips: [10.0.0.60]}, {name: bad", 1) + "\n"
			} else {
				doc += tc.doc + "\n"
			}
			spec := parse(t, map[string]string{configmap.StructuredKey: doc}, configmap.DefaultDefaults())
			cfg, ps := Resolve(spec, w.cluster("node-b"), host)
			all := fmt.Sprint(ps)
			if tc.want == "" {
				if len(ps) != 0 {
					t.Errorf("problems %v", ps)
				}
				return
			}
			if !strings.Contains(all, tc.want) {
				t.Errorf("problems %s; want %q", all, tc.want)
			}
			if len(cfg.Instances) == 0 || cfg.Instances[0].Name != "good" {
				t.Errorf("the good entry does not apply: %+v", cfg.Instances)
			}
			for _, in := range cfg.Instances {
				if in.Name == "bad" {
					t.Errorf("the refused instance applies")
				}
			}
			if len(cfg.VirtualServers) != 0 || cfg.Routing != nil && len(cfg.Routing.ECMP) != 0 {
				t.Errorf("refused virtual servers or ECMP apply: %+v %+v", cfg.VirtualServers, cfg.Routing)
			}
		})
	}
}

// A cordoned node (kubectl cordon, kubectl drain) or one labelled
// node.kubernetes.io/exclude-from-external-load-balancers leaves the
// election: nothing runs there (its master hands off), the others stop
// sending it unicast adverts, and their priorities stay as they were (the
// node keeps its place in the node order). Uncordoned or unlabelled, it
// takes part again.
func TestResolveCordonedAndExcludedNodes(t *testing.T) {
	d := configmap.DefaultDefaults()
	d.Unicast = true
	spec := parse(t, map[string]string{"10.0.0.50": "default/web"}, d)
	for _, exclude := range []func(*corev1.Node){
		func(n *corev1.Node) { n.Spec.Unschedulable = true },
		func(n *corev1.Node) { n.Labels = map[string]string{corev1.LabelNodeExcludeBalancers: ""} },
	} {
		w := threeNodes()
		before, ps := Resolve(spec, w.cluster("node-b"), host)
		if len(ps) != 0 || len(before.Instances) != 1 {
			t.Fatalf("before: %+v %v", before, ps)
		}
		for _, n := range w.nodes {
			if n.Name == "node-a" {
				exclude(n)
			}
		}
		cfg, ps := Resolve(spec, w.cluster("node-a"), host)
		if len(ps) != 0 || len(cfg.Instances) != 0 || len(cfg.VirtualServers) != 0 {
			t.Errorf("the excluded node-a runs %+v (problems %v); want nothing", cfg, ps)
		}
		cfg, ps = Resolve(spec, w.cluster("node-b"), host)
		if len(ps) != 0 || len(cfg.Instances) != 1 {
			t.Fatalf("node-b: %+v %v", cfg, ps)
		}
		in, was := cfg.Instances[0], before.Instances[0]
		if *in.Priority != *was.Priority || strings.Join(in.UnicastPeers, ",") != "192.168.1.3" {
			t.Errorf("node-b with node-a excluded: priority %d (was %d), peers %v; want the same priority, node-a no longer a peer", *in.Priority, *was.Priority, in.UnicastPeers)
		}
	}
}
