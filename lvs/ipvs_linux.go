package lvs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"github.com/moby/ipvs"
	"github.com/vishvananda/netlink"
)

// ErrNoIPVS is returned by New and Available when the kernel has no IPVS.
var ErrNoIPVS = errors.New("the kernel has no IPVS: load the ip_vs module (modprobe ip_vs) or use a kernel built with CONFIG_IP_VS")

// Available checks that the kernel offers IPVS (the "IPVS" generic
// netlink family, present once the ip_vs module is loaded). moby/ipvs does
// not say when it is missing: it logs an error and its later calls can
// report success while doing nothing.
func Available() error {
	if _, err := netlink.GenlFamilyGet("IPVS"); err != nil {
		return fmt.Errorf("%w (generic netlink family IPVS: %v)", ErrNoIPVS, err)
	}
	return nil
}

// New returns a Director over the kernel's IPVS table. It fails with an
// error wrapping ErrNoIPVS when the kernel has none.
func New(o Options) (*Director, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	h, err := ipvs.New("")
	if err != nil {
		return nil, fmt.Errorf("opening IPVS: %w", err)
	}
	return newDirector(&ipvsKernel{h: h}, o)
}

// ipvsKernel is the kernel interface over moby/ipvs. A Handle is one
// netlink socket: two requests in flight at once can take each other's
// replies, and moby/ipvs then waits for its own for ever (it retries the
// receive on every timeout). Every request therefore holds mu, and only
// for that request, so that a long read (Status) lets writes through
// between its requests.
type ipvsKernel struct {
	mu     sync.Mutex
	h      *ipvs.Handle
	closed bool
}

var errClosed = errors.New("the IPVS handle is closed")

// do runs one request on the handle.
func (k *ipvsKernel) do(f func(h *ipvs.Handle) error) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		return errClosed
	}
	return f(k.h)
}

// Close closes the netlink socket; later requests fail.
func (k *ipvsKernel) Close() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.closed {
		k.closed = true
		k.h.Close()
	}
	return nil
}

// IPVS service flags (include/uapi/linux/ip_vs.h).
const (
	svcFlagPersistent = 0x0001
	svcFlagHashed     = 0x0002
	svcFlagSched1     = 0x0008
	svcFlagSched2     = 0x0010
)

func family(a netip.Addr) uint16 {
	if a.Is4() {
		return syscall.AF_INET
	}
	return syscall.AF_INET6
}

func toIPVSService(s *Service) *ipvs.Service {
	out := &ipvs.Service{
		AddressFamily: family(s.Addr),
		SchedName:     s.Scheduler,
	}
	if s.FWMark != 0 {
		out.FWMark = s.FWMark
	} else {
		out.Address = s.Addr.AsSlice()
		out.Port = s.Port
		out.Protocol = uint16(s.Proto)
	}
	if s.Flags&FlagFallback != 0 {
		out.Flags |= svcFlagSched1
	}
	if s.Flags&FlagPort != 0 {
		out.Flags |= svcFlagSched2
	}
	if s.Persistence > 0 {
		out.Flags |= svcFlagPersistent
		out.Timeout = uint32(s.Persistence / time.Second)
		out.Netmask = netmaskAttr(s.Addr, s.persistenceBits())
	} else {
		out.Netmask = netmaskAttr(s.Addr, s.Addr.BitLen())
	}
	return out
}

// netmaskAttr encodes a persistence mask as the kernel reads it: for IPv4
// the mask's bytes in network order, for IPv6 the prefix length. moby/ipvs
// writes the attribute in host order, hence NativeEndian.
func netmaskAttr(a netip.Addr, bits int) uint32 {
	if a.Is6() {
		return uint32(bits)
	}
	return binary.NativeEndian.Uint32(net.CIDRMask(bits, 32))
}

// netmaskBits decodes netmaskAttr.
func netmaskBits(a netip.Addr, v uint32) int {
	if a.Is6() {
		return int(v)
	}
	var b [4]byte
	binary.NativeEndian.PutUint32(b[:], v)
	ones, _ := net.IPMask(b[:]).Size()
	return ones
}

func fromIPVSService(s *ipvs.Service) Service {
	out := Service{Scheduler: s.SchedName}
	if s.FWMark != 0 {
		out.FWMark = s.FWMark
		if s.AddressFamily == syscall.AF_INET {
			out.Addr = netip.IPv4Unspecified()
		} else {
			out.Addr = netip.IPv6Unspecified()
		}
	} else {
		a, _ := netip.AddrFromSlice(s.Address)
		if s.AddressFamily == syscall.AF_INET {
			a = a.Unmap()
		}
		out.Addr, out.Port, out.Proto = a, s.Port, Protocol(s.Protocol)
	}
	if s.Flags&svcFlagSched1 != 0 {
		out.Flags |= FlagFallback
	}
	if s.Flags&svcFlagSched2 != 0 {
		out.Flags |= FlagPort
	}
	if s.Flags&svcFlagPersistent != 0 {
		out.Persistence = time.Duration(s.Timeout) * time.Second
		out.PersistenceMask = netmaskBits(out.Addr, s.Netmask)
		if out.PersistenceMask == out.Addr.BitLen() {
			out.PersistenceMask = 0 // the default
		}
	}
	return out
}

