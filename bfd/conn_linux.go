package bfd

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// tosNetworkControl is DSCP CS6, network control, in the IPv4 TOS and
// IPv6 traffic class bytes: what routers give their own control traffic,
// so that a congested link drops BFD last.
const tosNetworkControl = 0xc0

// rcvBuf is the receiving sockets' buffer (the kernel caps it at
// net.core.rmem_max).
const rcvBuf = 1 << 20

// received is one datagram from a listening socket with what its
// control message said.
type received struct {
	n        int
	src, dst netip.Addr
	ttl      int // TTL or hop limit; -1: not reported
}

// listener is a receiving socket: UDP port PortSingleHop or PortMultihop
// on one address or on every address of a family.
type listener struct {
	pc net.PacketConn
	p4 *ipv4.PacketConn
	p6 *ipv6.PacketConn
}

// listen opens the receiving socket for port on addr (unspecified: every
// address of its family), asking the kernel for each datagram's TTL or
// hop limit and destination.
func listen(addr netip.Addr, port uint16) (*listener, error) {
	network := "udp4"
	if addr.Is6() {
		network = "udp6" // IPV6_V6ONLY: the IPv4 socket takes IPv4
	}
	pc, err := net.ListenUDP(network, net.UDPAddrFromAddrPort(netip.AddrPortFrom(addr, port)))
	if err != nil {
		return nil, err
	}
	// Room for bursts (and floods) while the reader catches up: the
	// default buffer holds a few hundred packets.
	_ = pc.SetReadBuffer(rcvBuf)
	l := &listener{pc: pc}
	if addr.Is4() {
		l.p4 = ipv4.NewPacketConn(pc)
		err = l.p4.SetControlMessage(ipv4.FlagTTL|ipv4.FlagDst, true)
	} else {
		l.p6 = ipv6.NewPacketConn(pc)
		err = l.p6.SetControlMessage(ipv6.FlagHopLimit|ipv6.FlagDst, true)
	}
	if err != nil {
		pc.Close()
		return nil, fmt.Errorf("asking for the TTL of received packets: %w", err)
	}
	return l, nil
}

func (l *listener) read(b []byte) (received, error) {
	r := received{ttl: -1}
	var src net.Addr
	var err error
	if l.p4 != nil {
		var cm *ipv4.ControlMessage
		r.n, cm, src, err = l.p4.ReadFrom(b)
		if cm != nil {
			r.ttl = cm.TTL
			r.dst, _ = netip.AddrFromSlice(cm.Dst)
		}
	} else {
		var cm *ipv6.ControlMessage
		r.n, cm, src, err = l.p6.ReadFrom(b)
		if cm != nil {
			r.ttl = cm.HopLimit
			r.dst, _ = netip.AddrFromSlice(cm.Dst)
		}
	}
	if err != nil {
		return r, err
	}
	if ua, ok := src.(*net.UDPAddr); ok {
		r.src = ua.AddrPort().Addr().Unmap()
	}
	r.dst = r.dst.Unmap()
	return r, nil
}

func (l *listener) close() error { return l.pc.Close() }

// sender is a session's sending socket: bound to a source port of its own
// from SourcePortMin-SourcePortMax (RFC 5881 §4), TTL or hop limit 255
// (§5: the peer discards anything less on a single-hop session), DSCP CS6.
type sender struct {
	pc  *net.UDPConn
	dst *net.UDPAddr
}

// portTries bounds the search for a free source port.
const portTries = 64

func dial(p Peer) (*sender, error) {
	network, local := "udp4", netip.IPv4Unspecified()
	if p.Remote.Is6() {
		network, local = "udp6", netip.IPv6Unspecified()
	}
	if p.Local.IsValid() {
		local = p.Local
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if p.Remote.Is4() {
				serr = errors.Join(unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TTL, 255),
					unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_TOS, tosNetworkControl))
			} else {
				serr = errors.Join(unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_UNICAST_HOPS, 255),
					unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_TCLASS, tosNetworkControl))
			}
		})
		return errors.Join(err, serr)
	}}
	port := PortSingleHop
	if p.Multihop {
		port = PortMultihop
	}
	dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(p.Remote, uint16(port)))
	var last error
	for range portTries {
		src := netip.AddrPortFrom(local, uint16(SourcePortMin+rand.IntN(SourcePortMax-SourcePortMin+1)))
		pc, err := lc.ListenPacket(context.Background(), network, src.String())
		if err == nil {
			return &sender{pc: pc.(*net.UDPConn), dst: dst}, nil
		}
		last = err
		if !errors.Is(err, unix.EADDRINUSE) {
			break
		}
	}
	return nil, fmt.Errorf("opening the sending socket from %s: %w", local, last)
}

func (s *sender) send(b []byte) error {
	_, err := s.pc.WriteToUDP(b, s.dst)
	return err
}

func (s *sender) close() error { return s.pc.Close() }
