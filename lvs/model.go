package lvs

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"
)

// Protocol is the transport protocol of a virtual service.
type Protocol uint8

// The protocols IPVS balances.
const (
	TCP  Protocol = 6
	UDP  Protocol = 17
	SCTP Protocol = 132
)

func (p Protocol) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case SCTP:
		return "sctp"
	case 0:
		return "none"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// ParseProtocol reads "tcp", "udp" or "sctp".
func ParseProtocol(s string) (Protocol, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	case "sctp":
		return SCTP, nil
	}
	return 0, fmt.Errorf("%q is not a protocol (tcp, udp or sctp)", s)
}

// Forwarding is how IPVS sends a connection to a real server.
type Forwarding uint8

// The forwarding methods (ipvsadm -m, -g, -i).
const (
	NAT Forwarding = iota // masquerading: the director rewrites the destination
	DR                    // direct routing: the frame is sent to the real server's MAC
	TUN                   // IP-in-IP tunnelling
)

func (f Forwarding) String() string {
	switch f {
	case NAT:
		return "nat"
	case DR:
		return "dr"
	case TUN:
		return "tun"
	}
	return fmt.Sprintf("forwarding(%d)", uint8(f))
}

// ParseForwarding reads "nat" (or "masq"), "dr" (or "route", "gate") or
// "tun" (or "ipip").
func ParseForwarding(s string) (Forwarding, error) {
	switch strings.ToLower(s) {
	case "nat", "masq", "masquerade":
		return NAT, nil
	case "dr", "route", "gate", "direct":
		return DR, nil
	case "tun", "ipip", "tunnel":
		return TUN, nil
	}
	return 0, fmt.Errorf("%q is not a forwarding method (nat, dr or tun)", s)
}

// Schedulers are the IPVS schedulers Linux provides (ip_vs_<name> modules).
var Schedulers = []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "mh", "sed", "nq", "fo", "ovf"}

// SchedFlags are the scheduler options of sh and mh (ipvsadm -b).
type SchedFlags uint8

// The flags: fallback to another real server when the chosen one is
// unavailable (weight 0 or over its threshold), and hash the port too.
const (
	FlagFallback SchedFlags = 1 << iota // sh-fallback, mh-fallback (IP_VS_SVC_F_SCHED1)
	FlagPort                            // sh-port, mh-port (IP_VS_SVC_F_SCHED2)
)

// Key identifies a virtual service: an address, port and protocol, or a
// firewall mark (then Addr is the unspecified address of the family).
type Key struct {
	Addr   netip.Addr
	Port   uint16
	Proto  Protocol
	FWMark uint32
}

func (k Key) String() string {
	if k.FWMark != 0 {
		fam := "ipv4"
		if k.Addr.Is6() {
			fam = "ipv6"
		}
		return fmt.Sprintf("fwmark %d (%s)", k.FWMark, fam)
	}
	return fmt.Sprintf("%s/%s", netip.AddrPortFrom(k.Addr, k.Port), k.Proto)
}

// Compare orders keys by address, port, protocol and mark.
func (k Key) Compare(o Key) int {
	return cmp.Or(k.Addr.Compare(o.Addr), cmp.Compare(k.Port, o.Port), cmp.Compare(k.Proto, o.Proto), cmp.Compare(k.FWMark, o.FWMark))
}

func compareKeys(a, b Key) int { return a.Compare(b) }

// Service is one virtual service and its real servers.
type Service struct {
	Key
	Scheduler string
	Flags     SchedFlags
	// Persistence, when not zero, sends a client to the same real server
	// for that long after its last connection (ipvsadm -p).
	Persistence time.Duration
	// PersistenceMask is the prefix length that groups clients for
	// persistence (ipvsadm -M); 0 means /32 or /128.
	PersistenceMask int
	Reals           []RealServer
}

// RealServer is a destination of a virtual service.
type RealServer struct {
	Addr    netip.Addr
	Port    uint16
	Forward Forwarding
	// Weight 0 sends no new connections and lets existing ones finish.
	Weight int
	// Upper and Lower are the connection thresholds (ipvsadm -x, -y): over
	// Upper no new connections; back under Lower, they resume. 0 is none.
	Upper, Lower uint32
}

type realKey struct {
	addr netip.Addr
	port uint16
}

func (r RealServer) key() realKey { return realKey{r.Addr, r.Port} }

func (r RealServer) String() string {
	return fmt.Sprintf("%s %s weight %d", netip.AddrPortFrom(r.Addr, r.Port), r.Forward, r.Weight)
}

