package vrrp

import (
	"bytes"
	"net"
	"testing"
)

// K8 and K9 of the interop notes: what keepalived 2.2.7 put on the wire from
// MAC 02:00:00:00:00:01. The Ethernet encoder pads to the 60-byte minimum,
// which the capture (taken on a veth) did not show.
func TestAnnouncementFramesMatchKeepalived(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	tests := []struct {
		name  string
		build func() ([]byte, error)
		want  string
	}{
		{"K8 GARP", func() ([]byte, error) { return garpFrame(mac, ip("192.0.2.100")) },
			"ffffffffffff 020000000001 0806 0001 0800 06 04 0001 020000000001 c0000264 ffffffffffff c0000264"},
		{"K9 NA link-local", func() ([]byte, error) { return naFrame(mac, ip("fe80::52"), false) },
			"333300000001 020000000001 86dd 6000000000203aff fe800000000000000000000000000052 ff020000000000000000000000000001 8800 56f9 20000000 fe800000000000000000000000000052 0201 020000000001"},
		{"K9 NA global", func() ([]byte, error) { return naFrame(mac, ip("2001:db8::100"), false) },
			"333300000001 020000000001 86dd 6000000000203aff 20010db8000000000000000000000100 ff020000000000000000000000000001 8800f72c20000000 20010db8000000000000000000000100 0201020000000001"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.build()
			if err != nil {
				t.Fatal(err)
			}
			want := unhex(t, tt.want)
			if len(got) < len(want) || !bytes.Equal(got[:len(want)], want) {
				t.Fatalf("frame =\n%x\nwant\n%x", got, want)
			}
			if len(got) < 60 || !bytes.Equal(got[len(want):], make([]byte, len(got)-len(want))) {
				t.Errorf("frame of %d bytes: padding must be zeros up to 60", len(got))
			}
		})
	}
}

func TestNARouterFlag(t *testing.T) {
	mac := net.HardwareAddr{0x02, 0, 0, 0, 0, 0x01}
	b, err := naFrame(mac, ip("2001:db8::100"), true)
	if err != nil {
		t.Fatal(err)
	}
	if flags := b[14+40+4]; flags != 0xa0 {
		t.Errorf("flags byte = %#x; want 0xa0 (Router and Override)", flags)
	}
	if _, err := naFrame(mac, ip("192.0.2.1"), false); err == nil {
		t.Error("NA for an IPv4 address did not fail")
	}
}
