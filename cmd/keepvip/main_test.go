package main

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keepvip/keepvip/bfd"
	"github.com/keepvip/keepvip/internal/daemon"
	"github.com/keepvip/keepvip/internal/kube"
	"github.com/keepvip/keepvip/routes/bgp"
	"github.com/keepvip/keepvip/vrrp"
)

func TestValidateExitCodes(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	os.WriteFile(good, []byte("instances:\n- {interface: eth0, vrid: 1, vips: [192.0.2.1]}\n"), 0o644)
	os.WriteFile(bad, []byte("instances:\n- {interface: eth0, vrid: 0, vips: [192.0.2.1, nope]}\n"), 0o644)
	manifest := `apiVersion: v1
kind: ServiceAccount
metadata: {name: keepvip, namespace: keepvip}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: vip-configmap, namespace: keepvip}
data:
  10.0.0.8: default/web:DR
  config.yaml: |
    instances: [{vrid: 9, vips: ["2001:db8::8"]}]
    virtualServers: [{vip: "2001:db8::8", service: default/web}]
`
	cmGood := filepath.Join(dir, "cm.yaml")
	os.WriteFile(cmGood, []byte(manifest), 0o644)
	cmBad := filepath.Join(dir, "cm-bad.yaml")
	os.WriteFile(cmBad, []byte(manifest+"  10.0.0.9: default/web:PROXY\n"), 0o644)
	noCM := filepath.Join(dir, "sa.yaml")
	os.WriteFile(noCM, []byte(manifest[:strings.Index(manifest, "---")]), 0o644)
	tests := []struct {
		args     []string
		code     int
		contains string
	}{
		{[]string{"validate", good}, 0, "ok, 1 VRRP instance"},
		{[]string{"validate", bad}, 1, "instances[0].vips[1]: \"nope\" is not an IP address"},
		{[]string{"validate"}, 2, "want exactly one FILE"},
		{[]string{"validate", filepath.Join(dir, "missing")}, 1, "no such file"},
		{[]string{"frobnicate"}, 2, "unknown command"},
		{[]string{"run"}, 2, "give --config FILE, or --configmap"},
		{[]string{"run", "--configmap", "vip-configmap", "--node-name", "a"}, 2, "want NAMESPACE/NAME"},
		{[]string{"run", "--configmap", "ns/vip-configmap"}, 2, "--node-name (or NODE_NAME) is required"},
		{[]string{"run", "--configmap", "ns/cm", "--node-name", "a", "--vrid", "300"}, 2, "vrid: 300 is outside 1-255"},
		{[]string{"validate", cmGood}, 0, "ConfigMap keepvip/vip-configmap: ok, 2 VRRP instance(s), 2 virtual server entr"},
		{[]string{"validate", cmBad}, 1, `key "10.0.0.9": "default/web:PROXY": PROXY`},
		{[]string{"validate", noCM}, 1, "a Kubernetes manifest without a ConfigMap"},
		{[]string{"version"}, 0, "keepvip "},
		{nil, 2, "Usage:"},
	}
	for _, tt := range tests {
		var out, errb bytes.Buffer
		code := run(tt.args, &out, &errb)
		got := out.String() + errb.String()
		if code != tt.code || !strings.Contains(got, tt.contains) {
			t.Errorf("keepvip %q = %d, %q; want %d and %q", tt.args, code, got, tt.code, tt.contains)
		}
	}
}

// The manifests users apply and copy must pass the validation they are
// told to run.
func TestShippedManifestsValidate(t *testing.T) {
	files, _ := filepath.Glob("../../deploy/examples/*.yaml")
	files = append(files, "../../deploy/vip-configmap.yaml")
	if len(files) < 2 {
		t.Fatalf("no example manifests found: %v", files)
	}
	for _, f := range files {
		var out, errb bytes.Buffer
		if code := run([]string{"validate", f}, &out, &errb); code != 0 || !strings.Contains(out.String(), ": ok,") {
			t.Errorf("keepvip validate %s = %d:\n%s%s", f, code, out.String(), errb.String())
		}
	}
}

func sampleStatus(now time.Time) *daemon.Status {
	return &daemon.Status{
		Version: "v1", ConfigFile: "/etc/keepvip.yaml", ConfigLoaded: now.Add(-time.Minute),
		Instances: []vrrp.Status{{
			Name: "web", Interface: "eth0", VRID: 51, Family: "ipv4", Version: 3, State: vrrp.StateBackup,
			Since: now.Add(-2 * time.Second), Priority: 100, Source: netip.MustParseAddr("192.0.2.1"),
			VIPs:   []netip.Prefix{netip.MustParsePrefix("192.0.2.100/24")},
			Master: netip.MustParseAddr("192.0.2.2"), MasterPriority: 150,
			AdvertInterval: vrrp.Duration(time.Second), MasterAdvertInterval: vrrp.Duration(2 * time.Second),
			Drops: map[string]uint64{"checksum": 2},
			Transitions: []vrrp.Transition{{At: now.Add(-time.Minute), From: vrrp.StateBackup, To: vrrp.StateMaster,
				Reason: "no advert for 361ms (Master_Down_Interval 360.9375ms)", Took: vrrp.Duration(400 * time.Microsecond),
				SinceAdvert: vrrp.Duration(361 * time.Millisecond), Announced: 10},
				{At: now.Add(-2 * time.Second), From: vrrp.StateMaster, To: vrrp.StateBackup,
					Reason: "advert from 192.0.2.2 with higher priority 150, ours 100", Took: vrrp.Duration(300 * time.Microsecond)}},
		}},
	}
}

