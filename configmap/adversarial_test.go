package configmap

// Sequences an adversarial review of the vip-configmap rules tried (each
// broke a promise of docs/vip-configmap.md before it was
// fixed).

import (
	"net/netip"
	"slices"
	"testing"
)

func reviewHolds(s *Spec, vip string) bool {
	a := netip.MustParseAddr(vip)
	if s.NoNodes {
		return false
	}
	for _, in := range s.Instances {
		if in.hasVIP(a) {
			return true
		}
	}
	return false
}

func reviewInstance(s *Spec, name string) *Instance {
	for i := range s.Instances {
		if s.Instances[i].Name == name {
			return &s.Instances[i]
		}
	}
	return nil
}

// Rule 1 ("an entry is checked alone ... reported (the key, the entry and
// the field) ... nothing else is [not applied]"). A misspelled field name
// or a value of the wrong type in ONE entry is not a YAML syntax error,
// yet UnmarshalStrict fails the whole document: config.yaml is treated as
// unreadable. A fresh node (new node, pod rescheduled, state dir lost)
// then runs nothing at all, not even the untouched instance "api" or the
// VIP keys; a node with history freezes every other edit in the same
// apply.
func TestAMistakeInOneEntryCostsOnlyThatEntry(t *testing.T) {
	keys := map[string]string{"10.0.0.50": "", "10.0.0.51": ""}
	for _, tc := range []struct{ name, web string }{
		{"misspelled field", "{name: web, vrid: 61, prioriy: 100, vips: [10.0.0.60]}"},
		{"string where a number is wanted", `{name: web, vrid: "61", vips: [10.0.0.60]}`},
		{"scalar where a list is wanted", "{name: web, vrid: 61, vips: 10.0.0.60}"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := map[string]string{StructuredKey: "instances:\n- " + tc.web + "\n- {name: api, vrid: 62, vips: [10.0.0.62]}\n"}
			for k, v := range keys {
				data[k] = v
			}
			fresh, ps := Parse(data, DefaultDefaults(), nil)
			if fresh.NoNodes || reviewInstance(fresh, "api") == nil || !reviewHolds(fresh, "10.0.0.50") {
				t.Errorf("fresh node: NoNodes=%v instances %v; want the untouched instance api and the VIP keys applied, only web refused", fresh.NoNodes, names(fresh))
			}
			found := false
			for _, p := range ps {
				found = found || p.Entry == `instance "web"`
			}
			if !found {
				t.Errorf("no problem names instance \"web\" (rule 1: the key, the entry and the field): %v", ps)
			}
		})
	}
	// On a node with history: removing instance "api" on purpose in the
	// same apply as the typo in "web" does not remove it.
	good := map[string]string{StructuredKey: "instances:\n- {name: web, vrid: 61, vips: [10.0.0.60]}\n- {name: api, vrid: 62, vips: [10.0.0.62]}\n"}
	prev, _ := Parse(good, DefaultDefaults(), nil)
	edit := map[string]string{StructuredKey: "instances:\n- {name: web, vrid: 61, prioriy: 100, vips: [10.0.0.60]}\n"}
	s, _ := Parse(edit, DefaultDefaults(), prev)
	if reviewInstance(s, "api") != nil {
		t.Errorf("history node: instance api was removed on purpose but still runs: %v", names(s))
	}
}

