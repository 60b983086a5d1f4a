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

// Gateways returns the next hops of this host's routes (main table), each
// with the route it is the gateway of.
func (LinuxHost) Gateways() (map[netip.Addr]string, error) {
	routes, err := netlink.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	out := map[netip.Addr]string{}
	add := func(gw []byte, dst string) {
		if a, ok := netip.AddrFromSlice(gw); ok && a.IsValid() && !a.IsUnspecified() {
			if _, seen := out[a.Unmap()]; !seen {
				out[a.Unmap()] = "the gateway of this node's route to " + dst
			}
		}
	}
	for _, r := range routes {
		dst := "everywhere (default)"
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones > 0 {
				dst = r.Dst.String()
			}
		}
		add(r.Gw, dst)
		for _, nh := range r.MultiPath {
			add(nh.Gw, dst)
		}
	}
	return out, nil
}
