package vrrp_test

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/keepvip/keepvip/vrrp"
)

// An advertisement as keepalived 2.2.7 sends it for VRID 51 (vector K1).
func ExampleAdvertisement_Marshal() {
	adv := vrrp.Advertisement{
		Version:  3,
		VRID:     51,
		Priority: 100,
		Interval: time.Second,
		Addrs:    []netip.Addr{netip.MustParseAddr("192.0.2.100"), netip.MustParseAddr("192.0.2.101")},
	}
	b, err := adv.Marshal(netip.MustParseAddr("192.0.2.1"), vrrp.GroupIPv4, vrrp.ChecksumPseudoHeader)
	if err != nil {
		panic(err)
	}
	fmt.Printf("% x\n", b)
	// Output: 31 33 64 02 00 64 43 07 c0 00 02 64 c0 00 02 65
}

// A configuration is checked field by field before it is run.
func ExampleConfig_Validate() {
	c := vrrp.DefaultConfig()
	c.Name, c.Interface, c.VRID = "web", "eth0", 51
	c.Interval = 15 * time.Millisecond
	c.VIPs = []netip.Prefix{netip.MustParsePrefix("192.0.2.100/24")}
	for _, err := range c.Validate() {
		fmt.Println(err)
	}
	// Output: advertInterval: 15ms is not a multiple of 10ms between 10ms and 40.95s
}
