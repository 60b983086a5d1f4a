package routes

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseCommunity(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Community
		wantErr string
	}{
		{"65000:100", 65000<<16 | 100, ""},
		{"0:0", 0, ""},
		{"65535:65535", 0xffffffff, ""},
		{"65536:1", 0, "both parts must be numbers 0-65535"},
		{"100", 0, "want ASN:value"},
		{"a:b", 0, "both parts must be numbers"},
	} {
		got, err := ParseCommunity(tc.in)
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseCommunity(%q) = %v, %v; want error %q", tc.in, got, err, tc.wantErr)
			}
		case err != nil || got != tc.want:
			t.Errorf("ParseCommunity(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		case got.String() != tc.in:
			t.Errorf("%v.String() = %q; want %q", got, got.String(), tc.in)
		}
	}
}

func TestValidateAndIndex(t *testing.T) {
	p := netip.MustParsePrefix
	rs := []Route{
		{Prefix: p("192.0.2.100/32")},
		{Prefix: p("192.0.2.100/32"), Prepend: 1},                                 // twice
		{Prefix: p("192.0.2.1/24")},                                               // host bits
		{Prefix: p("2001:db8::1/128"), NextHop: netip.MustParseAddr("192.0.2.1")}, // family
		{Prefix: p("192.0.2.101/32"), Prepend: 11},                                // range
		{}, // nothing
		{Prefix: p("2001:db8::2/128"), NextHop: netip.MustParseAddr("fe80::1%eth0")},
	}
	idx, errs := ByPrefix(rs)
	if len(idx) != 1 || idx[p("192.0.2.100/32")].Prepend != 0 {
		t.Errorf("index = %v; want the first 192.0.2.100/32 only", idx)
	}
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	all := strings.Join(msgs, "\n")
	for _, want := range []string{
		"route 192.0.2.100/32 prepend 1: the prefix is listed twice",
		"route 192.0.2.1/24: prefix 192.0.2.1/24 has host bits set (did you mean 192.0.2.0/24?)",
		"route 2001:db8::1/128 via 192.0.2.1: next hop 192.0.2.1 is not of the prefix's family",
		"route 192.0.2.101/32 prepend 11: prepend 11 is outside 0-10",
		"no prefix",
		"a zone is not allowed",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("errors lack %q:\n%s", want, all)
		}
	}
}

func TestDiff(t *testing.T) {
	p := netip.MustParsePrefix
	a := Route{Prefix: p("192.0.2.1/32")}
	b := Route{Prefix: p("192.0.2.2/32"), HasLocalPref: true, LocalPref: 50}
	c := Route{Prefix: p("2001:db8::1/128")}
	have := map[netip.Prefix]Route{a.Prefix: a, b.Prefix: b, c.Prefix: c}
	b2 := b
	b2.LocalPref = 200
	d := Route{Prefix: p("192.0.2.0/32")}
	want := map[netip.Prefix]Route{a.Prefix: a, b.Prefix: b2, d.Prefix: d}
	add, del := Diff(have, want)
	if len(add) != 2 || add[0].Prefix != d.Prefix || add[1].Prefix != b.Prefix || add[1].LocalPref != 200 {
		t.Errorf("announce = %v; want 192.0.2.0/32 then the changed 192.0.2.2/32", add)
	}
	if len(del) != 1 || del[0] != c.Prefix {
		t.Errorf("withdraw = %v; want 2001:db8::1/128", del)
	}
	if add, del := Diff(want, want); len(add)+len(del) != 0 {
		t.Errorf("Diff of a set with itself: %v %v", add, del)
	}
	// Unset attributes compare equal whatever their stale value.
	x, y := Route{Prefix: a.Prefix, MED: 5}, Route{Prefix: a.Prefix}
	if !x.Equal(y) {
		t.Error("an unset MED made two routes differ")
	}
}
