package configmap

import (
	"strings"
	"testing"
)

func problemsText(ps []Problem) string {
	var b strings.Builder
	for _, p := range ps {
		b.WriteString(p.Error())
		b.WriteByte('\n')
	}
	return b.String()
}

// wantProblems checks that every fragment appears in some problem and that
// there are exactly n problems.
func wantProblems(t *testing.T, ps []Problem, n int, fragments ...string) {
	t.Helper()
	text := problemsText(ps)
	if len(ps) != n {
		t.Errorf("got %d problems, want %d:\n%s", len(ps), n, text)
	}
	for _, f := range fragments {
		if !strings.Contains(text, f) {
			t.Errorf("no problem mentions %q:\n%s", f, text)
		}
	}
}

func TestLegacyKeys(t *testing.T) {
	spec, ps := Parse(map[string]string{
		"10.0.0.50": "default/nginx",
		"10.0.0.51": "web/api:DR",
		"10.0.0.52": "",
		"10.0.0.53": "web/api:nat",
	}, DefaultDefaults(), nil)
	wantProblems(t, ps, 0)
	if len(spec.Instances) != 1 {
		t.Fatalf("instances: %+v", spec.Instances)
	}
	in := spec.Instances[0]
	if in.Name != LegacyInstance || in.VRID != 50 || in.PriorityFrom != PriorityNodeOrder || in.Preempt == nil || *in.Preempt || in.Interface != "" {
		t.Errorf("legacy instance: %+v", in)
	}
	if got := strings.Join(in.VIPs, ","); got != "10.0.0.50,10.0.0.51,10.0.0.52,10.0.0.53" {
		t.Errorf("VIPs %s", got)
	}
	if in.UnicastPeersFrom != "" {
		t.Errorf("unicast without the flag")
	}
	if len(spec.VirtualServers) != 3 {
		t.Fatalf("virtual servers: %+v", spec.VirtualServers)
	}
	byVIP := map[string]VirtualServer{}
	for _, vs := range spec.VirtualServers {
		byVIP[vs.VIP] = vs
	}
	if vs := byVIP["10.0.0.50"]; vs.Service != "default/nginx" || vs.Forwarding != "nat" || vs.Scheduler != "wlc" || vs.Port != 0 || vs.Source != "key 10.0.0.50" {
		t.Errorf("10.0.0.50: %+v", vs)
	}
	if vs := byVIP["10.0.0.51"]; vs.Service != "web/api" || vs.Forwarding != "dr" {
		t.Errorf("10.0.0.51: %+v", vs)
	}
	if vs := byVIP["10.0.0.50"]; vs.Persistence == nil || vs.HealthCheck == nil {
		t.Errorf("kube-keepalived-vip's persistence and TCP check missing: %+v", vs)
	}

	d := DefaultDefaults()
	d.Unicast, d.Interface, d.VRID = true, "eth1", 77
	spec, ps = Parse(map[string]string{"10.0.0.50": "default/nginx"}, d, nil)
	wantProblems(t, ps, 0)
	if in := spec.Instances[0]; in.UnicastPeersFrom != "nodes" || in.Interface != "eth1" || in.VRID != 77 {
		t.Errorf("flags not applied: %+v", in)
	}
}

