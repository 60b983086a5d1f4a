package configmap

import (
	"slices"
	"strings"
	"testing"
)

// One bad VIP key costs only itself, and is the one named; the others run
// on, in one instance with the same VIPs on every node (issue #9, case 1).
func TestBadVIPKeyCostsOnlyItself(t *testing.T) {
	running := map[string]string{"10.0.0.50": "default/web", "10.0.0.51": ""}
	prev, ps := Parse(running, DefaultDefaults(), nil)
	if len(ps) != 0 {
		t.Fatal(ps)
	}
	for _, bad := range []string{"224.0.0.18", "127.0.0.1", "0.0.0.0", "10.0.0.0/24", "web"} {
		for _, history := range []*Spec{prev, nil} {
			data := map[string]string{"10.0.0.50": "default/web", "10.0.0.51": "", bad: ""}
			spec, ps := Parse(data, DefaultDefaults(), history)
			if len(ps) != 1 || ps[0].Key != bad {
				t.Errorf("%s (history %v): problems %v; want one, naming %s", bad, history != nil, ps, bad)
			}
			if got := names(spec); !slices.Equal(got, []string{"vips:10.0.0.50,10.0.0.51"}) {
				t.Errorf("%s (history %v): instances %v", bad, history != nil, got)
			}
			if len(spec.VirtualServers) != 1 || spec.VirtualServers[0].VIP != "10.0.0.50" {
				t.Errorf("%s: virtual servers %+v", bad, spec.VirtualServers)
			}
		}
	}
}

// On a clash the entry that runs wins and the newcomer is refused and
// named; a node that ran neither runs neither, so no two nodes run
// different things on one VRID (issue #9, case 2).
func TestClashRunningWins(t *testing.T) {
	for _, tc := range []struct {
		name, running, edited string
		newcomer              string
	}{
		{"same VRID", "instances:\n- {name: b, vrid: 61, vips: [10.0.0.61]}\n",
			"instances:\n- {name: a, vrid: 61, vips: [10.0.0.60]}\n- {name: b, vrid: 61, vips: [10.0.0.61]}\n", `instance "a"`},
		{"same VIP", "instances:\n- {name: b, vrid: 61, vips: [10.0.0.61]}\n",
			"instances:\n- {name: a, vrid: 60, vips: [10.0.0.61]}\n- {name: b, vrid: 61, vips: [10.0.0.61]}\n", `instance "a"`},
		{"same name", "instances:\n- {name: b, vrid: 61, vips: [10.0.0.61]}\n",
			"instances:\n- {name: b, vrid: 60, vips: [10.0.0.60]}\n- {name: b, vrid: 61, vips: [10.0.0.61]}\n", ""},
		{"same virtual service", "virtualServers:\n- {name: b, vip: 10.0.0.1, port: 80, realServers: [{address: 10.1.0.1}]}\n",
			"virtualServers:\n- {name: a, vip: 10.0.0.1, port: 80, realServers: [{address: 10.1.0.2}]}\n- {name: b, vip: 10.0.0.1, port: 80, realServers: [{address: 10.1.0.1}]}\n", `virtual server "a"`},
		{"accept false on a served VIP", "instances:\n- {name: b, vrid: 61, vips: [10.0.0.61]}\nvirtualServers:\n- {name: web, vip: 10.0.0.61, port: 80, realServers: [{address: 10.1.0.1}]}\n",
			"instances:\n- {name: b, vrid: 61, accept: false, vips: [10.0.0.61]}\nvirtualServers:\n- {name: web, vip: 10.0.0.61, port: 80, realServers: [{address: 10.1.0.1}]}\n", ""},
		{"ECMP VIP taking a VRRP VIP", "instances:\n- {name: b, vrid: 61, vips: [10.0.0.61]}\n",
			"instances:\n- {name: b, vrid: 61, vips: [10.0.0.61]}\nrouting:\n  kernelTable: {table: 100}\n  exporter: kernel\n  ecmp: [{vip: 10.0.0.61}]\n", "routing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prev, ps := Parse(map[string]string{StructuredKey: tc.running}, DefaultDefaults(), nil)
			if len(ps) != 0 {
				t.Fatal(ps)
			}
			old, ps := Parse(map[string]string{StructuredKey: tc.edited}, DefaultDefaults(), prev)
			if got, want := forms(old), forms(prev); !equalForms(got, want) {
				t.Errorf("with history: %v\nwant what ran: %v", describe(old), describe(prev))
			}
			text := problemsText(ps)
			if tc.newcomer != "" && !strings.Contains(text, tc.newcomer) {
				t.Errorf("the newcomer %s is not named:\n%s", tc.newcomer, text)
			}
			for _, p := range ps {
				if p.Entry == tc.newcomer && p.Outcome != outcomeNotApplied {
					t.Errorf("newcomer: %v", p)
				}
			}
			fresh, _ := Parse(map[string]string{StructuredKey: tc.edited}, DefaultDefaults(), nil)
			for _, in := range fresh.Instances {
				for _, o := range old.Instances {
					if o.VRID == in.VRID && !slices.Equal(o.VIPs, in.VIPs) {
						t.Errorf("VRID %d: %v on a node with history, %v on a fresh one", in.VRID, o.VIPs, in.VIPs)
					}
				}
			}
		})
	}
}

