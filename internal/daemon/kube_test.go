package daemon

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keepvip/keepvip/config"
	"github.com/keepvip/keepvip/configmap"
)

// What the Kubernetes mode saves in the state directory reads back: the
// configuration that ran, and the vip-configmap entries in force apart
// from it, so that a configuration this version's checks refuse still
// leaves bad entries their last good forms; and the form versions before
// saved (configMapData) is still read.
func TestKubeCacheReadsBack(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	spec, ps := configmap.Parse(map[string]string{"10.0.0.50": "", configmap.StructuredKey: "instances:\n- {name: web, vrid: 61, vips: [10.0.0.60]}\n"}, configmap.DefaultDefaults(), nil)
	if len(ps) != 0 {
		t.Fatal(ps)
	}
	cfg, err := config.Parse([]byte("instances:\n- {name: web, interface: eth0, vrid: 61, vips: [10.0.0.60]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := saveKubeConfig(dir, cfg, spec); err != nil {
		t.Fatal(err)
	}
	got := cachedKubeConfig(dir, log)
	if got.applied == nil || len(got.applied.Instances) != 1 || got.history == nil || len(got.history.Instances) != 2 {
		t.Fatalf("read back: applied %+v, history %+v", got.applied, got.history)
	}
	bad := map[string]string{"10.0.0.50": "", configmap.StructuredKey: "instances:\n- {name: web, vrid: 61, priority: 999, vips: [10.0.0.60]}\n"}
	if s, _ := configmap.Parse(bad, configmap.DefaultDefaults(), got.history); len(s.Instances) != 2 {
		t.Errorf("the history read back does not keep the instance's last good form: %+v", s.Instances)
	}

	// A configuration the checks of this version refuse (accept: false
	// with a virtual server): the history is still read.
	path := filepath.Join(dir, kubeCacheFile)
	data := []byte(`{"config": {"instances": [{"name": "web", "interface": "eth0", "vrid": 61, "accept": false, "vips": ["10.0.0.60"]}],
"virtualServers": [{"vip": "10.0.0.60", "port": 80, "realServers": [{"address": "10.1.0.1"}]}]},
"history": ` + string(mustJSON(t, spec)) + `}`)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	got = cachedKubeConfig(dir, log)
	if got.applied != nil || len(got.config.Instances) != 0 || got.history == nil || len(got.history.Instances) != 2 {
		t.Errorf("a refused configuration: applied %+v, history %+v", got.applied, got.history)
	}

	// The form before history: the entries as ConfigMap data.
	if err := os.WriteFile(path, []byte(`{"config": {"instances": []}, "configMapData": {"10.0.0.50": ""}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if got = cachedKubeConfig(dir, log); got.lastGood["10.0.0.50"] != "" || len(got.lastGood) != 1 || got.history != nil {
		t.Errorf("older form: lastGood %v, history %+v", got.lastGood, got.history)
	}
}

func mustJSON(t *testing.T, s *configmap.Spec) []byte {
	t.Helper()
	b, err := s.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// BGP passwords are never written to the state directory: neither in the
// configuration that ran nor in the entries in force.
func TestKubeCacheHasNoPasswords(t *testing.T) {
	const secret = "s3cr3t-md5"
	spec, ps := configmap.Parse(map[string]string{configmap.StructuredKey: "routing:\n  bgp: {asn: 65001, peers: [{address: 192.0.2.254, asn: 65000, password: " + secret + "}]}\n"}, configmap.DefaultDefaults(), nil)
	if spec.Routing == nil || len(ps) != 1 {
		t.Fatalf("routing %+v, problems %v (want the warning about the password)", spec.Routing, ps)
	}
	cfg, err := config.Parse([]byte("routing:\n  bgp: {asn: 65001, routerID: 192.0.2.1, peers: [{address: 192.0.2.254, asn: 65000, password: " + secret + "}]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := saveKubeConfig(dir, cfg, spec); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(dir, kubeCacheFile))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), secret) {
		t.Errorf("the password is saved: %s", data)
	}
	if cfg.Routing.BGP.Peers[0].Password != secret || spec.Routing.BGP.Peers[0].Password != secret {
		t.Errorf("saving changed what runs")
	}
}
