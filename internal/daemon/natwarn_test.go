package daemon

import (
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/keepvip/keepvip/config"
)

// A one-armed NAT director (clients and real servers on one segment)
// that redirects real servers past IPVS hangs their connections: status
// warns wherever nothing prevents that (issue #10).
func TestNATWarnings(t *testing.T) {
	const base = `instances:
- {name: v4, interface: eth0, vrid: 51, priority: 150, vips: [192.0.2.100/24]}
- {name: v6, interface: eth0, vrid: 52, priority: 150, vips: ["2001:db8::100/64"]}
virtualServers:
- vip: 192.0.2.100
  port: 80
  forwarding: %FWD%
  realServers: [{address: 192.0.2.11}]
- vip: "2001:db8::100"
  port: 80
  forwarding: %FWD%
  realServers: [{address: "2001:db8::11"}]
`
	// The node's segments: eth0 holds 192.0.2.0/24 and 2001:db8::/64.
	onLink := func(addrs []netip.Addr, v6 bool) ([]string, error) {
		seg := netip.MustParsePrefix("192.0.2.0/24")
		if v6 {
			seg = netip.MustParsePrefix("2001:db8::/64")
		}
		if slices.ContainsFunc(addrs, seg.Contains) {
			return []string{"eth0"}, nil
		}
		return nil, nil
	}
	for _, c := range []struct {
		name, fwd, kernel string
		want              []string // a substring of each warning, in order
	}{
		{"NAT, redirects turned off", "nat", "", []string{"IPv6 NAT real servers are on the segment of eth0"}},
		{"NAT, redirects kept", "nat", "kernel: {sendRedirects: true}\n", []string{"kernel.sendRedirects is true and IPv4 NAT real servers are on the segment of eth0", "IPv6 NAT"}},
		{"DR", "dr", "kernel: {sendRedirects: true}\n", nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := config.ParseFile([]byte(strings.ReplaceAll(base, "%FWD%", c.fwd) + c.kernel))
			if err != nil {
				t.Fatal(err)
			}
			want := cfg.Desired()
			got := natWarnings(&want, onLink)
			if len(got) != len(c.want) {
				t.Fatalf("warnings %q, want %d", got, len(c.want))
			}
			for i, w := range c.want {
				if !strings.Contains(got[i], w) {
					t.Errorf("warning %d: %q, want it to say %q", i, got[i], w)
				}
			}
		})
	}
	// Real servers elsewhere (routed): no warning.
	cfg, err := config.ParseFile([]byte(strings.ReplaceAll(strings.ReplaceAll(strings.ReplaceAll(base, "%FWD%", "nat"), "192.0.2.11", "10.0.0.11"), "2001:db8::11", "2001:db8:1::11") + "kernel: {sendRedirects: true}\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := cfg.Desired()
	if got := natWarnings(&want, onLink); len(got) != 0 {
		t.Errorf("routed real servers: warnings %q", got)
	}
}
