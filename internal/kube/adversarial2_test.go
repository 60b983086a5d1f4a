package kube

// Sequences a second adversarial review tried at the Resolve and
// Reconciler level: each broke a promise of docs/vip-configmap.md (or
// Resolve's own: never the "(a bug: please report it)" path) before it
// was fixed. The sizes it measured are in bench_test.go.

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
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

func review2NoBugPath(t *testing.T, ps []Problem) {
	t.Helper()
	for _, p := range ps {
		if p.Source == "resolved configuration" || strings.Contains(p.Reason, "a bug: please report it") {
			t.Errorf("bug path: %v", p)
		}
	}
}

func review2Has(cfg *config.Config, name string) *config.Instance {
	if cfg == nil {
		return nil
	}
	for i := range cfg.Instances {
		if cfg.Instances[i].Name == name {
			return &cfg.Instances[i]
		}
	}
	return nil
}

// `announce: {mode: none}` is accepted by configmap.Parse (Announce.Check
// runs against a stand-in routing section), but with no routing section
// Resolve keeps the block (announcements() skips mode none) and
// config.Validate refuses it: "instances[0].announce: needs a routing
// section". Every node reports "(a bug: please report it)". The same
// happens when routing is left out on this node (or removed) while an
// instance has mode none, and to IPv6 instances set to mode none by the
// noNextHop6 path when the routing section is then left out.
func TestAnnounceNoneWithoutRouting(t *testing.T) {
	w := threeNodes()
	spec := parse(t, map[string]string{configmap.StructuredKey: "instances:\n- {name: web, vrid: 61, announce: {mode: none}, vips: [10.0.0.60]}\n"}, configmap.DefaultDefaults())
	cfg, ps := Resolve(spec, w.cluster("node-a"), host)
	review2NoBugPath(t, ps)
	if review2Has(cfg, "web") == nil {
		t.Errorf("web not applied: %+v %v", cfg, ps)
	}
}

// unicastPeersFrom: nodes lists each selected node's address once per
// Node object. Two Node objects with one InternalIP (a node deleted and
// registered again under another name, kept for NodeGrace by
// withVanished; or a stale Node whose IP a new machine got) make the
// peer list hold it twice; vrrp refuses "listed twice", and the
// instance is dropped on every other node: not kept from what ran, and
// the problem blames the ConfigMap entry. docs/vip-configmap.md: "A Node object that
// vanishes (deleted and registered again) keeps its place among the
// others' unicast peers ... for 5 minutes; the node itself keeps
// everything it runs".
func TestTwoNodesWithOneAddressAreOnePeer(t *testing.T) {
	w := threeNodes()
	spec := parse(t, map[string]string{configmap.StructuredKey: "instances:\n- {name: web, vrid: 61, priorityFrom: nodeOrder, preempt: false, unicastPeersFrom: nodes, vips: [10.0.0.60]}\n"}, configmap.DefaultDefaults())
	c := w.cluster("node-b")
	running, ps := Resolve(spec, c, host)
	if len(ps) != 0 || review2Has(running, "web") == nil {
		t.Fatalf("running: %+v %v", running, ps)
	}
	// node-a registers again as node-a2 (same machine, same address);
	// the reconciler keeps node-a for its grace (withVanished).
	st := &loopState{}
	st.withVanished(w.nodes, time.Now(), time.Minute)
	renamed := node("node-a2", nil, "192.168.1.1", "fd00::1")
	list := []*corev1.Node{w.nodes[0], renamed, w.nodes[2]}
	list, gone := st.withVanished(list, time.Now(), time.Minute)
	c.Nodes, c.Previous = list, running
	cfg, ps := Resolve(spec, c, host)
	t.Logf("vanished: %v", gone)
	in := review2Has(cfg, "web")
	if in == nil {
		t.Fatalf("instance web dropped on node-b after node-a re-registered as node-a2 with the same address\nproblems %v", ps)
	}
	if fmt.Sprint(in.UnicastPeers) != "[192.168.1.1 192.168.1.3]" {
		t.Errorf("peers %v", in.UnicastPeers)
	}
}

