package vrrp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"
)

// IPProtocol is the IP protocol number of VRRP (RFC 9568 §5.1.1.4).
const IPProtocol = 112

// Multicast groups that VRRP advertisements are sent to (RFC 9568 §5.1.1.2,
// §5.1.2.2).
var (
	GroupIPv4 = netip.MustParseAddr("224.0.0.18")
	GroupIPv6 = netip.MustParseAddr("ff02::12")
)

// Version 3 encodes the advertisement interval in centiseconds in 12 bits
// (RFC 9568 §5.2.7): 10 ms to 40.95 s. Version 2 encodes whole seconds in 8 bits
// (RFC 3768 §5.3.7).
const (
	MinIntervalV3 = 10 * time.Millisecond
	MaxIntervalV3 = 4095 * 10 * time.Millisecond
	MinIntervalV2 = time.Second
	MaxIntervalV2 = 255 * time.Second
)

// Priorities with a special meaning (RFC 9568 §5.2.4).
const (
	PriorityStop  = 0   // the Master stopped participating: backups take over after Skew_Time
	PriorityOwner = 255 // the router owns the virtual addresses
)

const (
	headerLen  = 8
	authLen    = 8 // VRRPv2 authentication data (RFC 3768 §5.3.10)
	typeAdvert = 1 // the only type defined (RFC 9568 §5.2.2)
)

// Errors returned by ParseAdvertisement and VerifyChecksum. Each names one
// receive check of RFC 9568 §7.1; the receive path counts drops by them.
var (
	ErrTruncated = errors.New("message shorter than its header and address count")
	ErrTrailing  = errors.New("bytes after the last address")
	ErrVersion   = errors.New("unsupported version")
	ErrType      = errors.New("unknown message type")
	ErrVRID      = errors.New("virtual router id 0")
	ErrCount     = errors.New("address count 0")
	ErrInterval  = errors.New("advertisement interval out of range")
	ErrChecksum  = errors.New("bad checksum")
	ErrFamily    = errors.New("address family mismatch")
)

// Family is an address family: a VRRP router for IPv4 and one for IPv6 are
// separate virtual routers, even with the same VRID (RFC 9568 §5.2.3).
type Family uint8

// The two address families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

func (f Family) String() string {
	switch f {
	case IPv4:
		return "ipv4"
	case IPv6:
		return "ipv6"
	}
	return fmt.Sprintf("family(%d)", uint8(f))
}

func (f Family) addrLen() int {
	if f == IPv6 {
		return 16
	}
	return 4
}

