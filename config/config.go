// Package config is keepvip's configuration model: the YAML file that
// `keepvip run --config` reads, and the structured form the vip-configmap
// carries. Parse is the one place it is decoded, defaulted and validated;
// every problem is reported with the path of the field and the reason.
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/keepvip/keepvip/vrrp"
)

// Config is the whole configuration.
type Config struct {
	// Instances are the VRRP virtual routers of this node.
	Instances []Instance `json:"instances"`
	// VirtualServers are the IPVS virtual services and their real servers.
	VirtualServers []VirtualServer `json:"virtualServers,omitempty"`
	// Kernel holds the kernel settings for load balancing.
	Kernel Kernel `json:"kernel,omitempty"`
	// Routing announces the VIPs to routers (BGP, or a routing table).
	Routing *Routing `json:"routing,omitempty"`
}

// Instance is one VRRP virtual router. Optional fields are pointers or
// empty; Parse fills in the defaults.
type Instance struct {
	// Name identifies the instance in logs, status and metrics. Default:
	// "<interface>-<vrid>", with "-v6" for an IPv6 instance.
	Name      string `json:"name,omitempty"`
	Interface string `json:"interface"`
	VRID      int    `json:"vrid"`
	// Priority 1-254, or 255 for the owner of the addresses. Default 100.
	Priority *int `json:"priority,omitempty"`
	// AdvertInterval: 10ms to 40.95s in steps of 10ms (version 3), whole
	// seconds (version 2). Default 1s.
	AdvertInterval Duration `json:"advertInterval,omitzero"`
	// Version 3 (default) or 2.
	Version int `json:"version,omitempty"`
	// Preempt: default true (RFC 9568). false is keepalived's nopreempt.
	Preempt      *bool    `json:"preempt,omitempty"`
	PreemptDelay Duration `json:"preemptDelay,omitzero"`
	// Accept: a master accepts packets sent to its VIPs (default true, as
	// keepalived). false drops them with an nftables table "keepvip".
	Accept *bool `json:"accept,omitempty"`
	// SourceAddress is keepalived's unicast_src_ip / mcast_src_ip.
	SourceAddress string `json:"sourceAddress,omitempty"`
	// UnicastPeers switches the instance to unicast adverts.
	UnicastPeers []string `json:"unicastPeers,omitempty"`
	// VIPs are addresses with an optional prefix length ("10.0.0.10/24";
	// default /32 or /128), all of one family.
	VIPs            []string `json:"vips"`
	TrackInterfaces []string `json:"trackInterfaces,omitempty"`
	// Checksum is "rfc5798" (default: IPv4 pseudo-header, what keepalived
	// and FRR send) or "rfc9568" (message only, Cisco and Juniper).
	Checksum string `json:"checksum,omitempty"`
	// AuthPassword is VRRPv2 simple text authentication (at most 8 bytes).
	AuthPassword string `json:"authPassword,omitempty"`
	GARP         GARP   `json:"garp,omitempty"`
	// LowerPriorityAdvert: a master that hears a lower-priority master
	// answers at once (keepalived's default). false is lower_prio_no_advert.
	LowerPriorityAdvert *bool `json:"lowerPriorityAdvert,omitempty"`
	// HandoffHold: a stopping master keeps its VIPs until the new master
	// advertises (at most 2 advert intervals). Default true.
	HandoffHold *bool `json:"handoffHold,omitempty"`
	// Announce says how the VIPs are announced when Config.Routing is
	// set; default: the master announces them, a backup withdraws.
	Announce *Announce `json:"announce,omitempty"`
}

// GARP holds keepalived's gratuitous ARP / NA settings.
type GARP struct {
	MasterDelay         Duration `json:"masterDelay,omitzero"`          // default 5s; "0s" for no second burst
	MasterRepeat        *int     `json:"masterRepeat,omitempty"`        // default 5
	MasterRefresh       Duration `json:"masterRefresh,omitzero"`        // default off
	MasterRefreshRepeat *int     `json:"masterRefreshRepeat,omitempty"` // default 1
	Interval            Duration `json:"interval,omitzero"`             // default 0
	LowerPriorityRepeat *int     `json:"lowerPriorityRepeat,omitempty"` // default 5
}

// Duration is a duration written as "100ms", "1.5s", "2m", or a number of
// seconds (as keepalived's advert_int 0.1). It is checked in Parse, so that
// a bad value is reported with its path.
type Duration struct {
	raw string
	set bool
}

// D returns a set Duration for d.
func D(d time.Duration) Duration { return Duration{raw: d.String(), set: true} }

// DurationOf returns a set Duration written as s ("100ms", "1.5", ...);
// it is checked where the Config is validated.
func DurationOf(s string) Duration { return Duration{raw: s, set: true} }

// UnmarshalJSON keeps the raw value for Parse to check.
func (d *Duration) UnmarshalJSON(b []byte) error {
	s := string(b)
	if s == "null" {
		*d = Duration{}
		return nil
	}
	if u, err := strconv.Unquote(s); err == nil {
		s = u
	}
	*d = Duration{raw: s, set: true}
	return nil
}

