package kube

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/keepvip/keepvip/config"
	"github.com/keepvip/keepvip/configmap"
	"github.com/keepvip/keepvip/lvs"
)

// The vip-configmap's promises, checked after every step of generated
// edit sequences (add, remove, reorder, mistype, fix, insert clashes,
// break config.yaml, restart) run through two nodes: node-a, with history
// from the first step (restarted now and then through the state it
// saves), and node-b, which starts fresh at random steps.
//
//   - An entry whose text did not change, that ran as written, runs as
//     written: nothing else's fault changes or drops it.
//   - Where both nodes run an instance (by name, or on the same VRID),
//     they run the same VIPs; where both run a virtual service, the same.
//   - Every problem names an entry that is there and at fault: mistyped,
//     or sharing a VRID, name, VIP or virtual service with another; every
//     mistyped entry is named, and so is each entry of a plain clash.
//   - A moment without this node's Node object, or with its interface not
//     found, shrinks nothing.
//
// KEEPVIP_PROPERTY_SEEDS and KEEPVIP_PROPERTY_STEPS make it longer (make
// fuzz does); a failure prints the seed and step to run it again.
func TestConfigMapEditsProperty(t *testing.T) {
	seeds, steps := envInt("KEEPVIP_PROPERTY_SEEDS", 16), envInt("KEEPVIP_PROPERTY_STEPS", 250)
	first := uint64(envInt("KEEPVIP_PROPERTY_FIRST_SEED", 1))
	for seed := first; seed < first+uint64(seeds); seed++ {
		t.Run(fmt.Sprintf("seed-%d", seed), func(t *testing.T) {
			t.Parallel()
			runEdits(t, seed, steps)
		})
	}
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// The model the edits act on.

type mInst struct {
	name, iface string
	vrid        int
	vips        []string
	noAccept    bool
	bad         string // "", "priority", "vrid", "vip"
}

type mVS struct {
	name, vip string
	port      int
	svc       string
	bad       bool
}

type model struct {
	insts  []mInst
	vss    []mVS
	keys   map[string]string
	sel    string // "", "lb!=no", or a bad one
	broken bool
}

var (
	names  = []string{"a", "b", "c", "d", "e", "", ""}
	ifaces = []string{"", "", "eth0", "eth1"}
	vrids  = []int{50, 60, 61, 62, 63}
	pool   = []string{"10.0.0.50", "10.0.0.51", "10.0.0.52", "10.0.0.53", "10.0.0.54", "10.0.0.55", "10.0.0.56", "10.0.0.57"}
	keys   = []string{"10.0.0.50", "10.0.0.51", "10.0.0.52", "10.0.0.58", "10.0.0.59", "224.0.0.18", "127.0.0.1", "web"}
	values = []string{"", "", "default/web", "default/dns", "default/web:PROXY", "Bad/x"}
	badKey = map[string]bool{"224.0.0.18": true, "127.0.0.1": true, "web": true}
	badVal = map[string]bool{"default/web:PROXY": true, "Bad/x": true}
)

func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

func (m *model) clone() *model {
	c := &model{sel: m.sel, broken: m.broken, keys: map[string]string{}}
	for _, in := range m.insts {
		in.vips = slices.Clone(in.vips)
		c.insts = append(c.insts, in)
	}
	c.vss = slices.Clone(m.vss)
	for k, v := range m.keys {
		c.keys[k] = v
	}
	return c
}

func randInst(r *rand.Rand) mInst {
	in := mInst{name: pick(r, names), iface: pick(r, ifaces), vrid: pick(r, vrids), noAccept: r.IntN(8) == 0}
	for n := 1 + r.IntN(2); len(in.vips) < n; {
		if v := pick(r, pool); !slices.Contains(in.vips, v) {
			in.vips = append(in.vips, v)
		}
	}
	return in
}

func randVS(r *rand.Rand) mVS {
	vs := mVS{name: pick(r, []string{"w1", "w2", "w3", ""}), vip: pick(r, pool), port: pick(r, []int{80, 443, 8080})}
	if r.IntN(2) == 0 {
		vs.svc = "default/web"
		if r.IntN(3) == 0 {
			vs.port = 0
		}
	}
	return vs
}

// edit changes m at random and says what it did.
func (m *model) edit(r *rand.Rand) string {
	switch n := r.IntN(100); {
	case n < 14:
		in := randInst(r)
		if len(m.insts) > 0 && r.IntN(2) == 0 {
			// A newcomer taking another's VRID or VIP.
			o := pick(r, m.insts)
			if r.IntN(2) == 0 {
				in.vrid, in.iface = o.vrid, o.iface
			} else {
				in.vips = slices.Compact(append([]string{o.vips[0]}, slices.DeleteFunc(in.vips, func(v string) bool { return v == o.vips[0] })...))
			}
		}
		at := r.IntN(len(m.insts) + 1)
		m.insts = slices.Insert(m.insts, at, in)
		return fmt.Sprintf("insert instance %+v at %d", in, at)
	case n < 22 && len(m.insts) > 0:
		i := r.IntN(len(m.insts))
		m.insts = slices.Delete(m.insts, i, i+1)
		return fmt.Sprintf("delete instances[%d]", i)
	case n < 30:
		r.Shuffle(len(m.insts), func(i, j int) { m.insts[i], m.insts[j] = m.insts[j], m.insts[i] })
		r.Shuffle(len(m.vss), func(i, j int) { m.vss[i], m.vss[j] = m.vss[j], m.vss[i] })
		return "reorder"
	case n < 42 && len(m.insts) > 0:
		i := r.IntN(len(m.insts))
		m.insts[i].bad = pick(r, []string{"priority", "priority", "vrid", "vip", ""})
		return fmt.Sprintf("instances[%d] bad=%q", i, m.insts[i].bad)
	case n < 50 && len(m.insts) > 0:
		i := r.IntN(len(m.insts))
		in := &m.insts[i]
		switch r.IntN(4) {
		case 0:
			in.vrid = pick(r, vrids)
		case 1:
			in.vips = []string{pick(r, pool)}
		case 2:
			in.iface = pick(r, ifaces)
		case 3:
			in.noAccept = !in.noAccept
		}
		return fmt.Sprintf("change instances[%d] to %+v", i, *in)
	case n < 58:
		vs := randVS(r)
		at := r.IntN(len(m.vss) + 1)
		m.vss = slices.Insert(m.vss, at, vs)
		return fmt.Sprintf("insert virtual server %+v at %d", vs, at)
	case n < 63 && len(m.vss) > 0:
		i := r.IntN(len(m.vss))
		m.vss = slices.Delete(m.vss, i, i+1)
		return fmt.Sprintf("delete virtualServers[%d]", i)
	case n < 70 && len(m.vss) > 0:
		i := r.IntN(len(m.vss))
		m.vss[i].bad = !m.vss[i].bad
		return fmt.Sprintf("virtualServers[%d] bad=%v", i, m.vss[i].bad)
	case n < 82:
		k, v := pick(r, keys), pick(r, values)
		m.keys[k] = v
		return fmt.Sprintf("key %s=%q", k, v)
	case n < 88 && len(m.keys) > 0:
		var ks []string
		for k := range m.keys {
			ks = append(ks, k)
		}
		slices.Sort(ks)
		k := pick(r, ks)
		delete(m.keys, k)
		return "delete key " + k
	case n < 93:
		m.broken = !m.broken
		return fmt.Sprintf("config.yaml broken=%v", m.broken)
	case n < 97:
		m.sel = pick(r, []string{"", "lb!=no", "a b c"})
		return fmt.Sprintf("nodeSelector %q", m.sel)
	}
	return "nothing"
}

func (in mInst) yaml() string {
	var f []string
	if in.name != "" {
		f = append(f, "name: "+in.name)
	}
	if in.iface != "" {
		f = append(f, "interface: "+in.iface)
	}
	vrid, vips := in.vrid, slices.Clone(in.vips)
	switch in.bad {
	case "priority":
		f = append(f, "priority: 999")
	case "vrid":
		vrid = 300
	case "vip":
		vips = append(vips, "10.0.0.300")
	}
	f = append(f, fmt.Sprintf("vrid: %d", vrid))
	if in.noAccept {
		f = append(f, "accept: false")
	}
	f = append(f, "vips: ["+strings.Join(vips, ", ")+"]")
	return "{" + strings.Join(f, ", ") + "}"
}

func (vs mVS) yaml() string {
	var f []string
	if vs.name != "" {
		f = append(f, "name: "+vs.name)
	}
	f = append(f, "vip: "+vs.vip)
	if vs.port != 0 {
		f = append(f, fmt.Sprintf("port: %d", vs.port))
	}
	if vs.svc != "" {
		f = append(f, "service: "+vs.svc)
	} else {
		f = append(f, "realServers: [{address: 10.9.0.1}]")
	}
	if vs.bad {
		f = append(f, "scheduler: nope")
	}
	return "{" + strings.Join(f, ", ") + "}"
}

func (m *model) data() map[string]string {
	out := map[string]string{}
	for k, v := range m.keys {
		out[k] = v
	}
	var b strings.Builder
	if m.sel != "" {
		fmt.Fprintf(&b, "nodeSelector: %q\n", m.sel)
	}
	if len(m.insts) > 0 {
		b.WriteString("instances:\n")
		for _, in := range m.insts {
			b.WriteString("- " + in.yaml() + "\n")
		}
	}
	if len(m.vss) > 0 {
		b.WriteString("virtualServers:\n")
		for _, vs := range m.vss {
			b.WriteString("- " + vs.yaml() + "\n")
		}
	}
	if m.broken {
		b.WriteString("instances: [\n")
	}
	if b.Len() > 0 {
		out[configmap.StructuredKey] = b.String()
	}
	return out
}

// Identities, as configmap gives them.

func (in mInst) id() string {
	if in.name != "" {
		return in.name
	}
	vrid := in.vrid
	if in.bad == "vrid" {
		vrid = 300
	}
	if in.iface == "" {
		return fmt.Sprintf("vrid-%d", vrid)
	}
	return fmt.Sprintf("%s-%d", in.iface, vrid)
}

func (vs mVS) id() string {
	switch {
	case vs.name != "":
		return vs.name
	case vs.svc == "":
		return fmt.Sprintf("%s:%d/tcp", vs.vip, vs.port)
	case vs.port == 0:
		return vs.vip + ":* " + vs.svc
	}
	return fmt.Sprintf("%s:%d %s", vs.vip, vs.port, vs.svc)
}

// text is what an entry of a given identity says, to tell whether it
// changed between two versions; "" if it is not there or more than one
// entry has the identity.
func (m *model) text(kind, id string) string {
	var out []string
	switch kind {
	case "instance":
		for _, in := range m.insts {
			if in.id() == id {
				out = append(out, in.yaml())
			}
		}
	case "vs":
		for _, vs := range m.vss {
			if vs.id() == id {
				out = append(out, vs.yaml())
			}
		}
	}
	if len(out) != 1 || m.broken {
		return ""
	}
	return out[0]
}

// A simulated node.
type simNode struct {
	name           string
	spec, prevSpec *configmap.Spec
	cfg            *config.Config
}

func (n *simNode) step(t *testing.T, data map[string]string, c Cluster, h Host) ([]configmap.Problem, []Problem) {
	t.Helper()
	spec, ps := configmap.Parse(data, configmap.DefaultDefaults(), n.spec)
	c.Previous = n.cfg
	cfg, rps := Resolve(spec, c, h)
	if cfg == nil {
		t.Fatalf("%s: Resolve gave no configuration: %v", n.name, rps)
	}
	for _, p := range rps {
		if p.Source == "resolved configuration" {
			t.Fatalf("%s: a clash got past the rules: %v", n.name, p)
		}
	}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("%s: invalid configuration: %v", n.name, err)
	}
	n.spec, n.cfg = spec, cfg
	return ps, rps
}

