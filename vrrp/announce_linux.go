package vrrp

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/mdlayher/packet"
)

// linkAnnouncer sends gratuitous ARPs and unsolicited NAs on one interface
// through a raw packet socket. It is bound to no protocol, so it receives
// nothing. Frames are built once per address and kept: becoming master
// sends them without building anything.
type linkAnnouncer struct {
	ifi  *net.Interface
	conn *packet.Conn

	mu     sync.Mutex
	mac    net.HardwareAddr
	frames map[frameKey][]byte
	router bool      // IPv6 forwarding on: NAs carry the Router flag
	read   time.Time // when router was last read
}

type frameKey struct {
	addr   netip.Addr
	router bool
}

func newLinkAnnouncer(ifi *net.Interface) (*linkAnnouncer, error) {
	c, err := packet.Listen(ifi, packet.Raw, 0, nil)
	if err != nil {
		return nil, fmt.Errorf("opening packet socket on %s for GARP/NA: %w", ifi.Name, err)
	}
	return &linkAnnouncer{ifi: ifi, conn: c, mac: ifi.HardwareAddr, frames: map[frameKey][]byte{}}, nil
}

// setMAC follows a change of the interface's MAC (a bond failing over, an
// operator): announcements must carry the address the interface now has.
func (a *linkAnnouncer) setMAC(s string) {
	mac, err := net.ParseMAC(s)
	if err != nil {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if mac.String() != a.mac.String() {
		a.mac = mac
		clear(a.frames)
	}
}

// frame returns the announcement for addr, building it the first time.
func (a *linkAnnouncer) frame(addr netip.Addr, now time.Time) ([]byte, net.HardwareAddr, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	addr = addr.Unmap()
	key := frameKey{addr: addr}
	dst := broadcastMAC
	if !addr.Is4() {
		if now.Sub(a.read) > time.Second {
			a.router, a.read = forwarding(a.ifi.Name), now
		}
		key.router = a.router
		dst = allNodesMAC
	}
	if f, ok := a.frames[key]; ok {
		return f, dst, nil
	}
	var f []byte
	var err error
	if addr.Is4() {
		f, err = garpFrame(a.mac, addr)
	} else {
		f, err = naFrame(a.mac, addr, key.router)
	}
	if err != nil {
		return nil, nil, err
	}
	if len(a.frames) > 4096 {
		clear(a.frames)
	}
	a.frames[key] = f
	return f, dst, nil
}

// Announce sends one message per address: a gratuitous ARP for IPv4, an
// unsolicited NA for IPv6.
func (a *linkAnnouncer) Announce(addrs []netip.Addr) (int, error) {
	var errs []error
	sent := 0
	now := time.Now()
	for _, addr := range addrs {
		f, dst, err := a.frame(addr, now)
		if err == nil {
			_, err = a.conn.WriteTo(f, &packet.Addr{HardwareAddr: dst})
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
	now := time.Now()
	for _, addr := range addrs {
		_, _, _ = a.frame(addr, now)
	}
}
