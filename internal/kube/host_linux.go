package kube

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// LinuxHost finds interfaces with netlink.
type LinuxHost struct{}

// InterfaceOf returns the interface that holds addr.
func (LinuxHost) InterfaceOf(addr netip.Addr) (string, error) {
	fam := netlink.FAMILY_V4
	if addr.Is6() {
		fam = netlink.FAMILY_V6
	}
	addrs, err := netlink.AddrList(nil, fam)
	if err != nil {
		return "", fmt.Errorf("listing addresses: %w", err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ip.Unmap() != addr {
			continue
		}
		link, err := netlink.LinkByIndex(a.LinkIndex)
		if err != nil {
			return "", fmt.Errorf("reading the interface of %s: %w", addr, err)
		}
		return link.Attrs().Name, nil
	}
	return "", fmt.Errorf("no interface of this host holds %s", addr)
}
