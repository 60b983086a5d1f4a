package vrrp

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/keepvip/keepvip/test/framework/netnstest"
)

// Ownership follows the full prefix: the same address with two prefix
// lengths is two addresses, in the kernel and in keepvip's bookkeeping.
func TestAddrsOwnershipByPrefix(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	va, _ := vethPair(t)
	a := newNetlinkAddrs(discard())
	defer a.close()
	p := netip.MustParsePrefix
	mustPrefixes := func(addr netip.Addr, want ...netip.Prefix) {
		t.Helper()
		got := prefixesOf(t, va.Index, addr)
		slices.SortFunc(got, func(x, y netip.Prefix) int { return x.Bits() - y.Bits() })
		if !slices.Equal(got, want) {
			t.Fatalf("%s on the interface as %v; want %v", addr, got, want)
		}
	}
	t.Run("IPv4 /24 then /32", func(t *testing.T) {
		wide, narrow := p("192.0.2.10/24"), p("192.0.2.10/32")
		if err := a.AddVIP(va.Index, wide); err != nil {
			t.Fatal(err)
		}
		if err := a.DeleteVIP(va.Index, wide); err != nil {
			t.Fatal(err)
		}
		if err := a.AddVIP(va.Index, narrow); err != nil {
			t.Fatal(err)
		}
		// The removal of the /24, notified late.
		if a.gone(va.Index, wide) {
			t.Error("the late removal of the /24 was taken for a removal of keepvip's VIP")
		}
		if err := a.DeleteVIP(va.Index, narrow); err != nil {
			t.Fatal(err)
		}
		mustPrefixes(narrow.Addr())
		// IPv4 keeps both lengths at once (a removal that failed):
		// each is removed on its own.
		for _, q := range []netip.Prefix{wide, narrow} {
			if err := a.AddVIP(va.Index, q); err != nil {
				t.Fatal(err)
			}
		}
		mustPrefixes(narrow.Addr(), wide, narrow)
		if err := a.DeleteVIP(va.Index, wide); err != nil {
			t.Fatal(err)
		}
		mustPrefixes(narrow.Addr(), narrow)
		if err := a.DeleteVIP(va.Index, narrow); err != nil {
			t.Fatal(err)
		}
		mustPrefixes(narrow.Addr())
	})
	t.Run("IPv6 /64 replaced by /128", func(t *testing.T) {
		wide, narrow := p("2001:db8::50/64"), p("2001:db8::50/128")
		if err := a.AddVIP(va.Index, wide); err != nil {
			t.Fatal(err)
		}
		// IPv6 holds one length per address: adding the /128 while
		// keepvip's /64 is still there replaces it.
		if err := a.AddVIP(va.Index, narrow); err != nil {
			t.Fatal(err)
		}
		mustPrefixes(narrow.Addr(), narrow)
		if err := a.DeleteVIP(va.Index, wide); err != nil {
			t.Fatal(err)
		}
		mustPrefixes(narrow.Addr(), narrow)
		if err := a.DeleteVIP(va.Index, narrow); err != nil {
			t.Fatal(err)
		}
		mustPrefixes(narrow.Addr())
	})
	t.Run("an operator's address is left alone", func(t *testing.T) {
		netnstest.Sh(t, "ip addr add 2001:db8::51/64 dev va nodad")
		if err := a.AddVIP(va.Index, p("2001:db8::51/128")); err != nil {
			t.Fatal(err)
		}
		if err := a.DeleteVIP(va.Index, p("2001:db8::51/128")); err != nil {
			t.Fatal(err)
		}
		mustPrefixes(p("2001:db8::51/64").Addr(), p("2001:db8::51/64"))
	})
	t.Run("missing after a lost notification", func(t *testing.T) {
		q := p("192.0.2.11/32")
		if err := a.AddVIP(va.Index, q); err != nil {
			t.Fatal(err)
		}
		netnstest.Sh(t, "ip addr del 192.0.2.11/32 dev va")
		got, err := a.missing()
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, []addrKey{{va.Index, q}}) {
			t.Errorf("missing = %v; want %v", got, q)
		}
		if !a.gone(va.Index, q) || a.gone(va.Index, q) {
			t.Error("gone should report the removal once")
		}
	})
}