// FieldError is a problem with one field; the names are those of the
// keepvip configuration file.
type FieldError struct {
	Field  string
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// MaxWeight is the largest weight keepvip accepts (as keepalived).
const MaxWeight = 65535

// Validate returns every problem with s, each naming its field.
func (s *Service) Validate() []error {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)})
	}
	switch {
	case s.FWMark != 0:
		// The family of a firewall-mark service is that of its address,
		// the unspecified one: 0.0.0.0 or ::.
		if !s.Addr.IsValid() {
			bad("family", "a firewall-mark service needs its family: the address 0.0.0.0 (ipv4) or :: (ipv6)")
		} else if !s.Addr.IsUnspecified() {
			bad("fwmark", "a firewall-mark service has no address (got %s)", s.Addr)
		}
		if s.Port != 0 || s.Proto != 0 {
			bad("fwmark", "a firewall-mark service has no port or protocol")
		}
	case !s.Addr.IsValid():
		bad("vip", "a virtual service needs an address or a firewall mark")
	default:
		switch a := s.Addr; {
		case a.Is4In6():
			bad("vip", "%s is an IPv4-mapped IPv6 address; write it as %s", a, a.Unmap())
		case a.Zone() != "":
			bad("vip", "%s: a zone is not allowed", a)
		case a.IsUnspecified() || a.IsMulticast() || a.IsLoopback():
			bad("vip", "%s is not a unicast address", a)
		}
		if s.Port == 0 {
			bad("port", "0 is not a port (1-65535)")
		}
		if s.Proto != TCP && s.Proto != UDP && s.Proto != SCTP {
			bad("protocol", "%v: want tcp, udp or sctp", s.Proto)
		}
	}
	if !slices.Contains(Schedulers, s.Scheduler) {
		bad("scheduler", "%q is not an IPVS scheduler (%s)", s.Scheduler, strings.Join(Schedulers, ", "))
	} else if s.Flags != 0 && s.Scheduler != "sh" && s.Scheduler != "mh" {
		bad("schedulerFlags", "only sh and mh take flags, not %s", s.Scheduler)
	}
	if s.Flags&^(FlagFallback|FlagPort) != 0 {
		bad("schedulerFlags", "unknown flags %#x", uint8(s.Flags))
	}
	if s.Persistence < 0 || s.Persistence%time.Second != 0 || s.Persistence > 365*24*time.Hour {
		bad("persistence.timeout", "%v is not whole seconds up to a year", s.Persistence)
	}
	maxBits := 32
	if s.Addr.Is6() {
		maxBits = 128
	}
	if s.PersistenceMask != 0 {
		if s.Persistence == 0 {
			bad("persistence.netmask", "only with a persistence timeout")
		}
		if s.PersistenceMask < 1 || s.PersistenceMask > maxBits {
			bad("persistence.netmask", "/%d is not a prefix length (1-%d)", s.PersistenceMask, maxBits)
		}
	}
	seen := map[realKey]bool{}
	for i, r := range s.Reals {
		field := fmt.Sprintf("realServers[%d]", i)
		switch a := r.Addr; {
		case !a.IsValid():
			bad(field+".address", "not an IP address")
		case a.Is4In6():
			bad(field+".address", "%s is an IPv4-mapped IPv6 address; write it as %s", a, a.Unmap())
		case a.Zone() != "":
			bad(field+".address", "%s: a zone is not allowed", a)
		case a.IsUnspecified() || a.IsMulticast():
			bad(field+".address", "%s is not a unicast address", a)
		case s.Addr.IsValid() && a.Is4() != s.Addr.Is4():
			// The kernel could tunnel to the other family, but moby/ipvs
			// does not send the real server's family: its address would be
			// cut to the service's.
			bad(field+".address", "mixed address families are not supported: %s is %s and the virtual service is %s", a, famName(a), famName(s.Addr))
		}
		if r.Weight < 0 || r.Weight > MaxWeight {
			bad(field+".weight", "%d is outside 0-%d", r.Weight, MaxWeight)
		}
		if r.Forward > TUN {
			bad(field+".forwarding", "%v: want nat, dr or tun", r.Forward)
		}
		switch {
		case s.FWMark == 0 && r.Port == 0 && r.Forward == NAT:
			bad(field+".port", "0: a NAT real server needs a port")
		case s.FWMark == 0 && (r.Forward == DR || r.Forward == TUN) && r.Port != 0 && r.Port != s.Port:
			bad(field+".port", "%d: %s forwarding cannot change the port (the virtual port is %d); leave it out", r.Port, r.Forward, s.Port)
		}
		switch {
		case r.Lower > r.Upper && r.Upper == 0:
			// The kernel refuses a lower threshold above the upper one
			// (ERANGE), and 0 there means none.
			bad(field+".lowerThreshold", "%d needs an upperThreshold at least as large (the upper threshold is 0: none)", r.Lower)
		case r.Lower > r.Upper:
			bad(field+".lowerThreshold", "%d is above the upperThreshold %d", r.Lower, r.Upper)
		}
		if seen[r.key()] {
			bad(field, "%s is listed twice", netip.AddrPortFrom(r.Addr, r.Port))
		}
		seen[r.key()] = true
	}
	return errs
}

func famName(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

// normalize gives DR and TUN real servers the virtual port (the kernel
// stores it so) and sorts the real servers.
func (s Service) normalize() Service {
	s.Reals = slices.Clone(s.Reals)
	for i := range s.Reals {
		if s.FWMark == 0 && s.Reals[i].Forward != NAT && s.Reals[i].Port == 0 {
			s.Reals[i].Port = s.Port
		}
	}
	slices.SortFunc(s.Reals, func(a, b RealServer) int {
		return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
	})
	return s
}

// sameAttrs reports whether a and b need no UpdateService between them.
func sameAttrs(a, b *Service) bool {
	return a.Scheduler == b.Scheduler && a.Flags == b.Flags && a.Persistence == b.Persistence &&
		a.persistenceBits() == b.persistenceBits()
}

func (s *Service) persistenceBits() int {
	if s.Persistence == 0 {
		return 0
	}
	if s.PersistenceMask != 0 {
		return s.PersistenceMask
	}
	if s.Addr.Is6() {
		return 128
	}
	return 32
}
