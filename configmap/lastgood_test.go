package configmap

import (
	"reflect"
	"strings"
	"testing"
)

// An unnamed entry whose new form is bad in a field that identifies it
// (vip, port, service, vrid) keeps the form that ran, found by its place.
func TestBadIdentityKeepsTheFormThatRan(t *testing.T) {
	good := `
instances:
- {name: web, vrid: 61, vips: [10.0.0.60]}
virtualServers:
- {vip: 10.0.0.60, port: 80, service: default/web}
`
	prev, ps := Parse(map[string]string{StructuredKey: good}, DefaultDefaults(), nil)
	if len(ps) != 0 || len(prev.VirtualServers) != 1 {
		t.Fatalf("good: %v %+v", ps, prev.VirtualServers)
	}
	for _, bad := range []string{
		"{vip: 10.0.0.600, port: 80, service: default/web}", // typo in the VIP
		"{vip: 10.0.0.60, port: 80, service: default/Web}",  // typo in the Service
		"{vip: 10.0.0.60, port: 800000, service: default/web}",
	} {
		doc := strings.Replace(good, "{vip: 10.0.0.60, port: 80, service: default/web}", bad, 1)
		spec, ps := Parse(map[string]string{StructuredKey: doc}, DefaultDefaults(), prev)
		if len(ps) == 0 {
			t.Fatalf("%s: no problem", bad)
		}
		if len(spec.VirtualServers) != 1 {
			t.Errorf("%s: the virtual server that ran is gone (%d left); problems: %v", bad, len(spec.VirtualServers), ps)
		}
	}
	// The same for an unnamed instance whose vrid is mistyped.
	good2 := "instances:\n- {vrid: 61, vips: [10.0.0.60]}\n"
	prev2, _ := Parse(map[string]string{StructuredKey: good2}, DefaultDefaults(), nil)
	spec2, ps2 := Parse(map[string]string{StructuredKey: "instances:\n- {vrid: 610, vips: [10.0.0.60]}\n"}, DefaultDefaults(), prev2)
	if len(ps2) == 0 || len(spec2.Instances) != 1 {
		t.Errorf("unnamed instance with a bad vrid: %d instances left (VIP released); problems %v", len(spec2.Instances), ps2)
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
	saved, err := kept.Data()
	if err != nil {
		t.Fatal(err)
	}
	// After a restart: the saved data first, then the live ConfigMap.
	restored, ps := Parse(saved, DefaultDefaults(), nil)
	if len(ps) != 0 {
		t.Fatalf("the saved data does not parse cleanly: %v\n%v", ps, saved)
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
		in.Source = ""
		out = append(out, in)
	}
	for _, vs := range s.VirtualServers {
		vs.Source = ""
		out = append(out, vs)
	}
	return append(out, s.Kernel, s.NodeSelector)
}