var fwdFlags = map[Forwarding]uint32{NAT: ipvs.ConnectionFlagMasq, DR: ipvs.ConnectionFlagDirectRoute, TUN: ipvs.ConnectionFlagTunnel}

func toIPVSDest(r RealServer) *ipvs.Destination {
	return &ipvs.Destination{
		Address:         r.Addr.AsSlice(),
		Port:            r.Port,
		Weight:          r.Weight,
		ConnectionFlags: fwdFlags[r.Forward],
		AddressFamily:   family(r.Addr),
		UpperThreshold:  r.Upper,
		LowerThreshold:  r.Lower,
	}
}

func fromIPVSDest(d *ipvs.Destination) RealServer {
	a, _ := netip.AddrFromSlice(d.Address)
	if d.AddressFamily == syscall.AF_INET {
		a = a.Unmap()
	}
	r := RealServer{Addr: a, Port: d.Port, Weight: d.Weight, Upper: d.UpperThreshold, Lower: d.LowerThreshold}
	switch d.ConnectionFlags & ipvs.ConnectionFlagFwdMask {
	case ipvs.ConnectionFlagDirectRoute:
		r.Forward = DR
	case ipvs.ConnectionFlagTunnel:
		r.Forward = TUN
	default:
		r.Forward = NAT
	}
	return r
}

func keyService(k Key) *ipvs.Service {
	return toIPVSService(&Service{Key: k, Scheduler: "rr"})
}

func (k *ipvsKernel) Services(withReals func(Key) bool) ([]ServiceStatus, error) {
	var svcs []*ipvs.Service
	err := k.do(func(h *ipvs.Handle) (err error) {
		svcs, err = h.GetServices()
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]ServiceStatus, 0, len(svcs))
	for _, s := range svcs {
		svc := ServiceStatus{Service: fromIPVSService(s)}
		if withReals == nil || withReals(svc.Key) {
			var dests []*ipvs.Destination
			err := k.do(func(h *ipvs.Handle) (err error) {
				dests, err = h.GetDestinations(s)
				return err
			})
			if errors.Is(err, syscall.ESRCH) {
				continue // removed since the list was read
			}
			if err != nil {
				return nil, fmt.Errorf("reading the real servers of %s: %w", svc.Key, err)
			}
			svc.Conns = make(map[RealKey]Conns, len(dests))
			for _, d := range dests {
				r := fromIPVSDest(d)
				svc.Reals = append(svc.Reals, r)
				svc.Conns[RealKey{r.Addr, r.Port}] = Conns{Active: d.ActiveConnections, Inactive: d.InactiveConnections}
			}
		}
		out = append(out, svc)
	}
	return out, nil
}

// AddService fails with EEXIST when the service is there: whose it is is
// the Director's to decide.
func (k *ipvsKernel) AddService(s *Service) error {
	return k.do(func(h *ipvs.Handle) error { return h.NewService(toIPVSService(s)) })
}

func (k *ipvsKernel) UpdateService(s *Service) error {
	return k.do(func(h *ipvs.Handle) error { return h.UpdateService(toIPVSService(s)) })
}

func (k *ipvsKernel) DeleteService(key Key) error {
	err := k.do(func(h *ipvs.Handle) error { return h.DelService(keyService(key)) })
	if errors.Is(err, syscall.ESRCH) {
		return nil // already gone
	}
	return err
}

func (k *ipvsKernel) AddReal(key Key, r RealServer) error {
	return k.do(func(h *ipvs.Handle) error {
		err := h.NewDestination(keyService(key), toIPVSDest(r))
		if errors.Is(err, syscall.EEXIST) {
			return h.UpdateDestination(keyService(key), toIPVSDest(r))
		}
		return err
	})
}

func (k *ipvsKernel) UpdateReal(key Key, r RealServer) error {
	return k.do(func(h *ipvs.Handle) error { return h.UpdateDestination(keyService(key), toIPVSDest(r)) })
}

func (k *ipvsKernel) DeleteReal(key Key, r RealServer) error {
	err := k.do(func(h *ipvs.Handle) error { return h.DelDestination(keyService(key), toIPVSDest(r)) })
	if errors.Is(err, syscall.ENOENT) {
		return nil // already gone
	}
	return err
}