func TestStatusOutputs(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	s := sampleStatus(now)
	var table bytes.Buffer
	if err := printStatus(&table, s, "table", now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"web", "51/ipv4 v3", "BACKUP", "192.0.2.2 (150)", "1s (master 2s)", "dropped: checksum=2", "MASTER -> BACKUP", "took 300µs", "no advert for 361ms (Master_Down_Interval 360.9375ms) (10 GARP/NA sent)"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
	var js bytes.Buffer
	if err := printStatus(&js, s, "json", now); err != nil {
		t.Fatal(err)
	}
	var back daemon.Status
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatalf("JSON output does not read back: %v\n%s", err, js.String())
	}
	if back.Instances[0].State != vrrp.StateBackup || back.Instances[0].MasterAdvertInterval != vrrp.Duration(2*time.Second) {
		t.Errorf("JSON round trip lost data: %+v", back.Instances[0])
	}
	if !strings.Contains(js.String(), `"state": "BACKUP"`) || !strings.Contains(js.String(), `"advertInterval": "1s"`) ||
		!strings.Contains(js.String(), `"sinceAdvert": "361ms"`) || !strings.Contains(js.String(), `"announced": 10`) {
		t.Errorf("JSON is not readable:\n%s", js.String())
	}
	var y bytes.Buffer
	if err := printStatus(&y, s, "yaml", now); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(y.String(), "state: BACKUP") {
		t.Errorf("YAML output:\n%s", y.String())
	}
	if err := printStatus(&y, s, "xml", now); err == nil {
		t.Error("unknown output format accepted")
	}
}

func TestStatusTableRouting(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	s := sampleStatus(now)
	s.Routing = &daemon.RoutingStatus{Exporter: "bgp", Announced: []string{"192.0.2.100/32 [65000:100]"},
		Peers: []bgp.PeerStatus{{Address: "192.0.2.1", ASN: 65000, State: "established", Since: now.Add(-time.Minute), Advertised: 1},
			{Address: "192.0.2.2", ASN: 65000, State: "active", LastError: "notification received: bad peer as"}},
		BFD: []bfd.SessionStatus{{Remote: "192.0.2.1", State: "up", Since: now.Add(-time.Minute), TxInterval: bfd.Duration(100 * time.Millisecond), DetectionTime: bfd.Duration(300 * time.Millisecond), Flaps: 1, Diag: "control detection time expired"},
			{Remote: "192.0.2.2", State: "down", TxInterval: bfd.Duration(time.Second), LastError: "receiving on 0.0.0.0:3784: address already in use"}}}
	var table bytes.Buffer
	if err := printStatus(&table, s, "table", now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"ROUTING: bgp", "192.0.2.1  65000  established  1m0s", "notification received: bad peer as", "announced: 192.0.2.100/32 [65000:100]",
		"BFD PEER   STATE  SINCE", "192.0.2.1  up     1m0s   100ms  300ms   1      control detection time expired",
		"192.0.2.2  down   -      1s     -       0      receiving on 0.0.0.0:3784: address already in use"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
}

func TestStatusTableKubernetes(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	s := sampleStatus(now)
	s.ConfigFile = "ConfigMap keepvip/vip-configmap (resourceVersion 7)"
	s.ConfigErrors = []string{`key "10.0.0.9": "default/web:PROXY": PROXY is not supported`}
	s.Kubernetes = &kube.Status{ConfigMap: "keepvip/vip-configmap", Node: "node-a", ResourceVersion: "7", Synced: true,
		LastApplied: now.Add(-3 * time.Second), APIServer: "probing /readyz: connection refused", APIServerSince: now.Add(-20 * time.Second), Services: 2}
	var table bytes.Buffer
	if err := printStatus(&table, s, "table", now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"Kubernetes: node node-a, ConfigMap keepvip/vip-configmap, synced true, 2 Service(s) followed, last change applied 3s ago",
		"API server: probing /readyz: connection refused (for 20s)",
		"CONFIGURATION ERRORS (these entries are not applied; the others are):",
		`key "10.0.0.9"`,
	} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
}

func TestStatusTableConnectionSync(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	s := sampleStatus(now)
	s.ConnectionSync = &daemon.ConnSyncStatus{Instance: "web", State: "BACKUP", Role: "backup",
		Daemons: []string{"backup on eth0, sync ID 51", "master on eth0, sync ID 9 (not keepvip's)"}, Local: 3, Synced: 412}
	var table bytes.Buffer
	if err := printStatus(&table, s, "table", now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"CONNECTION SYNC: backup daemon, instance web is BACKUP",
		"kernel's sync daemons: backup on eth0, sync ID 51; master on eth0, sync ID 9 (not keepvip's)",
		"connections: 3 local, 412 synced from a master"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}
}
