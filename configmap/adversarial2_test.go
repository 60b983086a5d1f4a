package configmap

// Sequences a second adversarial review of the vip-configmap rules tried
// at the Parse level: each broke a promise of docs/vip-configmap.md
// before it was fixed; and odd input never panics.

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Rule 3 and "A VIP key's VIP stays with its key": key 10.0.0.60 runs in
// the structured instance web that lists it. One edit mistypes web (so
// web yields 10.0.0.60 to the instance of the VIP keys) and adds a static
// route equal to the other key 10.0.0.50 (so that key clashes with
// routing, and the instance of the VIP keys is held back where it did not
// run). clash() gives a yielded VIP back to its refused lister only when
// the key's instance is refused BEFORE the culprit check; here it is
// refused BY the culprit check, after the give-back loop. So on the node
// that ran web, 10.0.0.60 is neither in web's kept form (yielded) nor in
// the kept "vips" form (which never had it): the untouched key's VIP is
// dropped from the node that ran it.
func TestAKeyYieldedToItsHeldBackInstanceGoesBack(t *testing.T) {
	keys := map[string]string{"10.0.0.50": "", "10.0.0.60": ""}
	with := func(doc string) map[string]string {
		d := map[string]string{StructuredKey: doc}
		for k, v := range keys {
			d[k] = v
		}
		return d
	}
	rt := "routing: {exporter: kernel, kernelTable: {table: 100}%s}\n"
	good := "instances:\n- {name: web, vrid: 61, vips: [10.0.0.60]}\n" + fmt.Sprintf(rt, "")
	prev, ps := Parse(with(good), DefaultDefaults(), nil)
	if len(ps) != 0 || !reviewHolds(prev, "10.0.0.60") || !reviewHolds(prev, "10.0.0.50") {
		t.Fatal(ps, names(prev))
	}
	// Control: the typo alone keeps 10.0.0.60 held.
	typo := "instances:\n- {name: web, vrid: 61, priority: 999, vips: [10.0.0.60]}\n"
	if s, ps := Parse(with(typo+fmt.Sprintf(rt, "")), DefaultDefaults(), prev); !reviewHolds(s, "10.0.0.60") {
		t.Fatalf("control: %v\n%s", names(s), problemsText(ps))
	}
	s, ps := Parse(with(typo+fmt.Sprintf(rt, ", static: [10.0.0.50/32]")), DefaultDefaults(), prev)
	if !reviewHolds(s, "10.0.0.60") {
		t.Errorf("the node that ran key 10.0.0.60 (in web) no longer holds it: instances %v\n%s", describe(s), problemsText(ps))
	}
}

// The instance of the VIP keys carries at most 255 VIPs (one advert). A
// 256th key holds the instance back on the nodes that did not run it, as
// a clash does (which key is the newcomer, the ConfigMap cannot tell);
// the nodes that ran it keep the 255, and every key says why.
func TestThe256thKeyHoldsBackTheKeysWhereTheyDidNotRun(t *testing.T) {
	data := map[string]string{}
	for i := 0; i < 255; i++ {
		data[fmt.Sprintf("10.0.%d.%d", i/250, i%250+1)] = ""
	}
	prev, ps := Parse(data, DefaultDefaults(), nil)
	if len(ps) != 0 || !reviewHolds(prev, "10.0.0.1") {
		t.Fatal(problemsText(ps))
	}
	data["10.0.9.9"] = ""
	old, ps := Parse(data, DefaultDefaults(), prev)
	if !reviewHolds(old, "10.0.0.1") || reviewHolds(old, "10.0.9.9") || len(ps) != 256 || !strings.Contains(ps[0].Reason, "256 addresses; an advert carries at most 255") {
		t.Errorf("with history: %d problems, e.g. %v", len(ps), ps[0])
	}
	if fresh, _ := Parse(data, DefaultDefaults(), nil); len(fresh.Instances) != 0 {
		t.Errorf("fresh: %v", names(fresh))
	}
}

