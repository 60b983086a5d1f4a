package vrrp

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
)

// Link-layer destinations of announcements.
var (
	broadcastMAC   = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	allNodesMAC    = net.HardwareAddr{0x33, 0x33, 0x00, 0x00, 0x00, 0x01}
	allNodesIPv6   = netip.MustParseAddr("ff02::1")
	etherTypeIPv6  = ethernet.EtherType(0x86dd)
	icmpv6Protocol = 58
)

// garpFrame builds the gratuitous ARP that keepalived sends for an IPv4 VIP
// (RFC 9568 §6.4.1 (120); interop notes §3.2): an ARP request (op 1) to the
// broadcast address, sender and target protocol address the VIP, target
// hardware address ff:ff:ff:ff:ff:ff, from the interface MAC.
func garpFrame(mac net.HardwareAddr, vip netip.Addr) ([]byte, error) {
	p, err := arp.NewPacket(arp.OperationRequest, mac, vip, broadcastMAC, vip)
	if err != nil {
		return nil, fmt.Errorf("building gratuitous ARP for %s: %w", vip, err)
	}
	body, err := p.MarshalBinary()
	if err != nil {
		return nil, fmt.Errorf("encoding gratuitous ARP for %s: %w", vip, err)
	}
	f := ethernet.Frame{Destination: broadcastMAC, Source: mac, EtherType: ethernet.EtherTypeARP, Payload: body}
	return f.MarshalBinary()
}

// naFrame builds the unsolicited neighbour advertisement that keepalived
// sends for an IPv6 VIP (RFC 9568 §6.4.1 (130), RFC 4861 §7.2.6): from the
// VIP to all nodes (ff02::1), hop limit 255, Override set, Router set when
// the interface forwards, Solicited clear, with a target link-layer address
// option carrying the interface MAC.
func naFrame(mac net.HardwareAddr, vip netip.Addr, router bool) ([]byte, error) {
	if !vip.Is6() || vip.Is4In6() {
		return nil, fmt.Errorf("neighbour advertisement for %s: not an IPv6 address", vip)
	}
	const icmpLen = 4 + 4 + 16 + 8 // header, flags, target, TLLA option
	icmp := make([]byte, icmpLen)
	icmp[0] = 136            // Neighbor Advertisement
	flags := uint32(1 << 29) // Override
	if router {
		flags |= 1 << 31
	}
	binary.BigEndian.PutUint32(icmp[4:8], flags)
	t := vip.As16()
	copy(icmp[8:24], t[:])
	icmp[24] = 2 // Target Link-Layer Address
	icmp[25] = 1 // in units of 8 bytes
	copy(icmp[26:32], mac)
	src, dst := vip.As16(), allNodesIPv6.As16()
	var s uint32
	for _, b := range [][]byte{src[:], dst[:]} {
		for i := 0; i < len(b); i += 2 {
			s += uint32(b[i])<<8 | uint32(b[i+1])
		}
	}
	s += icmpLen + uint32(icmpv6Protocol)
	binary.BigEndian.PutUint16(icmp[2:4], ^sum(icmp, s))

	ip6 := make([]byte, 40+icmpLen)
	ip6[0] = 6 << 4
	binary.BigEndian.PutUint16(ip6[4:6], icmpLen)
	ip6[6] = byte(icmpv6Protocol)
	ip6[7] = 255
	copy(ip6[8:24], src[:])
	copy(ip6[24:40], dst[:])
	copy(ip6[40:], icmp)
	f := ethernet.Frame{Destination: allNodesMAC, Source: mac, EtherType: etherTypeIPv6, Payload: ip6}
	return f.MarshalBinary()
}