// restart saves and restores what the daemon keeps in its state directory.
func (n *simNode) restart(t *testing.T) {
	t.Helper()
	if n.spec == nil {
		return // nothing saved yet
	}
	h, err := json.Marshal(n.spec)
	if err != nil {
		t.Fatal(err)
	}
	var back configmap.Spec
	if err := json.Unmarshal(h, &back); err != nil {
		t.Fatal(err)
	}
	c, err := json.Marshal(n.cfg)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(c)
	if err != nil {
		t.Fatalf("the saved configuration does not read back: %v\n%s", err, c)
	}
	n.spec, n.cfg = &back, cfg
}

func runEdits(t *testing.T, seed uint64, steps int) {
	r := rand.New(rand.NewPCG(seed, 9))
	w := threeNodes()
	m := &model{keys: map[string]string{}}
	a := &simNode{name: "node-a"}
	var b *simNode
	var log []string
	fail := func(step int, format string, args ...any) {
		t.Helper()
		from := max(0, len(log)-12)
		t.Fatalf("seed %d step %d: %s\nlast edits:\n  %s\ndata: %v", seed, step, fmt.Sprintf(format, args...), strings.Join(log[from:], "\n  "), m.data())
	}
	prevModel := m.clone()
	var prevFresh *configmap.Spec
	var checked struct{ unchanged, keys, agree, problems int }
	defer func() {
		t.Logf("checked: %d untouched entries kept, %d untouched keys held, %d instances and virtual services both nodes run agree, %d problems blame the right entry",
			checked.unchanged, checked.keys, checked.agree, checked.problems)
		if !t.Failed() && (checked.unchanged == 0 || checked.agree == 0 || checked.problems == 0) {
			t.Errorf("the edits never exercised a property: %+v", checked)
		}
	}()
	for step := 0; step < steps; step++ {
		what := m.edit(r)
		log = append(log, fmt.Sprintf("%d: %s", step, what))
		data := m.data()
		switch {
		case r.IntN(20) == 0:
			a.restart(t)
			log = append(log, "   node-a restarts")
		case r.IntN(15) == 0 || b == nil && r.IntN(4) == 0:
			b = &simNode{name: "node-b"}
			log = append(log, "   node-b starts fresh")
		}
		ps, _ := a.step(t, data, w.cluster("node-a"), host)
		if b != nil {
			b.step(t, data, w.cluster("node-b"), host)
		}
		fresh, _ := configmap.Parse(data, configmap.DefaultDefaults(), nil)

		// Nothing else's fault changes or drops an entry that ran as
		// written and was not touched.
		if prevFresh != nil {
			for _, kind := range []string{"instance", "vs"} {
				for _, id := range specIDs(prevFresh, kind) {
					was, now := prevModel.text(kind, id), m.text(kind, id)
					if was == "" || was != now || strings.Contains(was, "999") || strings.Contains(was, "nope") {
						continue
					}
					// The VIPs of VIP keys stay with their keys (checked
					// below): an instance that lists one may give it up.
					ran, ok := specForm(a.prevSpec, kind, id)
					if written, _ := specForm(prevFresh, kind, id); !ok || !reflect.DeepEqual(withoutKeys(ran, m), withoutKeys(written, m)) {
						continue
					}
					if in, isInst := withoutKeys(ran, m).(configmap.Instance); isInst && len(in.VIPs) == 0 {
						continue // nothing but the VIPs of keys, which follow their keys
					}
					checked.unchanged++
					if got, _ := specForm(a.spec, kind, id); !reflect.DeepEqual(withoutKeys(got, m), withoutKeys(ran, m)) {
						fail(step, "%s %q did not change and ran as written, but now runs as %+v (was %+v)", kind, id, got, ran)
					}
				}
			}
			for k, v := range prevModel.keys {
				if now, ok := m.keys[k]; badKey[k] || !ok || now != v || prevModel.broken != m.broken || !holds(prevFresh, k) || !holds(a.prevSpec, k) {
					continue
				}
				// Held by a structured instance that lists it, which was
				// edited: that is an edit of where the VIP is held.
				if holder := listedBy(prevModel, k); holder != "" && holder != m.listing(k) {
					continue
				}
				checked.keys++
				if !holds(a.spec, k) {
					fail(step, "key %s did not change and its VIP was held, but is not now: instances %v, were %v", k, instanceVIPs(a.spec), instanceVIPs(a.prevSpec))
				}
			}
		}

		// The two nodes agree wherever both run something.
		if b != nil {
			checked.agree += agree(t, fail, step, a, b)
		}
		checked.problems += len(ps)

		// Every problem names an entry that is there and at fault.
		blame(fail, step, m, ps)

		// A moment without this node's Node or its interface shrinks
		// nothing.
		if r.IntN(25) == 0 {
			c := w.cluster("node-a")
			c.Nodes = slices.DeleteFunc(slices.Clone(c.Nodes), func(n *corev1.Node) bool { return n.Name == "node-a" })
			c.Previous = a.cfg
			spec, _ := configmap.Parse(data, configmap.DefaultDefaults(), a.spec)
			if cfg, _ := Resolve(spec, c, host); !reflect.DeepEqual(cfg, a.cfg) {
				fail(step, "without its Node object, node-a runs %+v instead of %+v", cfg, a.cfg)
			}
			c = w.cluster("node-a")
			c.Previous = a.cfg
			cfg, rps := Resolve(spec, c, fakeHost{})
			for _, in := range a.cfg.Instances {
				if !slices.ContainsFunc(cfg.Instances, func(x config.Instance) bool { return reflect.DeepEqual(x, in) }) {
					fail(step, "with its interface not found, node-a drops %s: %v", in.Name, rps)
				}
			}
		}
		a.prevSpec = a.spec
		prevModel, prevFresh = m.clone(), fresh
	}
}

