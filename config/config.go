// Package config is keepvip's configuration model: the YAML file that
// `keepvip run --config` reads, and the structured form the vip-configmap
// carries. Parse is the one place it is decoded, defaulted and validated;
// every problem is reported with the path of the field and the reason.
//
// It is also the one translation from the model to the engines' options:
// Config.Desired gives each engine its part (vrrp.Config, balancer.Service,
// lvs.Settings, the route exporter, the routes and announcements) in the
// engine's own types. That translation lives here and not in the daemon
// because validating a field is building what its engine will be given: a
// configuration Parse accepts is one every engine takes. The daemon only
// hands the parts over, adding what the running process knows.
//
// Where it sits:
//
//	vip-configmap ─► configmap ─┐
//	Services, EndpointSlices ───┴─► internal/kube ─┐
//	keepvip.yaml ─► config ────────────────────────┴─► config.Config
//	  ─► Config.Desired ─► internal/daemon ─► vrrp, internal/balancer
//	  (lvs, healthcheck), internal/announce (routes/bgp, routes/kernel)
//	  ─► addresses, adverts, IPVS, routers; their Status back up through
//	  internal/daemon's socket to `keepvip status`.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"net/netip"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	yaml3 "go.yaml.in/yaml/v3"
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
	// ConnectionSync synchronises IPVS connections to the backups.
	ConnectionSync *ConnectionSync `json:"connectionSync,omitempty"`
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
	// Allow lets this instance pass guardrails on purpose: widePrefix,
	// nodeAddress, clusterAddress, gateway (see Allow*).
	Allow []string `json:"allow,omitempty"`
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
	if f, err := strconv.ParseFloat(s, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		// A number of seconds. NaN and the infinities parse as floats
		// (YAML's .nan, or "NaN") but are no length of time; converted,
		// they and numbers past time.Duration's range come out as
		// arbitrary (huge negative) durations.
		switch {
		case math.IsNaN(f):
			return 0, fmt.Errorf("%q is not a number of seconds (write e.g. 100ms, 1s, 2.5s)", d.raw)
		case math.IsInf(f, 0) || math.Abs(f) >= float64(math.MaxInt64)/float64(time.Second):
			return 0, fmt.Errorf("%q seconds is beyond any duration (write e.g. 100ms, 1s, 2.5s)", d.raw)
		}
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
		return nil, decodeProblems(data, err)
	}
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// ParseFile is Parse for a configuration file (`keepvip run --config`,
// `keepvip validate`). A file that configures nothing (empty, comments
// only, or without any instance, virtual server, ECMP VIP or static
// route) would release every VIP once loaded; far more often than an
// intent, it is a file truncated or not yet written by the tool that
// writes it. It is refused unless it says so with an explicit empty
// list, `instances: []` ("instances:" alone is null, what a file cut
// after that line reads as, and is not enough).
func ParseFile(data []byte) (*Config, error) {
	c, err := Parse(data)
	if err != nil {
		return nil, err
	}
	if !c.configuresNothing() || explicitlyNoInstances(data) {
		return c, nil
	}
	what := "the file configures no instance, virtual server, ECMP VIP or static route"
	if js, err := yaml.YAMLToJSON(data); err == nil && string(bytes.TrimSpace(js)) == "null" {
		what = "the file is empty"
	}
	return nil, &FieldError{Path: "instances", Reason: what + " (truncated, or not written yet?): " +
		"loading it would remove every VIP; write `instances: []` if that is meant"}
}

// configuresNothing reports a Config that runs nothing.
func (c *Config) configuresNothing() bool {
	return len(c.Instances) == 0 && len(c.VirtualServers) == 0 &&
		(c.Routing == nil || len(c.Routing.ECMP) == 0 && len(c.Routing.Static) == 0)
}