// When this node has no IPv4 address for a moment (a kubelet restart
// empties the Node's addresses), routing() keeps prev.Routing whole,
// without checking it against what applies now. If the same ConfigMap
// version moved an ECMP VIP into an instance, the old ECMP VIP and the
// new instance VIP contradict: config.Validate fails, the bug path runs,
// and withoutClashes keeps the stale routing and drops the instance web
// entirely, including its VIP 10.0.0.61 that ran untouched.
func TestRoutingThroughANodeGlitchFollowsTheInstances(t *testing.T) {
	w := threeNodes()
	before := "instances:\n- {name: web, interface: eth0, vrid: 61, vips: [10.0.0.61]}\n" +
		"routing:\n  bgp: {asn: 65001, peers: [{address: 192.168.1.254, asn: 65000}]}\n  ecmp: [{vip: 10.0.0.60}]\n"
	after := "instances:\n- {name: web, interface: eth0, vrid: 61, vips: [10.0.0.61, 10.0.0.60]}\n" +
		"routing:\n  bgp: {asn: 65001, peers: [{address: 192.168.1.254, asn: 65000}]}\n"
	prev := parse(t, map[string]string{configmap.StructuredKey: before}, configmap.DefaultDefaults())
	c := w.cluster("node-a")
	running, ps := Resolve(prev, c, host)
	if len(ps) != 0 {
		t.Fatal(ps)
	}
	spec, pps := configmap.Parse(map[string]string{configmap.StructuredKey: after}, configmap.DefaultDefaults(), prev)
	if len(pps) != 0 {
		t.Fatal(pps)
	}
	// node-a's Node without its IPv4 address for a moment.
	c.Nodes = slices.Clone(c.Nodes)
	for i, n := range c.Nodes {
		if n.Name == "node-a" {
			c.Nodes[i] = node("node-a", nil, "fd00::1")
		}
	}
	c.Previous = running
	cfg, ps := Resolve(spec, c, host)
	review2NoBugPath(t, ps)
	in := review2Has(cfg, "web")
	if in == nil || !slices.Contains(in.VIPs, "10.0.0.61") {
		t.Errorf("the untouched VIP 10.0.0.61 of web is not held: %+v\nproblems %v", cfg, ps)
	}
}

// Resolve's fallback for virtual servers that clash once resolved keeps
// "what ran at the key" from c.Previous whichever entry ran it. Entry a
// is removed on purpose; in the same edit b and c are added on a's
// VIP:port with two Services (a clash only a node can see). The node
// that ran a goes on serving a's Service, frozen with a's endpoints, and
// says of b that "what ran of it keeps running" though b never ran; a
// fresh node serves nothing there. docs/vip-configmap.md: "Virtual servers whose Service
// ports clash once resolved are all left out, except where one already
// runs" (b and c never ran; a is gone).
func TestARemovedVirtualServerStaysRemovedThroughAClash(t *testing.T) {
	w := threeNodes()
	w.services["default/web2"] = service("default", "web2", port("http", 80, 80, corev1.ProtocolTCP))
	w.services["default/web3"] = service("default", "web3", port("http", 80, 80, corev1.ProtocolTCP))
	a := "virtualServers:\n- {name: a, vip: 10.0.0.60, port: 80, service: default/web}\n"
	bc := "virtualServers:\n- {name: b, vip: 10.0.0.60, port: 80, service: default/web2}\n- {name: c, vip: 10.0.0.60, port: 80, service: default/web3}\n"
	good := parse(t, map[string]string{configmap.StructuredKey: a}, configmap.DefaultDefaults())
	c := w.cluster("node-a")
	running, _ := Resolve(good, c, host)
	if reviewVS(t, running, "10.0.0.60:80/tcp") == nil {
		t.Fatal("a does not run")
	}
	spec, _ := configmap.Parse(map[string]string{configmap.StructuredKey: bc}, configmap.DefaultDefaults(), good)
	fresh, _ := Resolve(spec, w.cluster("node-a"), host)
	c.Previous = running
	cfg, ps := Resolve(spec, c, host)
	if got, want := reviewVS(t, cfg, "10.0.0.60:80/tcp") != nil, reviewVS(t, fresh, "10.0.0.60:80/tcp") != nil; got != want {
		vs := reviewVS(t, cfg, "10.0.0.60:80/tcp")
		t.Errorf("node that ran the removed entry a serves 10.0.0.60:80/tcp (%s, name %q); a fresh node serves it: %v\nproblems %v", reals(*vs), vs.Name, want, ps)
	}
}

