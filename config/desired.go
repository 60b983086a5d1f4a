package config

import (
	"net/netip"

	"github.com/keepvip/keepvip/internal/announce"
	"github.com/keepvip/keepvip/internal/balancer"
	"github.com/keepvip/keepvip/lvs"
	"github.com/keepvip/keepvip/routes"
	"github.com/keepvip/keepvip/vrrp"
)

// Desired is what a parsed Config asks of each engine, in the engines' own
// types: the one exit of the translation from the model.
//
// The translation lives here, beside validation, because validating a field
// is building what its engine will be given (vrrp.Config's own checks
// included): a configuration that Parse accepts is one every engine takes,
// and each problem is reported with the path of its field. The daemon does
// not translate: it hands each engine its part and adds only what the
// running process knows (the host's /proc/sys and the interfaces that face
// NAT real servers, loggers and registries, preemption held while BGP
// sessions come up).
type Desired struct {
	// VRRP are the virtual routers (vrrp.Manager.Sync).
	VRRP []vrrp.Config
	// VirtualServers are the IPVS services and their health checks
	// (balancer.Balancer.Sync); Kernel the kernel settings for them, the
	// host's parts (ProcSys, NoRedirects) left to the daemon.
	VirtualServers []balancer.Service
	Kernel         lvs.Settings
	// IPVSRequired: keepvip must not start without IPVS.
	IPVSRequired bool
	// NATReals4 and NATReals6 are the real servers IPVS reaches by NAT;
	// RedirectsKept is kernel.sendRedirects: true (keep the node's ICMP
	// redirects to them).
	NATReals4, NATReals6 []netip.Addr
	RedirectsKept        bool
	// Exporter is the route exporter, nil without routing; Announcements
	// the VIPs whose routes follow VRRP, StaticRoutes the routes always
	// announced, ECMP the VIPs every node holds and announces while it
	// serves them (announce.Controller).
	Exporter      *Exporter
	Announcements []announce.VIP
	StaticRoutes  []routes.Route
	ECMP          []ECMP
	// ConnSync runs the IPVS sync daemons; nil: none.
	ConnSync *ConnSync
}

// Desired translates a Config that Parse (or Validate) accepted; the
// daemon is given no other. On one they refused, the result is undefined.
func (c *Config) Desired() Desired {
	d := Desired{
		VRRP:           make([]vrrp.Config, 0, len(c.Instances)),
		VirtualServers: make([]balancer.Service, 0, len(c.VirtualServers)),
		Kernel:         c.kernelSettings(),
		IPVSRequired:   len(c.VirtualServers) > 0 && c.Kernel.IPVS != "optional",
		RedirectsKept:  c.Kernel.SendRedirects != nil && *c.Kernel.SendRedirects,
	}
	for i := range c.Instances {
		vc, _ := c.Instances[i].toVRRP("")
		d.VRRP = append(d.VRRP, vc)
	}
	d.ConnSync, _ = c.connSync()
	for i := range c.VirtualServers {
		s, _ := c.VirtualServers[i].toBalancer("")
		d.VirtualServers = append(d.VirtualServers, s)
	}
	d.NATReals4, d.NATReals6 = natReals(d.VirtualServers, false), natReals(d.VirtualServers, true)
	d.Exporter, _ = c.exporter()
	d.Announcements, _ = c.announcements()
	d.StaticRoutes, _ = c.static()
	d.ECMP, _ = c.ecmp()
	return d
}

// VIPs returns every address d serves: of its instances, virtual servers
// (not those by firewall mark, which have no address) and ECMP VIPs.
func (d *Desired) VIPs() map[netip.Addr]bool {
	vips := map[netip.Addr]bool{}
	for _, vc := range d.VRRP {
		for _, p := range vc.VIPs {
			vips[p.Addr().Unmap()] = true
		}
	}
	for _, s := range d.VirtualServers {
		if s.FWMark == 0 {
			vips[s.Addr.Unmap()] = true
		}
	}
	for _, e := range d.ECMP {
		vips[e.Addr.Addr().Unmap()] = true
	}
	return vips
}

// natReals returns the IPv4 (v6 false) or IPv6 addresses of the real
// servers that IPVS reaches by NAT.
func natReals(svcs []balancer.Service, v6 bool) []netip.Addr {
	seen := map[netip.Addr]bool{}
	var out []netip.Addr
	for _, s := range svcs {
		for _, r := range s.Reals {
			if r.Forward == lvs.NAT && r.Addr.Is6() == v6 && !seen[r.Addr] {
				seen[r.Addr] = true
				out = append(out, r.Addr)
			}
		}
	}
	return out
}
