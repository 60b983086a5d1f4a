package configmap

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/yaml"

	"github.com/keepvip/keepvip/config"
)

// kind is what an entry is; identities are unique within a kind.
type kind uint8

const (
	kindInstance      kind = iota + 1 // a structured instance
	kindKeyInstance                   // the instance "vips" of the VIP keys
	kindVIPKey                        // the VIP of a VIP key
	kindVirtualServer                 // structured, or the value of a VIP key
	kindRouting
	kindKernel
	kindSelector
)

// entry is one thing the ConfigMap asks for: the unit that is applied,
// refused or kept whole.
type entry struct {
	kind kind
	id   string
	key  string // the data key
	path string // where in config.yaml; "" for a VIP key

	errs    []error  // its own problems
	warns   []string // what applies, but should not be written so
	refused bool     // not applied in the ConfigMap's own view
	why     []string

	inst *Instance
	vs   *VirtualServer
	rt   *Routing
	kern *config.Kernel
	sel  string
	// noNodes: a selector that picks no node (kept from a node that could
	// not know its selector).
	noNodes bool
	// form: the last good form of an entry, not the entry as written.
	form bool
	// unnamed: an instance or virtual server known by its fields.
	unnamed bool
	// yields: VIPs a structured instance that is not applied lists, which
	// VIP keys have: they stay with their keys, and it claims them not,
	// nor keeps them in its last good form.
	yields map[netip.Addr]bool

	// VIP keys: the entry holding their VIP (a structured instance that
	// lists it or is called "vips", or the key instance).
	holder *entry
	// outcome, set by assemble: what runs of it on this node.
	outcome string
}

// label names an entry in another's problem.
func (e *entry) label() string {
	var s string
	switch e.kind {
	case kindInstance:
		s = fmt.Sprintf("instance %q", e.id)
	case kindKeyInstance:
		return fmt.Sprintf("the instance %q of the VIP keys", LegacyInstance)
	case kindVIPKey:
		return "key " + e.key
	case kindVirtualServer:
		if e.key != StructuredKey {
			return "the virtual server of key " + e.key
		}
		s = fmt.Sprintf("virtual server %q", e.id)
	case kindRouting:
		s = "routing"
	case kindKernel:
		s = "kernel"
	case kindSelector:
		s = "nodeSelector"
	}
	if e.path != "" && e.path != s {
		s += " (" + e.path + ")"
	}
	return s
}

// entryName is Problem.Entry.
func (e *entry) entryName() string {
	switch e.kind {
	case kindInstance:
		return fmt.Sprintf("instance %q", e.id)
	case kindVirtualServer:
		if e.key == StructuredKey {
			return fmt.Sprintf("virtual server %q", e.id)
		}
		return ""
	case kindRouting:
		return "routing"
	case kindKernel:
		return "kernel"
	case kindSelector:
		return "nodeSelector"
	}
	return ""
}

func (e *entry) claims() []claim {
	switch e.kind {
	case kindInstance, kindKeyInstance:
		// The instance of the VIP keys leaves its VIPs to its keys,
		// except as a last good form, which is whole.
		return instanceClaims(e.inst, e.kind == kindInstance || e.form, e.yields)
	case kindVirtualServer:
		return virtualServerClaims(e.vs)
	case kindRouting:
		return routingClaims(e.rt)
	case kindVIPKey:
		if e.holder != nil && e.holder.kind == kindKeyInstance {
			a := netip.MustParseAddr(e.key)
			return vipClaims([]netip.Addr{a}, true, false)
		}
	}
	return nil // a VIP key in a structured instance: claimed by it
}

type parser struct {
	data map[string]string
	d    Defaults
	prev *Spec

	entries []*entry
	// unreadable: config.yaml is there but cannot be read.
	unreadable bool
	docErr     string
	keyInst    *entry
	vipKeys    []*entry
	problems   []Problem
}

func newParser(data map[string]string, d Defaults, prev *Spec) *parser {
	return &parser{data: data, d: d, prev: prev}
}

func (p *parser) add(e *entry) *entry {
	p.entries = append(p.entries, e)
	return e
}

