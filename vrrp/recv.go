package vrrp

import (
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// Packet is one VRRP message as received, with the IP header fields the
// receive checks of RFC 9568 §7.1 need.
type Packet struct {
	Payload []byte
	Src     netip.Addr
	Dst     netip.Addr
	// TTL is the IPv4 TTL or IPv6 Hop Limit.
	TTL int
	// At is when the kernel received the packet, on the monotonic clock;
	// zero if unknown. It can be well before the packet is handled: while
	// the process was stopped or starved of CPU, adverts wait in the
	// socket, and the state machine judges each by when it came.
	At time.Time
}

// DropReason names why a received packet was not used. The reasons are the
// label values of the keepvip_vrrp_packets_dropped_total metric.
type DropReason string

// Drop reasons. The first group follows the RFC 9568 §7.1 receive checks;
// the second keepalived's additional checks; the last keepvip's own.
const (
	DropTTL       DropReason = "ttl"       // multicast advert with TTL/Hop Limit other than 255
	DropTruncated DropReason = "truncated" // shorter than its address count says
	DropTrailing  DropReason = "trailing"  // bytes after the addresses
	DropVersion   DropReason = "version"   // not version 2 or 3, or v2 over IPv6
	DropType      DropReason = "type"      // not an advertisement
	DropVRIDZero  DropReason = "vrid-zero"
	DropCountZero DropReason = "count-zero"
	DropInterval  DropReason = "interval" // advertisement interval 0
	DropChecksum  DropReason = "checksum"
	DropUnknown   DropReason = "unknown-vrid" // no instance for this VRID on this interface
	DropOwner     DropReason = "owner"        // we own the addresses (priority 255): RFC 9568 §7.1

	DropVersionMismatch  DropReason = "version-mismatch"   // v2 advert to a v3 instance or the reverse
	DropIntervalMismatch DropReason = "interval-mismatch"  // v2 advert interval differs (RFC 3768 §7.1)
	DropAuth             DropReason = "auth"               // v2 authentication differs
	DropNotPeer          DropReason = "not-peer"           // unicast instance, sender not a configured peer
	DropUnexpectedUni    DropReason = "unexpected-unicast" // multicast instance got a unicast advert
	DropUnexpectedMulti  DropReason = "unexpected-multicast"
	DropOwnAddress       DropReason = "own-address" // sent from our own source address
	DropInactive         DropReason = "inactive"    // instance in Initialize or Fault
	DropQueueFull        DropReason = "queue-full"  // instance not keeping up
)

// decode applies the receive checks that do not depend on the instance, in
// keepalived's order: structure, TTL for multicast (unicast adverts may come
// with any TTL, as keepalived sends IPv6 unicast with hop limit 64), then the
// checksum. The VRID is parsed first so that drops can be attributed.
func decode(p Packet, fam Family) (Advertisement, DropReason, error) {
	adv, err := ParseAdvertisement(p.Payload, fam)
	if err != nil {
		return adv, reasonOf(err), err
	}
	if p.Dst.IsMulticast() && p.TTL != 255 {
		return adv, DropTTL, fmt.Errorf("multicast advert with TTL %d, not 255", p.TTL)
	}
	if _, err := VerifyChecksum(p.Payload, p.Src, p.Dst); err != nil {
		return adv, DropChecksum, err
	}
	return adv, "", nil
}

func reasonOf(err error) DropReason {
	for _, m := range []struct {
		err    error
		reason DropReason
	}{
		{ErrTruncated, DropTruncated},
		{ErrTrailing, DropTrailing},
		{ErrVersion, DropVersion},
		{ErrType, DropType},
		{ErrVRID, DropVRIDZero},
		{ErrCount, DropCountZero},
		{ErrInterval, DropInterval},
		{ErrChecksum, DropChecksum},
	} {
		if errors.Is(err, m.err) {
			return m.reason
		}
	}
	return DropTruncated
}