// FamilyOf returns the family of a as it travels: an IPv4-mapped IPv6
// address (::ffff:a.b.c.d) is 16 bytes on the wire and so IPv6. Callers
// that take addresses from users unmap them first.
func FamilyOf(a netip.Addr) Family {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

// ChecksumMode selects how the checksum of a version 3 IPv4 advertisement is
// computed on send. IPv6 always uses the pseudo-header and version 2 never
// does. On receive every form is accepted.
type ChecksumMode uint8

const (
	// ChecksumPseudoHeader covers an IPv4 pseudo-header and the message, as
	// RFC 5798 §5.2.8 was read by keepalived, FRR, Wireshark and tcpdump.
	// keepalived 2.2.7 rejects anything else, so it is the default.
	ChecksumPseudoHeader ChecksumMode = iota
	// ChecksumMessageOnly covers the VRRP message only, as RFC 9568 §5.2.8
	// now specifies for IPv4 (and as Cisco and Juniper do).
	ChecksumMessageOnly
)

func (m ChecksumMode) String() string {
	switch m {
	case ChecksumPseudoHeader:
		return "rfc5798"
	case ChecksumMessageOnly:
		return "rfc9568"
	}
	return fmt.Sprintf("checksum(%d)", uint8(m))
}

// Advertisement is a VRRP advertisement, version 3 (RFC 9568 §5.1) or
// version 2 (RFC 3768 §5.1).
//
// Version 3:
//
//	 0                   1                   2                   3
//	 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|Version| Type  | Virtual Rtr ID|   Priority    |Count IPvX Addr|
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|(rsvd) |     Max Adver Int     |          Checksum             |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//	|                       IPvX Address(es)                        |
//	+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//
// Version 2 has an 8-bit Auth Type and an 8-bit Adver Int (seconds) where
// version 3 has the reserved bits and Max Adver Int, and 8 bytes of
// authentication data after the IPv4 addresses.
type Advertisement struct {
	Version  uint8 // 2 or 3
	VRID     uint8
	Priority uint8
	// Interval is Max Adver Int (v3, a multiple of 10 ms) or Adver Int
	// (v2, a multiple of 1 s).
	Interval time.Duration
	Addrs    []netip.Addr
	AuthType uint8   // version 2 only: 0 none, 1 simple text password
	AuthData [8]byte // version 2 only
}

// Len returns the length of the encoded message for family f.
func (a *Advertisement) Len(f Family) int {
	n := headerLen + len(a.Addrs)*f.addrLen()
	if a.Version == 2 {
		n += authLen
	}
	return n
}

// Marshal encodes a and sets its checksum. src and dst are the source and
// destination addresses of the IP packet that will carry it; they enter the
// checksum through the pseudo-header for IPv6 and, with ChecksumPseudoHeader,
// for version 3 over IPv4.
func (a *Advertisement) Marshal(src, dst netip.Addr, mode ChecksumMode) ([]byte, error) {
	if len(a.Addrs) == 0 {
		return nil, ErrCount
	}
	if len(a.Addrs) > 255 {
		return nil, fmt.Errorf("%d addresses: at most 255 fit the count field", len(a.Addrs))
	}
	if a.VRID == 0 {
		return nil, ErrVRID
	}
	f := FamilyOf(a.Addrs[0])
	for _, addr := range a.Addrs {
		if FamilyOf(addr) != f {
			return nil, fmt.Errorf("address %s: %w", addr, ErrFamily)
		}
	}
	if FamilyOf(src) != f || FamilyOf(dst) != f {
		return nil, fmt.Errorf("carrier %s -> %s for %s addresses: %w", src, dst, f, ErrFamily)
	}
	b := make([]byte, a.Len(f))
	b[1] = a.VRID
	b[2] = a.Priority
	b[3] = uint8(len(a.Addrs))
	switch a.Version {
	case 3:
		cs, ok := centiseconds(a.Interval)
		if !ok {
			return nil, fmt.Errorf("%v: %w", a.Interval, ErrInterval)
		}
		b[0] = 3<<4 | typeAdvert
		binary.BigEndian.PutUint16(b[4:6], cs)
	case 2:
		if f != IPv4 {
			return nil, fmt.Errorf("version 2 carries IPv4 only: %w", ErrFamily)
		}
		if a.Interval < MinIntervalV2 || a.Interval > MaxIntervalV2 || a.Interval%time.Second != 0 {
			return nil, fmt.Errorf("%v: %w", a.Interval, ErrInterval)
		}
		b[0] = 2<<4 | typeAdvert
		b[4] = a.AuthType
		b[5] = uint8(a.Interval / time.Second)
		copy(b[headerLen+4*len(a.Addrs):], a.AuthData[:])
	default:
		return nil, fmt.Errorf("version %d: %w", a.Version, ErrVersion)
	}
	off := headerLen
	for _, addr := range a.Addrs {
		if f == IPv4 {
			a4 := addr.As4()
			off += copy(b[off:], a4[:])
		} else {
			a16 := addr.As16()
			off += copy(b[off:], a16[:])
		}
	}
	binary.BigEndian.PutUint16(b[6:8], checksum(b, src, dst, a.Version == 3 && (f == IPv6 || mode == ChecksumPseudoHeader)))
	return b, nil
}

func centiseconds(d time.Duration) (uint16, bool) {
	if d < MinIntervalV3 || d > MaxIntervalV3 || d%(10*time.Millisecond) != 0 {
		return 0, false
	}
	return uint16(d / (10 * time.Millisecond)), true
}

// ParseAdvertisement decodes a VRRP message received over family f. It checks
// the structure (RFC 9568 §7.1: version, type, the whole message present and
// nothing after it, a non-zero interval for version 3) but not the checksum:
// see VerifyChecksum.
func ParseAdvertisement(b []byte, f Family) (Advertisement, error) {
	var a Advertisement
	if len(b) < headerLen {
		return a, fmt.Errorf("%d bytes: %w", len(b), ErrTruncated)
	}
	a.Version = b[0] >> 4
	// VRID and priority first, so that a drop can be attributed.
	a.VRID = b[1]
	a.Priority = b[2]
	if t := b[0] & 0x0f; t != typeAdvert {
		return a, fmt.Errorf("type %d: %w", t, ErrType)
	}
	count := int(b[3])
	want := headerLen + count*f.addrLen()
	switch a.Version {
	case 3:
		a.Interval = time.Duration(binary.BigEndian.Uint16(b[4:6])&0x0fff) * 10 * time.Millisecond
	case 2:
		if f != IPv4 {
			return a, fmt.Errorf("version 2 over IPv6: %w", ErrVersion)
		}
		a.AuthType = b[4]
		a.Interval = time.Duration(b[5]) * time.Second
		want += authLen
	default:
		return a, fmt.Errorf("version %d: %w", a.Version, ErrVersion)
	}
	if len(b) < want {
		return a, fmt.Errorf("%d bytes for %d addresses, want %d: %w", len(b), count, want, ErrTruncated)
	}
	if len(b) > want {
		return a, fmt.Errorf("%d bytes for %d addresses, want %d: %w", len(b), count, want, ErrTrailing)
	}
	if a.VRID == 0 {
		return a, ErrVRID
	}
	if count == 0 {
		return a, ErrCount
	}
	if a.Interval == 0 {
		return a, fmt.Errorf("interval 0: %w", ErrInterval)
	}
	a.Addrs = make([]netip.Addr, count)
	off := headerLen
	for i := range a.Addrs {
		if f == IPv4 {
			a.Addrs[i] = netip.AddrFrom4([4]byte(b[off : off+4]))
		} else {
			a.Addrs[i] = netip.AddrFrom16([16]byte(b[off : off+16]))
		}
		off += f.addrLen()
	}
	if a.Version == 2 {
		copy(a.AuthData[:], b[off:])
	}
	return a, nil
}

// VerifyChecksum checks the checksum of the VRRP message b carried from src
// to dst and reports which form it was computed with.
//
// Version 2 covers the message only. IPv6 covers the IPv6 pseudo-header.
// Version 3 over IPv4 is accepted in all three forms seen in the field: the
// IPv4 pseudo-header (RFC 5798 as implemented by keepalived), the message
// only (RFC 9568), and, for a unicast destination, the pseudo-header with
// 224.0.0.18 as destination (keepalived 1.3.6 and older).
func VerifyChecksum(b []byte, src, dst netip.Addr) (ChecksumMode, error) {
	if len(b) < headerLen {
		return 0, ErrTruncated
	}
	v3 := b[0]>>4 == 3
	switch {
	case !v3:
		if sum(b, 0) == 0xffff {
			return ChecksumMessageOnly, nil
		}
	case FamilyOf(src) == IPv6:
		if sum(b, pseudoSum(src, dst, len(b))) == 0xffff {
			return ChecksumPseudoHeader, nil
		}
	default:
		if sum(b, pseudoSum(src, dst, len(b))) == 0xffff {
			return ChecksumPseudoHeader, nil
		}
		if sum(b, 0) == 0xffff {
			return ChecksumMessageOnly, nil
		}
		if !dst.IsMulticast() && sum(b, pseudoSum(src, GroupIPv4, len(b))) == 0xffff {
			return ChecksumPseudoHeader, nil
		}
	}
	return 0, fmt.Errorf("checksum 0x%04x from %s to %s: %w", binary.BigEndian.Uint16(b[6:8]), src, dst, ErrChecksum)
}

// checksum returns the RFC 1071 checksum of b (whose checksum field must be
// zero), with the pseudo-header of src and dst when pseudo is set.
func checksum(b []byte, src, dst netip.Addr, pseudo bool) uint16 {
	var init uint32
	if pseudo {
		init = pseudoSum(src, dst, len(b))
	}
	return ^sum(b, init)
}

// pseudoSum is the partial sum of the pseudo-header: RFC 8200 §8.1 for IPv6,
// and the RFC 768-style one (src, dst, zero, protocol, length) for IPv4.
func pseudoSum(src, dst netip.Addr, n int) uint32 {
	var s uint32
	add := func(p []byte) {
		for i := 0; i+1 < len(p); i += 2 {
			s += uint32(p[i])<<8 | uint32(p[i+1])
		}
	}
	src, dst = src.Unmap(), dst.Unmap()
	add(src.AsSlice())
	add(dst.AsSlice())
	if src.Is4() {
		s += IPProtocol + uint32(n)
	} else {
		s += uint32(n>>16) + uint32(n&0xffff) + IPProtocol
	}
	return s
}

// sum is the 16-bit one's complement sum of b added to init, folded.
func sum(b []byte, init uint32) uint16 {
	s := init
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}