// explicitlyNoInstances reports whether data says `instances: []`.
func explicitlyNoInstances(data []byte) bool {
	js, err := yaml.YAMLToJSON(data)
	if err != nil {
		return false
	}
	var top map[string]json.RawMessage
	if json.Unmarshal(js, &top) != nil {
		return false
	}
	for k, v := range top {
		// The decoder matches field names regardless of case.
		if strings.EqualFold(k, "instances") && string(bytes.TrimSpace(v)) == "[]" {
			return true
		}
	}
	return false
}

// Validate applies the defaults to a Config built in code (the
// vip-configmap reconciler builds one) and checks it as Parse does.
func (c *Config) Validate() error {
	errs := c.validate()
	errs = append(errs, c.validateVirtualServers()...)
	errs = append(errs, c.validateKernel()...)
	errs = append(errs, c.validateRouting()...)
	_, serrs := c.connSync()
	errs = append(errs, serrs...)
	return errors.Join(errs...)
}

// DecodeError rewords an error of sigs.k8s.io/yaml so that it names the
// field, for other decoders of parts of this model.
func DecodeError(err error) string { return decodeError(err) }

// decodeProblems explains why data did not decode into a Config, with
// the full path of each problem ("instances[1].vrid"): the JSON decoder
// stops at the first problem and names neither the index of a list item
// nor the place of an unknown field, so the document is walked again
// here, by the same rules, to find every one. err is the decoder's, said
// as it is if the walk finds nothing.
func decodeProblems(data []byte, err error) error {
	var errs []error
	if js, jerr := yaml.YAMLToJSONStrict(data); jerr != nil {
		// Not convertible to JSON: a YAML syntax error, a key given
		// twice, or a float JSON has no form for (.nan, .inf).
		errs = yamlProblems(data)
	} else {
		d := json.NewDecoder(bytes.NewReader(js))
		d.UseNumber()
		var v any
		if d.Decode(&v) == nil {
			errs = typeProblems("", v, reflect.TypeFor[Config]())
		}
	}
	if len(errs) == 0 {
		return &FieldError{Reason: decodeError(err)}
	}
	return errors.Join(errs...)
}

// yamlProblems finds, with their paths, what keeps a YAML document from
// being converted to JSON and that the converter reports without a path:
// keys given twice, and NaN or infinite floats.
func yamlProblems(data []byte) []error {
	var doc yaml3.Node
	if yaml3.Unmarshal(data, &doc) != nil || len(doc.Content) == 0 {
		return nil
	}
	var errs []error
	var walk func(path string, n *yaml3.Node)
	walk = func(path string, n *yaml3.Node) {
		switch n.Kind {
		case yaml3.MappingNode:
			seen := map[string]int{}
			for i := 0; i+1 < len(n.Content); i += 2 {
				k, v := n.Content[i], n.Content[i+1]
				p := joinPath(path, k.Value)
				if line, dup := seen[k.Value]; dup {
					where := fmt.Sprintf("lines %d and %d", line, k.Line)
					if line == k.Line {
						where = fmt.Sprintf("line %d", line)
					}
					errs = append(errs, &FieldError{p, "given twice (" + where + ")"})
					continue
				}
				seen[k.Value] = k.Line
				walk(p, v)
			}
		case yaml3.SequenceNode:
			for i, v := range n.Content {
				walk(fmt.Sprintf("%s[%d]", path, i), v)
			}
		case yaml3.ScalarNode:
			var f float64
			if n.ShortTag() == "!!float" && n.Decode(&f) == nil && (math.IsNaN(f) || math.IsInf(f, 0)) {
				errs = append(errs, &FieldError{path, fmt.Sprintf("%s (line %d) is not a finite number", n.Value, n.Line)})
			}
		}
	}
	walk("", doc.Content[0])
	return errs
}

var jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()