// read turns the data into entries, each checked alone.
func (p *parser) read() {
	if raw, ok := p.data[StructuredKey]; ok {
		p.readDocument(raw)
	}
	keys := make([]string, 0, len(p.data))
	for k := range p.data {
		if k != StructuredKey {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		if e := p.readKey(k, p.data[k]); e != nil {
			p.vipKeys = append(p.vipKeys, e)
		}
	}
	for _, e := range p.entries {
		if e.kind == kindInstance {
			e.errs = append(e.errs, e.inst.check(e.path)...)
		}
	}
}

// readDocument reads config.yaml entry by entry: a mistake inside one
// entry (a misspelled field, a value of the wrong type) makes that entry
// bad and nothing else. Only what leaves the entries unknown makes the
// whole document unreadable: YAML that cannot be parsed, a top-level field
// that is not one of ours (its entries would be read as removed), or a
// list that is not a list.
func (p *parser) readDocument(raw string) {
	unreadable := func(err error) {
		p.unreadable = true
		p.docErr = config.DecodeError(err)
	}
	js, err := yaml.YAMLToJSONStrict([]byte(raw))
	var repeats map[string]string
	if err != nil {
		// A field given twice inside one entry costs that entry only.
		top, parts, perr := repeatedFields(raw)
		if perr != nil || top != "" || len(parts) == 0 {
			unreadable(err)
			return
		}
		if js, err = yaml.YAMLToJSON([]byte(raw)); err != nil {
			unreadable(err)
			return
		}
		repeats = parts
	}
	repeated := func(e *entry, path string) {
		if why, ok := repeats[path]; ok {
			e.errs = append(e.errs, &config.FieldError{Path: path, Reason: why})
		}
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(js, &top); err != nil {
		if string(bytes.TrimSpace(js)) == "null" {
			return // an empty document
		}
		unreadable(fmt.Errorf("want a mapping of instances, virtualServers, kernel, nodeSelector and routing: %w", err))
		return
	}
	var unknown []string
	for k := range top {
		switch k {
		case "instances", "virtualServers", "kernel", "nodeSelector", "routing":
		default:
			unknown = append(unknown, strconv.Quote(k))
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		unreadable(fmt.Errorf("unknown field %s (want instances, virtualServers, kernel, nodeSelector, routing)", strings.Join(unknown, ", ")))
		return
	}
	var instances, servers []json.RawMessage
	for k, dst := range map[string]*[]json.RawMessage{"instances": &instances, "virtualServers": &servers} {
		if v, ok := top[k]; ok {
			if err := json.Unmarshal(v, dst); err != nil {
				unreadable(fmt.Errorf("%s: want a list: %w", k, err))
				return
			}
		}
	}

	if v, ok := top["nodeSelector"]; ok && string(v) != "null" {
		var sel string
		err := strictly(v, &sel)
		e := p.add(&entry{kind: kindSelector, id: "nodeSelector", key: StructuredKey, path: "nodeSelector", sel: sel})
		repeated(e, "nodeSelector")
		switch {
		case err != nil:
			e.errs = append(e.errs, err)
		case sel == "":
			p.entries = p.entries[:len(p.entries)-1] // every node, as without one
		default:
			if _, err := labels.Parse(sel); err != nil {
				e.errs = append(e.errs, fmt.Errorf("%q: %w", sel, err))
			}
		}
	}
	if v, ok := top["routing"]; ok && string(v) != "null" {
		rt := &Routing{}
		e := p.add(&entry{kind: kindRouting, id: "routing", key: StructuredKey, path: "routing", rt: rt})
		repeated(e, "routing")
		if err := strictly(v, rt); err != nil {
			e.errs = append(e.errs, err)
			_ = json.Unmarshal(v, rt) // what can be read, for its claims
		} else if len(e.errs) == 0 {
			e.errs = rt.check()
			e.warns = rt.warnings()
		}
	}
	if v, ok := top["kernel"]; ok && string(v) != "null" {
		k := &config.Kernel{}
		e := p.add(&entry{kind: kindKernel, id: "kernel", key: StructuredKey, path: "kernel", kern: k})
		repeated(e, "kernel")
		if err := strictly(v, k); err != nil {
			e.errs = append(e.errs, err)
		} else if isZero(*k) && len(e.errs) == 0 {
			p.entries = p.entries[:len(p.entries)-1]
		} else {
			kc := config.Config{Kernel: *k}
			e.errs = append(e.errs, kc.CheckKernel()...)
		}
	}
	for i, v := range instances {
		path := fmt.Sprintf("instances[%d]", i)
		in := Instance{}
		decodeErr := strictly(v, &in)
		if decodeErr != nil {
			// Known by what can be read of it.
			in = Instance{}
			_ = json.Unmarshal(v, &in)
			in.VRID = looseInt(v, "vrid", in.VRID)
			if len(in.VIPs) == 0 {
				in.VIPs = looseStrings(v, "vips")
			}
		}
		unnamed := in.Name == ""
		in.id = in.Name
		if unnamed {
			in.id = defaultName(&in)
			in.Name = in.id
		}
		in.Source = fmt.Sprintf("%s instance %q", StructuredKey, in.id)
		e := p.add(&entry{kind: kindInstance, id: in.id, key: StructuredKey, path: path, inst: &in, unnamed: unnamed})
		repeated(e, path)
		if decodeErr != nil {
			e.errs = append(e.errs, &config.FieldError{Path: path, Reason: decodeErr.Error()})
		}
	}
	for i, v := range servers {
		path := fmt.Sprintf("virtualServers[%d]", i)
		vs := VirtualServer{}
		decodeErr := strictly(v, &vs)
		if decodeErr != nil {
			vs = VirtualServer{}
			_ = json.Unmarshal(v, &vs)
			vs.Port = looseInt(v, "port", vs.Port)
		}
		vs.id = vs.Name
		if vs.id == "" {
			vs.id = defaultVSID(&vs)
		}
		vs.Source = fmt.Sprintf("%s virtual server %q", StructuredKey, vs.id)
		if strings.HasPrefix(vs.id, "key ") {
			// A reserved name (refused by check): not a VIP key's.
			vs.id = StructuredKey + ":" + vs.id
		}
		e := p.add(&entry{kind: kindVirtualServer, id: vs.id, key: StructuredKey, path: path, vs: &vs, unnamed: vs.Name == ""})
		repeated(e, path)
		if decodeErr != nil {
			e.errs = append(e.errs, &config.FieldError{Path: path, Reason: decodeErr.Error()})
		} else {
			e.errs = append(e.errs, vs.check(path, false)...)
		}
	}
}

// strictly decodes one part of config.yaml (JSON by now), refusing
// unknown fields and values of the wrong type.
func strictly(js json.RawMessage, into any) error {
	d := json.NewDecoder(bytes.NewReader(js))
	d.DisallowUnknownFields()
	if err := d.Decode(into); err != nil {
		return errors.New(strings.TrimPrefix(config.DecodeError(err), "cannot read the configuration: "))
	}
	return nil
}

// looseStrings reads a list of strings, or one string where a list was
// wanted, from an object that did not decode.
func looseStrings(js json.RawMessage, field string) []string {
	var m map[string]any
	if json.Unmarshal(js, &m) != nil {
		return nil
	}
	switch v := m[field].(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, x := range v {
			if s, ok := x.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// looseInt reads field of an object that did not decode: a number, or a
// number written as a string ("61"), so that an entry with a mistake is
// still known by it; else def.
func looseInt(js json.RawMessage, field string, def int) int {
	var m map[string]any
	if json.Unmarshal(js, &m) != nil {
		return def
	}
	switch v := m[field].(type) {
	case float64:
		return int(v)
	case string:
		if n, err := strconv.Atoi(strings.TrimSpace(v)); err == nil {
			return n
		}
	}
	return def
}

// readKey reads one kube-keepalived-vip entry: its VIP and, with a value,
// its virtual server. It returns the VIP's entry if the key is a VIP.
func (p *parser) readKey(key, value string) *entry {
	a, err := netip.ParseAddr(key)
	switch {
	case err != nil && leadingZeros(key) != "":
		p.bad(&entry{kind: kindVIPKey, id: key, key: key}, "an IPv4 address without leading zeros is wanted: write it as %s", leadingZeros(key))
		return nil
	case err != nil || !a.Is4():
		p.bad(&entry{kind: kindVIPKey, id: key, key: key}, "not an IPv4 address: want \"VIP: namespace/service[:NAT|:DR]\", or %s for everything else (IPv6 VIPs go there: a ConfigMap key cannot contain ':')", StructuredKey)
		return nil
	case a.IsMulticast() || a.IsUnspecified() || a.IsLoopback() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		p.bad(&entry{kind: kindVIPKey, id: key, key: key}, "%s is not a unicast address, so it cannot be a VIP", a)
		return nil
	}
	vip := p.add(&entry{kind: kindVIPKey, id: key, key: key})
	if v := strings.TrimSpace(value); v != "" {
		vs, errs := legacyVirtualServer(key, v)
		e := p.add(&entry{kind: kindVirtualServer, id: vs.id, key: key, vs: vs})
		e.errs = errs
	}
	return vip
}

// leadingZeros returns key written without leading zeros if it is an
// IPv4 address with some ("10.0.0.050"), else "".
func leadingZeros(key string) string {
	parts := strings.Split(key, ".")
	if len(parts) != 4 {
		return ""
	}
	var b [4]byte
	for i, s := range parts {
		n, err := strconv.ParseUint(s, 10, 8)
		if err != nil || s == "" || s[0] == '+' {
			return ""
		}
		b[i] = byte(n)
	}
	return netip.AddrFrom4(b).String()
}

// bad records an entry that is only a problem.
func (p *parser) bad(e *entry, format string, args ...any) {
	e.errs = append(e.errs, fmt.Errorf(format, args...))
	p.add(e)
}

// legacyVirtualServer reads the value of a VIP key.
func legacyVirtualServer(key, value string) (*VirtualServer, []error) {
	vs := &VirtualServer{Source: keySource(key), id: keySource(key)}
	vs.VIP = key
	svc, mode, _ := strings.Cut(value, ":")
	vs.Service = svc
	vs.Forwarding = "nat"
	// kube-keepalived-vip's fixed settings: wlc, 30 min persistence,
	// TCP_CHECK with delay_loop 5 and connect_timeout 3.
	vs.Scheduler = "wlc"
	vs.Persistence = &config.Persistence{Timeout: config.D(1800e9)}
	vs.HealthCheck = &config.HealthCheck{Interval: config.D(5e9), Timeout: config.D(3e9)}
	switch strings.ToUpper(mode) {
	case "", "NAT":
	case "DR":
		vs.Forwarding = "dr"
	case "PROXY":
		return vs, []error{fmt.Errorf("%q: PROXY (kube-keepalived-vip's HAProxy with the PROXY protocol) is not supported: use NAT or DR", value)}
	default:
		return vs, []error{fmt.Errorf("%q: unknown mode %q: want NAT or DR", value, mode)}
	}
	if err := checkServiceName(svc); err != nil {
		return vs, []error{fmt.Errorf("%q: %w", value, err)}
	}
	return vs, vs.check("", true)
}

// joinKeys gives each VIP key's VIP its holder: the structured instance
// that lists it, else the structured instance named "vips" (IPv4), else
// the instance of the VIP keys, made from the flags. A key joins only an
// instance that applies: one that does not (bad, or clashing) yields the
// VIP to the key's instance (see yields).
func (p *parser) joinKeys() {
	applies := func(e *entry) bool { return e.kind == kindInstance && !e.refused }
	var named *entry
	for _, e := range p.entries {
		if applies(e) && e.id == LegacyInstance {
			if fam, _ := e.inst.family(); fam != "ipv6" {
				named = e
			}
		}
	}
	// The first applied instance listing a VIP: a key joins it.
	lister := map[netip.Addr]*entry{}
	for _, e := range p.entries {
		if applies(e) {
			for _, a := range e.inst.addrs() {
				if _, ok := lister[a]; !ok {
					lister[a] = e
				}
			}
		}
	}
	var rest []string
	for _, k := range p.vipKeys {
		a := netip.MustParseAddr(k.key)
		k.holder = lister[a]
		// An instance that lists the VIP but is not applied yields it to
		// the key: else a mistake there, or a newcomer that clashes,
		// would take a running VIP with it (or its key's whole instance,
		// on the nodes that do not run that already). Where its last
		// good form runs, it runs without the VIP, which its key's
		// instance holds.
		for _, e := range p.entries {
			if e.kind == kindInstance && e.refused && e.inst.hasVIP(a) {
				if e.yields == nil {
					e.yields = map[netip.Addr]bool{}
				}
				e.yields[a] = true
			}
		}
		switch {
		case k.holder != nil:
		case named != nil:
			k.holder = named
			named.inst.VIPs = append(slices.Clone(named.inst.VIPs), k.key)
			named.inst.keyVIPs = append(named.inst.keyVIPs, k.key)
		default:
			rest = append(rest, k.key)
		}
	}
	if named != nil && len(named.inst.keyVIPs) > 0 {
		// Checked again with the VIPs of the keys (at most 255).
		named.errs = named.inst.check(named.path)
	}
	if len(rest) == 0 {
		return
	}
	in := p.d.instance(rest)
	p.keyInst = p.add(&entry{kind: kindKeyInstance, id: LegacyInstance, inst: &in})
	p.keyInst.errs = in.check("instance " + LegacyInstance)
	for _, k := range p.vipKeys {
		if k.holder == nil {
			k.holder = p.keyInst
		}
	}
}

// clash refuses every entry that is bad or shares a claim with another
// (rule 2), from the ConfigMap alone: once among the entries as written,
// which tells the VIP keys which instance to join, then again with the
// VIP keys and their instance.
func (p *parser) clash() {
	p.clashPass(false)
	p.joinKeys()
	p.clashPass(true)
	// The VIP keys and their instance stand or fall together: its VIP set
	// on the VRID is the same on every node.
	k := p.keyInst
	if k != nil {
		var culprits []string
		for _, e := range p.vipKeys {
			if e.holder == k && e.refused {
				culprits = append(culprits, "key "+e.key)
			}
		}
		if len(culprits) > 0 && !k.refused {
			k.refused = true
			k.why = append(k.why, "one of its VIPs clashes ("+strings.Join(culprits, ", ")+")")
		}
	}
	// A VIP that a refused instance yielded to a key whose own instance
	// is not applied either goes back to it: where it ran there, it
	// keeps running there.
	for _, e := range p.vipKeys {
		a := netip.MustParseAddr(e.key)
		native := e.holder != nil && e.holder.kind == kindInstance && !slices.Contains(e.holder.inst.keyVIPs, e.key)
		if e.holder == nil || !e.holder.refused || native {
			continue // applied, or held by an instance that lists it
		}
		for _, l := range p.entries {
			if l.kind == kindInstance && l.yields[a] {
				delete(l.yields, a)
				e.holder = l
				break
			}
		}
	}
	if k != nil && k.refused {
		why := fmt.Sprintf("its instance %q (VRID %d from the daemon's flags) is not applied: %s", LegacyInstance, p.d.VRID, strings.Join(append(errStrings(k.errs), k.why...), "; "))
		for _, e := range p.vipKeys {
			if e.holder == k && len(e.why) == 0 {
				e.refused = true
				e.why = append(e.why, why)
			}
		}
	}
}

// clashPass works out which entries are refused and why; again, it keeps
// what the pass before refused (the VIP keys were placed by it).
func (p *parser) clashPass(again bool) {
	all := claimSet{}
	claims := make([][]claim, len(p.entries))
	for i, e := range p.entries {
		claims[i] = e.claims()
		all.add(claims[i], e)
	}
	for i, e := range p.entries {
		wasRefused, why := e.refused, e.why
		e.refused, e.why = len(e.errs) > 0, nil
		if again {
			e.refused, e.why = e.refused || wasRefused, why
		}
		var seen map[*entry]bool
		for _, c := range claims[i] {
			for _, o := range all[c.index()] {
				if o.by == e || seen[o.by] || !o.clashes(c) {
					continue
				}
				if seen == nil {
					seen = map[*entry]bool{}
				}
				seen[o.by] = true
				e.refused = true
				why := fmt.Sprintf("%s is also %s's: entries that clash are not applied, except where one already runs", c.describe(), o.by.label())
				if c.what == claimName && c.val == LegacyInstance && e.kind == kindKeyInstance {
					// The keys join config.yaml's instance "vips", which is
					// not applied: they cannot have one of their own.
					why = fmt.Sprintf("they join %s, which is not applied", o.by.label())
				}
				if !slices.Contains(e.why, why) {
					e.why = append(e.why, why)
				}
			}
		}
	}
}

func errStrings(errs []error) []string {
	var out []string
	for _, e := range errs {
		out = append(out, e.Error())
	}
	return out
}

// assemble builds the Spec: the entries applied from the ConfigMap alone,
// then the last good forms of those that are not, where they claim
// nothing applied (rule 3).
func (p *parser) assemble() *Spec {
	out := &Spec{}
	taken := claimSet{}
	for _, e := range p.entries {
		if !e.refused {
			taken.add(e.claims(), e)
		}
	}
	// The last good forms, in a fixed order.
	var refused []*entry
	for _, e := range p.entries {
		if e.refused {
			refused = append(refused, e)
		}
	}
	slices.SortStableFunc(refused, func(a, b *entry) int {
		return cmp.Or(cmp.Compare(a.kind, b.kind), strings.Compare(a.id, b.id))
	})
	kept := map[*entry]*entry{}
	done := map[string]*entry{} // kind/id -> the form kept
	for _, e := range refused {
		e.outcome = outcomeNotApplied
		k := fmt.Sprintf("%d/%s", e.kind, e.id)
		if f, ok := done[k]; ok {
			if f != nil {
				e.outcome = outcomeKept
			}
			continue
		}
		f := p.lastGood(e)
		done[k] = nil
		if f == nil {
			if e.unnamed && p.prev != nil && len(e.errs) > 0 {
				e.outcome += " (an entry without a name is known by " + map[kind]string{
					kindInstance:      "its interface and VRID",
					kindVirtualServer: "its VIP, port and protocol or Service",
				}[e.kind] + ", and none ran with these: name it to keep its last good form through a mistake in those)"
			}
			continue
		}
		if c, by, bad := taken.clash(f.claims(), nil); bad {
			e.outcome = fmt.Sprintf("its last good form is not kept either: %s is %s's now", c.describe(), by.label())
			continue
		}
		taken.add(f.claims(), f)
		kept[e], done[k] = f, f
		e.outcome = outcomeKept
	}
	// A VIP key whose value (its virtual server) is refused still gives
	// its VIP: say so, or "not applied" reads as if the VIP were not
	// held either.
	vipRefused := map[string]bool{}
	for _, e := range p.entries {
		if e.kind == kindVIPKey && e.refused {
			vipRefused[e.key] = true
		}
	}
	for _, e := range refused {
		if e.kind == kindVirtualServer && e.key != StructuredKey && e.outcome == outcomeNotApplied && !vipRefused[e.key] {
			e.outcome = outcomeVIPOnly
		}
	}

	selector := false
	for _, e := range p.entries {
		f := e
		if e.refused {
			if f = kept[e]; f == nil {
				continue
			}
		}
		switch f.kind {
		case kindInstance, kindKeyInstance:
			in := *f.inst
			in.Kept = f.form
			out.Instances = append(out.Instances, in)
		case kindVirtualServer:
			vs := *f.vs
			vs.Kept = f.form
			out.VirtualServers = append(out.VirtualServers, vs)
		case kindRouting:
			out.Routing = f.rt
		case kindKernel:
			out.Kernel = *f.kern
		case kindSelector:
			selector = true
			out.NodeSelector, out.NoNodes = f.sel, f.noNodes
		}
	}
	for _, e := range p.entries {
		if e.kind == kindSelector && !selector {
			out.NoNodes = true // bad, and no last good one
		}
	}
	if p.unreadable && p.prev == nil {
		out.NoNodes = true
	}
	// A VIP key whose holder is not applied runs where the holder's last
	// good form holds its VIP; a structured holder is named, so that the
	// key's VIP is not lost without a word.
	for _, e := range p.vipKeys {
		h := e.holder
		if h == nil || !h.refused {
			continue
		}
		e.outcome = outcomeNotApplied
		for _, f := range kept {
			if f.inst != nil && f.inst.hasVIP(netip.MustParseAddr(e.key)) {
				e.outcome = outcomeKept
			}
		}
		if h.kind == kindInstance && len(e.why) == 0 {
			e.why = append(e.why, fmt.Sprintf("its VIP is held by %s, which is not applied", h.label()))
		}
	}
	p.report()
	return out
}

// frozen is the Spec while config.yaml cannot be read: what it says is
// unknown, and so is whether a new VIP key belongs to one of its
// instances, so the instances run as they did (less the VIPs of removed
// keys) and new VIP keys wait; the virtual servers of the keys follow
// their keys. A node without history does not know which nodes take
// part: none does.
func (p *parser) frozen() *Spec {
	out := &Spec{NoNodes: true}
	if s := p.prev; s != nil {
		out.NodeSelector, out.NoNodes, out.Kernel, out.Routing = s.NodeSelector, s.NoNodes, s.Kernel, s.Routing
		for _, in := range s.Instances {
			if in = s.withoutGoneKeys(in, p.data); len(in.VIPs) > 0 {
				in.Kept = true
				out.Instances = append(out.Instances, in)
			}
		}
		for _, vs := range s.VirtualServers {
			if strings.HasPrefix(vs.Source, StructuredKey) {
				vs.Kept = true
				out.VirtualServers = append(out.VirtualServers, vs)
			}
		}
	}
	for _, e := range p.entries {
		e.outcome = outcomeNotApplied
		switch {
		case e.kind == kindVIPKey && len(e.errs) == 0:
			if !slices.ContainsFunc(out.Instances, func(in Instance) bool { return in.hasVIP(netip.MustParseAddr(e.key)) }) {
				e.why = append(e.why, StructuredKey+" cannot be read, and its VIP may belong to an instance there: it waits until it can")
			}
		case e.kind == kindVirtualServer:
			// What it would clash with is unknown: it runs as it ran,
			// and a new or changed one waits.
			f := p.lastGood(e)
			if f != nil {
				vs := *f.vs
				vs.Kept = true
				out.VirtualServers = append(out.VirtualServers, vs)
				e.outcome = outcomeKept
			}
			if len(e.errs) == 0 && (f == nil || !sameForm(f.vs, e.vs)) {
				e.why = append(e.why, StructuredKey+" cannot be read, and what this virtual server would clash with there is unknown: the change waits until it can")
			}
		}
	}
	p.report()
	return out
}

// lastGood is the form of e that prev runs, or nil.
func (p *parser) lastGood(e *entry) *entry {
	s := p.prev
	if s == nil {
		return nil
	}
	switch e.kind {
	case kindInstance, kindKeyInstance:
		for _, old := range s.Instances {
			if old.id == e.id && (old.Source == keyInstanceSource) == (e.kind == kindKeyInstance) {
				in := s.withoutGoneKeys(old, p.data)
				// Without the VIPs it yields, and those of keys that
				// another instance, applied, holds now.
				elsewhere := map[string]bool{}
				for _, k := range p.vipKeys {
					elsewhere[k.key] = k.holder != nil && k.holder != e && !k.holder.refused
				}
				in.VIPs = slices.DeleteFunc(slices.Clone(in.VIPs), func(v string) bool {
					pf, err := parseVIP(v)
					return err == nil && e.yields[pf.Addr()] || slices.Contains(in.keyVIPs, v) && elsewhere[v]
				})
				in.keyVIPs = slices.DeleteFunc(slices.Clone(in.keyVIPs), func(v string) bool { return elsewhere[v] })
				if len(in.VIPs) == 0 {
					return nil
				}
				return &entry{kind: e.kind, id: e.id, inst: &in, form: true}
			}
		}
	case kindVIPKey:
		// Its VIP is kept with the instance that holds it.
	case kindVirtualServer:
		for _, old := range s.VirtualServers {
			if old.id == e.id {
				vs := old
				return &entry{kind: e.kind, id: e.id, vs: &vs, form: true}
			}
		}
	case kindRouting:
		if s.Routing != nil {
			return &entry{kind: e.kind, id: e.id, rt: s.Routing, form: true}
		}
	case kindKernel:
		k := s.Kernel
		return &entry{kind: e.kind, id: e.id, kern: &k, form: true}
	case kindSelector:
		// "" (every node) is a selector that ran too.
		return &entry{kind: e.kind, id: e.id, sel: s.NodeSelector, noNodes: s.NoNodes, form: true}
	}
	return nil
}

// report turns the entries' errors and clashes into problems.
func (p *parser) report() {
	if p.unreadable {
		outcome := "the entries that ran keep running as they were"
		if p.prev == nil {
			outcome = "this node does not know which nodes take part: it runs nothing of it until it can be read"
		}
		p.problems = append(p.problems, Problem{Key: StructuredKey, Reason: p.docErr, Outcome: outcome})
	}
	for _, e := range p.entries {
		if !e.refused {
			for _, w := range e.warns {
				p.problems = append(p.problems, Problem{Key: e.key, Entry: e.entryName(), Path: e.path, Reason: w, Outcome: "it applies"})
			}
		}
		for _, err := range e.errs {
			if e.kind == kindKeyInstance {
				continue // reported under each key
			}
			p.problems = append(p.problems, Problem{Key: e.key, Entry: e.entryName(), Path: e.path, Reason: err.Error(), Outcome: e.outcome})
		}
		if len(e.errs) > 0 && e.kind != kindKeyInstance {
			continue // its clashes follow from its mistakes, or vanish with them
		}
		for _, why := range e.why {
			if e.kind == kindKeyInstance {
				continue
			}
			p.problems = append(p.problems, Problem{Key: e.key, Entry: e.entryName(), Path: e.path, Reason: why, Outcome: e.outcome})
		}
	}
}

func (p *parser) sortedProblems() []Problem {
	slices.SortStableFunc(p.problems, func(a, b Problem) int {
		return cmp.Or(strings.Compare(a.Key, b.Key), strings.Compare(a.Entry, b.Entry))
	})
	return p.problems
}

// withoutGoneKeys returns in without the VIPs that VIP keys, since
// removed from data, added to it: a removed key is removed on purpose.
func (s *Spec) withoutGoneKeys(in Instance, data map[string]string) Instance {
	gone := func(v string) bool {
		_, present := data[v]
		return !present && slices.Contains(in.keyVIPs, v)
	}
	in.VIPs = slices.DeleteFunc(slices.Clone(in.VIPs), gone)
	in.keyVIPs = slices.DeleteFunc(slices.Clone(in.keyVIPs), gone)
	return in
}

// sameForm reports whether two virtual servers are the same but for
// where they came from.
func sameForm(a, b *VirtualServer) bool {
	x, y := *a, *b
	x.Source, x.Kept, y.Source, y.Kept = "", false, "", false
	return reflect.DeepEqual(x, y)
}

func isZero(k config.Kernel) bool { return reflect.ValueOf(k).IsZero() }

// defaultName is an unnamed instance's name and identity, as in a
// configuration file: "<interface>-<vrid>", with "-v6" for IPv6; on the
// node's interface, which differs between nodes, "vrid-<vrid>".
func defaultName(in *Instance) string {
	name := fmt.Sprintf("%s-%d", in.Interface, in.VRID)
	if in.Interface == "" {
		name = fmt.Sprintf("vrid-%d", in.VRID)
	}
	if fam, _ := in.family(); fam == "ipv6" {
		name += "-v6"
	}
	return name
}

// defaultVSID is an unnamed virtual server's identity: what identifies
// its IPVS service (VIP, port, protocol, or firewall mark), or its VIP,
// port and Service.
func defaultVSID(vs *VirtualServer) string {
	vip := vs.VIP
	if a, err := netip.ParseAddr(vip); err == nil {
		vip = a.Unmap().String()
	}
	switch {
	case vs.FWMark != 0:
		fam := vs.Family
		if fam == "" {
			fam = "ipv4"
		}
		return fmt.Sprintf("fwmark %d/%s", vs.FWMark, fam)
	case vs.Service != "":
		port := "*"
		if vs.Port != 0 {
			port = fmt.Sprint(vs.Port)
		}
		id := fmt.Sprintf("%s:%s %s", vip, port, vs.Service)
		if vs.ServicePort != "" {
			id += ":" + vs.ServicePort
		}
		return id
	}
	proto := vs.Protocol
	if proto == "" {
		proto = "tcp"
	}
	return fmt.Sprintf("%s:%d/%s", vip, vs.Port, strings.ToLower(proto))
}

// checkServiceName checks "namespace/name".
func checkServiceName(s string) error {
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" {
		return errors.New("want namespace/service")
	}
	if msgs := validation.IsDNS1123Label(ns); len(msgs) > 0 {
		return fmt.Errorf("namespace %q: %s", ns, msgs[0])
	}
	if msgs := validation.IsDNS1035Label(name); len(msgs) > 0 {
		return fmt.Errorf("service name %q: %s", name, msgs[0])
	}
	return nil
}
