package vrrp

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/keepvip/keepvip/test/framework/netnstest"
)

func TestHoldAddrs(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	netnstest.Sh(t, "ip link set lo up; ip addr add 192.0.2.9/32 dev lo")
	p := netip.MustParsePrefix
	// A VRRP VIP (this iproute2 cannot set the mark).
	if err := addrRequest(nil, unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, 1, p("192.0.2.5/32")); err != nil {
		t.Fatal(err)
	}
	show := func() string {
		as, err := listAddrs(nil, IPv4)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, a := range as {
			out = append(out, fmt.Sprintf("inet %s proto %#x", a.prefix, a.proto))
		}
		return strings.Join(out, "\n")
	}
	if err := HoldAddrs("lo", HeldAddrProto, []netip.Prefix{p("192.0.2.200/32"), p("192.0.2.9/32")}); err != nil {
		t.Fatal(err)
	}
	out := show()
	for _, want := range []string{"inet 192.0.2.200/32 proto 0x6c", "inet 192.0.2.9/32 proto 0", "inet 192.0.2.5/32 proto 0x6b"} {
		if !strings.Contains(out, want) {
			t.Errorf("after holding: no %q in\n%s", want, out)
		}
	}
	// Not wanted any more: ours goes; the operator's 192.0.2.9 and the
	// VRRP VIP stay.
	if err := HoldAddrs("lo", HeldAddrProto, nil); err != nil {
		t.Fatal(err)
	}
	out = show()
	if strings.Contains(out, "192.0.2.200") || !strings.Contains(out, "192.0.2.9/32") || !strings.Contains(out, "192.0.2.5/32") {
		t.Errorf("after releasing:\n%s", out)
	}
	if err := HoldAddrs("nosuch0", HeldAddrProto, nil); err == nil || !strings.Contains(err.Error(), "holding addresses on nosuch0") {
		t.Errorf("a missing interface: %v", err)
	}
}
