package lvs

import (
	"net/netip"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
)

// The conversion to and from moby/ipvs types round-trips every attribute
// the Director compares.
func TestIPVSConversionRoundTrip(t *testing.T) {
	svcs := []Service{
		{Key: Key{Addr: ap("192.0.2.1"), Port: 80, Proto: TCP}, Scheduler: "wlc"},
		{Key: Key{Addr: ap("192.0.2.1"), Port: 53, Proto: UDP}, Scheduler: "sh", Flags: FlagFallback | FlagPort, Persistence: 300 * time.Second, PersistenceMask: 24},
		{Key: Key{Addr: ap("2001:db8::1"), Port: 443, Proto: SCTP}, Scheduler: "mh", Flags: FlagPort, Persistence: time.Hour, PersistenceMask: 64},
		{Key: Key{Addr: ap("192.0.2.1"), Port: 80, Proto: TCP}, Scheduler: "rr", Persistence: 60 * time.Second},
		{Key: Key{Addr: netip.IPv4Unspecified(), FWMark: 7}, Scheduler: "lc"},
		{Key: Key{Addr: netip.IPv6Unspecified(), FWMark: 8}, Scheduler: "lc"},
	}
	opt := cmpopts.EquateComparable(netip.Addr{})
	for _, s := range svcs {
		got := fromIPVSService(toIPVSService(&s))
		if diff := cmp.Diff(s, got, opt); diff != "" {
			t.Errorf("round trip of %s (-want +got):\n%s", s.Key, diff)
		}
	}
	for _, r := range []RealServer{
		{Addr: ap("10.0.0.1"), Port: 8080, Forward: NAT, Weight: 3, Upper: 100, Lower: 10},
		{Addr: ap("10.0.0.2"), Port: 80, Forward: DR, Weight: 0},
		{Addr: ap("2001:db8::2"), Port: 80, Forward: TUN, Weight: 65535},
	} {
		if got := fromIPVSDest(toIPVSDest(r)); got != r {
			t.Errorf("round trip of %v = %v", r, got)
		}
	}
	// The IPv4 mask goes to the kernel as network-order bytes.
	if m := netmaskAttr(ap("192.0.2.1"), 24); netmaskBits(ap("192.0.2.1"), m) != 24 {
		t.Errorf("mask /24 encodes to %#x which decodes to /%d", m, netmaskBits(ap("192.0.2.1"), m))
	}
}
