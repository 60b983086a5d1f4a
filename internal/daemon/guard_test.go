package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A configuration file whose VIP is a gateway of this host's routes is
// refused, with the route named; allow: [gateway] lets it pass.
func TestConfigFileGatewayGuard(t *testing.T) {
	if !enterWithEth0(t, `ip route add default via 192.0.2.254`) {
		return
	}
	path := filepath.Join(t.TempDir(), "keepvip.yaml")
	for _, tc := range []struct{ allow, want string }{
		{"", "instances[0].vips[0]: 192.0.2.254 is the gateway of this node's route to everywhere (default)"},
		{", allow: [gateway]", ""},
	} {
		if err := os.WriteFile(path, []byte("instances:\n- {interface: eth0, vrid: 5, vips: [192.0.2.254]"+tc.allow+"}\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := load(path)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("allowed: load = %v", err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("load = %v; want %q", err, tc.want)
		}
	}
}
