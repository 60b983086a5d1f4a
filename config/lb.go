package config

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/keepvip/keepvip/healthcheck"
	"github.com/keepvip/keepvip/internal/balancer"
	"github.com/keepvip/keepvip/lvs"
)

// VirtualServer is an IPVS virtual service and its real servers.
type VirtualServer struct {
	// Name is shown in status; default "<vip>:<port>/<protocol>".
	Name string `json:"name,omitempty"`
	// VIP and Port (and Protocol, default tcp) identify the service;
	// or FWMark (with Family, default ipv4) for a firewall-mark service.
	VIP      string `json:"vip,omitempty"`
	Port     int    `json:"port,omitempty"`
	Protocol string `json:"protocol,omitempty"`
	FWMark   int    `json:"fwmark,omitempty"`
	Family   string `json:"family,omitempty"`
	// Scheduler: rr, wrr, lc, wlc (default), lblc, lblcr, sh, dh, mh, sed,
	// nq, fo, ovf. SchedulerFlags for sh and mh: fallback, port.
	Scheduler      string       `json:"scheduler,omitempty"`
	SchedulerFlags []string     `json:"schedulerFlags,omitempty"`
	Persistence    *Persistence `json:"persistence,omitempty"`
	// Forwarding is the default for the real servers: nat (default), dr
	// or tun.
	Forwarding string `json:"forwarding,omitempty"`
	// Unhealthy: drain (weight 0, default) or remove.
	Unhealthy   string       `json:"unhealthy,omitempty"`
	HealthCheck *HealthCheck `json:"healthCheck,omitempty"`
	RealServers []RealServer `json:"realServers"`
	// Allow lets this virtual server pass guardrails on purpose:
	// nodeAddress, clusterAddress, gateway (see Allow*).
	Allow []string `json:"allow,omitempty"`
}

// Persistence sends a client to the same real server for Timeout after
// its last connection.
type Persistence struct {
	Timeout Duration `json:"timeout"`
	// Netmask groups clients: a prefix length ("24") or a mask
	// ("255.255.255.0"); default the whole address.
	Netmask string `json:"netmask,omitempty"`
}

// HealthCheck configures the check of every real server of a service.
type HealthCheck struct {
	// Type: tcp (default for TCP services), http, or none. UDP and SCTP
	// services are not checked unless a TCP Port to check is given.
	Type             string   `json:"type,omitempty"`
	Interval         Duration `json:"interval,omitzero"`         // default 5s (delay_loop)
	Timeout          Duration `json:"timeout,omitzero"`          // default 3s (connect_timeout)
	Retries          *int     `json:"retries,omitempty"`         // default 1 (retry)
	DelayBeforeRetry Duration `json:"delayBeforeRetry,omitzero"` // default 1s
	Rise             int      `json:"rise,omitempty"`            // default 1
	Fall             int      `json:"fall,omitempty"`            // default 1
	Port             int      `json:"port,omitempty"`            // default: the real server's port (connect_port)
	Path             string   `json:"path,omitempty"`            // http: default /
	Status           int      `json:"status,omitempty"`          // http: default 200
	Host             string   `json:"host,omitempty"`            // http: Host header
}

// RealServer is one destination of a virtual service.
type RealServer struct {
	Address string `json:"address"`
	// Port defaults to the service's port.
	Port int `json:"port,omitempty"`
	// Weight defaults to 1.
	Weight         *int   `json:"weight,omitempty"`
	Forwarding     string `json:"forwarding,omitempty"`
	UpperThreshold int    `json:"upperThreshold,omitempty"`
	LowerThreshold int    `json:"lowerThreshold,omitempty"`
}

