package config

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/keepvip/keepvip/bfd"
	"github.com/keepvip/keepvip/internal/announce"
	"github.com/keepvip/keepvip/routes"
	"github.com/keepvip/keepvip/routes/bgp"
	"github.com/keepvip/keepvip/routes/kernel"
)

// Routing announces the VIPs to routers, so that they are reachable beyond
// the segment (routed HA). Without it nothing is announced.
type Routing struct {
	// Exporter is "bgp" (default: keepvip speaks BGP to the peers) or
	// "kernel" (the routes go into a Linux routing table, for a routing
	// daemon that redistributes it).
	Exporter string       `json:"exporter,omitempty"`
	BGP      *BGP         `json:"bgp,omitempty"`
	Kernel   *KernelTable `json:"kernelTable,omitempty"`
	// Communities ("65000:100"), LocalPref and MED of every route unless
	// an instance sets its own.
	Communities []string `json:"communities,omitempty"`
	LocalPref   *uint32  `json:"localPref,omitempty"`
	MED         *uint32  `json:"med,omitempty"`
	// ECMP are VIPs that every node holds and announces at once, for
	// active-active spreading over the nodes; not VRRP's.
	ECMP []ECMPVIP `json:"ecmp,omitempty"`
	// Static are prefixes every node announces while keepvip runs, with
	// no address held (in Kubernetes: the cluster and external IPs of
	// Services, which kube-proxy serves on every node).
	Static []string `json:"static,omitempty"`
	// Allow lets routing pass guardrails on purpose: defaultRoute (a
	// static 0.0.0.0/0 or ::/0); nodeAddress, clusterAddress, gateway for
	// ECMP VIPs (see Allow*).
	Allow []string `json:"allow,omitempty"`
}

// ECMPVIP is a VIP every node announces while it can serve it: always if
// no virtual server has it, else while one of them has a healthy real
// server. Use a consistent-hashing scheduler (mh) for its virtual
// servers, so that a node joining or leaving moves few connections.
type ECMPVIP struct {
	VIP string `json:"vip"`
	// Device holds the VIP on this node (so that IPVS and local services
	// accept its traffic); default lo.
	Device      string   `json:"device,omitempty"`
	Communities []string `json:"communities,omitempty"`
	LocalPref   *uint32  `json:"localPref,omitempty"`
	MED         *uint32  `json:"med,omitempty"`
}

// ECMP is an ECMP VIP of a parsed Config.
type ECMP struct {
	// Addr is held on Device; Route is announced while it serves.
	Addr   netip.Prefix
	Device string
	Route  routes.Route
}

// BGP configures the BGP speaker.
type BGP struct {
	ASN uint32 `json:"asn"`
	// RouterID is an IPv4 address, usually the node's.
	RouterID string `json:"routerID"`
	// ListenPort accepts sessions (passive peers need it); 0: none.
	ListenPort      int      `json:"listenPort,omitempty"`
	ListenAddresses []string `json:"listenAddresses,omitempty"`
	// NextHop6 is the next hop of IPv6 routes: this node's IPv6 address
	// on the peering network. Needed to announce IPv6 VIPs.
	NextHop6 string    `json:"nextHop6,omitempty"`
	Peers    []BGPPeer `json:"peers"`
}

// BGPPeer is one neighbour.
type BGPPeer struct {
	Address  string `json:"address"`
	ASN      uint32 `json:"asn"`
	Port     int    `json:"port,omitempty"`
	Password string `json:"password,omitempty"`
	// PasswordSecretKey, in the vip-configmap only, takes the password
	// from this key of the Secret keepvip reads (--bgp-secret), so that
	// it is neither in the ConfigMap nor saved on the nodes.
	PasswordSecretKey string `json:"passwordSecretKey,omitempty"`
	// HoldTime (default 90s) and KeepaliveInterval (default a third).
	HoldTime          Duration `json:"holdTime,omitzero"`
	KeepaliveInterval Duration `json:"keepaliveInterval,omitzero"`
	// Multihop lets an eBGP peer be this many hops away.
	Multihop int  `json:"multihop,omitempty"`
	Passive  bool `json:"passive,omitempty"`
	// GracefulRestart is the restart time announced; unset: off.
	GracefulRestart Duration `json:"gracefulRestart,omitzero"`
	LocalAddress    string   `json:"localAddress,omitempty"`
	// BFD runs a BFD session with the peer: when it fails, the BGP
	// session is reset at once instead of at the end of the hold time.
	// The router needs BFD for this peer too (FRR: neighbor … bfd).
	BFD *BFD `json:"bfd,omitempty"`
}

