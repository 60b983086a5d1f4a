package lvs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Settings are the kernel settings a keepalived user sets for IPVS; a nil
// field is left as the kernel has it.
type Settings struct {
	Conntrack               *bool // net.ipv4.vs.conntrack
	ConnReuseMode           *int  // net.ipv4.vs.conn_reuse_mode
	ExpireNodestConn        *bool // net.ipv4.vs.expire_nodest_conn
	ExpireQuiescentTemplate *bool // net.ipv4.vs.expire_quiescent_template
	NonLocalBind            *bool // net.ipv4.ip_nonlocal_bind, net.ipv6.ip_nonlocal_bind
	// Connection synchronisation (ConnectionSync): net.ipv4.vs.
	// sync_threshold (threshold and period), sync_refresh_period
	// (seconds), sync_persist_mode.
	SyncThreshold     *[2]int
	SyncRefreshPeriod *int
	SyncPersistMode   *bool
	// ARPInterfaces get arp_ignore=1 and arp_announce=2 (DR real servers).
	ARPInterfaces []string
	// NoRedirects are interfaces that get send_redirects=0 (and so does
	// "all", which the kernel ORs with each interface's): a NAT director
	// that forwards a real server's reply out the interface it came in on
	// would otherwise send the real server an ICMP redirect, and the real
	// server would answer the client directly, bypassing IPVS.
	NoRedirects []string
	// ProcSys is where the settings are written: /proc/sys when empty. In
	// a container whose /proc/sys is read-only, the host's mounted
	// elsewhere.
	ProcSys string
}

// sysctls writes under root (Settings.ProcSys).
type sysctls struct{ root string }

// Apply writes the settings and returns every failure, naming the key.
// The net.ipv4.vs keys exist only once IPVS is loaded.
func (s Settings) Apply() error {
	root := s.ProcSys
	if root == "" {
		root = "/proc/sys"
	}
	return s.apply(sysctls{root: root})
}

func (s Settings) apply(sc sysctls) error {
	var errs []error
	set := func(key, value string) {
		if err := sc.write(strings.Split(key, "."), value); err != nil {
			errs = append(errs, err)
		}
	}
	b := func(v bool) string {
		if v {
			return "1"
		}
		return "0"
	}
	if s.Conntrack != nil {
		set("net.ipv4.vs.conntrack", b(*s.Conntrack))
	}
	if s.ConnReuseMode != nil {
		set("net.ipv4.vs.conn_reuse_mode", strconv.Itoa(*s.ConnReuseMode))
	}
	if s.ExpireNodestConn != nil {
		set("net.ipv4.vs.expire_nodest_conn", b(*s.ExpireNodestConn))
	}
	if s.ExpireQuiescentTemplate != nil {
		set("net.ipv4.vs.expire_quiescent_template", b(*s.ExpireQuiescentTemplate))
	}
	if s.SyncThreshold != nil {
		set("net.ipv4.vs.sync_threshold", fmt.Sprintf("%d %d", s.SyncThreshold[0], s.SyncThreshold[1]))
	}
	if s.SyncRefreshPeriod != nil {
		set("net.ipv4.vs.sync_refresh_period", strconv.Itoa(*s.SyncRefreshPeriod))
	}
	if s.SyncPersistMode != nil {
		set("net.ipv4.vs.sync_persist_mode", b(*s.SyncPersistMode))
	}
	if s.NonLocalBind != nil {
		set("net.ipv4.ip_nonlocal_bind", b(*s.NonLocalBind))
		// A kernel without IPv6 (ipv6.disable=1) has no such key, and
		// nothing to bind.
		if err := sc.write([]string{"net", "ipv6", "ip_nonlocal_bind"}, b(*s.NonLocalBind)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	for _, ifname := range s.ARPInterfaces {
		// An interface name may hold dots (eth0.100): one path element.
		for _, kv := range [][2]string{{"arp_ignore", "1"}, {"arp_announce", "2"}} {
			if err := sc.write([]string{"net", "ipv4", "conf", ifname, kv[0]}, kv[1]); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(s.NoRedirects) > 0 {
		for _, ifname := range append([]string{"all"}, s.NoRedirects...) {
			if err := sc.write([]string{"net", "ipv4", "conf", ifname, "send_redirects"}, "0"); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (sc sysctls) write(parts []string, value string) error {
	path := filepath.Join(append([]string{sc.root}, parts...)...)
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("setting %s = %s: %w", strings.Join(parts, "."), value, err)
	}
	return nil
}