// Kernel holds the kernel settings keepvip applies at start. Unset ones
// are left as the kernel has them.
type Kernel struct {
	// IPVS is "required" (default when there are virtual servers: keepvip
	// does not start without it) or "optional" (VRRP runs, load balancing
	// is reported as unavailable).
	IPVS string `json:"ipvs,omitempty"`
	// Conntrack: net.ipv4.vs.conntrack, keep netfilter connection
	// tracking for IPVS connections: needed only when netfilter rules
	// must see them (masquerading the clients, a stateful firewall).
	// Unset: as the kernel has it (off). On, with conn_reuse_mode 1, a
	// client that reuses a port of a connection IPVS still remembers has
	// its SYN dropped once (a 1 s stall).
	Conntrack *bool `json:"conntrack,omitempty"`
	// ConnReuseMode: net.ipv4.vs.conn_reuse_mode (0, 1 or 2). Kernel
	// default 1. 0 avoids a 1 s stall on port reuse under load but keeps
	// sending reused ports to a drained real server.
	ConnReuseMode *int `json:"connReuseMode,omitempty"`
	// ExpireNodestConn: net.ipv4.vs.expire_nodest_conn, drop connections
	// to a removed real server at once. Default true.
	ExpireNodestConn *bool `json:"expireNodestConn,omitempty"`
	// ExpireQuiescentTemplate: net.ipv4.vs.expire_quiescent_template,
	// let persistence templates of a weight-0 real server expire, so
	// persistent clients move off it. Default true.
	ExpireQuiescentTemplate *bool `json:"expireQuiescentTemplate,omitempty"`
	// NonLocalBind: net.ipv4.ip_nonlocal_bind and net.ipv6.ip_nonlocal_bind,
	// let local programs bind to a VIP this node does not hold yet.
	// Default true.
	NonLocalBind *bool `json:"nonLocalBind,omitempty"`
	// ARPInterfaces get arp_ignore=1 and arp_announce=2: for a node that
	// is a DR real server holding the VIP without answering ARP for it.
	ARPInterfaces []string `json:"arpInterfaces,omitempty"`
	// SendRedirects: net.ipv4.conf.{all,IFACE}.send_redirects on the
	// interfaces whose subnets hold NAT real servers. Unset: off when
	// there are NAT real servers (LVS's advice for NAT): a director that
	// forwards a real server's reply out the interface it came in on
	// (clients and real servers on one segment) sends the real server an
	// ICMP redirect, after which it answers clients directly, bypassing
	// IPVS, and their connections hang. true leaves them as they are.
	SendRedirects *bool `json:"sendRedirects,omitempty"`
}

// kernelSettings converts the kernel section, with its defaults.
func (c *Config) kernelSettings() lvs.Settings {
	t := func(b *bool) *bool {
		if b == nil {
			v := true
			return &v
		}
		return b
	}
	k := c.Kernel
	return lvs.Settings{
		Conntrack:               k.Conntrack,
		ConnReuseMode:           k.ConnReuseMode,
		ExpireNodestConn:        t(k.ExpireNodestConn),
		ExpireQuiescentTemplate: t(k.ExpireQuiescentTemplate),
		NonLocalBind:            t(k.NonLocalBind),
		ARPInterfaces:           k.ARPInterfaces,
	}
}

func (c *Config) validateKernel() []error {
	var errs []error
	k := c.Kernel
	switch k.IPVS {
	case "", "required", "optional":
	default:
		errs = append(errs, &FieldError{"kernel.ipvs", fmt.Sprintf("%q: want required or optional", k.IPVS)})
	}
	if k.ConnReuseMode != nil && (*k.ConnReuseMode < 0 || *k.ConnReuseMode > 2) {
		errs = append(errs, &FieldError{"kernel.connReuseMode", fmt.Sprintf("%d: want 0, 1 or 2", *k.ConnReuseMode)})
	}
	for i, n := range k.ARPInterfaces {
		if n == "" || len(n) > 15 || strings.ContainsAny(n, "/ ") {
			errs = append(errs, &FieldError{fmt.Sprintf("kernel.arpInterfaces[%d]", i), fmt.Sprintf("%q is not an interface name", n)})
		}
	}
	return errs
}

func (c *Config) validateVirtualServers() []error {
	var errs []error
	// accept: false drops, with an nftables rule that runs before IPVS,
	// every packet to the instance's VIPs: their virtual servers would
	// silently serve nothing.
	noAccept := map[netip.Addr]string{}
	for i, in := range c.Instances {
		if in.Accept != nil && !*in.Accept {
			for _, v := range in.VIPs {
				if p, err := parseVIP(v); err == nil {
					noAccept[p.Addr()] = fmt.Sprintf("instances[%d]", i)
				}
			}
		}
	}
	for i, vs := range c.VirtualServers {
		if a, err := netip.ParseAddr(vs.VIP); err == nil {
			if in, ok := noAccept[a.Unmap()]; ok {
				errs = append(errs, &FieldError{fmt.Sprintf("virtualServers[%d].vip", i), fmt.Sprintf("%s is a VIP of %s, which has accept: false: its traffic is dropped before IPVS sees it; set accept: true there", a.Unmap(), in)})
			}
		}
	}
	seen := map[lvs.Key]string{}
	for i := range c.VirtualServers {
		path := fmt.Sprintf("virtualServers[%d]", i)
		s, ve := c.VirtualServers[i].toBalancer(path)
		errs = append(errs, ve...)
		if len(ve) > 0 {
			continue
		}
		if other, dup := seen[s.Key]; dup {
			errs = append(errs, &FieldError{path, fmt.Sprintf("%s is also %s", s.Key, other)})
		}
		seen[s.Key] = path
	}
	return errs
}

