package kube

import (
	"context"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/keepvip/keepvip/config"
	"github.com/keepvip/keepvip/configmap"
)

// Entries that clash only once resolved on a node are all left out and
// reported under their own source, none winning by its place; what ran of
// them keeps running. (configmap.Parse catches the clashes it can see;
// this Spec is built by hand to get past it, as a clash only a node can
// see would.)
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
	c := w.cluster("node-a")
	for _, tc := range []struct {
		name     string
		previous []configmap.Instance
		want     string
	}{
		{"neither ran", nil, "c"},
		{"b ran", []configmap.Instance{spec.Instances[1]}, "c,b"},
		{"a ran", []configmap.Instance{spec.Instances[0]}, "c,a"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.Previous = &config.Config{}
			for _, in := range tc.previous {
				c.Previous.Instances = append(c.Previous.Instances, in.Instance)
			}
			cfg, ps := Resolve(spec, c, host)
			if cfg == nil {
				t.Fatalf("the whole configuration was rejected: %v", ps)
			}
			var names []string
			for _, in := range cfg.Instances {
				names = append(names, in.Name)
			}
			if strings.Join(names, ",") != tc.want {
				t.Errorf("instances %v; want %s", names, tc.want)
			}
			text := fmt.Sprint(ps)
			if len(ps) != 2 || !strings.Contains(text, "config.yaml instances a: VRID 10 (ipv4) on eth0 is also config.yaml instances b's") ||
				!strings.Contains(text, "config.yaml instances b: VRID 10 (ipv4) on eth0 is also config.yaml instances a's") {
				t.Errorf("problems %v; want one each for a and b", ps)
			}
		})
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
	if len(ps) != 1 || !strings.Contains(ps[0].Reason, "it keeps running with what was found before") {
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
		if a := cfg.Desired().Announcements; len(a) != 1 || a[0].Backup == nil || a[0].Backup.Prepend != 3 {
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
	if a := cfg.Instances[0].Announce; a == nil || a.Mode != "none" || len(cfg.Desired().Announcements) != 0 {
		t.Errorf("the IPv6 instance is announced: %+v", a)
	}
	if len(ps) != 1 || !strings.Contains(ps[0].Reason, "not announced: node node-c has no IPv6 address") {
		t.Errorf("problems %v", ps)
	}
}

// This node's Node object missing (deleted and registered again) keeps
// everything that runs, instead of applying an empty configuration
// (issue #9, case 5).
func TestResolveKeepsWhatRunsWithoutItsNode(t *testing.T) {
	w := threeNodes()
	spec := parse(t, map[string]string{"10.0.0.50": "default/web", configmap.StructuredKey: "instances:\n- {name: web, vrid: 61, vips: [10.0.0.60]}\n"}, configmap.DefaultDefaults())
	c := w.cluster("node-a")
	running, ps := Resolve(spec, c, host)
	if len(ps) != 0 || len(running.Instances) != 2 || len(running.VirtualServers) != 2 {
		t.Fatalf("running: %+v %v", running, ps)
	}
	c.Previous = running
	c.Nodes = slices.DeleteFunc(slices.Clone(c.Nodes), func(n *corev1.Node) bool { return n.Name == "node-a" })
	cfg, ps := Resolve(spec, c, host)
	if !reflect.DeepEqual(cfg, running) {
		t.Errorf("without its Node: %+v; want what runs", cfg)
	}
	if len(ps) != 1 || !strings.Contains(ps[0].Error(), "node node-a: not found in the cluster (deleted, or not registered yet): what runs here keeps running") {
		t.Errorf("problems %v", ps)
	}
}

// A host whose interface lookup fails at start keeps the configuration
// saved before the restart (Options.LastApplied), and is tried again soon,
// without waiting for a cluster event or the 5-minute resync (issue #9,
// case 6).
func TestHostGlitchAtStartKeepsTheSavedConfiguration(t *testing.T) {
	w := threeNodes()
	data := map[string]string{configmap.StructuredKey: "instances:\n- {name: web, vrid: 61, vips: [10.0.0.60]}\n"}
	spec := parse(t, data, configmap.DefaultDefaults())
	saved, ps := Resolve(spec, w.cluster("node-a"), host)
	if len(ps) != 0 {
		t.Fatal(ps)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset()
	for _, n := range w.nodes {
		client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	}
	client.CoreV1().ConfigMaps("keepvip").Create(ctx, cmap(data), metav1.CreateOptions{})
	h := &glitchHost{}
	h.broken.Store(true)
	r := New(Options{Client: client, Namespace: "keepvip", ConfigMap: "vip-configmap", NodeName: "node-a",
		Defaults: configmap.DefaultDefaults(), Host: h, Registerer: prometheus.NewRegistry(), Recorder: record.NewFakeRecorder(10),
		History: spec, LastApplied: saved})
	updates := make(chan Update, 10)
	go r.Run(ctx, func(u Update) { updates <- u })
	select {
	case u := <-updates:
		if len(u.Config.Instances) != 1 || u.Config.Instances[0].Interface != "eth0" {
			t.Errorf("first update with the interface not found: %+v; want the saved instance", u.Config.Instances)
		}
		if !strings.Contains(strings.Join(u.Problems, " "), "it keeps running with what was found before") {
			t.Errorf("problems %v", u.Problems)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no update")
	}
	h.broken.Store(false)
	select {
	case u := <-updates:
		if len(u.Problems) != 0 || len(u.Config.Instances) != 1 {
			t.Errorf("after the glitch: %+v %v", u.Config.Instances, u.Problems)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the glitch was not tried again: no update within 5 s")
	}
}

// glitchHost finds node-a's interface, except while broken.
type glitchHost struct{ broken atomic.Bool }

func (h *glitchHost) InterfaceOf(a netip.Addr) (string, error) {
	if h.broken.Load() {
		return "", fmt.Errorf("no interface holds %s", a)
	}
	return host.InterfaceOf(a)
}

// A Node that vanishes (deleted and registered again) keeps its place
// among the others' unicast peers and in the node order for a grace
// period: else it would go on advertising to them while they advertise
// to it no more, hear nobody, and become master beside one of them.
func TestAVanishedNodeKeepsItsPlaceForAWhile(t *testing.T) {
	w := threeNodes()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset()
	for _, n := range w.nodes {
		client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	}
	client.CoreV1().ConfigMaps("keepvip").Create(ctx, cmap(map[string]string{configmap.StructuredKey: "instances:\n- {name: web, vrid: 61, priorityFrom: nodeOrder, preempt: false, unicastPeersFrom: nodes, vips: [10.0.0.60]}\n"}), metav1.CreateOptions{})
	const grace = 2 * time.Second
	r := New(Options{Client: client, Namespace: "keepvip", ConfigMap: "vip-configmap", NodeName: "node-b", NodeGrace: grace,
		Defaults: configmap.DefaultDefaults(), Host: host, Registerer: prometheus.NewRegistry(), Recorder: record.NewFakeRecorder(100)})
	updates := make(chan Update, 10)
	go r.Run(ctx, func(u Update) { updates <- u })
	next := func(what string) Update {
		t.Helper()
		select {
		case u := <-updates:
			return u
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: no update", what)
		}
		return Update{}
	}
	in := func(u Update) (int, string) {
		return *u.Config.Instances[0].Priority, strings.Join(u.Config.Instances[0].UnicastPeers, ",")
	}
	if p, peers := in(next("start")); p != 101 || peers != "192.168.1.1,192.168.1.3" {
		t.Fatalf("start: priority %d peers %s", p, peers)
	}
	deleted := time.Now()
	if err := client.CoreV1().Nodes().Delete(ctx, "node-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	u := next("node-a deleted")
	if p, peers := in(u); p != 101 || peers != "192.168.1.1,192.168.1.3" {
		t.Errorf("node-a gone a moment: priority %d peers %s; want them as they were", p, peers)
	}
	if !strings.Contains(strings.Join(u.Problems, " "), "node node-a: not in the cluster since") {
		t.Errorf("problems %v", u.Problems)
	}
	u = next("grace over")
	if p, peers := in(u); p != 100 || peers != "192.168.1.3" {
		t.Errorf("after the grace: priority %d peers %s; want node-a gone", p, peers)
	}
	if took := time.Since(deleted); took < grace {
		t.Errorf("node-a left after %v, before its grace of %v", took, grace)
	}
}

// The reconciler follows the Secret of BGP passwords: a change of it is
// a new configuration, at once.
func TestReconcilerFollowsTheBGPSecret(t *testing.T) {
	w := threeNodes()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset()
	for _, n := range w.nodes {
		client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	}
	client.CoreV1().ConfigMaps("keepvip").Create(ctx, cmap(map[string]string{configmap.StructuredKey: "routing:\n  bgp: {asn: 65001, peers: [{address: 192.168.1.254, asn: 65000, passwordSecretKey: tor}]}\n"}), metav1.CreateOptions{})
	sec := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "keepvip", Name: DefaultBGPSecret}, Data: map[string][]byte{"tor": []byte("one")}}
	client.CoreV1().Secrets("keepvip").Create(ctx, sec, metav1.CreateOptions{})
	r := New(Options{Client: client, Namespace: "keepvip", ConfigMap: "vip-configmap", NodeName: "node-a",
		Defaults: configmap.DefaultDefaults(), Host: host, Registerer: prometheus.NewRegistry(), Recorder: record.NewFakeRecorder(100)})
	updates := make(chan Update, 10)
	go r.Run(ctx, func(u Update) { updates <- u })
	password := func(what string) string {
		t.Helper()
		deadline := time.After(5 * time.Second)
		for {
			select {
			case u := <-updates:
				if rt := u.Config.Routing; rt != nil && rt.BGP != nil && len(rt.BGP.Peers) == 1 {
					return rt.BGP.Peers[0].Password
				}
			case <-deadline:
				t.Fatalf("%s: no update with the peer", what)
			}
		}
	}
	if got := password("start"); got != "one" {
		t.Errorf("start: password %q", got)
	}
	sec.Data["tor"] = []byte("two")
	client.CoreV1().Secrets("keepvip").Update(ctx, sec, metav1.UpdateOptions{})
	if got := password("Secret changed"); got != "two" {
		t.Errorf("after the change: password %q", got)
	}
}

func (h *glitchHost) Gateways() (map[netip.Addr]string, error) { return host.Gateways() }
