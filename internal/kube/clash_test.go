package kube

import (
	"fmt"
	"strings"
	"testing"

	"github.com/keepvip/keepvip/config"
	"github.com/keepvip/keepvip/configmap"
)

// Entries that clash only once resolved on a node are left out one by one
// and reported under their own key; the rest applies. (configmap.Parse
// catches the clashes it can see; this Spec is built by hand to get past
// it, as a clash the parser misses would.)
func TestResolveLeavesOutWhatClashes(t *testing.T) {
	w := threeNodes()
	mk := func(name, iface string, vrid int, vip string) configmap.Instance {
		in := configmap.Instance{Source: "config.yaml instances " + name}
		in.Name, in.Interface, in.VRID, in.VIPs = name, iface, vrid, []string{vip}
		return in
	}
	spec := &configmap.Spec{Instances: []configmap.Instance{
		mk("a", "eth0", 10, "10.0.0.1"),
		mk("b", "eth0", 10, "10.0.0.2"), // the same VRID on the same interface
		mk("c", "eth0", 11, "10.0.0.3"),
	}}
	cfg, ps := Resolve(spec, w.cluster("node-a"), host)
	if cfg == nil {
		t.Fatalf("the whole configuration was rejected: %v", ps)
	}
	var names []string
	for _, in := range cfg.Instances {
		names = append(names, in.Name)
	}
	if strings.Join(names, ",") != "a,c" {
		t.Errorf("instances %v; want a and c", names)
	}
	if len(ps) != 1 || ps[0].Source != "config.yaml instances b" || !strings.Contains(ps[0].Reason, "left out: it clashes on this node") {
		t.Errorf("problems %v; want one for b", ps)
	}
}

// The node's address gone for a moment, or its interface not found, does
// not release the VIPs of an instance that runs: it keeps its form.
func TestResolveKeepsAnInstanceThroughANodeGlitch(t *testing.T) {
	w := threeNodes()
	spec := parse(t, map[string]string{configmap.StructuredKey: "instances:\n- {name: web, vrid: 61, vips: [10.0.0.60]}\n"}, configmap.DefaultDefaults())
	c := w.cluster("node-a")
	running, ps := Resolve(spec, c, host)
	if len(ps) != 0 || len(running.Instances) != 1 || running.Instances[0].Interface != "eth0" {
		t.Fatalf("running: %+v %v", running, ps)
	}
	c.Previous = running
	// The interface lookup fails (the address is being re-added).
	glitch := fakeHost{}
	cfg, ps := Resolve(spec, c, glitch)
	if len(cfg.Instances) != 1 || cfg.Instances[0].Interface != "eth0" {
		t.Errorf("during the glitch: %+v", cfg.Instances)
	}
	if len(ps) != 1 || !strings.Contains(ps[0].Reason, "it keeps running as it was") {
		t.Errorf("problems during the glitch: %v", ps)
	}
	// Without a previous form there is nothing to keep.
	c.Previous = &config.Config{}
	if cfg, _ := Resolve(spec, c, glitch); len(cfg.Instances) != 0 {
		t.Errorf("an instance that never ran was made up: %+v", cfg.Instances)
	}
	// The node without its address.
	c.Previous = running
	for _, n := range c.Nodes {
		if n.Name == "node-a" {
			n.Status.Addresses = nil
		}
	}
	if cfg, _ := Resolve(spec, c, host); len(cfg.Instances) != 1 || cfg.Instances[0].Interface != "eth0" {
		t.Errorf("with the node's address gone: %+v", cfg.Instances)
	}
}

// Routing in the vip-configmap: the router ID and the IPv6 next hop are
// each node's own; the named Services' cluster and external IPs are
// announced when asked.
func TestResolveRouting(t *testing.T) {
	w := threeNodes()
	web := w.services["default/web"]
	web.Spec.ClusterIPs = []string{"10.96.0.50", "fd96::50"}
	web.Spec.ExternalIPs = []string{"203.0.113.5"}
	spec := parse(t, map[string]string{configmap.StructuredKey: `
instances: [{name: web, vrid: 61, vips: [10.0.0.60], announce: {backup: worse}}]
virtualServers: [{vip: 10.0.0.60, service: default/web}]
routing:
  advertiseClusterIPs: true
  advertiseExternalIPs: true
  bgp: {asn: 65001, peers: [{address: 192.168.1.254, asn: 65000}]}
`}, configmap.DefaultDefaults())
	for node, want := range map[string]string{"node-a": "192.168.1.1 fd00::1", "node-b": "192.168.1.2 fd00::2"} {
		cfg, ps := Resolve(spec, w.cluster(node), host)
		if len(ps) != 0 || cfg.Routing == nil || cfg.Routing.BGP == nil {
			t.Fatalf("%s: %+v %v", node, cfg, ps)
		}
		if got := cfg.Routing.BGP.RouterID + " " + cfg.Routing.BGP.NextHop6; got != want {
			t.Errorf("%s: router ID and next hop %q; want %q", node, got, want)
		}
		if got := strings.Join(cfg.Routing.Static, " "); got != "10.96.0.50/32 fd96::50/128 203.0.113.5/32" {
			t.Errorf("%s: static %q", node, got)
		}
		if a := cfg.Announcements(); len(a) != 1 || a[0].Backup == nil || a[0].Backup.Prepend != 3 {
			t.Errorf("%s: announcements %+v", node, a)
		}
	}
	// A bad announce block is the ConfigMap's problem, reported by Parse.
	_, ps := configmap.Parse(map[string]string{configmap.StructuredKey: `
instances: [{name: web, vrid: 61, vips: [10.0.0.60], announce: {backup: later}}]
routing: {bgp: {asn: 0, peers: [{address: 192.168.1.254, asn: 65000}]}}
`}, configmap.DefaultDefaults(), nil)
	all := fmt.Sprint(ps)
	for _, want := range []string{`instances[0].announce.backup: "later": want withdraw or worse`, "routing.bgp: asn: 0 is outside"} {
		if !strings.Contains(all, want) {
			t.Errorf("problems %s; want %q", all, want)
		}
	}
}

// A node without an IPv6 address cannot be the next hop of an IPv6 VIP:
// the instance runs, unannounced, and that is reported.
func TestResolveIPv6VIPWithoutNextHop(t *testing.T) {
	w := threeNodes()
	spec := parse(t, map[string]string{configmap.StructuredKey: `
instances: [{name: web6, interface: eth0, vrid: 62, vips: ["2001:db8::60"]}]
routing: {bgp: {asn: 65001, peers: [{address: 192.168.1.254, asn: 65000}]}}
`}, configmap.DefaultDefaults())
	cfg, ps := Resolve(spec, w.cluster("node-c"), host) // node-c has IPv4 only
	if cfg == nil || len(cfg.Instances) != 1 || cfg.Routing == nil {
		t.Fatalf("%+v %v", cfg, ps)
	}
	if a := cfg.Instances[0].Announce; a == nil || a.Mode != "none" || len(cfg.Announcements()) != 0 {
		t.Errorf("the IPv6 instance is announced: %+v", a)
	}
	if len(ps) != 1 || !strings.Contains(ps[0].Reason, "not announced: node node-c has no IPv6 address") {
		t.Errorf("problems %v", ps)
	}
}