// MarshalJSON writes the raw value, or null when unset, so that a
// written Config parses back to the same one.
func (d Duration) MarshalJSON() ([]byte, error) {
	if !d.set {
		return []byte("null"), nil
	}
	return json.Marshal(d.raw)
}

// IsZero reports an unset duration (for omitzero).
func (d Duration) IsZero() bool { return !d.set }

func (d Duration) parse() (time.Duration, error) {
	s := strings.TrimSpace(d.raw)
	if f, err := strconv.ParseFloat(s, 64); err == nil {
		return time.Duration(f * float64(time.Second)).Round(time.Millisecond), nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a duration (write e.g. 100ms, 1s, 2.5s)", d.raw)
	}
	return v, nil
}

// FieldError is one problem, at a path such as "instances[1].vips[0]".
type FieldError struct {
	Path   string
	Reason string
}

func (e *FieldError) Error() string {
	if e.Path == "" {
		return e.Reason
	}
	return e.Path + ": " + e.Reason
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

// ValidName reports whether s can name an instance.
func ValidName(s string) bool { return nameRE.MatchString(s) }

// Parse decodes a YAML (or JSON) configuration, applies the defaults and
// validates it. It returns every problem, each a *FieldError, joined; the
// Config is nil when there is any.
func Parse(data []byte) (*Config, error) {
	var c Config
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return nil, &FieldError{Reason: decodeError(err)}
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// Validate applies the defaults to a Config built in code (the
// vip-configmap reconciler builds one) and checks it as Parse does.
func (c *Config) Validate() error {
	errs := c.validate()
	errs = append(errs, c.validateVirtualServers()...)
	errs = append(errs, c.validateKernel()...)
	errs = append(errs, c.validateRouting()...)
	return errors.Join(errs...)
}

// DecodeError rewords an error of sigs.k8s.io/yaml so that it names the
// field, for other decoders of parts of this model.
func DecodeError(err error) string { return decodeError(err) }

// decodeError rewords the decoder's errors to name the field.
func decodeError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("%s: got a %s, want a %s", te.Field, te.Value, te.Type)
	}
	msg := err.Error()
	for _, p := range []string{"error converting YAML to JSON: ", "error unmarshaling JSON: ", "while decoding JSON: ", "json: "} {
		msg = strings.ReplaceAll(msg, p, "")
	}
	return "cannot read the configuration: " + msg
}

func (c *Config) validate() []error {
	var errs []error
	names := map[string]string{}    // name -> path of the instance
	nameSlot := map[string]string{} // name -> its interface/family/VRID
	slots := map[string]string{}
	vips := map[netip.Addr]string{}
	for i := range c.Instances {
		in := &c.Instances[i]
		path := fmt.Sprintf("instances[%d]", i)
		vc, ierrs := in.toVRRP(path)
		errs = append(errs, ierrs...)
		defaulted := in.Name == ""
		if defaulted && vc.Interface != "" && vc.VRID != 0 {
			in.Name = fmt.Sprintf("%s-%d", vc.Interface, vc.VRID)
			if len(vc.VIPs) > 0 && vc.Family() == vrrp.IPv6 {
				in.Name += "-v6"
			}
		}
		switch {
		case in.Name == "":
			// reported through interface or vrid
		case !nameRE.MatchString(in.Name):
			errs = append(errs, &FieldError{path + ".name", fmt.Sprintf("%q: use letters, digits, '.', '_' and '-' (at most 63)", in.Name)})
		case names[in.Name] != "" && defaulted && nameSlot[in.Name] == slotOfInstance(vc):
			// The same interface, family and VRID repeated: reported
			// below as a duplicate VRID.
		case names[in.Name] != "":
			errs = append(errs, &FieldError{path + ".name", fmt.Sprintf("%q is also the name of %s", in.Name, names[in.Name])})
		default:
			names[in.Name] = path
			nameSlot[in.Name] = slotOfInstance(vc)
		}
		if len(ierrs) > 0 {
			continue
		}
		slot := slotOfInstance(vc)
		if other, dup := slots[slot]; dup {
			errs = append(errs, &FieldError{path + ".vrid", fmt.Sprintf("VRID %d (%s) on %s is also used by %s", vc.VRID, vc.Family(), vc.Interface, other)})
		}
		slots[slot] = path
		for j, p := range vc.VIPs {
			if other, dup := vips[p.Addr()]; dup {
				errs = append(errs, &FieldError{fmt.Sprintf("%s.vips[%d]", path, j), fmt.Sprintf("%s is also a VIP of %s", p.Addr(), other)})
			}
			vips[p.Addr()] = path
		}
	}
	return errs
}

func slotOfInstance(vc vrrp.Config) string {
	return fmt.Sprintf("%s/%s/%d", vc.Interface, vc.Family(), vc.VRID)
}

// VRRP returns the virtual routers of a parsed Config.
func (c *Config) VRRP() []vrrp.Config {
	out := make([]vrrp.Config, 0, len(c.Instances))
	for i := range c.Instances {
		vc, _ := c.Instances[i].toVRRP("")
		out = append(out, vc)
	}
	return out
}

