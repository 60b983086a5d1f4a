package configmap

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// A named entry whose new form is bad, even in a field that identifies
// an unnamed one (vip, port, service, vrid), keeps the form that ran: it
// is known by its name.
func TestBadEntryKeepsTheFormThatRanByName(t *testing.T) {
	good := `
instances:
- {name: web, vrid: 61, vips: [10.0.0.60]}
virtualServers:
- {name: web, vip: 10.0.0.60, port: 80, service: default/web}
`
	prev, ps := Parse(map[string]string{StructuredKey: good}, DefaultDefaults(), nil)
	if len(ps) != 0 || len(prev.VirtualServers) != 1 {
		t.Fatalf("good: %v %+v", ps, prev.VirtualServers)
	}
	for _, bad := range []string{
		"{name: web, vip: 10.0.0.600, port: 80, service: default/web}", // typo in the VIP
		"{name: web, vip: 10.0.0.60, port: 80, service: default/Web}",  // typo in the Service
		"{name: web, vip: 10.0.0.60, port: 800000, service: default/web}",
	} {
		doc := strings.Replace(good, "{name: web, vip: 10.0.0.60, port: 80, service: default/web}", bad, 1)
		spec, ps := Parse(map[string]string{StructuredKey: doc}, DefaultDefaults(), prev)
		if len(ps) != 1 || ps[0].Outcome != outcomeKept || ps[0].Entry != `virtual server "web"` {
			t.Errorf("%s: problems %v", bad, ps)
		}
		if len(spec.VirtualServers) != 1 || spec.VirtualServers[0].VIP != "10.0.0.60" || spec.VirtualServers[0].Port != 80 {
			t.Errorf("%s: the virtual server that ran is not kept: %+v", bad, spec.VirtualServers)
		}
	}
	spec, ps := Parse(map[string]string{StructuredKey: strings.Replace(good, "vrid: 61", "vrid: 610", 1)}, DefaultDefaults(), prev)
	if len(ps) != 1 || len(spec.Instances) != 1 || spec.Instances[0].VRID != 61 {
		t.Errorf("named instance with a bad vrid: %v; problems %v", names(spec), ps)
	}
}

// An unnamed entry is known by the fields that identify it: changed there,
// it is another entry. A mistake there refuses the new one, and the old
// one, which is no longer in the ConfigMap, goes; the problem says how to
// avoid that.
func TestUnnamedEntryIsKnownByItsFields(t *testing.T) {
	prev, _ := Parse(map[string]string{StructuredKey: "instances:\n- {vrid: 61, vips: [10.0.0.60]}\n"}, DefaultDefaults(), nil)
	spec, ps := Parse(map[string]string{StructuredKey: "instances:\n- {vrid: 610, vips: [10.0.0.60]}\n"}, DefaultDefaults(), prev)
	if len(spec.Instances) != 0 {
		t.Errorf("instances %v", names(spec))
	}
	if len(ps) != 1 || ps[0].Entry != `instance "vrid-610"` || !strings.Contains(ps[0].Outcome, "name it to keep its last good form") {
		t.Errorf("problems %v", ps)
	}
	// A mistake elsewhere keeps it.
	spec, ps = Parse(map[string]string{StructuredKey: "instances:\n- {vrid: 61, priority: 300, vips: [10.0.0.60]}\n"}, DefaultDefaults(), prev)
	if len(spec.Instances) != 1 || spec.Instances[0].Priority != nil || len(ps) != 1 || ps[0].Outcome != outcomeKept {
		t.Errorf("instances %v; problems %v", names(spec), ps)
	}
}