// Parse must never panic, whatever the data. Odd values where lists,
// maps, numbers or strings are wanted; nulls; huge numbers; deeply
// nested YAML; each as the live ConfigMap and as the Spec in force,
// also through a save and restore of the history.
func TestOddInputNeverPanics(t *testing.T) {
	docs := []string{
		"", "null", "~", "[]", "{}", "0", `""`, "- a\n- b\n",
		"instances: [null, 1, x, [], {}, [[1]], {vips: null}, {vips: [null, 1, [], {}]}]\n",
		"instances: [{vrid: 1e400}]\n", "instances: [{vrid: 9223372036854775808}]\n", "instances: [{vrid: -9223372036854775809}]\n",
		"instances: [{vrid: .nan}]\n", "instances: [{vrid: .inf, vips: [10.0.0.1]}]\n",
		"instances: [{vrid: 61, vips: [10.0.0.1], advertInterval: NaN}]\n",
		"instances: [{vrid: 61, vips: [10.0.0.1], advertInterval: '+Inf'}]\n",
		"instances: [{vrid: 61, vips: [10.0.0.1], advertInterval: 1e300}]\n",
		"instances: [{vrid: 61, vips: [10.0.0.1], advertInterval: {a: 1}}]\n",
		"instances: [{vrid: 61, vips: [10.0.0.1], nodePriorities: [1, 2]}]\n",
		"instances: [{vrid: 61, vips: [10.0.0.1], nodePriorities: {'': 1e30}}]\n",
		"instances: [{name: '', vrid: 0, vips: ['']}]\n",
		"instances: [{name: x, vrid: 61, vips: ['10.0.0.1/99', '::/0', 'fe80::1%eth0']}]\n",
		"instances: [{name: x, interface: '', vrid: 61, vips: ['0.0.0.0']}]\n",
		"instances: [{name: x, vrid: '61', vips: '10.0.0.1', announce: [1]}]\n",
		"instances: [{name: x, vrid: 61, vips: [10.0.0.1], announce: {mode: none, backupPrepend: 1e30}}]\n",
		"virtualServers: [null, 1, [], {}, {vip: null}, {port: 1e30}, {port: '-1'}, {fwmark: 1e30}, {fwmark: -1}]\n",
		"virtualServers: [{vip: 10.0.0.1, port: 80, service: /}, {vip: 10.0.0.1, service: 'a/b', servicePort: ''}]\n",
		"virtualServers: [{vip: '::ffff:10.0.0.1', port: 80, persistence: {timeout: 1s, netmask: '-5'}, realServers: [{address: 10.0.0.2}]}]\n",
		"virtualServers: [{vip: 10.0.0.1, port: 80, persistence: {timeout: 1s, netmask: '99999999999999999999'}, realServers: []}]\n",
		"kernel: []\n", "kernel: 1\n", "kernel: {connReuseMode: 1e30}\n", "kernel: {arpInterfaces: [null, '']}\n",
		"nodeSelector: []\n", "nodeSelector: 1\n", "nodeSelector: '!!!'\n", "nodeSelector: 'a in (b'\n",
		"routing: []\n", "routing: {bgp: null}\n", "routing: {bgp: {asn: 1e30}}\n", "routing: {ecmp: [null, {vip: null}, {vip: 'fe80::1%lo'}]}\n",
		"routing: {static: [null, '', '10.0.0.1/33', '::/0']}\n",
		"routing: {exporter: kernel, kernelTable: {table: 1e30}}\n",
		"instances: &a [*a]\n",
		"a: &a [*a, *a]\n",
		strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
		"instances: " + strings.Repeat("[", 10000) + strings.Repeat("]", 10000),
		"instances: [" + strings.Repeat("{a: ", 5000) + "1" + strings.Repeat("}", 5000) + "]",
		"instances: [{name: x, vrid: 61, vips: [10.0.0.1]}]\n" + "virtualServers: [{name: x, vip: 10.0.0.1, port: 0, service: a/b}]\n",
	}
	keys := []map[string]string{
		nil,
		{"": "", "10.0.0.1": "a/b:PROXY:DR", "10.0.0.2": ":", "10.0.0.3": "/", "10.0.0.4": "a/b:", "10.0.0.5": strings.Repeat("a", 1<<16)},
		{"0.0.0.0": "", "255.255.255.255": "", "224.0.0.18": "", "10.0.0.010": "", "1.2.3.4.5": "", "x": "y"},
	}
	run := func(data map[string]string, prev *Spec) (s *Spec, err any) {
		defer func() { err = recover() }()
		s, _ = Parse(data, DefaultDefaults(), prev)
		return s, nil
	}
	good, _ := Parse(map[string]string{"10.0.0.1": "default/web", StructuredKey: structured}, DefaultDefaults(), nil)
	for i, doc := range docs {
		for j, k := range keys {
			data := map[string]string{StructuredKey: doc}
			for kk, v := range k {
				data[kk] = v
			}
			for _, prev := range []*Spec{nil, good} {
				s, err := run(data, prev)
				if err != nil {
					t.Errorf("doc %d keys %d: Parse panics: %v", i, j, err)
					continue
				}
				b, err2 := json.Marshal(s)
				var back Spec
				if err2 == nil {
					err2 = json.Unmarshal(b, &back)
				}
				if err2 != nil {
					t.Errorf("doc %d keys %d: history does not round trip: %v", i, j, err2)
					continue
				}
				if _, err := run(data, &back); err != nil {
					t.Errorf("doc %d keys %d: Parse with restored history panics: %v", i, j, err)
				}
			}
		}
	}
}