// Rule 1: a bad entry "is not applied; nothing else is". A typo in a
// structured instance that lists the VIP of a VIP key (or another edit
// that makes one key clash) refuses the instance of the VIP keys as a
// whole: every VIP key, however unrelated, is dropped on every node that
// starts fresh. The history nodes keep them, so the cluster also runs
// VRID 50 on old nodes only.
func TestAListerOfAKeyVIPDoesNotCostTheOtherKeys(t *testing.T) {
	keys := map[string]string{"10.0.0.50": "", "10.0.0.51": "", "10.0.0.60": "default/web"}
	for _, tc := range []struct{ name, good, bad string }{
		{"typo in the structured instance listing a key's VIP",
			"instances:\n- {name: web, vrid: 61, vips: [10.0.0.60]}\n",
			"instances:\n- {name: web, vrid: 61, priority: 999, vips: [10.0.0.60]}\n"},
		{"accept: false on the structured instance listing a key's VIP (key has a Service)",
			"instances:\n- {name: web, vrid: 61, vips: [10.0.0.60]}\n",
			"instances:\n- {name: web, vrid: 61, accept: false, vips: [10.0.0.60]}\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			with := func(doc string) map[string]string {
				d := map[string]string{StructuredKey: doc}
				for k, v := range keys {
					d[k] = v
				}
				return d
			}
			prev, ps := Parse(with(tc.good), DefaultDefaults(), nil)
			if len(ps) != 0 {
				t.Fatal(ps)
			}
			old, _ := Parse(with(tc.bad), DefaultDefaults(), prev)
			fresh, ps := Parse(with(tc.bad), DefaultDefaults(), nil)
			t.Logf("history node: %v; fresh node: %v", names(old), names(fresh))
			for _, k := range []string{"10.0.0.50", "10.0.0.51"} {
				if !reviewHolds(fresh, k) {
					t.Errorf("fresh node does not hold untouched key %s; problems:\n%s", k, problemsText(ps))
				}
			}
		})
	}
}

// Same cascade through a structured instance named "vips" (which the VIP
// keys join): a typo in an unrelated instance "web" listing a key's VIP
// makes "vips" (VRID 70, its own VIP 10.0.0.70) refused on fresh nodes,
// and the key 10.0.0.50 is silently not held: no problem names it.
func TestABadListerDoesNotCostTheInstanceNamedVIPs(t *testing.T) {
	good := map[string]string{"10.0.0.50": "", "10.0.0.60": "", StructuredKey: "instances:\n- {name: vips, vrid: 70, vips: [10.0.0.70]}\n- {name: web, vrid: 61, vips: [10.0.0.60]}\n"}
	if _, ps := Parse(good, DefaultDefaults(), nil); len(ps) != 0 {
		t.Fatal(ps)
	}
	bad := map[string]string{"10.0.0.50": "", "10.0.0.60": "", StructuredKey: "instances:\n- {name: vips, vrid: 70, vips: [10.0.0.70]}\n- {name: web, vrid: 61, priority: 999, vips: [10.0.0.60]}\n"}
	fresh, ps := Parse(bad, DefaultDefaults(), nil)
	if reviewInstance(fresh, "vips") == nil {
		t.Errorf("fresh node: the untouched instance \"vips\" is refused because of web's typo; problems:\n%s", problemsText(ps))
	}
	if !reviewHolds(fresh, "10.0.0.50") && !slices.ContainsFunc(ps, func(p Problem) bool { return p.Key == "10.0.0.50" }) {
		t.Errorf("fresh node: key 10.0.0.50 is not held and no problem says so:\n%s", problemsText(ps))
	}
}

// Unnamed instances: an IPv4 and an IPv6 one on VRID 62 ("vrid-62" and
// "vrid-62-v6"). A typo in the IPv6 one's only VIP makes its default name
// "vrid-62" (no family known), which clashes by name with the untouched
// IPv4 instance: a fresh node drops the IPv4 instance (rule 1). On the
// history node the problem of the IPv6 entry says "it keeps running here
// as it was" although it does not run.
func TestAnIPv6TypoKeepsTheFamilyOfTheName(t *testing.T) {
	good := map[string]string{StructuredKey: "instances:\n- {vrid: 62, vips: [10.0.0.62]}\n- {vrid: 62, vips: ['2001:db8::62']}\n"}
	prev, ps := Parse(good, DefaultDefaults(), nil)
	if len(ps) != 0 || len(prev.Instances) != 2 {
		t.Fatal(ps, names(prev))
	}
	bad := map[string]string{StructuredKey: "instances:\n- {vrid: 62, vips: [10.0.0.62]}\n- {vrid: 62, vips: ['2001:db8::6g']}\n"}
	fresh, ps := Parse(bad, DefaultDefaults(), nil)
	if !reviewHolds(fresh, "10.0.0.62") {
		t.Errorf("fresh node drops the untouched IPv4 instance: %v\n%s", names(fresh), problemsText(ps))
	}
	old, ps := Parse(bad, DefaultDefaults(), prev)
	runsV6 := reviewHolds(old, "2001:db8::62")
	for _, p := range ps {
		if p.Path == "instances[1]" && p.Outcome == outcomeKept && !runsV6 {
			t.Errorf("history node: %q says it keeps running, but no IPv6 instance runs (%v)", p.Error(), names(old))
		}
	}
}