// BFD configures a BGP peer's BFD session (RFC 5880; single hop, RFC
// 5881, or multihop, RFC 5883).
type BFD struct {
	// MinTx is the desired interval between this node's packets and
	// MinRx the shortest it takes between the peer's: 10ms to 60s,
	// default 300ms each (FRR's defaults). The session runs at the slower
	// of one side's TX and the other's RX.
	MinTx Duration `json:"minTx,omitzero"`
	MinRx Duration `json:"minRx,omitzero"`
	// Multiplier: the session fails after this many of the peer's
	// intervals without a packet (2-255, default 3).
	Multiplier int `json:"multiplier,omitempty"`
	// Multihop makes it a multihop session (UDP 4784, no TTL check);
	// default: when the peer has multihop.
	Multihop *bool `json:"multihop,omitempty"`
}

// BFD defaults and bounds.
const (
	DefaultBFDInterval   = 300 * time.Millisecond
	DefaultBFDMultiplier = 3
	minBFDInterval       = 10 * time.Millisecond
	maxBFDInterval       = time.Minute
)

// KernelTable configures the routing-table exporter.
type KernelTable struct {
	Table    int    `json:"table"`
	Protocol int    `json:"protocol,omitempty"` // default 0x6b (107)
	Device   string `json:"device,omitempty"`   // default lo
}

// Announce is how an instance's VIPs are announced when routing is set.
type Announce struct {
	// Mode is "active-backup" (default: the master announces) or "none".
	Mode string `json:"mode,omitempty"`
	// Backup is "withdraw" (default: a backup announces nothing) or
	// "worse": a backup announces the VIPs with a worse path, so that
	// routers switch as soon as the master's route goes.
	Backup string `json:"backup,omitempty"`
	// BackupPrepend is how many times more a backup puts its ASN in the
	// AS path (eBGP; default 3 when no peer is iBGP, else 0).
	BackupPrepend *int `json:"backupPrepend,omitempty"`
	// BackupLocalPref is a backup's local preference (iBGP; default 50).
	BackupLocalPref *uint32  `json:"backupLocalPref,omitempty"`
	Communities     []string `json:"communities,omitempty"`
	LocalPref       *uint32  `json:"localPref,omitempty"`
	MED             *uint32  `json:"med,omitempty"`
}

// Exporter says which route exporter a Config asks for.
type Exporter struct {
	Kind  string // "bgp" or "kernel"
	BGP   bgp.Options
	Peers []bgp.Peer
	// BFD are the BFD sessions of the peers that have one.
	BFD    []bfd.Peer
	Kernel kernel.Options
}