// The instance of the VIP keys and a structured instance on its VRID: a
// node that ran one keeps it, a new node runs neither — never the other
// set of VIPs on the same VRID (issue #9, case 3).
func TestVIPKeysAndAnInstanceOnTheirVRID(t *testing.T) {
	both := map[string]string{"10.0.0.50": "", StructuredKey: "instances:\n- {name: web, vrid: 50, vips: [10.0.0.70]}\n"}
	for _, tc := range []struct {
		name    string
		running map[string]string
		want    string
	}{
		{"the keys ran", map[string]string{"10.0.0.50": ""}, "vips:10.0.0.50"},
		{"the instance ran", map[string]string{StructuredKey: both[StructuredKey]}, "web:10.0.0.70"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prev, _ := Parse(tc.running, DefaultDefaults(), nil)
			old, ps := Parse(both, DefaultDefaults(), prev)
			if got := strings.Join(names(old), " "); got != tc.want {
				t.Errorf("with history: %s; want %s (problems %v)", got, tc.want, ps)
			}
			fresh, ps := Parse(both, DefaultDefaults(), nil)
			if len(fresh.Instances) != 0 || len(ps) != 2 {
				t.Errorf("fresh: %v; problems %v", names(fresh), ps)
			}
		})
	}
}

// A config.yaml that cannot be read keeps what ran, less the VIPs of
// removed keys; a new VIP key waits (its VIP may belong to an instance
// there). A node that has no history does not know its selector, so it
// takes part in nothing rather than in VIPs it may be excluded from.
func TestUnreadableDocument(t *testing.T) {
	good := map[string]string{"10.0.0.50": "default/web", "10.0.0.52": "", StructuredKey: "nodeSelector: role=lb\ninstances:\n- {name: web, vrid: 61, vips: [10.0.0.61]}\n"}
	prev, _ := Parse(good, DefaultDefaults(), nil)
	bad := map[string]string{"10.0.0.50": "default/web", "10.0.0.51": "", StructuredKey: "nodeSelector: role=lb\ninstances: ["}
	old, ps := Parse(bad, DefaultDefaults(), prev)
	if got := strings.Join(names(old), " "); got != "web:10.0.0.61 vips:10.0.0.50" || old.NodeSelector != "role=lb" || old.NoNodes {
		t.Errorf("with history: %s, selector %q %v", got, old.NodeSelector, old.NoNodes)
	}
	if len(ps) != 2 || ps[0].Key != "10.0.0.51" || !strings.Contains(ps[0].Reason, "waits") || ps[1].Key != StructuredKey {
		t.Errorf("problems %v", ps)
	}
	if len(old.VirtualServers) != 1 || old.VirtualServers[0].VIP != "10.0.0.50" {
		t.Errorf("virtual servers %+v", old.VirtualServers)
	}
	fresh, ps := Parse(bad, DefaultDefaults(), nil)
	if !fresh.NoNodes || len(ps) != 4 || !strings.Contains(ps[3].Outcome, "runs nothing") {
		t.Errorf("fresh: NoNodes %v, problems %v", fresh.NoNodes, ps)
	}
	// A bad selector alone: the same.
	badSel := map[string]string{StructuredKey: "nodeSelector: 'a b c'\ninstances:\n- {name: web, vrid: 61, vips: [10.0.0.61]}\n"}
	if s, _ := Parse(badSel, DefaultDefaults(), prev); s.NoNodes || s.NodeSelector != "role=lb" {
		t.Errorf("bad selector with history: %q %v", s.NodeSelector, s.NoNodes)
	}
	if s, _ := Parse(badSel, DefaultDefaults(), nil); !s.NoNodes {
		t.Errorf("bad selector without history selects nodes")
	}
}

