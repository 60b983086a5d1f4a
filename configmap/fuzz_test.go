package configmap

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
)

// FuzzParse feeds Parse one legacy key and one config.yaml, each also as
// the previous version: it must not panic, every problem must name its key,
// and whatever it returns must check out again.
func FuzzParse(f *testing.F) {
	f.Add("10.0.0.1", "default/web:DR", structured, "")
	f.Add("10.0.0.2", "", "instances: [{vrid: 3, vips: [10.0.0.9]}]", "instances: [")
	f.Add("x", "a/b:PROXY", "virtualServers: [{vip: 10.0.0.1, service: default/a, port: 80, servicePort: http}]", structured)
	f.Fuzz(func(t *testing.T, key, value, doc, prevDoc string) {
		if key == StructuredKey {
			return
		}
		prev, _ := Parse(map[string]string{key: value, StructuredKey: prevDoc}, DefaultDefaults(), nil)
		spec, ps := Parse(map[string]string{key: value, StructuredKey: doc}, DefaultDefaults(), prev)
		for _, p := range ps {
			if p.Key != key && p.Key != StructuredKey {
				t.Fatalf("problem names key %q, not one of the data keys: %v", p.Key, p)
			}
			if strings.TrimSpace(p.Reason) == "" {
				t.Fatalf("problem without a reason: %+v", p)
			}
		}
		for i := range spec.Instances {
			in := spec.Instances[i]
			if errs := in.check("x"); len(errs) > 0 {
				t.Fatalf("returned instance %+v does not check: %v", in, errs)
			}
		}
		for i := range spec.VirtualServers {
			vs := spec.VirtualServers[i]
			if errs := vs.check("x", false); len(errs) > 0 {
				t.Fatalf("returned virtual server %+v does not check: %v", vs, errs)
			}
		}
		// What runs is a fixed point: parsed again with itself in force,
		// also as saved and restored across a restart, it stays.
		data := map[string]string{key: value, StructuredKey: doc}
		again, _ := Parse(data, DefaultDefaults(), spec)
		if !reflect.DeepEqual(forms(again), forms(spec)) {
			t.Fatalf("parsed again with itself in force:\n%+v\nfirst:\n%+v", forms(again), forms(spec))
		}
		saved, err := json.Marshal(spec)
		if err != nil {
			t.Fatal(err)
		}
		var restored Spec
		if err := json.Unmarshal(saved, &restored); err != nil {
			t.Fatalf("saved history does not read back: %v\n%s", err, saved)
		}
		if after, _ := Parse(data, DefaultDefaults(), &restored); !reflect.DeepEqual(forms(after), forms(spec)) {
			t.Fatalf("after a restart:\n%+v\nbefore:\n%+v", forms(after), forms(spec))
		}
	})
}
