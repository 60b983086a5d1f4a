package lvs

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// The kernel's IPVS connection synchronisation daemons: a master sends the
// state of the connections it forwards (multicast, by default 224.0.0.81
// port 8848 with TTL 1) and a backup creates them in its own table, so
// that the backup that takes the VIP over forwards the connections already
// open to the same real servers. At most one master and one backup run
// per network namespace, both at once if asked. moby/ipvs has no call for
// them: these speak the "IPVS" generic netlink family's daemon commands
// (include/uapi/linux/ip_vs.h) on a socket of their own.

// SyncRole is a daemon's role.
type SyncRole uint32

// Roles (IP_VS_STATE_MASTER, IP_VS_STATE_BACKUP).
const (
	SyncMaster SyncRole = 1
	SyncBackup SyncRole = 2
)

func (r SyncRole) String() string {
	switch r {
	case SyncMaster:
		return "master"
	case SyncBackup:
		return "backup"
	}
	return fmt.Sprintf("role %d", uint32(r))
}

// SyncDaemon is one running (or wanted) daemon. Zero optional fields are
// the kernel's defaults, and the kernel reports them filled in.
type SyncDaemon struct {
	Role      SyncRole
	Interface string // the multicast interface; it needs an IPv4 address for a master
	SyncID    uint8  // only messages with this ID are taken
	// MaxLen is the largest sync message (default 1472 for the master:
	// the interface's MTU less the IP and UDP headers).
	MaxLen uint16
	Group  netip.Addr // default 224.0.0.81
	Port   uint16     // default 8848
	TTL    uint8      // default 1
}

func (d SyncDaemon) String() string {
	return fmt.Sprintf("%s on %s, sync ID %d", d.Role, d.Interface, d.SyncID)
}

// Long is String with every setting.
func (d SyncDaemon) Long() string {
	return fmt.Sprintf("%s, group %v port %d TTL %d max length %d", d, d.Group, d.Port, d.TTL, d.MaxLen)
}

// Generic netlink command and attribute numbers (ip_vs.h).
const (
	ipvsCmdNewDaemon = 9
	ipvsCmdDelDaemon = 10
	ipvsCmdGetDaemon = 11

	ipvsCmdAttrDaemon = 3

	daemonState       = 1 // u32
	daemonMcastIfn    = 2 // string
	daemonSyncID      = 3 // u32
	daemonSyncMaxLen  = 4 // u16 (Linux 4.3)
	daemonMcastGroup  = 5 // IPv4, network order (4.3)
	daemonMcastGroup6 = 6 // 16 bytes (4.3)
	daemonMcastPort   = 7 // u16, host order (4.3)
	daemonMcastTTL    = 8 // u8 (4.3)

	ipvsGenlVersion = 1
)

// genlHeader is the generic netlink header (struct genlmsghdr).
type genlHeader struct {
	cmd, version uint8
	_            uint16
}

func (h *genlHeader) Len() int          { return 4 }
func (h *genlHeader) Serialize() []byte { return []byte{h.cmd, h.version, 0, 0} }

// syncNetlink sends the daemon commands; one request at a time.
type syncNetlink struct {
	mu sync.Mutex
}

func (s *syncNetlink) request(cmd uint8, flags int, attrs ...*nl.RtAttr) ([][]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fam, err := netlink.GenlFamilyGet("IPVS")
	if err != nil {
		return nil, fmt.Errorf("%w (generic netlink family IPVS: %v)", ErrNoIPVS, err)
	}
	req := nl.NewNetlinkRequest(int(fam.ID), flags)
	req.AddData(&genlHeader{cmd: cmd, version: ipvsGenlVersion})
	for _, a := range attrs {
		req.AddData(a)
	}
	return req.Execute(unix.NETLINK_GENERIC, 0)
}

// StartSyncDaemon starts d. It fails with EEXIST if a daemon of that role
// runs already (whatever its settings), ENODEV if the interface does not
// exist.
func StartSyncDaemon(d SyncDaemon) error {
	return (&syncNetlink{}).start(d)
}

