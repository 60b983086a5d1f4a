//go:build vmtest

package ipvs

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keepvip/keepvip/test/framework/lab"
)

// TestECMPFollowsHealth: two directors announce an ECMP VIP to BIRD while
// their IPVS virtual server has a healthy real server; one whose real
// servers all fail disappears from BIRD's routes, and comes back with them.
func TestECMPFollowsHealth(t *testing.T) {
	l := lab.ForTest(t)
	add := func(name, v4 string) *lab.Node { return addNode(t, l, name, v4) }
	rn := add("bird", "192.0.2.1/24")
	bird, err := rn.StartBIRD(`router id 192.0.2.1;
protocol device {}
protocol direct { ipv4; interface "eth0"; }
template bgp kv {
  local 192.0.2.1 as 65000;
  connect retry time 1;
  ipv4 { import all; export none; };
}
protocol bgp d1 from kv { neighbor 192.0.2.11 as 65001; }
protocol bgp d2 from kv { neighbor 192.0.2.12 as 65001; }
`)
	if err != nil {
		t.Fatal(err)
	}
	var backends []*backend
	var ks []*lab.Keepvip
	for i, self := range []string{"192.0.2.11", "192.0.2.12"} {
		d := add(fmt.Sprintf("d%d", i+1), self+"/24")
		sh(t, d, fmt.Sprintf("ip addr add 10.0.0.%d/24 dev eth0", i+1))
		bn := add(fmt.Sprintf("b%d", i+1), fmt.Sprintf("10.0.0.2%d/24", i+1))
		b := &backend{t: t, name: bn.Name, node: bn, addr: ":8080"}
		b.start()
		backends = append(backends, b)
		k, err := d.StartKeepvip(fmt.Sprintf(`instances: []
virtualServers:
- vip: 192.0.2.200
  port: 80
  scheduler: mh
  healthCheck: {type: tcp, interval: 200ms, timeout: 100ms, retries: 0, fall: 1, rise: 1}
  realServers: [{address: 10.0.0.2%d, port: 8080}]
routing:
  ecmp: [{vip: 192.0.2.200}]
  bgp:
    asn: 65001
    routerID: %s
    peers: [{address: 192.0.2.1, asn: 65000}]
kernel: {ipvs: required}
`, i+1, self), "--state-dir="+t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		ks = append(ks, k)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, k := range ks {
				t.Logf("%s:\n%s", k.Node().Name, tail(k.Log(), 30))
			}
		}
	})
	ctx := context.Background()
	// The next hops of BIRD's routes for the VIP, one per director that
	// announces it.
	paths := func() []string {
		out, err := bird.Cmd(ctx, "show route 192.0.2.200/32")
		if err != nil {
			return []string{err.Error()}
		}
		var hops []string
		for _, f := range strings.Fields(out) {
			if strings.HasPrefix(f, "192.0.2.1") && f != "192.0.2.1" && !strings.Contains(f, "/") {
				hops = append(hops, f)
			}
		}
		slices.Sort(hops)
		return slices.Compact(hops)
	}
	waitPaths := func(what string, want ...string) time.Duration {
		t.Helper()
		start := time.Now()
		for time.Since(start) < 60*time.Second {
			if slices.Equal(paths(), want) {
				return time.Since(start)
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Fatalf("BIRD: %s: paths %v, want %v", what, paths(), want)
		return 0
	}
	waitPaths("both directors", "192.0.2.11", "192.0.2.12")
	backends[1].stop()
	took := waitPaths("d2 gone with its backend", "192.0.2.11")
	t.Logf("d2's route left BIRD %s after its only backend stopped (check every 200ms, fall 1)", took.Round(time.Millisecond))
	backends[1].start()
	waitPaths("d2 back with its backend", "192.0.2.11", "192.0.2.12")
}