// docs/vip-configmap.md: "A node that has no history (new, or its state directory lost)
// does not know its nodeSelector then, and takes part in nothing until
// it can be read; the same for a bad nodeSelector." A fresh node that
// starts before the ConfigMap exists (the DaemonSet installed first, a
// GitOps sync in any order) stores an empty Spec as its history
// (reconcile: st.spec = &configmap.Spec{}); Parse then takes "" (every
// node) as the last good selector, and the node takes part in every
// instance although the (bad) selector meant to leave it out. The empty
// Spec is also handed to the daemon as Update.History and saved.
func TestANodeThatSawNoConfigMapHasNoHistory(t *testing.T) {
	w := threeNodes()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset()
	for _, n := range w.nodes {
		if _, err := client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	r := New(Options{Client: client, Namespace: "keepvip", ConfigMap: "vip-configmap", NodeName: "node-a",
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
	u := next("start without the ConfigMap")
	t.Logf("start: %d instances, history %+v", len(u.Config.Instances), u.History)
	doc := "nodeSelector: 'keepvip.io/lb in (true'\ninstances:\n- {name: web, vrid: 61, vips: [10.0.0.60]}\n"
	if _, err := client.CoreV1().ConfigMaps("keepvip").Create(ctx, cmap(map[string]string{configmap.StructuredKey: doc}), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	u = next("ConfigMap created with a bad nodeSelector")
	// What a node that starts now (no history) runs.
	spec, _ := configmap.Parse(map[string]string{configmap.StructuredKey: doc}, configmap.DefaultDefaults(), nil)
	fresh, _ := Resolve(spec, w.cluster("node-a"), host)
	if len(u.Config.Instances) != len(fresh.Instances) {
		t.Errorf("node-a (started before the ConfigMap existed) runs %d instances; a node starting now runs %d (the nodeSelector is bad: it takes part in nothing)\nproblems %v",
			len(u.Config.Instances), len(fresh.Instances), u.Problems)
	}
}

// review2Big builds a ConfigMap of n structured instances (4 VIPs each,
// VRIDs 51-250 on n/200 interfaces), n virtual servers (one per instance, half
// with a Service) and k VIP keys (a quarter with a Service).
func review2Big(n, k int) (map[string]string, *world) {
	w := threeNodes()
	var b strings.Builder
	b.WriteString("instances:\n")
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "- {name: in%d, interface: eth%d, vrid: %d, vips: [10.%d.%d.1, 10.%d.%d.2, 10.%d.%d.3, 10.%d.%d.4]}\n",
			i, i/200, i%200+51, 10+i/250, i%250, 10+i/250, i%250, 10+i/250, i%250, 10+i/250, i%250)
	}
	b.WriteString("virtualServers:\n")
	for i := 0; i < n; i++ {
		if i%2 == 0 {
			fmt.Fprintf(&b, "- {name: vs%d, vip: 10.%d.%d.1, port: 80, realServers: [{address: 10.200.0.1}, {address: 10.200.0.2}]}\n", i, 10+i/250, i%250)
		} else {
			fmt.Fprintf(&b, "- {name: vs%d, vip: 10.%d.%d.1, service: default/web}\n", i, 10+i/250, i%250)
		}
	}
	data := map[string]string{configmap.StructuredKey: b.String()}
	for i := 0; i < k; i++ {
		v := ""
		if i%4 == 0 {
			v = "default/web"
		}
		data[fmt.Sprintf("10.250.%d.%d", i/250, i%250+1)] = v
	}
	return data, w
}

// review2Doc makes a random config.yaml around routing: instances with
// announce blocks and accept, ECMP VIPs, static prefixes, virtual
// servers, VIP keys.
func review2Doc(r *rand.Rand) map[string]string {
	pick := func(xs ...string) string { return xs[r.IntN(len(xs))] }
	some := func(xs ...string) []string {
		var out []string
		for _, x := range xs {
			if r.IntN(3) == 0 {
				out = append(out, x)
			}
		}
		return out
	}
	var b strings.Builder
	b.WriteString("instances:\n")
	for i, fam := range []string{"10.0.0.", "'2001:db8::"} {
		if r.IntN(4) == 0 {
			continue
		}
		vips := []string{}
		for _, v := range some("60", "61", "62") {
			if fam == "10.0.0." {
				vips = append(vips, fam+v)
			} else {
				vips = append(vips, fam+v+"'")
			}
		}
		if len(vips) == 0 {
			continue
		}
		fmt.Fprintf(&b, "- {name: in%d, vrid: %d%s%s%s, vips: [%s]}\n", i, 61+r.IntN(2),
			pick("", ", announce: {mode: none}", ", announce: {backup: worse}", ", announce: {backup: worse, backupPrepend: 2}", ", announce: {}"),
			pick("", "", ", accept: false"), pick("", ", interface: eth0"), strings.Join(vips, ", "))
	}
	if rt := pick("", "kernel", "ebgp", "ibgp", "ebgp6"); rt != "" {
		b.WriteString("routing:\n")
		switch rt {
		case "kernel":
			b.WriteString("  exporter: kernel\n  kernelTable: {table: 100}\n")
		case "ebgp":
			b.WriteString("  bgp: {asn: 65001, peers: [{address: 192.168.1.254, asn: 65000}]}\n")
		case "ibgp":
			b.WriteString("  bgp: {asn: 65001, peers: [{address: 192.168.1.254, asn: 65001}]}\n")
		case "ebgp6":
			b.WriteString("  bgp: {asn: 65001, nextHop6: 'fd00::9', peers: [{address: 192.168.1.254, asn: 65000}]}\n")
		}
		if e := some("10.0.0.60", "10.0.0.63", "'2001:db8::63'"); len(e) > 0 {
			b.WriteString("  ecmp:\n")
			for _, v := range e {
				fmt.Fprintf(&b, "  - {vip: %s}\n", v)
			}
		}
		if s := some("10.0.0.61/32", "10.96.0.0/12", "'fd96::/108'"); len(s) > 0 {
			fmt.Fprintf(&b, "  static: [%s]\n", strings.Join(s, ", "))
		}
		if r.IntN(2) == 0 {
			b.WriteString("  advertiseClusterIPs: true\n")
		}
	}
	if vs := some("{vip: 10.0.0.60, port: 80, realServers: [{address: 10.9.0.1}]}", "{vip: 10.0.0.63, service: default/web}", "{vip: '2001:db8::60', port: 80, service: default/web}", "{fwmark: 7, realServers: [{address: 10.9.0.1}]}"); len(vs) > 0 {
		b.WriteString("virtualServers:\n")
		for _, v := range vs {
			b.WriteString("- " + v + "\n")
		}
	}
	data := map[string]string{configmap.StructuredKey: b.String()}
	if r.IntN(2) == 0 {
		data["10.0.0.61"] = pick("", "default/web")
	}
	return data
}

// A light random search over routing configurations (what the property
// test does not generate): two versions A then B, on node-a (IPv4 and
// IPv6), node-c (IPv4 only), fresh, with history, through a host glitch
// and with the Node's IPv4 address gone for a moment. Resolve must never
// take the "(a bug: please report it)" path. Prints the first few
// counterexamples.
func TestRoutingEditsNeverTakeTheBugPath(t *testing.T) {
	w := threeNodes()
	w.services["default/web"].Spec.ClusterIPs = []string{"10.96.0.10", "fd96::10"}
	noV4 := slices.Clone(w.nodes)
	for i, n := range noV4 {
		if n.Name == "node-a" {
			noV4[i] = node("node-a", nil, "fd00::1")
		}
	}
	seen := map[string]int{}
	examples := 0
	verbose := os.Getenv("REVIEW2_ALL") != ""
	diverge := map[string]int{}
	for seed := uint64(1); seed <= 600; seed++ {
		r := rand.New(rand.NewPCG(seed, 2))
		a, bdata := review2Doc(r), review2Doc(r)
		if r.IntN(2) == 0 {
			bdata = maps.Clone(a)
		}
		// Mistakes in B: kept forms come into play.
		doc := bdata[configmap.StructuredKey]
		switch r.IntN(5) {
		case 0:
			doc = strings.Replace(doc, "{name: in0,", "{name: in0, prioriy: 1,", 1)
		case 1:
			doc = strings.Replace(doc, "{name: in1,", "{name: in1, prioriy: 1,", 1)
		case 2:
			doc = strings.Replace(doc, "routing:\n", "routing:\n  med: x\n", 1)
		case 3:
			doc += "instances: [\n"
		}
		bdata[configmap.StructuredKey] = doc
		specA, _ := configmap.Parse(a, configmap.DefaultDefaults(), nil)
		specB, _ := configmap.Parse(bdata, configmap.DefaultDefaults(), specA)
		freshB, _ := configmap.Parse(bdata, configmap.DefaultDefaults(), nil)
		for _, self := range []string{"node-a", "node-c"} {
			c := w.cluster(self)
			cfgA, psA := Resolve(specA, c, host)
			type run struct {
				what string
				spec *configmap.Spec
				c    Cluster
				h    Host
			}
			withPrev := c
			withPrev.Previous = cfgA
			glitchNodes := withPrev
			glitchNodes.Nodes = noV4
			runs := []run{{"A fresh", specA, c, host}, {"B fresh", freshB, c, host}, {"B after A", specB, withPrev, host},
				{"B after A, interface not found", specB, withPrev, fakeHost{}}}
			if self == "node-a" {
				runs = append(runs, run{"B after A, node-a without IPv4", specB, glitchNodes, host})
			}
			_ = psA
			slots := map[string]map[string]string{}
			for _, x := range runs {
				cfg, ps := Resolve(x.spec, x.c, x.h)
				if cfg != nil && (x.what == "B fresh" || x.what == "B after A") {
					m := map[string]string{}
					for _, in := range cfg.Instances {
						vc, _ := in.Check("")
						vips := slices.Clone(in.VIPs)
						slices.Sort(vips)
						m[fmt.Sprintf("%s/%s/%d", vc.Interface, vc.Family(), vc.VRID)] = fmt.Sprint(vips)
					}
					slots[x.what] = m
				}
				for _, p := range ps {
					if p.Source != "resolved configuration" {
						continue
					}
					msg := p.Reason[:strings.Index(p.Reason+" (a bug", " (a bug")]
					if strings.Contains(msg, "needs a routing section") && !verbose {
						seen["(TestAnnounceNoneWithoutRouting) "+x.what]++
						continue
					}
					key := x.what + ": " + strings.Map(func(c rune) rune {
						if c >= '0' && c <= '9' {
							return '#'
						}
						return c
					}, msg)
					seen[key]++
					if examples < 4 {
						examples++
						t.Errorf("seed %d, %s on %s: %s\nA:\n%v\nB:\n%v", seed, x.what, self, p.Reason, a, bdata)
					}
				}
			}
			// Where both run the VRID, they run the same VIPs (docs/vip-configmap.md, rule 3).
			for slot, v := range slots["B after A"] {
				if f, ok := slots["B fresh"][slot]; ok && f != v {
					diverge["VIP sets differ on one VRID between a node with history and a fresh one"]++
					if examples < 6 {
						examples++
						t.Errorf("seed %d on %s: %s: history %s, fresh %s\nA:\n%v\nB:\n%v", seed, self, slot, v, f, a, bdata)
					}
				}
			}
		}
	}
	for k, n := range seen {
		t.Errorf("%4d x %s", n, k)
	}
	for k, n := range diverge {
		t.Errorf("%4d x %s", n, k)
	}
}