// A VIP key stands alone: a bad key costs only itself; a bad value only
// its virtual server, while its VIP is held as the key says.
func TestLegacyKeyProblems(t *testing.T) {
	for _, tc := range []struct {
		key, value string
		want       []string
		vips       string // held by the instance of the VIP keys
	}{
		{"10.0.0.50", "default/nginx:PROXY", []string{`key "10.0.0.50"`, "PROXY", "not supported"}, "10.0.0.50,10.0.0.99"},
		{"10.0.0.50", "default/nginx:TUN", []string{`unknown mode "TUN"`}, "10.0.0.50,10.0.0.99"},
		{"10.0.0.50", "nginx", []string{"want namespace/service"}, "10.0.0.50,10.0.0.99"},
		{"10.0.0.50", "Default/nginx", []string{`namespace "Default"`}, "10.0.0.50,10.0.0.99"},
		{"10.0.0.50", "default/9nginx", []string{`service name "9nginx"`}, "10.0.0.50,10.0.0.99"},
		{"web", "default/nginx", []string{`key "web"`, "not an IPv4 address", "config.yaml"}, "10.0.0.99"},
		{"10.0.0.300", "default/nginx", []string{"not an IPv4 address"}, "10.0.0.99"},
		{"224.0.0.18", "", []string{`key "224.0.0.18"`, "not a unicast address"}, "10.0.0.99"},
		{"127.0.0.1", "default/nginx", []string{`key "127.0.0.1"`, "not a unicast address"}, "10.0.0.99"},
		{"0.0.0.0", "", []string{"not a unicast address"}, "10.0.0.99"},
		{"255.255.255.255", "", []string{"not a unicast address"}, "10.0.0.99"},
		{"10.0.0.050", "", []string{"without leading zeros", "write it as 10.0.0.50"}, "10.0.0.99"},
	} {
		t.Run(tc.key+"="+tc.value, func(t *testing.T) {
			spec, ps := Parse(map[string]string{tc.key: tc.value, "10.0.0.99": "default/ok"}, DefaultDefaults(), nil)
			wantProblems(t, ps, 1, tc.want...)
			if ps[0].Key != tc.key {
				t.Errorf("the problem names key %q, not %q", ps[0].Key, tc.key)
			}
			// The good entry is still there.
			if len(spec.VirtualServers) != 1 || spec.VirtualServers[0].VIP != "10.0.0.99" {
				t.Errorf("good entry lost: %+v", spec.VirtualServers)
			}
			if len(spec.Instances) != 1 || strings.Join(spec.Instances[0].VIPs, ",") != tc.vips {
				t.Errorf("instances: %v; want VIPs %s", names(spec), tc.vips)
			}
		})
	}
}

const structured = `
nodeSelector: keepvip.io/enabled=true
instances:
- name: web
  vrid: 51
  priorityFrom: nodeOrder
  unicastPeersFrom: nodes
  advertInterval: 100ms
  vips: [10.0.0.60, 10.0.0.61/24]
- interface: eth0
  vrid: 51
  priority: 150
  nodePriorities: {node-a: 200}
  vips: ["2001:db8::60"]
virtualServers:
- vip: 10.0.0.60
  service: default/web
  scheduler: mh
  schedulerFlags: [port]
  forwarding: dr
  healthCheck: {type: http, path: /healthz, interval: 2s}
- vip: 10.0.0.60
  port: 8443
  service: default/web
  servicePort: https
- vip: "2001:db8::60"
  port: 53
  protocol: udp
  realServers: [{address: "2001:db8::1"}]
kernel:
  connReuseMode: 0
`

func TestStructured(t *testing.T) {
	spec, ps := Parse(map[string]string{StructuredKey: structured}, DefaultDefaults(), nil)
	wantProblems(t, ps, 0)
	if len(spec.Instances) != 2 || len(spec.VirtualServers) != 3 {
		t.Fatalf("spec: %+v", spec)
	}
	if spec.Instances[1].Name != "eth0-51-v6" || spec.Instances[0].Name != "web" {
		t.Errorf("names: %s %s", spec.Instances[0].Name, spec.Instances[1].Name)
	}
	if spec.NodeSelector != "keepvip.io/enabled=true" || spec.Kernel.ConnReuseMode == nil || *spec.Kernel.ConnReuseMode != 0 {
		t.Errorf("selector/kernel: %+v", spec)
	}
	if spec.VirtualServers[1].ServicePort != "https" || spec.VirtualServers[0].HealthCheck.Path != "/healthz" {
		t.Errorf("virtual servers: %+v", spec.VirtualServers)
	}
	// The same with a legacy key whose VIP an instance already holds:
	// no "vips" instance, the key only adds its service.
	spec, ps = Parse(map[string]string{StructuredKey: structured, "10.0.0.61": "default/other"}, DefaultDefaults(), nil)
	wantProblems(t, ps, 0)
	if len(spec.Instances) != 2 || len(spec.VirtualServers) != 4 {
		t.Errorf("instances %d, virtual servers %d", len(spec.Instances), len(spec.VirtualServers))
	}
}

func TestLegacyJoinsInstanceNamedVIPs(t *testing.T) {
	spec, ps := Parse(map[string]string{
		StructuredKey: "instances: [{name: vips, interface: eth1, vrid: 9, priority: 120, vips: [10.0.0.1]}]",
		"10.0.0.2":    "default/a",
	}, DefaultDefaults(), nil)
	wantProblems(t, ps, 0)
	if len(spec.Instances) != 1 || strings.Join(spec.Instances[0].VIPs, ",") != "10.0.0.1,10.0.0.2" || spec.Instances[0].VRID != 9 {
		t.Errorf("instances: %+v", spec.Instances)
	}
}