// Rule 3: "a newcomer that takes the VRID of a running instance is
// refused and the running one stays". When the running instance's edit
// mistypes its only VIP, it claims no VRID (its family is unknown), so a
// newcomer on the same VRID in the same apply is applied and the running
// instance is dropped on every node.
func TestASoleVIPTypoStillClaimsTheVRID(t *testing.T) {
	prev, _ := Parse(map[string]string{StructuredKey: "instances:\n- {name: web, vrid: 61, vips: [10.0.0.60]}\n"}, DefaultDefaults(), nil)
	edit := map[string]string{StructuredKey: "instances:\n- {name: web, vrid: 61, vips: [10.0.0.600]}\n- {name: new, vrid: 61, vips: [10.0.0.70]}\n"}
	s, ps := Parse(edit, DefaultDefaults(), prev)
	if reviewInstance(s, "web") == nil || reviewInstance(s, "new") != nil {
		t.Errorf("history node runs %v; want web kept and the newcomer refused\n%s", names(s), problemsText(ps))
	}
}

// The problem of a VIP key says "it is not applied" while its VIP runs in
// the kept last good form of the structured instance "vips" it joined.
func TestAKeyOutcomeFollowsTheFormHoldingIt(t *testing.T) {
	good := map[string]string{"10.0.0.50": "", StructuredKey: "instances:\n- {name: vips, vrid: 70, vips: [10.0.0.70]}\n"}
	prev, ps := Parse(good, DefaultDefaults(), nil)
	if len(ps) != 0 || !reviewHolds(prev, "10.0.0.50") {
		t.Fatal(ps, names(prev))
	}
	bad := map[string]string{"10.0.0.50": "", StructuredKey: "instances:\n- {name: vips, vrid: 70, priority: 999, vips: [10.0.0.70]}\n"}
	s, ps := Parse(bad, DefaultDefaults(), prev)
	if !reviewHolds(s, "10.0.0.50") {
		t.Fatalf("key VIP not kept: %v", names(s))
	}
	for _, p := range ps {
		if p.Key == "10.0.0.50" && p.Outcome == outcomeNotApplied {
			t.Errorf("%q, but 10.0.0.50 runs in the kept instance %v", p.Error(), names(s))
		}
	}
}

// A VIP key whose value cannot be applied (kube-keepalived-vip's PROXY
// mode, an unknown mode, a bad Service name) still gives its VIP, and the
// problem says so: "not applied" alone read as if the VIP were not held
// either, while keepvip status listed it.
func TestAVIPKeyWithABadValueSaysItsVIPIsHeld(t *testing.T) {
	for _, value := range []string{"default/web:PROXY", "default/web:FOO", "not a service"} {
		s, ps := Parse(map[string]string{"192.0.2.101": value, "192.0.2.102": ""}, DefaultDefaults(), nil)
		if !reviewHolds(s, "192.0.2.101") {
			t.Errorf("%q: the key's VIP is not held: %v", value, names(s))
		}
		var got []string
		for _, p := range ps {
			got = append(got, p.Error())
			if p.Key == "192.0.2.101" && p.Outcome != outcomeVIPOnly {
				t.Errorf("%q: %q; want the outcome %q", value, p.Error(), outcomeVIPOnly)
			}
		}
		if len(ps) != 1 {
			t.Errorf("%q: problems %q; want one, for the value", value, got)
		}
	}
}