// Check converts one virtual server, with its defaults, and returns every
// problem found in it under path; duplicate services are checked by
// Validate.
func (v *VirtualServer) Check(path string) (balancer.Service, []error) { return v.toBalancer(path) }

// CheckKernel returns the problems of the kernel section.
func (c *Config) CheckKernel() []error { return c.validateKernel() }

// toBalancer converts one virtual server, with its defaults, and returns
// every problem found under path.
func (v *VirtualServer) toBalancer(path string) (balancer.Service, []error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{path + "." + field, fmt.Sprintf(format, args...)})
	}
	errs = append(errs, checkAllow(path, v.Allow)...)
	var s balancer.Service
	s.Scheduler = "wlc"
	if v.Scheduler != "" {
		s.Scheduler = strings.ToLower(v.Scheduler)
	}
	switch {
	case v.FWMark != 0:
		if v.VIP != "" || v.Port != 0 || v.Protocol != "" {
			bad("fwmark", "a firewall-mark service has no vip, port or protocol")
		}
		if v.FWMark < 1 || v.FWMark > 0xffffffff {
			bad("fwmark", "%d is outside 1-4294967295", v.FWMark)
		}
		s.FWMark = uint32(v.FWMark)
		switch strings.ToLower(v.Family) {
		case "", "ipv4":
			s.Addr = netip.IPv4Unspecified()
		case "ipv6":
			s.Addr = netip.IPv6Unspecified()
		default:
			bad("family", "%q: want ipv4 or ipv6", v.Family)
		}
	default:
		a, err := netip.ParseAddr(v.VIP)
		switch {
		case v.VIP == "":
			bad("vip", "is required (or a fwmark)")
		case err != nil:
			bad("vip", "%q is not an IP address", v.VIP)
		default:
			s.Addr = a.Unmap()
		}
		if v.Port < 1 || v.Port > 65535 {
			bad("port", "%d is outside 1-65535", v.Port)
		} else {
			s.Port = uint16(v.Port)
		}
		s.Proto = lvs.TCP
		if v.Protocol != "" {
			p, err := lvs.ParseProtocol(v.Protocol)
			if err != nil {
				bad("protocol", "%v", err)
			}
			s.Proto = p
		}
	}
	for i, f := range v.SchedulerFlags {
		switch strings.ToLower(strings.TrimPrefix(strings.TrimPrefix(f, "sh-"), "mh-")) {
		case "fallback":
			s.Flags |= lvs.FlagFallback
		case "port":
			s.Flags |= lvs.FlagPort
		default:
			bad(fmt.Sprintf("schedulerFlags[%d]", i), "%q: want fallback or port", f)
		}
	}
	if p := v.Persistence; p != nil {
		d, err := p.Timeout.parse()
		switch {
		case !p.Timeout.set:
			bad("persistence.timeout", "is required")
		case err != nil:
			bad("persistence.timeout", "%v", err)
		default:
			s.Persistence = d
		}
		if p.Netmask != "" {
			bits, err := maskBits(p.Netmask, s.Addr)
			if err != nil {
				bad("persistence.netmask", "%v", err)
			}
			s.PersistenceMask = bits
		}
	}
	fwd := lvs.NAT
	if v.Forwarding != "" {
		f, err := lvs.ParseForwarding(v.Forwarding)
		if err != nil {
			bad("forwarding", "%v", err)
		}
		fwd = f
	}
	switch strings.ToLower(v.Unhealthy) {
	case "", "drain":
		s.OnUnhealthy = balancer.Drain
	case "remove":
		s.OnUnhealthy = balancer.Remove
	default:
		bad("unhealthy", "%q: want drain or remove", v.Unhealthy)
	}
	for i, r := range v.RealServers {
		field := fmt.Sprintf("realServers[%d]", i)
		a, err := netip.ParseAddr(r.Address)
		if err != nil {
			bad(field+".address", "%q is not an IP address", r.Address)
			continue
		}
		rs := lvs.RealServer{Addr: a.Unmap(), Forward: fwd, Weight: 1, Port: s.Port}
		if r.Forwarding != "" {
			f, err := lvs.ParseForwarding(r.Forwarding)
			if err != nil {
				bad(field+".forwarding", "%v", err)
			}
			rs.Forward = f
		}
		switch {
		case r.Port < 0 || r.Port > 65535:
			bad(field+".port", "%d is outside 1-65535", r.Port)
		case r.Port != 0:
			rs.Port = uint16(r.Port)
		}
		if r.Weight != nil {
			rs.Weight = *r.Weight
		}
		if r.UpperThreshold < 0 || r.LowerThreshold < 0 {
			bad(field, "connection thresholds cannot be negative")
		}
		rs.Upper, rs.Lower = uint32(max(r.UpperThreshold, 0)), uint32(max(r.LowerThreshold, 0))
		s.Reals = append(s.Reals, rs)
	}
	if hc := v.HealthCheck; hc != nil || s.Proto == lvs.TCP || s.FWMark != 0 {
		s.Check, s.CheckPort = v.check(bad)
	}
	s.Name = v.Name
	if s.Name == "" && len(errs) == 0 {
		s.Name = s.Key.String()
	}
	// The rules of IPVS and of checks live with them; they are reported
	// only when the fields could be read, so that a problem shows once.
	if len(errs) == 0 {
		for _, e := range s.Validate() {
			var fe *lvs.FieldError
			if errors.As(e, &fe) {
				bad(fe.Field, "%s", fe.Reason)
			}
		}
	}
	return s, errs
}

