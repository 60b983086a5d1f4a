package vrrp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"

	"github.com/mdlayher/packet"
)

// linkAnnouncer sends gratuitous ARPs and unsolicited NAs on one interface
// through a raw packet socket. It is bound to no protocol, so it receives
// nothing.
type linkAnnouncer struct {
	ifi  *net.Interface
	conn *packet.Conn
}

func newLinkAnnouncer(ifi *net.Interface) (*linkAnnouncer, error) {
	c, err := packet.Listen(ifi, packet.Raw, 0, nil)
	if err != nil {
		return nil, fmt.Errorf("opening packet socket on %s for GARP/NA: %w", ifi.Name, err)
	}
	return &linkAnnouncer{ifi: ifi, conn: c}, nil
}

// Announce sends one message per address: a gratuitous ARP for IPv4, an
// unsolicited NA for IPv6.
func (a *linkAnnouncer) Announce(addrs []netip.Addr) (int, error) {
	var errs []error
	sent := 0
	router := forwarding(a.ifi.Name)
	for _, addr := range addrs {
		var frame []byte
		var err error
		dst := broadcastMAC
		if addr.Unmap().Is4() {
			frame, err = garpFrame(a.ifi.HardwareAddr, addr.Unmap())
		} else {
			frame, err = naFrame(a.ifi.HardwareAddr, addr, router)
			dst = allNodesMAC
		}
		if err == nil {
			_, err = a.conn.WriteTo(frame, &packet.Addr{HardwareAddr: dst})
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("announcing %s on %s: %w", addr, a.ifi.Name, err))
			continue
		}
		sent++
	}
	return sent, errors.Join(errs...)
}

// Close closes the socket.
func (a *linkAnnouncer) Close() error { return a.conn.Close() }

// forwarding reports whether IPv6 forwarding is on for the interface: such
// a router sets the Router flag in its NAs, as keepalived does.
func forwarding(ifname string) bool {
	b, err := os.ReadFile("/proc/sys/net/ipv6/conf/" + ifname + "/forwarding")
	return err == nil && strings.TrimSpace(string(b)) == "1"
}

// warmUp builds the frames for addrs without sending them.
func (a *linkAnnouncer) warmUp(addrs []netip.Addr) {
	forwarding(a.ifi.Name)
	for _, addr := range addrs {
		if addr.Unmap().Is4() {
			_, _ = garpFrame(a.ifi.HardwareAddr, addr.Unmap())
		} else {
			_, _ = naFrame(a.ifi.HardwareAddr, addr, false)
		}
	}
}