func (s *syncNetlink) start(d SyncDaemon) error {
	if d.Role != SyncMaster && d.Role != SyncBackup {
		return fmt.Errorf("starting the IPVS sync daemon: %s is neither master nor backup", d.Role)
	}
	if d.Interface == "" || len(d.Interface) >= unix.IFNAMSIZ {
		return fmt.Errorf("starting the IPVS sync %s daemon: interface %q is not an interface name", d.Role, d.Interface)
	}
	nest := nl.NewRtAttr(ipvsCmdAttrDaemon, nil)
	nest.AddRtAttr(daemonState, nl.Uint32Attr(uint32(d.Role)))
	nest.AddRtAttr(daemonMcastIfn, nl.ZeroTerminated(d.Interface))
	nest.AddRtAttr(daemonSyncID, nl.Uint32Attr(uint32(d.SyncID)))
	if d.MaxLen != 0 {
		nest.AddRtAttr(daemonSyncMaxLen, nl.Uint16Attr(d.MaxLen))
	}
	switch {
	case d.Group.Is4():
		g := d.Group.As4()
		nest.AddRtAttr(daemonMcastGroup, g[:])
	case d.Group.Is6():
		g := d.Group.As16()
		nest.AddRtAttr(daemonMcastGroup6, g[:])
	}
	if d.Port != 0 {
		nest.AddRtAttr(daemonMcastPort, nl.Uint16Attr(d.Port))
	}
	if d.TTL != 0 {
		nest.AddRtAttr(daemonMcastTTL, nl.Uint8Attr(d.TTL))
	}
	if _, err := s.request(ipvsCmdNewDaemon, unix.NLM_F_ACK, nest); err != nil {
		return fmt.Errorf("starting the IPVS sync daemon (%s): %w", d, err)
	}
	return nil
}

// StopSyncDaemon stops the daemon of role; ESRCH if none runs.
func StopSyncDaemon(role SyncRole) error {
	return (&syncNetlink{}).stop(role)
}

func (s *syncNetlink) stop(role SyncRole) error {
	nest := nl.NewRtAttr(ipvsCmdAttrDaemon, nil)
	nest.AddRtAttr(daemonState, nl.Uint32Attr(uint32(role)))
	if _, err := s.request(ipvsCmdDelDaemon, unix.NLM_F_ACK, nest); err != nil {
		return fmt.Errorf("stopping the IPVS sync %s daemon: %w", role, err)
	}
	return nil
}

// SyncDaemons returns the daemons that run, master first.
func SyncDaemons() ([]SyncDaemon, error) {
	return (&syncNetlink{}).list()
}

func (s *syncNetlink) list() ([]SyncDaemon, error) {
	msgs, err := s.request(ipvsCmdGetDaemon, unix.NLM_F_DUMP)
	if err != nil {
		return nil, fmt.Errorf("listing the IPVS sync daemons: %w", err)
	}
	var out []SyncDaemon
	for _, m := range msgs {
		d, err := parseSyncDaemon(m)
		if err != nil {
			return nil, fmt.Errorf("listing the IPVS sync daemons: %w", err)
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b SyncDaemon) int { return int(a.Role) - int(b.Role) })
	return out, nil
}

// parseSyncDaemon reads one reply of GET_DAEMON: the generic netlink
// header, then the daemon's nested attributes.
func parseSyncDaemon(m []byte) (SyncDaemon, error) {
	var d SyncDaemon
	if len(m) < 4 {
		return d, errors.New("a daemon reply shorter than its header")
	}
	attrs, err := nl.ParseRouteAttr(m[4:])
	if err != nil {
		return d, fmt.Errorf("a daemon reply: %w", err)
	}
	for _, a := range attrs {
		if a.Attr.Type&^unix.NLA_F_NESTED != ipvsCmdAttrDaemon {
			continue
		}
		inner, err := nl.ParseRouteAttr(a.Value)
		if err != nil {
			return d, fmt.Errorf("a daemon reply's attributes: %w", err)
		}
		for _, f := range inner {
			v := f.Value
			switch f.Attr.Type {
			case daemonState:
				if len(v) >= 4 {
					d.Role = SyncRole(native.Uint32(v))
				}
			case daemonMcastIfn:
				d.Interface = string(trimNUL(v))
			case daemonSyncID:
				if len(v) >= 4 {
					d.SyncID = uint8(native.Uint32(v))
				}
			case daemonSyncMaxLen:
				if len(v) >= 2 {
					d.MaxLen = native.Uint16(v)
				}
			case daemonMcastGroup:
				if len(v) >= 4 {
					d.Group = netip.AddrFrom4([4]byte(v[:4]))
				}
			case daemonMcastGroup6:
				if len(v) >= 16 {
					d.Group = netip.AddrFrom16([16]byte(v[:16]))
				}
			case daemonMcastPort:
				if len(v) >= 2 {
					d.Port = native.Uint16(v)
				}
			case daemonMcastTTL:
				if len(v) >= 1 {
					d.TTL = v[0]
				}
			}
		}
	}
	if d.Role != SyncMaster && d.Role != SyncBackup {
		return d, fmt.Errorf("a daemon reply with no role (%d)", d.Role)
	}
	return d, nil
}

func trimNUL(b []byte) []byte {
	for i, c := range b {
		if c == 0 {
			return b[:i]
		}
	}
	return b
}

// native is the host's byte order, which netlink's integers are in.
var native = binary.NativeEndian