// Reordering entries and breaking one, or deleting one and breaking
// another, keeps exactly the broken one's last good form: nothing is
// matched by its place in the list (issue #9, case 4).
func TestLastGoodIsFoundByIdentityNotPlace(t *testing.T) {
	good := `
virtualServers:
- {name: a, vip: 10.0.0.1, port: 80, realServers: [{address: 10.1.0.1}]}
- {name: b, vip: 10.0.0.2, port: 80, realServers: [{address: 10.1.0.2}]}
- {name: c, vip: 10.0.0.3, port: 80, realServers: [{address: 10.1.0.3}]}
`
	prev, ps := Parse(map[string]string{StructuredKey: good}, DefaultDefaults(), nil)
	if len(ps) != 0 {
		t.Fatal(ps)
	}
	for _, tc := range []struct{ name, doc, want string }{
		{"reorder and mistype the moved one", `
virtualServers:
- {name: c, vip: 10.0.0.3, port: 80, scheduler: nope, realServers: [{address: 10.1.0.3}]}
- {name: a, vip: 10.0.0.1, port: 80, realServers: [{address: 10.1.0.1}]}
- {name: b, vip: 10.0.0.2, port: 80, realServers: [{address: 10.1.0.2}]}
`, "c:10.0.0.3 a:10.0.0.1 b:10.0.0.2"},
		{"delete the first and mistype the second", `
virtualServers:
- {name: b, vip: 10.0.0.2, port: 80, scheduler: nope, realServers: [{address: 10.1.0.2}]}
- {name: c, vip: 10.0.0.3, port: 80, realServers: [{address: 10.1.0.3}]}
`, "b:10.0.0.2 c:10.0.0.3"},
		{"a new bad one where another was", `
virtualServers:
- {name: d, vip: 10.0.0.4, port: 80, scheduler: nope, realServers: [{address: 10.1.0.4}]}
- {name: b, vip: 10.0.0.2, port: 80, realServers: [{address: 10.1.0.2}]}
- {name: c, vip: 10.0.0.3, port: 80, realServers: [{address: 10.1.0.3}]}
`, "b:10.0.0.2 c:10.0.0.3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, ps := Parse(map[string]string{StructuredKey: tc.doc}, DefaultDefaults(), prev)
			var got []string
			for _, vs := range spec.VirtualServers {
				if vs.Scheduler != "" {
					t.Errorf("the bad form runs: %+v", vs)
				}
				got = append(got, vs.Name+":"+vs.VIP)
			}
			if strings.Join(got, " ") != tc.want {
				t.Errorf("virtual servers %v; want %s", got, tc.want)
			}
			if len(ps) != 1 {
				t.Errorf("problems %v", ps)
			}
		})
	}
}

// A new structured instance that takes the VRID of the running instance of
// the VIP keys is refused; the instance "vips" stays.
func TestLegacyInstanceKeepsItsVRID(t *testing.T) {
	prev, ps := Parse(map[string]string{"10.0.0.50": "default/web"}, DefaultDefaults(), nil)
	if len(ps) != 0 || len(prev.Instances) != 1 {
		t.Fatalf("%v %+v", ps, prev.Instances)
	}
	spec, ps := Parse(map[string]string{
		"10.0.0.50":   "default/web",
		StructuredKey: "instances:\n- {name: new, vrid: 50, vips: [10.0.0.70]}\n",
	}, DefaultDefaults(), prev)
	t.Logf("problems: %v", ps)
	for _, in := range spec.Instances {
		if in.Name == LegacyInstance {
			return
		}
	}
	t.Errorf("the working instance %q with 10.0.0.50 is gone; instances now %v", LegacyInstance, names(spec))
}

func names(s *Spec) []string {
	var out []string
	for _, in := range s.Instances {
		out = append(out, in.Name+":"+strings.Join(in.VIPs, ","))
	}
	return out
}

// What a running daemon keeps as the last good form must survive a
// restart: it saves Spec.Data and parses it as the previous Spec first.
func TestLastGoodSurvivesARestart(t *testing.T) {
	good := "instances:\n- {name: web, vrid: 61, vips: [10.0.0.60]}\n- {vrid: 62, vips: [10.0.0.62]}\n" +
		"virtualServers:\n- {vip: 10.0.0.60, port: 80, service: default/web, scheduler: mh}\nkernel: {connReuseMode: 0}\n"
	data := map[string]string{StructuredKey: good, "10.0.0.50": "default/web:DR", "10.0.0.51": ""}
	running, ps := Parse(data, DefaultDefaults(), nil)
	if len(ps) != 0 {
		t.Fatal(ps)
	}
	bad := map[string]string{StructuredKey: good + "\tbroken\n", "10.0.0.50": "default/web:PROXY", "10.0.0.51": ""}
	kept, ps := Parse(bad, DefaultDefaults(), running)
	if len(ps) != 2 {
		t.Fatalf("while running: %v", ps)
	}
	saved, err := json.Marshal(kept)
	if err != nil {
		t.Fatal(err)
	}
	// After a restart: the saved history, then the live ConfigMap.
	restored := &Spec{}
	if err := json.Unmarshal(saved, restored); err != nil {
		t.Fatalf("the saved history does not read back: %v\n%s", err, saved)
	}
	after, _ := Parse(bad, DefaultDefaults(), restored)
	for _, s := range []*Spec{restored, after} {
		if !reflect.DeepEqual(forms(s), forms(running)) {
			t.Errorf("after a restart:\n%+v\nwhile running:\n%+v\nsaved: %v", forms(s), forms(running), saved)
		}
	}
}

// forms is what a Spec runs: its instances, virtual servers and kernel
// settings, without where in the ConfigMap they were written.
func forms(s *Spec) []any {
	var out []any
	for _, in := range s.Instances {
		in.Source, in.Kept = "", false
		out = append(out, in)
	}
	for _, vs := range s.VirtualServers {
		vs.Source, vs.Kept = "", false
		out = append(out, vs)
	}
	return append(out, s.Kernel, s.NodeSelector)
}

func deepEqual(a, b any) bool { return reflect.DeepEqual(a, b) }