// A ConfigMap may be 1 MiB: YAML nested as deep as that allows must not
// crash the process (a Go stack overflow is fatal, not a panic that a
// recover could catch), so it runs in a child process.
func TestDeepNestingDoesNotCrash(t *testing.T) {
	const n = 500000
	docs := map[string]string{
		"flow sequences": "instances: " + strings.Repeat("[", n) + strings.Repeat("]", n),
		"flow mappings":  "instances: [" + strings.Repeat("{a: ", n/4) + "1" + strings.Repeat("}", n/4) + "]",
		"block sequences": func() string {
			var b strings.Builder
			b.WriteString("instances:\n")
			for i := 0; i < 700; i++ { // 700 levels of "- " indentation: ~500 KB
				b.WriteString(strings.Repeat(" ", i) + "-\n")
			}
			return b.String()
		}(),
	}
	if name := os.Getenv("REVIEW2_CHILD"); name != "" {
		start := time.Now()
		_, ps := Parse(map[string]string{StructuredKey: docs[name]}, DefaultDefaults(), nil)
		fmt.Printf("parsed in %v, %d problems\n", time.Since(start), len(ps))
		return
	}
	for name := range docs {
		cmd := exec.Command(os.Args[0], "-test.run=^TestDeepNestingDoesNotCrash$", "-test.v")
		cmd.Env = append(os.Environ(), "REVIEW2_CHILD="+name)
		out, err := cmd.CombinedOutput()
		first := string(out)
		if i := strings.Index(first, "\n\n"); i > 0 && len(first) > 2000 {
			first = first[:2000]
		}
		if err != nil {
			t.Errorf("%s: the process dies: %v\n%s", name, err, first)
		} else {
			t.Logf("%s: %s", name, strings.TrimSpace(strings.Split(first, "\n")[1]))
		}
	}
}

// Rule 1 / "Each entry of config.yaml is read on its own: a misspelled
// field or a value of the wrong type costs only that entry." A field
// repeated inside one entry (a copy-paste slip: `vrid: 61, vrid: 62`) is
// refused by YAMLToJSONStrict for the whole document: config.yaml is
// "unreadable", a fresh node takes part in nothing (not even the VIP
// keys, nor the untouched instance api), and a node with history freezes
// every other edit. It is a mistake inside one entry, like the misspelled
// field the first review fixed.
func TestAFieldGivenTwiceCostsOnlyItsEntry(t *testing.T) {
	doc := "instances:\n- {name: web, vrid: 61, vrid: 62, vips: [10.0.0.60]}\n- {name: api, vrid: 63, vips: [10.0.0.63]}\n"
	s, ps := Parse(map[string]string{StructuredKey: doc, "10.0.0.50": ""}, DefaultDefaults(), nil)
	if s.NoNodes || reviewInstance(s, "api") == nil || !reviewHolds(s, "10.0.0.50") {
		t.Errorf("fresh node: NoNodes %v, instances %v; want api and the VIP key applied, web refused\n%s", s.NoNodes, names(s), problemsText(ps))
	}
}

// A name of config.yaml's cannot be that of a VIP key's virtual server.
func TestAVirtualServerCannotTakeTheNameOfAKeys(t *testing.T) {
	prev, _ := Parse(map[string]string{"10.0.0.60": "default/web"}, DefaultDefaults(), nil)
	s, ps := Parse(map[string]string{"10.0.0.60": "default/web", StructuredKey: "virtualServers:\n- {name: key 10.0.0.60, vip: 10.0.0.70, port: 80, realServers: [{address: 10.9.0.1}]}\n"}, DefaultDefaults(), prev)
	if len(s.VirtualServers) != 1 || s.VirtualServers[0].VIP != "10.0.0.60" || len(ps) != 1 || !strings.Contains(ps[0].Reason, "reserved") {
		t.Errorf("virtual servers %+v, problems %v", s.VirtualServers, ps)
	}
}
