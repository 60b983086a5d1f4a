package config

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/keepvip/keepvip/lvs"
)

// ConnectionSync runs the kernel's IPVS connection synchronisation
// (keepalived's lvs_sync_daemon): the node that is master of Instance runs
// the master sync daemon, which sends the state of the connections IPVS
// forwards over multicast on Interface; the others run the backup daemon
// and keep those connections in their own tables, so that the node that
// takes the VIP over forwards the open connections to the same real
// servers. Every node needs the same virtual servers.
type ConnectionSync struct {
	// Instance is the VRRP instance whose state the role follows;
	// default: the only instance.
	Instance string `json:"instance,omitempty"`
	// Interface carries the sync messages (it needs an IPv4 address);
	// default: the instance's.
	Interface string `json:"interface,omitempty"`
	// SyncID (0-255) tells this cluster's messages from others' on the
	// segment; default: the instance's VRID.
	SyncID *int `json:"syncID,omitempty"`
	// Group, Port and TTL of the messages (default 224.0.0.81, 8848, 1),
	// and MaxLen, the largest message (default: the interface's MTU less
	// the headers); Linux 4.3 and later.
	Group  string `json:"group,omitempty"`
	Port   int    `json:"port,omitempty"`
	TTL    int    `json:"ttl,omitempty"`
	MaxLen int    `json:"maxLen,omitempty"`
	// Threshold and Period are net.ipv4.vs.sync_threshold: a connection
	// is synced when it has received Threshold packets, and again every
	// Period packets (default 3 and 50, the kernel's).
	Threshold *int `json:"threshold,omitempty"`
	Period    *int `json:"period,omitempty"`
	// RefreshPeriod is net.ipv4.vs.sync_refresh_period: with Period 0, a
	// connection is synced again at its first packet after this long
	// (whole seconds); with a Period it only holds back syncs that come
	// sooner. Default: the kernel's, 0, off.
	RefreshPeriod Duration `json:"refreshPeriod,omitzero"`
	// PersistMode is net.ipv4.vs.sync_persist_mode: sync only the
	// persistence templates, not every connection (default false).
	PersistMode *bool `json:"persistMode,omitempty"`
}

// ConnSync is ConnectionSync resolved: the instance whose role the
// daemons follow, the daemon's settings (its role left to the daemon) and
// the kernel settings.
type ConnSync struct {
	Instance string
	Daemon   lvs.SyncDaemon
	Settings lvs.Settings
}

func (c *Config) connSync() (*ConnSync, []error) {
	s := c.ConnectionSync
	if s == nil {
		return nil, nil
	}
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{"connectionSync." + field, fmt.Sprintf(format, args...)})
	}
	out := &ConnSync{Instance: s.Instance}
	var in *Instance
	switch {
	case s.Instance == "" && len(c.Instances) == 1:
		in = &c.Instances[0]
		out.Instance = in.Name
	case s.Instance == "":
		bad("instance", "is required: the VRRP instance whose master runs the master sync daemon (%d instances)", len(c.Instances))
	default:
		for i := range c.Instances {
			if c.Instances[i].Name == s.Instance {
				in = &c.Instances[i]
			}
		}
		if in == nil {
			bad("instance", "%q is not an instance", s.Instance)
		}
	}
	d := &out.Daemon
	d.Interface = s.Interface
	if d.Interface == "" && in != nil {
		d.Interface = in.Interface
	}
	if len(d.Interface) > 15 {
		bad("interface", "%q is longer than an interface name can be (15)", d.Interface)
	}
	switch {
	case s.SyncID != nil && (*s.SyncID < 0 || *s.SyncID > 255):
		bad("syncID", "%d is outside 0-255", *s.SyncID)
	case s.SyncID != nil:
		d.SyncID = uint8(*s.SyncID)
	case in != nil && in.VRID >= 0 && in.VRID <= 255:
		d.SyncID = uint8(in.VRID)
	}
	if s.Group != "" {
		g, err := netip.ParseAddr(s.Group)
		if err != nil || !g.IsMulticast() || g.Zone() != "" {
			bad("group", "%q is not a multicast address", s.Group)
		}
		d.Group = g.Unmap()
	}
	if s.Port < 0 || s.Port > 65535 {
		bad("port", "%d is outside 1-65535", s.Port)
	} else {
		d.Port = uint16(s.Port)
	}
	if s.TTL < 0 || s.TTL > 255 {
		bad("ttl", "%d is outside 1-255", s.TTL)
	} else {
		d.TTL = uint8(s.TTL)
	}
	if s.MaxLen != 0 && (s.MaxLen < 1024 || s.MaxLen > 65487) {
		// A backup's is raised to 1024 by the kernel; 65487 fits IPv6.
		bad("maxLen", "%d is outside 1024-65487", s.MaxLen)
	} else {
		d.MaxLen = uint16(s.MaxLen)
	}
	threshold, period := 3, 50
	if s.Threshold != nil {
		threshold = *s.Threshold
	}
	if s.Period != nil {
		period = *s.Period
	}
	switch {
	case threshold < 0 || period < 0:
		bad("threshold", "threshold %d and period %d must not be negative", threshold, period)
	case period > 0 && threshold >= period:
		bad("threshold", "%d is not below the period %d (the kernel refuses it)", threshold, period)
	default:
		if s.Threshold != nil || s.Period != nil {
			out.Settings.SyncThreshold = &[2]int{threshold, period}
		}
	}
	if s.RefreshPeriod.set {
		v, err := s.RefreshPeriod.parse()
		switch {
		case err != nil:
			bad("refreshPeriod", "%v", err)
		case v < 0 || v%time.Second != 0 || v > 24*time.Hour:
			bad("refreshPeriod", "%s: want whole seconds, 0s-24h", v)
		default:
			secs := int(v / time.Second)
			out.Settings.SyncRefreshPeriod = &secs
		}
	}
	out.Settings.SyncPersistMode = s.PersistMode
	return out, errs
}
