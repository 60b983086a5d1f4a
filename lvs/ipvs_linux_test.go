package lvs

import (
	"bytes"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/vishvananda/netlink/nl"
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
}

// The persistence mask in the kernel's wire format. The attribute is
// IPVS_SVC_ATTR_NETMASK (include/uapi/linux/ip_vs.h, "persistent
// netmask"), kept in "__be32 netmask; /* persistent netmask or plen */"
// (include/net/ip_vs.h). In net/netfilter/ipvs/ip_vs_ctl.c,
// ip_vs_genl_parse_service reads the attribute's four bytes as they are
// (nla_get_be32) and ip_vs_genl_fill_service sends them back the same way
// (nla_put_be32). For IPv4 they are the mask in network order, ANDed with
// network-order addresses: /24 is ff ff ff 00. For IPv6, ip_vs_add_service
// and ip_vs_edit_service take them as a host-order __u32 prefix length
// ("(__force __u32) u->netmask", 1-128). moby/ipvs puts Service.Netmask on
// the wire with nl.Uint32Attr (fillService) and reads it with
// nl.NativeEndian (parseService), both host order, as used here.
//
// Known byte vectors, not a round trip: encoding and decoding with the
// same wrong byte order would pass a round trip.
func TestNetmaskWireFormat(t *testing.T) {
	// host is a little-endian __u32 in this host's byte order (the
	// vectors are written for x86 and arm64).
	host := func(b ...byte) []byte {
		if nl.NativeEndian().Uint16([]byte{1, 0}) != 1 {
			slices.Reverse(b)
		}
		return b
	}
	v4 := Key{Addr: ap("192.0.2.1"), Port: 53, Proto: UDP}
	v6 := Key{Addr: ap("2001:db8::1"), Port: 443, Proto: TCP}
	for _, tt := range []struct {
		name string
		svc  Service
		wire []byte
	}{
		{"IPv4 mask 24", Service{Key: v4, Persistence: time.Minute, PersistenceMask: 24}, []byte{0xff, 0xff, 0xff, 0x00}},
		{"IPv4 mask 16", Service{Key: v4, Persistence: time.Minute, PersistenceMask: 16}, []byte{0xff, 0xff, 0x00, 0x00}},
		{"IPv4 mask 25", Service{Key: v4, Persistence: time.Minute, PersistenceMask: 25}, []byte{0xff, 0xff, 0xff, 0x80}},
		{"IPv4 mask 1", Service{Key: v4, Persistence: time.Minute, PersistenceMask: 1}, []byte{0x80, 0x00, 0x00, 0x00}},
		{"IPv4 persistent, no mask: mask 32", Service{Key: v4, Persistence: time.Minute}, []byte{0xff, 0xff, 0xff, 0xff}},
		{"IPv4 not persistent: mask 32 as ipvsadm sends", Service{Key: v4}, []byte{0xff, 0xff, 0xff, 0xff}},
		{"IPv4 fwmark mask 24", Service{Key: Key{Addr: netip.IPv4Unspecified(), FWMark: 7}, Persistence: time.Minute, PersistenceMask: 24}, []byte{0xff, 0xff, 0xff, 0x00}},
		{"IPv6 mask 64", Service{Key: v6, Persistence: time.Minute, PersistenceMask: 64}, host(64, 0, 0, 0)},
		{"IPv6 mask 48", Service{Key: v6, Persistence: time.Minute, PersistenceMask: 48}, host(48, 0, 0, 0)},
		{"IPv6 persistent, no mask: mask 128", Service{Key: v6, Persistence: time.Minute}, host(128, 0, 0, 0)},
		{"IPv6 not persistent: mask 128 as ipvsadm sends", Service{Key: v6}, host(128, 0, 0, 0)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out := toIPVSService(&tt.svc)
			if got := nl.Uint32Attr(out.Netmask); !bytes.Equal(got, tt.wire) {
				t.Errorf("netmask of %+v on the wire = % x; want % x", tt.svc, got, tt.wire)
			}
			// The kernel's bytes, read back.
			out.Netmask = nl.NativeEndian().Uint32(tt.wire)
			if got := fromIPVSService(out); got.PersistenceMask != tt.svc.PersistenceMask {
				t.Errorf("netmask % x from the kernel read as persistence mask /%d; want /%d", tt.wire, got.PersistenceMask, tt.svc.PersistenceMask)
			}
		})
	}
}