func TestStructuredProblems(t *testing.T) {
	for _, tc := range []struct {
		name, doc string
		want      []string
		good      int // instances + virtual servers still applied
	}{
		{"not yaml", "instances: [", []string{`key "config.yaml"`, "cannot read"}, 0},
		{"unknown field", "instancez: []", []string{`unknown field "instancez"`}, 0},
		{"bad vrid", "instances: [{vrid: 300, vips: [10.0.0.1]}, {vrid: 2, vips: [10.0.0.2]}]", []string{"instances[0].vrid", "outside 1-255"}, 1},
		// Entries that clash are both refused: the ConfigMap cannot tell
		// which came first (TestClashRunningWins has one running).
		{"duplicate vrid", "instances: [{name: a, vrid: 2, vips: [10.0.0.1]}, {name: b, vrid: 2, vips: [10.0.0.2]}]", []string{`instance "a" (instances[0]): VRID 2 (ipv4) on the node's interface is also instance "b" (instances[1])'s`, `instance "b" (instances[1]): VRID 2`}, 0},
		{"duplicate vip", "instances: [{vrid: 2, vips: [10.0.0.1]}, {vrid: 3, vips: [10.0.0.1]}]", []string{`instance "vrid-3" (instances[1]): VIP 10.0.0.1 is also instance "vrid-2" (instances[0])'s`}, 0},
		{"duplicate unnamed", "instances: [{vrid: 2, vips: [10.0.0.1]}, {vrid: 2, vips: [10.0.0.2]}]", []string{"VRID 2 (ipv4)"}, 0},
		{"priority and nodeOrder", "instances: [{vrid: 2, priority: 5, priorityFrom: nodeOrder, vips: [10.0.0.1]}]", []string{"instances[0].priority", "nodeOrder"}, 0},
		{"bad priorityFrom", "instances: [{vrid: 2, priorityFrom: random, vips: [10.0.0.1]}]", []string{`"random": want nodeOrder`}, 0},
		{"peers twice", "instances: [{vrid: 2, unicastPeersFrom: nodes, unicastPeers: [10.0.0.9], vips: [10.0.0.1]}]", []string{"unicastPeersFrom"}, 0},
		{"bad node priority", "instances: [{vrid: 2, nodePriorities: {a: 300}, vips: [10.0.0.1]}]", []string{"nodePriorities.a", "outside 1-255"}, 0},
		{"service and real servers", "virtualServers: [{vip: 10.0.0.1, service: default/a, realServers: [{address: 10.1.0.1}]}]", []string{"virtualServers[0].realServers", "endpoints"}, 0},
		{"service and protocol", "virtualServers: [{vip: 10.0.0.1, service: default/a, protocol: udp}]", []string{"virtualServers[0].protocol"}, 0},
		{"servicePort alone", "virtualServers: [{vip: 10.0.0.1, service: default/a, servicePort: http}]", []string{"servicePort", "needs port"}, 0},
		{"bad service", "virtualServers: [{vip: 10.0.0.1, service: a}]", []string{"virtualServers[0].service", "namespace/service"}, 0},
		{"bad scheduler", "virtualServers: [{vip: 10.0.0.1, service: default/a, scheduler: fast}, {vip: 10.0.0.2, service: default/b}]", []string{"virtualServers[0].scheduler"}, 1},
		{"vip not an IP", "virtualServers: [{vip: ten, port: 80, realServers: [{address: 10.1.0.1}]}]", []string{"virtualServers[0].vip", `"ten" is not an IP address`}, 0},
		{"bad selector", "nodeSelector: 'a b c'", []string{"nodeSelector"}, 0},
		{"bad kernel", "kernel: {connReuseMode: 7}", []string{"kernel.connReuseMode"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec, ps := Parse(map[string]string{StructuredKey: tc.doc}, DefaultDefaults(), nil)
			if len(ps) == 0 {
				t.Fatalf("no problem reported")
			}
			wantProblems(t, ps, len(ps), tc.want...)
			for _, p := range ps {
				if p.Key != StructuredKey {
					t.Errorf("problem without its key: %+v", p)
				}
			}
			if got := len(spec.Instances) + len(spec.VirtualServers); got != tc.good {
				t.Errorf("%d entries applied, want %d", got, tc.good)
			}
		})
	}
}