func specIDs(s *configmap.Spec, kind string) []string {
	var out []string
	if kind == "instance" {
		for _, in := range s.Instances {
			if in.Source != "VIP keys" {
				out = append(out, in.ID())
			}
		}
		return out
	}
	for _, vs := range s.VirtualServers {
		if strings.HasPrefix(vs.Source, configmap.StructuredKey) {
			out = append(out, vs.ID())
		}
	}
	return out
}

// specForm is the form s runs of an entry; false if none, or several.
func specForm(s *configmap.Spec, kind, id string) (any, bool) {
	if s == nil {
		return nil, false
	}
	var out []any
	if kind == "instance" {
		for _, in := range s.Instances {
			if in.ID() == id && in.Source != "VIP keys" {
				in.Kept = false // the form, however it came to run
				out = append(out, in)
			}
		}
	} else {
		for _, vs := range s.VirtualServers {
			if vs.ID() == id && strings.HasPrefix(vs.Source, configmap.StructuredKey) {
				vs.Kept = false
				out = append(out, vs)
			}
		}
	}
	if len(out) != 1 {
		return nil, false
	}
	return out[0], true
}

// holds reports whether s holds the VIP of key k in an instance.
func holds(s *configmap.Spec, k string) bool {
	if s == nil || s.NoNodes {
		return false
	}
	for _, in := range s.Instances {
		if slices.Contains(in.VIPs, k) {
			return true
		}
	}
	return false
}