// Check converts one instance, applying its defaults, and returns every
// problem found in it under path; rules between instances (duplicate VRIDs,
// names and VIPs) are checked by Validate.
func (in *Instance) Check(path string) (vrrp.Config, []error) { return in.toVRRP(path) }

// toVRRP converts one instance, applying defaults, and returns every
// problem found under path.
func (in *Instance) toVRRP(path string) (vrrp.Config, []error) {
	var errs []error
	bad := func(field, format string, args ...any) {
		errs = append(errs, &FieldError{path + "." + field, fmt.Sprintf(format, args...)})
	}
	c := vrrp.DefaultConfig()
	c.Name = in.Name
	c.Interface = in.Interface
	switch {
	case in.Interface == "":
		bad("interface", "is required")
	case len(in.Interface) > 15 || strings.ContainsAny(in.Interface, "/ \t"):
		bad("interface", "%q is not an interface name", in.Interface)
	}
	if in.VRID < 1 || in.VRID > 255 {
		bad("vrid", "%d is outside 1-255", in.VRID)
	} else {
		c.VRID = uint8(in.VRID)
	}
	if in.Priority != nil {
		if *in.Priority < 1 || *in.Priority > 255 {
			bad("priority", "%d is outside 1-255 (255 only for the owner of the addresses)", *in.Priority)
		} else {
			c.Priority = uint8(*in.Priority)
		}
	}
	switch in.Version {
	case 0:
	case 2, 3:
		c.Version = uint8(in.Version)
	default:
		bad("version", "%d: want 3 (RFC 9568) or 2 (RFC 3768)", in.Version)
	}
	dur := func(field string, d Duration, into *time.Duration) {
		if !d.set {
			return
		}
		v, err := d.parse()
		if err != nil {
			bad(field, "%v", err)
			return
		}
		*into = v
	}
	dur("advertInterval", in.AdvertInterval, &c.Interval)
	dur("preemptDelay", in.PreemptDelay, &c.PreemptDelay)
	if in.Preempt != nil {
		c.Preempt = *in.Preempt
	}
	if in.Accept != nil {
		c.Accept = *in.Accept
	}
	if in.LowerPriorityAdvert != nil {
		c.LowerPriorityAdvert = *in.LowerPriorityAdvert
	}
	if in.HandoffHold != nil {
		c.HandoffHold = *in.HandoffHold
	}
	if in.SourceAddress != "" {
		a, err := netip.ParseAddr(in.SourceAddress)
		if err != nil {
			bad("sourceAddress", "%q is not an IP address", in.SourceAddress)
		}
		c.Source = a.Unmap()
	}
	for i, s := range in.UnicastPeers {
		a, err := netip.ParseAddr(s)
		if err != nil {
			bad(fmt.Sprintf("unicastPeers[%d]", i), "%q is not an IP address", s)
			continue
		}
		c.Peers = append(c.Peers, a.Unmap())
	}
	for i, s := range in.VIPs {
		p, err := parseVIP(s)
		if err != nil {
			bad(fmt.Sprintf("vips[%d]", i), "%v", err)
			continue
		}
		c.VIPs = append(c.VIPs, p)
	}
	c.Track = in.TrackInterfaces
	switch strings.ToLower(in.Checksum) {
	case "", "rfc5798", "pseudo-header":
		c.Checksum = vrrp.ChecksumPseudoHeader
	case "rfc9568", "message-only":
		c.Checksum = vrrp.ChecksumMessageOnly
	default:
		bad("checksum", "%q: want rfc5798 (pseudo-header, keepalived) or rfc9568 (message only)", in.Checksum)
	}
	c.AuthPassword = in.AuthPassword
	g := in.GARP
	dur("garp.masterDelay", g.MasterDelay, &c.GARP.Delay)
	dur("garp.masterRefresh", g.MasterRefresh, &c.GARP.Refresh)
	dur("garp.interval", g.Interval, &c.GARP.Interval)
	for _, f := range []struct {
		v    *int
		into *int
	}{
		{g.MasterRepeat, &c.GARP.Repeat},
		{g.MasterRefreshRepeat, &c.GARP.RefreshRepeat},
		{g.LowerPriorityRepeat, &c.GARP.LowerPriorityRepeat},
	} {
		if f.v != nil {
			*f.into = *f.v
		}
	}
	// The protocol rules live with the protocol; only report them when the
	// fields themselves could be read, so that each problem appears once.
	if len(errs) == 0 {
		for _, e := range c.Validate() {
			var fe *vrrp.FieldError
			if errors.As(e, &fe) {
				bad(fe.Field, "%s", fe.Reason)
			} else {
				bad("", "%v", e)
			}
		}
	}
	return c, errs
}

// parseVIP reads "10.0.0.10", "10.0.0.10/24" or "2001:db8::10/64".
func parseVIP(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("%q is not an IP address with a prefix length", s)
		}
		return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is not an IP address", s)
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}