// check converts the health check; nil means none.
func (v *VirtualServer) check(bad func(field, format string, args ...any)) (*healthcheck.Check, uint16) {
	hc := v.HealthCheck
	if hc == nil {
		hc = &HealthCheck{}
	}
	c := healthcheck.DefaultCheck()
	switch strings.ToLower(hc.Type) {
	case "":
		if v.Protocol != "" && !strings.EqualFold(v.Protocol, "tcp") && hc.Port == 0 {
			return nil, 0 // UDP and SCTP: not checked by default
		}
	case "none":
		return nil, 0
	default:
		k, err := healthcheck.ParseKind(hc.Type)
		if err != nil {
			bad("healthCheck.type", "%v, or none", err)
		}
		c.Kind = k
	}
	dur := func(field string, d Duration, into *time.Duration) {
		if !d.set {
			return
		}
		v, err := d.parse()
		if err != nil {
			bad("healthCheck."+field, "%v", err)
			return
		}
		*into = v
	}
	dur("interval", hc.Interval, &c.Interval)
	// Defaults never exceed a shorter interval the user chose.
	if c.Interval > 0 {
		c.Timeout = min(c.Timeout, c.Interval)
		c.DelayBeforeRetry = min(c.DelayBeforeRetry, c.Interval)
	}
	dur("timeout", hc.Timeout, &c.Timeout)
	dur("delayBeforeRetry", hc.DelayBeforeRetry, &c.DelayBeforeRetry)
	if hc.Retries != nil {
		c.Retries = *hc.Retries
	}
	if hc.Rise != 0 {
		c.Rise = hc.Rise
	}
	if hc.Fall != 0 {
		c.Fall = hc.Fall
	}
	if hc.Path != "" {
		c.Path = hc.Path
	}
	if hc.Status != 0 {
		c.Status = hc.Status
	}
	c.Host = hc.Host
	if hc.Port < 0 || hc.Port > 65535 {
		bad("healthCheck.port", "%d is outside 1-65535", hc.Port)
		return &c, 0
	}
	return &c, uint16(hc.Port)
}

// maskBits reads a persistence netmask: a prefix length or a dotted mask.
func maskBits(s string, a netip.Addr) (int, error) {
	s = strings.TrimPrefix(s, "/")
	if n, err := strconv.Atoi(s); err == nil {
		return n, nil
	}
	m, err := netip.ParseAddr(s)
	if err != nil || !m.Is4() || !a.Is4() {
		return 0, fmt.Errorf("%q is not a prefix length or an IPv4 mask", s)
	}
	b := m.As4()
	bits, ones := 0, true
	for _, x := range b {
		for i := 7; i >= 0; i-- {
			if x&(1<<i) != 0 {
				if !ones {
					return 0, fmt.Errorf("%q is not a contiguous mask", s)
				}
				bits++
			} else {
				ones = false
			}
		}
	}
	return bits, nil
}