func (c *Config) exporter() (*Exporter, []error) {
	r := c.Routing
	if r == nil {
		return nil, nil
	}
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, &FieldError{"routing." + path, fmt.Sprintf(format, args...)})
	}
	e := &Exporter{Kind: r.Exporter}
	if e.Kind == "" {
		e.Kind = "bgp"
	}
	switch e.Kind {
	case "bgp":
		if r.Kernel != nil {
			bad("kernelTable", "only with exporter: kernel")
		}
		if r.BGP == nil {
			bad("bgp", "is required with exporter: bgp (asn, routerID, peers)")
			return e, errs
		}
		b := r.BGP
		e.BGP.ASN = b.ASN
		if b.RouterID == "" {
			bad("bgp.routerID", "is required: an IPv4 address, usually the node's")
		} else if a, err := netip.ParseAddr(b.RouterID); err != nil {
			bad("bgp.routerID", "%q is not an IP address", b.RouterID)
		} else {
			e.BGP.RouterID = a
		}
		if b.ListenPort < 0 || b.ListenPort > 65535 {
			bad("bgp.listenPort", "%d is outside 0-65535", b.ListenPort)
		} else {
			e.BGP.ListenPort = uint16(b.ListenPort)
		}
		for i, s := range b.ListenAddresses {
			a, err := netip.ParseAddr(s)
			if err != nil {
				bad(fmt.Sprintf("bgp.listenAddresses[%d]", i), "%q is not an IP address", s)
				continue
			}
			e.BGP.ListenAddresses = append(e.BGP.ListenAddresses, a)
		}
		if b.NextHop6 != "" {
			if a, err := netip.ParseAddr(b.NextHop6); err != nil || !a.Is6() || a.Is4In6() {
				bad("bgp.nextHop6", "%q is not an IPv6 address", b.NextHop6)
			}
		}
		for i, p := range b.Peers {
			path := fmt.Sprintf("bgp.peers[%d]", i)
			bp := bgp.Peer{ASN: p.ASN, Password: p.Password, Passive: p.Passive}
			if p.PasswordSecretKey != "" {
				bad(path+".passwordSecretKey", "only in the vip-configmap, which takes the password from a Secret; here, give password")
			}
			a, err := netip.ParseAddr(p.Address)
			if err != nil {
				bad(path+".address", "%q is not an IP address", p.Address)
			}
			bp.Address = a.Unmap()
			if p.Port < 0 || p.Port > 65535 {
				bad(path+".port", "%d is outside 1-65535", p.Port)
			} else {
				bp.Port = uint16(p.Port)
			}
			if p.Multihop < 0 || p.Multihop > 255 {
				bad(path+".multihop", "%d is outside 1-255", p.Multihop)
			} else {
				bp.Multihop = uint8(p.Multihop)
			}
			for _, d := range []struct {
				field string
				v     Duration
				into  *time.Duration
			}{{"holdTime", p.HoldTime, &bp.HoldTime}, {"keepaliveInterval", p.KeepaliveInterval, &bp.KeepaliveInterval}, {"gracefulRestart", p.GracefulRestart, &bp.GracefulRestart}} {
				if !d.v.set {
					continue
				}
				v, err := d.v.parse()
				if err != nil {
					bad(path+"."+d.field, "%v", err)
					continue
				}
				*d.into = v
			}
			if p.LocalAddress != "" {
				la, err := netip.ParseAddr(p.LocalAddress)
				if err != nil {
					bad(path+".localAddress", "%q is not an IP address", p.LocalAddress)
				}
				bp.LocalAddress = la.Unmap()
			}
			if p.BFD != nil {
				if bp, ok := bfdPeer(bp, p.BFD, func(field, format string, args ...any) {
					bad(path+".bfd."+field, format, args...)
				}); ok {
					e.BFD = append(e.BFD, bp)
				}
			}
			e.Peers = append(e.Peers, bp)
		}
		if len(b.Peers) == 0 {
			bad("bgp.peers", "at least one peer is needed")
		}
	case "kernel":
		if r.BGP != nil {
			bad("bgp", "only with exporter: bgp")
		}
		if r.Kernel == nil {
			bad("kernelTable", "is required with exporter: kernel (table)")
			return e, errs
		}
		e.Kernel = kernel.Options{Table: r.Kernel.Table, Protocol: r.Kernel.Protocol, Device: r.Kernel.Device}
		if err := e.Kernel.Validate(); err != nil {
			for _, m := range strings.Split(err.Error(), "\n") {
				bad("kernelTable", "%s", m)
			}
		}
	default:
		bad("exporter", "%q: want bgp or kernel", r.Exporter)
	}
	return e, errs
}

// attrs returns a route's communities, local preference and MED: an
// entry's own where it sets them, else the routing section's. Only the
// entry's communities are reported under path: the section's are checked
// once, in validateRouting.
func (r *Routing) attrs(path string, communities []string, localPref, med *uint32) (routes.Route, []error) {
	var rt routes.Route
	var errs []error
	cs, own := communities, true
	if len(cs) == 0 {
		cs, own = r.Communities, false
	}
	for i, s := range cs {
		cm, err := routes.ParseCommunity(s)
		if err != nil {
			if own {
				errs = append(errs, &FieldError{fmt.Sprintf("%s.communities[%d]", path, i), err.Error()})
			}
			continue
		}
		rt.Communities = append(rt.Communities, cm)
	}
	for _, lp := range []*uint32{r.LocalPref, localPref} {
		if lp != nil {
			rt.LocalPref, rt.HasLocalPref = *lp, true
		}
	}
	for _, m := range []*uint32{r.MED, med} {
		if m != nil {
			rt.MED, rt.HasMED = *m, true
		}
	}
	return rt, errs
}

