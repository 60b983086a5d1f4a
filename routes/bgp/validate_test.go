package bgp

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	good := Options{ASN: 65001, RouterID: netip.MustParseAddr("192.0.2.1")}
	a := netip.MustParseAddr
	for _, tc := range []struct {
		name  string
		o     Options
		peers []Peer
		want  []string
	}{
		{"good", good, []Peer{{Address: a("192.0.2.2"), ASN: 65000}, {Address: a("2001:db8::2"), ASN: 65001}}, nil},
		{"asn 0", Options{RouterID: good.RouterID}, nil, []string{"asn: 0 is outside 1-4294967294"}},
		{"asn reserved", Options{ASN: 4294967295, RouterID: good.RouterID}, nil, []string{"asn: 4294967295 is outside"}},
		{"router id v6", Options{ASN: 1, RouterID: a("2001:db8::1")}, nil, []string{"routerID: 2001:db8::1 is not an IPv4 address"}},
		{"router id missing", Options{ASN: 1}, nil, []string{"routerID: invalid IP is not an IPv4 address"}},
		{"peer not an IP", good, []Peer{{ASN: 65000}}, []string{"peers[0].address: not an IP address"}},
		{"duplicate peers", good, []Peer{{Address: a("192.0.2.2"), ASN: 65000}, {Address: a("192.0.2.2"), ASN: 65002}}, []string{"peers[1].address: 192.0.2.2 is also peers[0]"}},
		{"peer asn", good, []Peer{{Address: a("192.0.2.2")}}, []string{"peers[0].asn: 0 is outside"}},
		{"timers", good, []Peer{{Address: a("192.0.2.2"), ASN: 1, HoldTime: 2 * time.Second}, {Address: a("192.0.2.3"), ASN: 1, HoldTime: 9 * time.Second, KeepaliveInterval: 9 * time.Second}},
			[]string{"peers[0].holdTime: 2s is outside 3s-65535s", "peers[1].keepaliveInterval: 9s is not below the hold time 9s"}},
		{"passive without listening", good, []Peer{{Address: a("192.0.2.2"), ASN: 1, Passive: true}}, []string{"peers[0].passive: a passive peer needs listenPort"}},
		{"ibgp multihop", good, []Peer{{Address: a("192.0.2.2"), ASN: 65001, Multihop: 2}}, []string{"peers[0].multihop: only for eBGP peers"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			errs := Validate(tc.o, tc.peers, nil)
			var msgs []string
			for _, e := range errs {
				msgs = append(msgs, e.Error())
			}
			all := strings.Join(msgs, "\n")
			if len(tc.want) == 0 && len(errs) > 0 {
				t.Errorf("Validate = %s; want no error", all)
			}
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("Validate = %q; want %q", all, w)
				}
			}
		})
	}
}