// An entry that was good keeps its last good form while its new form is
// bad; the other entries follow the new ConfigMap.
func TestLastGoodEntry(t *testing.T) {
	good := map[string]string{
		StructuredKey: `
instances: [{name: a, interface: eth0, vrid: 1, vips: [10.0.0.1]}, {name: b, interface: eth0, vrid: 2, vips: [10.0.0.2]}]
virtualServers: [{name: web, vip: 10.0.0.1, service: default/web}, {vip: 10.0.0.2, port: 80, realServers: [{address: 10.1.0.1}]}]
`,
		"10.0.0.3": "default/legacy",
	}
	prev, ps := Parse(good, DefaultDefaults(), nil)
	wantProblems(t, ps, 0)

	t.Run("per entry", func(t *testing.T) {
		bad := map[string]string{
			StructuredKey: `
instances: [{name: a, interface: eth0, vrid: 1, priority: 999, vips: [10.0.0.1]}, {name: b, interface: eth0, vrid: 2, priority: 120, vips: [10.0.0.2]}]
virtualServers: [{name: web, vip: 10.0.0.1, service: default/web, scheduler: nope}]
`,
			"10.0.0.3": "default/legacy:PROXY",
		}
		spec, ps := Parse(bad, DefaultDefaults(), prev)
		wantProblems(t, ps, 3, "instances[0].priority", "virtualServers[0].scheduler", `key "10.0.0.3"`)
		names := map[string]Instance{}
		for _, in := range spec.Instances {
			names[in.Name] = in
		}
		if a, ok := names["a"]; !ok || a.Priority != nil {
			t.Errorf("instance a did not keep its last good form: %+v", names)
		}
		if b := names["b"]; b.Priority == nil || *b.Priority != 120 {
			t.Errorf("instance b did not take its new form: %+v", b)
		}
		if v := names[LegacyInstance]; strings.Join(v.VIPs, ",") != "10.0.0.3" {
			t.Errorf("legacy VIP lost: %+v", names)
		}
		var web, legacy, static int
		for _, vs := range spec.VirtualServers {
			switch {
			case vs.Name == "web" && vs.Scheduler == "":
				web++
			case vs.Service == "default/legacy":
				legacy++
			case vs.Port == 80:
				static++
			}
		}
		// The static one was removed from the new document on purpose.
		if web != 1 || legacy != 1 || static != 0 {
			t.Errorf("web %d legacy %d static %d: %+v", web, legacy, static, spec.VirtualServers)
		}
	})

	t.Run("unreadable document", func(t *testing.T) {
		spec, ps := Parse(map[string]string{StructuredKey: "instances: {", "10.0.0.3": "default/legacy"}, DefaultDefaults(), prev)
		wantProblems(t, ps, 1, "cannot read")
		if len(spec.Instances) != 3 || len(spec.VirtualServers) != 3 {
			t.Errorf("the last good document is not kept: %d instances, %d virtual servers", len(spec.Instances), len(spec.VirtualServers))
		}
	})

	t.Run("removed key", func(t *testing.T) {
		spec, ps := Parse(map[string]string{"10.0.0.3": "default/legacy"}, DefaultDefaults(), prev)
		wantProblems(t, ps, 0)
		if len(spec.Instances) != 1 || len(spec.VirtualServers) != 1 {
			t.Errorf("removed config.yaml still applies: %+v", spec)
		}
	})
}

func TestLegacyInstanceClash(t *testing.T) {
	// The "vips" instance made from the flags collides with a structured
	// instance on the node's interface with the same VRID: on a node that
	// ran neither, neither runs, and both are named.
	spec, ps := Parse(map[string]string{
		StructuredKey: "instances: [{vrid: 50, vips: [10.0.0.1]}]",
		"10.0.0.2":    "",
	}, DefaultDefaults(), nil)
	wantProblems(t, ps, 2, `key "10.0.0.2": its instance "vips" (VRID 50 from the daemon's flags) is not applied: VRID 50 (ipv4) on the node's interface is also instance "vrid-50" (instances[0])'s`,
		`instance "vrid-50" (instances[0]): VRID 50 (ipv4) on the node's interface is also the instance "vips" of the VIP keys's`)
	if len(spec.Instances) != 0 {
		t.Errorf("instances: %v", names(spec))
	}
}