// nextHop6 returns the next hop of IPv6 routes, and whether they need
// one: over BGP they do (routing.bgp.nextHop6); in a routing table not.
func (c *Config) nextHop6() (nh netip.Addr, needed bool) {
	r := c.Routing
	if r == nil || (r.Exporter != "" && r.Exporter != "bgp") || r.BGP == nil {
		return netip.Addr{}, false
	}
	nh, _ = netip.ParseAddr(r.BGP.NextHop6)
	return nh, true
}

// withNextHop6 gives an IPv6 route its next hop where it needs one, or
// reports at path that it cannot have one.
func (c *Config) withNextHop6(rt *routes.Route, path, what string) error {
	if !rt.Prefix.Addr().Is6() {
		return nil
	}
	nh, needed := c.nextHop6()
	if !needed {
		return nil
	}
	if !nh.IsValid() {
		return &FieldError{path, "announcing an IPv6 " + what + " over BGP needs routing.bgp.nextHop6"}
	}
	rt.NextHop = nh
	return nil
}

func (c *Config) announcements() ([]announce.VIP, []error) {
	r := c.Routing
	if r == nil {
		return nil, nil
	}
	var errs []error
	e, _ := c.exporter()
	ibgp := false
	if e != nil && e.Kind == "bgp" {
		for _, p := range e.Peers {
			ibgp = ibgp || p.ASN == e.BGP.ASN
		}
	}
	var out []announce.VIP
	for i, in := range c.Instances {
		path := fmt.Sprintf("instances[%d].announce", i)
		a := Announce{}
		if in.Announce != nil {
			a = *in.Announce
		}
		switch a.Mode {
		case "", "active-backup":
		case "none":
			continue
		default:
			errs = append(errs, &FieldError{path + ".mode", fmt.Sprintf("%q: want active-backup or none", a.Mode)})
			continue
		}
		master, aerrs := r.attrs(path, a.Communities, a.LocalPref, a.MED)
		errs = append(errs, aerrs...)
		var backup *routes.Route
		switch a.Backup {
		case "", "withdraw":
			if a.BackupPrepend != nil || a.BackupLocalPref != nil {
				errs = append(errs, &FieldError{path + ".backup", "backupPrepend and backupLocalPref need backup: worse"})
			}
		case "worse":
			if e != nil && e.Kind == "kernel" {
				// The table keeps a prefix and a next hop: a backup's
				// route would be the master's.
				errs = append(errs, &FieldError{path + ".backup", "worse needs the bgp exporter: a routing table cannot carry a worse path, so backups would attract the traffic"})
				break
			}
			b := master
			b.LocalPref, b.HasLocalPref = 50, true
			if a.BackupLocalPref != nil {
				b.LocalPref = *a.BackupLocalPref
			}
			masterPref := uint32(100) // what iBGP assumes without it
			if master.HasLocalPref {
				masterPref = master.LocalPref
			}
			if b.LocalPref >= masterPref {
				errs = append(errs, &FieldError{path + ".backupLocalPref", fmt.Sprintf("%d is not below the master's local preference %d: the backup would be preferred", b.LocalPref, masterPref)})
			}
			// MED too: every node is in the same AS, so routers compare
			// it, and it reaches eBGP peers, which get no local
			// preference and, with an iBGP peer, no prepending either.
			b.MED, b.HasMED = master.MED+100, true
			if !ibgp {
				b.Prepend = 3
			}
			if a.BackupPrepend != nil {
				b.Prepend = *a.BackupPrepend
			}
			if b.Prepend < 0 || b.Prepend > routes.MaxPrepend {
				errs = append(errs, &FieldError{path + ".backupPrepend", fmt.Sprintf("%d is outside 0-%d", b.Prepend, routes.MaxPrepend)})
			}
			if b.Prepend > 0 && ibgp {
				errs = append(errs, &FieldError{path + ".backupPrepend", "an iBGP peer would find its own AS in the path and drop the route: use backupLocalPref"})
			}
			backup = &b
		default:
			errs = append(errs, &FieldError{path + ".backup", fmt.Sprintf("%q: want withdraw or worse", a.Backup)})
		}
		for j, s := range in.VIPs {
			p, err := parseVIP(s)
			if err != nil {
				continue // reported with the instance
			}
			host := netip.PrefixFrom(p.Addr(), p.Addr().BitLen())
			m := master
			m.Prefix = host
			if err := c.withNextHop6(&m, fmt.Sprintf("instances[%d].vips[%d]", i, j), "VIP"); err != nil {
				errs = append(errs, err)
				continue
			}
			v := announce.VIP{Instance: in.Name, Master: m}
			if backup != nil {
				b := *backup
				b.Prefix, b.NextHop = host, m.NextHop
				v.Backup = &b
			}
			out = append(out, v)
		}
	}
	return out, errs
}