func describe(s *Spec) []string {
	out := names(s)
	for _, vs := range s.VirtualServers {
		out = append(out, "vs "+vs.id)
	}
	if s.Routing != nil {
		out = append(out, "routing")
	}
	return out
}

func equalForms(a, b []any) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if !deepEqual(a[i], b[i]) {
			return false
		}
	}
	return true
}

// A VIP key that clashes with routing (an ECMP VIP, a static route) holds
// back the whole instance of the VIP keys on the nodes that did not run it:
// they share one VRID, whose VIP set must be the same on every node that
// runs it. Nodes that ran it keep it, and routing as it was.
func TestAKeyClashingWithRoutingHoldsBackTheKeysWhereTheyDidNotRun(t *testing.T) {
	keys := map[string]string{"10.0.0.50": "", "10.0.0.51": ""}
	with := func(doc string) map[string]string {
		d := map[string]string{StructuredKey: doc}
		for k, v := range keys {
			d[k] = v
		}
		return d
	}
	prev, ps := Parse(with("routing: {exporter: kernel, kernelTable: {table: 100}, static: [10.96.0.0/12]}\n"), DefaultDefaults(), nil)
	if len(ps) != 0 {
		t.Fatal(ps)
	}
	for _, doc := range []string{
		"routing: {exporter: kernel, kernelTable: {table: 100}, static: [10.96.0.0/12, 10.0.0.50/32]}\n",
		"routing: {exporter: kernel, kernelTable: {table: 100}, static: [10.96.0.0/12], ecmp: [{vip: 10.0.0.50}]}\n",
	} {
		old, ps := Parse(with(doc), DefaultDefaults(), prev)
		if got := strings.Join(names(old), " "); got != "vips:10.0.0.50,10.0.0.51" || old.Routing == nil || len(old.Routing.Static) != 1 || len(old.Routing.ECMP) != 0 {
			t.Errorf("%s with history: %s, routing %+v", doc, got, old.Routing)
		}
		culprit := `key "10.0.0.50": the route 10.0.0.50/32 is also routing's`
		if strings.Contains(doc, "ecmp") {
			culprit = `key "10.0.0.50": VIP 10.0.0.50 is also routing's`
		}
		if text := problemsText(ps); !strings.Contains(text, culprit) || !strings.Contains(text, `key "10.0.0.51": its instance "vips"`) || !strings.Contains(text, `key "config.yaml", routing`) {
			t.Errorf("%s: problems\n%s", doc, text)
		}
		if fresh, _ := Parse(with(doc), DefaultDefaults(), nil); len(fresh.Instances) != 0 || fresh.Routing != nil {
			t.Errorf("%s fresh: %v, routing %+v", doc, names(fresh), fresh.Routing)
		}
	}
}