// agree checks that the two nodes run the same wherever both run
// something: instances by name and by VRID, virtual services by key.
func agree(t *testing.T, fail func(int, string, ...any), step int, a, b *simNode) (n int) {
	t.Helper()
	for _, x := range a.spec.Instances {
		if a.spec.NoNodes || b.spec.NoNodes {
			break // one runs nothing: only the configurations tell
		}
		for _, y := range b.spec.Instances {
			x.Kept, y.Kept = false, false
			if x.ID() == y.ID() && !reflect.DeepEqual(x, y) {
				fail(step, "instance %q: %+v on node-a, %+v on node-b", x.ID(), x, y)
			}
		}
	}
	general := func(in config.Instance) config.Instance {
		in.Priority, in.UnicastPeers, in.SourceAddress = nil, nil, ""
		return in
	}
	for _, x := range a.cfg.Instances {
		vx, _ := x.Check("")
		for _, y := range b.cfg.Instances {
			vy, _ := y.Check("")
			sameSlot := vx.VRID == vy.VRID && vx.Family() == vy.Family() && vx.Interface == vy.Interface
			if x.Name == y.Name || sameSlot {
				n++
			}
			if (x.Name == y.Name || sameSlot) && !reflect.DeepEqual(general(x), general(y)) {
				fail(step, "node-a runs %+v and node-b %+v", general(x), general(y))
			}
		}
	}
	keys := map[lvs.Key]config.VirtualServer{}
	for _, vs := range a.cfg.VirtualServers {
		s, _ := vs.Check("")
		keys[s.Key] = vs
	}
	for _, vs := range b.cfg.VirtualServers {
		s, _ := vs.Check("")
		if other, ok := keys[s.Key]; ok {
			n++
			if !reflect.DeepEqual(other, vs) {
				fail(step, "virtual service %s: %+v on node-a, %+v on node-b", s.Key, other, vs)
			}
		}
	}
	return n
}