func (c *Config) static() ([]routes.Route, []error) {
	r := c.Routing
	if r == nil {
		return nil, nil
	}
	var errs []error
	var out []routes.Route
	base, _ := r.attrs("routing", nil, nil, nil)
	for i, s := range r.Static {
		path := fmt.Sprintf("routing.static[%d]", i)
		p, err := parseVIP(s)
		if err != nil {
			errs = append(errs, &FieldError{path, err.Error()})
			continue
		}
		if p != p.Masked() {
			errs = append(errs, &FieldError{path, fmt.Sprintf("%s has host bits set (did you mean %s?)", p, p.Masked())})
			continue
		}
		rt := base
		rt.Prefix = p
		if err := c.withNextHop6(&rt, path, "prefix"); err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, rt)
	}
	return out, errs
}

func (c *Config) ecmp() ([]ECMP, []error) {
	r := c.Routing
	if r == nil || len(r.ECMP) == 0 {
		return nil, nil
	}
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, &FieldError{path, fmt.Sprintf(format, args...)})
	}
	vrrpVIPs := map[netip.Addr]string{}
	for i, in := range c.Instances {
		for _, v := range in.VIPs {
			if p, err := parseVIP(v); err == nil {
				vrrpVIPs[p.Addr()] = fmt.Sprintf("instances[%d]", i)
			}
		}
	}
	seen := map[netip.Addr]int{}
	var out []ECMP
	for i, v := range r.ECMP {
		path := fmt.Sprintf("routing.ecmp[%d]", i)
		a, err := netip.ParseAddr(v.VIP)
		if err != nil || a.Zone() != "" {
			bad(path+".vip", "%q is not an IP address", v.VIP)
			continue
		}
		a = a.Unmap()
		if other, ok := vrrpVIPs[a]; ok {
			bad(path+".vip", "%s is also a VIP of %s: a VIP is either VRRP's or every node's", a, other)
			continue
		}
		if j, dup := seen[a]; dup {
			bad(path+".vip", "%s is also routing.ecmp[%d]", a, j)
			continue
		}
		seen[a] = i
		dev := v.Device
		if dev == "" {
			dev = "lo"
		}
		if len(dev) > 15 || strings.ContainsAny(dev, "/ \t") {
			bad(path+".device", "%q is not an interface name", dev)
			continue
		}
		host := netip.PrefixFrom(a, a.BitLen())
		rt, aerrs := r.attrs(path, v.Communities, v.LocalPref, v.MED)
		errs = append(errs, aerrs...)
		rt.Prefix = host
		if err := c.withNextHop6(&rt, path+".vip", "VIP"); err != nil {
			errs = append(errs, err)
			continue
		}
		out = append(out, ECMP{Addr: host, Device: dev, Route: rt})
	}
	return out, errs
}

