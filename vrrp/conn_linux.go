package vrrp

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// tosNetworkControl is the TOS / traffic class keepalived sends with
// (DSCP CS6, "network control").
const tosNetworkControl = 0xc0

// rawConn is a VRRP socket for one family on one interface: a raw IP socket
// for protocol 112 bound to the device, member of the VRRP group, sending
// with TTL/hop limit 255. Checksums are computed and verified in user space
// for both families, so that a bad IPv6 checksum is counted like an IPv4 one
// instead of being dropped silently by IPV6_CHECKSUM.
type rawConn struct {
	fam Family
	ifi *net.Interface
	pc  net.PacketConn
	p4  *ipv4.PacketConn
	p6  *ipv6.PacketConn
}

func listenRaw(ifi *net.Interface, fam Family) (*rawConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.BindToDevice(int(fd), ifi.Name); serr != nil {
				serr = fmt.Errorf("binding to device %s: %w", ifi.Name, serr)
				return
			}
			// Receive only the groups joined on this socket, not every
			// group any socket of the host joined.
			if fam == IPv4 {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MULTICAST_ALL, 0)
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_ALL, 0)
			}
			if serr != nil {
				serr = fmt.Errorf("disabling multicast-all: %w", serr)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	c := &rawConn{fam: fam, ifi: ifi}
	var err error
	if fam == IPv4 {
		c.pc, err = lc.ListenPacket(context.Background(), "ip4:112", "0.0.0.0")
	} else {
		c.pc, err = lc.ListenPacket(context.Background(), "ip6:112", "::")
	}
	if err != nil {
		return nil, fmt.Errorf("opening %s VRRP socket on %s: %w", fam, ifi.Name, err)
	}
	if err := c.setup(); err != nil {
		c.pc.Close()
		return nil, fmt.Errorf("setting up %s VRRP socket on %s: %w", fam, ifi.Name, err)
	}
	return c, nil
}

func (c *rawConn) setup() error {
	if c.fam == IPv4 {
		p := ipv4.NewPacketConn(c.pc)
		c.p4 = p
		return errors.Join(
			p.JoinGroup(c.ifi, &net.IPAddr{IP: GroupIPv4.AsSlice()}),
			p.SetControlMessage(ipv4.FlagTTL|ipv4.FlagDst|ipv4.FlagInterface, true),
			p.SetMulticastInterface(c.ifi),
			p.SetMulticastTTL(255),
			p.SetTTL(255),
			p.SetMulticastLoopback(false),
			p.SetTOS(tosNetworkControl),
		)
	}
	p := ipv6.NewPacketConn(c.pc)
	c.p6 = p
	return errors.Join(
		p.JoinGroup(c.ifi, &net.IPAddr{IP: GroupIPv6.AsSlice()}),
		p.SetControlMessage(ipv6.FlagHopLimit|ipv6.FlagDst|ipv6.FlagInterface, true),
		p.SetMulticastInterface(c.ifi),
		p.SetMulticastHopLimit(255),
		p.SetHopLimit(255),
		p.SetMulticastLoopback(false),
		p.SetTrafficClass(tosNetworkControl),
	)
}

// ReadPacket blocks for the next VRRP message.
func (c *rawConn) ReadPacket(buf []byte) (Packet, error) {
	var p Packet
	var src net.Addr
	var n int
	var err error
	if c.fam == IPv4 {
		var cm *ipv4.ControlMessage
		n, cm, src, err = c.p4.ReadFrom(buf)
		if err == nil && cm != nil {
			p.TTL = cm.TTL
			p.Dst, _ = netip.AddrFromSlice(cm.Dst.To4())
		}
	} else {
		var cm *ipv6.ControlMessage
		n, cm, src, err = c.p6.ReadFrom(buf)
		if err == nil && cm != nil {
			p.TTL = cm.HopLimit
			p.Dst, _ = netip.AddrFromSlice(cm.Dst)
		}
	}
	if err != nil {
		return p, err
	}
	p.Payload = buf[:n]
	if ia, ok := src.(*net.IPAddr); ok {
		a, _ := netip.AddrFromSlice(ia.IP)
		p.Src = a.Unmap()
	}
	if !p.Dst.IsValid() || !p.Src.IsValid() {
		return p, fmt.Errorf("packet without addresses (src %v, control message dst %v)", src, p.Dst)
	}
	return p, nil
}

// WritePacket sends b from src to dst.
func (c *rawConn) WritePacket(b []byte, src, dst netip.Addr) error {
	to := &net.IPAddr{IP: dst.AsSlice()}
	var err error
	if c.fam == IPv4 {
		_, err = c.p4.WriteTo(b, &ipv4.ControlMessage{IfIndex: c.ifi.Index, Src: src.AsSlice()}, to)
	} else {
		if dst.IsLinkLocalUnicast() || dst.IsLinkLocalMulticast() {
			to.Zone = c.ifi.Name
		}
		_, err = c.p6.WriteTo(b, &ipv6.ControlMessage{IfIndex: c.ifi.Index, Src: src.AsSlice(), HopLimit: 255}, to)
	}
	return err
}

// Close closes the socket; a blocked ReadPacket returns.
func (c *rawConn) Close() error { return c.pc.Close() }