// typeProblems checks a decoded JSON value v against the Go type t as
// encoding/json with DisallowUnknownFields does, returning every field
// that is unknown or of the wrong type, under path.
func typeProblems(path string, v any, t reflect.Type) []error {
	if v == nil {
		return nil // null leaves any field as it is
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(jsonUnmarshaler) {
		return nil // checked where it is validated (Duration)
	}
	wrong := func(want string) []error {
		return []error{&FieldError{path, fmt.Sprintf("got %s, want %s", describeJSON(v), want)}}
	}
	switch t.Kind() {
	case reflect.Struct:
		m, ok := v.(map[string]any)
		if !ok {
			return wrong("a mapping")
		}
		fields := jsonFields(t)
		var errs []error
		for _, k := range slices.Sorted(maps.Keys(m)) {
			ft, ok := fields[k]
			if !ok {
				// As encoding/json: an exact match first, then any case.
				for name, f := range fields {
					if strings.EqualFold(name, k) {
						ft, ok = f, true
						break
					}
				}
			}
			if !ok {
				errs = append(errs, &FieldError{joinPath(path, k), "unknown field"})
				continue
			}
			errs = append(errs, typeProblems(joinPath(path, k), m[k], ft)...)
		}
		return errs
	case reflect.Map:
		m, ok := v.(map[string]any)
		if !ok {
			return wrong("a mapping")
		}
		var errs []error
		for _, k := range slices.Sorted(maps.Keys(m)) {
			errs = append(errs, typeProblems(joinPath(path, k), m[k], t.Elem())...)
		}
		return errs
	case reflect.Slice, reflect.Array:
		l, ok := v.([]any)
		if !ok {
			return wrong("a list")
		}
		var errs []error
		for i, e := range l {
			errs = append(errs, typeProblems(fmt.Sprintf("%s[%d]", path, i), e, t.Elem())...)
		}
		return errs
	case reflect.String:
		if _, ok := v.(string); !ok {
			return wrong("a string")
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			return wrong("true or false")
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		n, ok := v.(json.Number)
		if !ok {
			return wrong("an integer")
		}
		if _, err := strconv.ParseInt(string(n), 10, t.Bits()); err != nil {
			if errors.Is(err, strconv.ErrRange) {
				return []error{&FieldError{path, fmt.Sprintf("%s is out of range", n)}}
			}
			return wrong("an integer")
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		n, ok := v.(json.Number)
		if !ok {
			return wrong("an integer")
		}
		if _, err := strconv.ParseUint(string(n), 10, t.Bits()); err != nil {
			if errors.Is(err, strconv.ErrRange) {
				return []error{&FieldError{path, fmt.Sprintf("%s is out of range", n)}}
			}
			return wrong("a non-negative integer")
		}
	case reflect.Float32, reflect.Float64:
		if _, ok := v.(json.Number); !ok {
			return wrong("a number")
		}
	}
	return nil
}

// jsonFields maps the JSON names of t's fields to their types, as
// encoding/json sees them (embedded structs flattened, "-" skipped).
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for f := range t.Fields() {
		tag := f.Tag.Get("json")
		name, _, _ := strings.Cut(tag, ",")
		switch {
		case name == "-" && !strings.HasPrefix(tag, "-,"):
			continue
		case f.Anonymous && name == "":
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				for n, et := range jsonFields(ft) {
					if _, ok := out[n]; !ok {
						out[n] = et
					}
				}
				continue
			}
		case !f.IsExported():
			continue
		}
		if name == "" {
			name = f.Name
		}
		out[name] = f.Type
	}
	return out
}

// describeJSON says what a decoded JSON value is, for an error.
func describeJSON(v any) string {
	switch v := v.(type) {
	case string:
		return fmt.Sprintf("the string %q", v)
	case json.Number:
		return "the number " + string(v)
	case bool:
		return strconv.FormatBool(v)
	case []any:
		return "a list"
	case map[string]any:
		return "a mapping"
	}
	return fmt.Sprintf("%v", v)
}

func joinPath(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

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
		if why := vipGuard(s, in.Allow); why != "" {
			bad(fmt.Sprintf("vips[%d]", i), "%s", why)
		}
		c.VIPs = append(c.VIPs, p)
	}
	for _, e := range checkAllow(path, in.Allow) {
		errs = append(errs, e)
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