// Claims of model entries, to tell which are at fault, independently of
// the configmap package: what an entry can be read to claim.
func (in mInst) slot() (string, bool) {
	if in.bad == "vrid" {
		return "", false
	}
	return strconv.Itoa(in.vrid), true
}

func instancesClash(x, y mInst) bool {
	if x.id() == y.id() {
		return true
	}
	if sx, ok := x.slot(); ok {
		if sy, ok := y.slot(); ok && sx == sy && (x.iface == y.iface || x.iface == "" || y.iface == "") {
			return true
		}
	}
	for _, v := range x.vips {
		if slices.Contains(y.vips, v) {
			return true
		}
	}
	return false
}

func (vs mVS) service() string {
	if vs.svc != "" {
		return ""
	}
	return netip.AddrPortFrom(netip.MustParseAddr(vs.vip), uint16(vs.port)).String()
}

func vssClash(x, y mVS) bool {
	return x.id() == y.id() || x.service() != "" && x.service() == y.service()
}

func acceptClash(in mInst, vs mVS) bool { return in.noAccept && slices.Contains(in.vips, vs.vip) }

// blame checks every problem names an entry that is there and at fault,
// and every entry that surely is, is named.
func blame(fail func(int, string, ...any), step int, m *model, ps []configmap.Problem) {
	named := map[string]bool{}
	data := m.data()
	for _, p := range ps {
		if _, ok := data[p.Key]; !ok {
			fail(step, "problem names key %q, which is not there: %v", p.Key, p)
		}
		named[p.Key+"|"+p.Entry] = true
		if p.Key != configmap.StructuredKey {
			v := m.keys[p.Key]
			// A key whose VIP waits for config.yaml to be readable.
			plausible := badKey[p.Key] || badVal[v] || m.broken && strings.Contains(p.Reason, "waits")
			for _, in := range m.insts {
				plausible = plausible || in.vrid == 50 || slices.ContainsFunc(in.vips, func(s string) bool { _, isKey := m.keys[s]; return isKey })
			}
			if !plausible {
				fail(step, "key %s is named but not at fault: %v", p.Key, p)
			}
			continue
		}
		switch {
		case p.Entry == "" && m.broken:
		case p.Entry == "nodeSelector" && m.sel == "a b c":
		case strings.HasPrefix(p.Entry, "instance "):
			id, _ := strconv.Unquote(strings.TrimPrefix(p.Entry, "instance "))
			ok := false
			for i, in := range m.insts {
				if in.id() != id {
					continue
				}
				ok = ok || in.bad != "" || (in.vrid == 50 || slices.ContainsFunc(in.vips, func(s string) bool { _, isKey := m.keys[s]; return isKey })) && len(m.keys) > 0
				for j, o := range m.insts {
					ok = ok || i != j && instancesClash(in, o)
				}
				for _, vs := range m.vss {
					ok = ok || acceptClash(in, vs)
				}
			}
			if !ok {
				fail(step, "instance %q is named but not at fault: %v", id, p)
			}
		case strings.HasPrefix(p.Entry, "virtual server "):
			id, _ := strconv.Unquote(strings.TrimPrefix(p.Entry, "virtual server "))
			ok := false
			for i, vs := range m.vss {
				if vs.id() != id {
					continue
				}
				ok = ok || vs.bad
				for j, o := range m.vss {
					ok = ok || i != j && vssClash(vs, o)
				}
				for _, in := range m.insts {
					ok = ok || acceptClash(in, vs)
				}
			}
			if !ok {
				fail(step, "virtual server %q is named but not at fault: %v", id, p)
			}
		default:
			fail(step, "problem names no entry that is there: %v", p)
		}
	}
	want := func(key, entry, why string) {
		if !named[key+"|"+entry] {
			fail(step, "%s %s is not named: problems %v", key, entry, ps)
		}
	}
	for k, v := range m.keys {
		if badKey[k] || badVal[v] {
			want(k, "", "bad key")
		}
	}
	if m.broken {
		want(configmap.StructuredKey, "", "unreadable")
		return
	}
	if m.sel == "a b c" {
		want(configmap.StructuredKey, "nodeSelector", "bad selector")
	}
	for i, in := range m.insts {
		name := strconv.Quote(in.id())
		if in.bad != "" {
			want(configmap.StructuredKey, "instance "+name, "mistyped")
		}
		for j, o := range m.insts {
			if i != j && instancesClash(in, o) {
				want(configmap.StructuredKey, "instance "+name, "clash with "+o.yaml())
			}
		}
		for _, vs := range m.vss {
			if acceptClash(in, vs) {
				want(configmap.StructuredKey, "instance "+name, "accept")
				want(configmap.StructuredKey, "virtual server "+strconv.Quote(vs.id()), "accept")
			}
		}
	}
	for i, vs := range m.vss {
		name := strconv.Quote(vs.id())
		if vs.bad {
			want(configmap.StructuredKey, "virtual server "+name, "mistyped")
		}
		for j, o := range m.vss {
			if i != j && vssClash(vs, o) {
				want(configmap.StructuredKey, "virtual server "+name, "clash")
			}
		}
	}
}

// listedBy is the text of the instances that list VIP v.
func listedBy(m *model, v string) string { return m.listing(v) }

func (m *model) listing(v string) string {
	var out []string
	for _, in := range m.insts {
		if slices.Contains(in.vips, v) {
			out = append(out, in.yaml())
		}
	}
	return strings.Join(out, " ")
}

// withoutKeys is a form without the VIPs that are VIP keys of m.
func withoutKeys(form any, m *model) any {
	in, ok := form.(configmap.Instance)
	if !ok {
		return form
	}
	in.VIPs = slices.DeleteFunc(slices.Clone(in.VIPs), func(v string) bool {
		_, isKey := m.keys[v]
		return isKey && !badKey[v]
	})
	return in
}

func instanceVIPs(s *configmap.Spec) []string {
	var out []string
	for _, in := range s.Instances {
		out = append(out, fmt.Sprintf("%s%v", in.ID(), in.VIPs))
	}
	return out
}