func (c *Config) validateRouting() []error {
	if c.Routing == nil {
		for i, in := range c.Instances {
			if in.Announce != nil {
				return []error{&FieldError{fmt.Sprintf("instances[%d].announce", i), "needs a routing section (how to announce)"}}
			}
		}
		return nil
	}
	e, errs := c.exporter()
	for i, s := range c.Routing.Communities {
		if _, err := routes.ParseCommunity(s); err != nil {
			errs = append(errs, &FieldError{fmt.Sprintf("routing.communities[%d]", i), err.Error()})
		}
	}
	vips, aerrs := c.announcements()
	errs = append(errs, aerrs...)
	ecmp, eerrs := c.ecmp()
	errs = append(errs, eerrs...)
	static, serrs := c.static()
	errs = append(errs, serrs...)
	// One owner per prefix: a static prefix that is also a VIP would be
	// announced whatever VRRP or health says.
	owner := map[netip.Prefix]string{}
	for _, v := range vips {
		owner[v.Master.Prefix] = "a VIP of instance " + v.Instance
	}
	for i, v := range ecmp {
		owner[v.Addr] = fmt.Sprintf("routing.ecmp[%d]", i)
		vips = append(vips, announce.VIP{Master: v.Route})
	}
	errs = append(errs, checkAllow("routing", c.Routing.Allow)...)
	for i, r := range static {
		if r.Prefix.Bits() == 0 && !slices.Contains(c.Routing.Allow, AllowDefaultRoute) {
			errs = append(errs, &FieldError{fmt.Sprintf("routing.static[%d]", i), fmt.Sprintf("%s is a default route: every router would send all its traffic to the nodes (allow: [%s] if that is meant)", r.Prefix, AllowDefaultRoute)})
			continue
		}
		if other, dup := owner[r.Prefix]; dup {
			errs = append(errs, &FieldError{fmt.Sprintf("routing.static[%d]", i), fmt.Sprintf("%s is also %s", r.Prefix, other)})
			continue
		}
		owner[r.Prefix] = fmt.Sprintf("routing.static[%d]", i)
		vips = append(vips, announce.VIP{Master: r})
	}
	if e != nil && e.Kind == "bgp" && c.Routing.BGP != nil {
		var rs []routes.Route
		for _, v := range vips {
			rs = append(rs, v.Master)
			if v.Backup != nil {
				rs = append(rs, *v.Backup)
			}
		}
		for _, err := range bgp.Validate(e.BGP, e.Peers, rs) {
			if strings.HasSuffix(err.Error(), ".address: not an IP address") {
				continue // reported above with what was written
			}
			errs = append(errs, &FieldError{"routing.bgp", err.Error()})
		}
	}
	return errs
}

// Check returns the problems of an announce block on its own, under path
// (what does not depend on the peers: modes, communities, prepending
// range), for the vip-configmap, which checks instances before it knows
// the node.
func (a *Announce) Check(path string) []error {
	// Against a stand-in eBGP speaker: what depends on the real peers and
	// exporter is checked once the node's configuration is resolved.
	c := Config{Instances: []Instance{{Name: "x", Announce: a}},
		Routing: &Routing{BGP: &BGP{ASN: 65534, RouterID: "192.0.2.1", NextHop6: "2001:db8::1",
			Peers: []BGPPeer{{Address: "192.0.2.2", ASN: 65533}}}}}
	_, errs := c.announcements()
	for _, e := range errs {
		if fe, ok := e.(*FieldError); ok {
			fe.Path = path + strings.TrimPrefix(fe.Path, "instances[0].announce")
		}
	}
	return errs
}

// WithoutPasswords returns r without the BGP passwords, for what is saved
// or shown: r is left as it is.
func (r *Routing) WithoutPasswords() *Routing {
	if r == nil || r.BGP == nil {
		return r
	}
	out, b := *r, *r.BGP
	b.Peers = slices.Clone(b.Peers)
	for i := range b.Peers {
		b.Peers[i].Password = ""
	}
	out.BGP = &b
	return &out
}

// bfdPeer is the BFD session of BGP peer p as c asks, with the defaults;
// bad is told of each problem.
func bfdPeer(p bgp.Peer, c *BFD, bad func(field, format string, args ...any)) (bfd.Peer, bool) {
	out := bfd.Peer{Remote: p.Address, Local: p.LocalAddress, Multihop: p.Multihop > 0,
		SessionConfig: bfd.SessionConfig{DesiredMinTx: DefaultBFDInterval, RequiredMinRx: DefaultBFDInterval, DetectMult: DefaultBFDMultiplier}}
	ok := true
	for _, d := range []struct {
		field string
		v     Duration
		into  *time.Duration
	}{{"minTx", c.MinTx, &out.DesiredMinTx}, {"minRx", c.MinRx, &out.RequiredMinRx}} {
		if !d.v.set {
			continue
		}
		v, err := d.v.parse()
		switch {
		case err != nil:
			bad(d.field, "%v", err)
			ok = false
		case v < minBFDInterval || v > maxBFDInterval || v%time.Millisecond != 0:
			bad(d.field, "%s is outside %s-%s or not whole milliseconds", v, minBFDInterval, maxBFDInterval)
			ok = false
		default:
			*d.into = v
		}
	}
	if c.Multiplier != 0 {
		if c.Multiplier < 2 || c.Multiplier > 255 {
			bad("multiplier", "%d is outside 2-255 (1 would fail the session on a single lost packet)", c.Multiplier)
			ok = false
		} else {
			out.DetectMult = uint8(c.Multiplier)
		}
	}
	if c.Multihop != nil {
		out.Multihop = *c.Multihop
	}
	return out, ok
}
