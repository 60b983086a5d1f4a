package e2e

// End-to-end tests of keepvip itself: three keepvip nodes (a, b, c) and a
// client on the lab bridge, with 100 ms adverts. Every figure asserted is a
// protocol number (Master_Down_Interval, Skew_Time) plus a slack for a
// race-built daemon on a loaded machine; the measured values are logged with
// the prefix "figure:".

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"

	"github.com/keepvip/keepvip/internal/daemon"
	"github.com/keepvip/keepvip/test/framework/lab"
	"github.com/keepvip/keepvip/vrrp"
)

const (
	// clAdv is the advertisement interval of every instance.
	clAdv = 100 * time.Millisecond
	// clSlack is what timing assertions allow beyond the protocol figure:
	// a race-built daemon on two loaded cores.
	clSlack = 150 * time.Millisecond
	// clWait bounds every wait for a state that is not itself measured.
	clWait = 5 * time.Second
	// clVRID is the VRID of every instance; the IPv4 and the IPv6 router
	// share it, as RFC 9568 §5.2.3 allows.
	clVRID = 51
)

var (
	clVIP4   = netip.MustParsePrefix("192.0.2.100/24")
	clVIP4b  = netip.MustParsePrefix("192.0.2.101/32")
	clVIP6LL = netip.MustParsePrefix("fe80::52/64")
	clVIP6   = netip.MustParsePrefix("2001:db8::100/64")

	// clPrio are the usual priorities: a is the preferred master.
	clPrio = map[string]int{"a": 150, "b": 120, "c": 100}

	clBroadcast = "ff:ff:ff:ff:ff:ff"
)

// clNodeAddrs are the nodes a cluster may have, in the order they are
// added (which fixes their MACs, 02:00:00:00:00:01...).
var clNodeAddrs = []struct{ name, v4, v6 string }{
	{"a", "192.0.2.1/24", "2001:db8::1/64"},
	{"b", "192.0.2.2/24", "2001:db8::2/64"},
	{"c", "192.0.2.3/24", "2001:db8::3/64"},
	{"client", "192.0.2.10/24", "2001:db8::10/64"},
	{"d", "192.0.2.4/24", "2001:db8::4/64"},
}

// clSkew is Skew_Time of RFC 9568 §6.1 for prio at interval clAdv.
func clSkew(prio int) time.Duration { return time.Duration(256-prio) * clAdv / 256 }

// clMDI is Master_Down_Interval: 3 × Master_Adver_Interval + Skew_Time.
func clMDI(prio int) time.Duration { return 3*clAdv + clSkew(prio) }

// clCluster is a lab with keepvip nodes and a client.
type clCluster struct {
	t      *testing.T
	l      *lab.Lab
	nodes  map[string]*lab.Node
	kv     map[string]*lab.Keepvip // the current daemon of each node
	all    []*lab.Keepvip          // every daemon started, for failure dumps
	client *lab.Node
}

// newClCluster builds a lab with nodes a, b, c and client.
func newClCluster(t *testing.T) *clCluster {
	t.Helper()
	l := lab.ForTest(t)
	c := &clCluster{t: t, l: l, nodes: map[string]*lab.Node{}, kv: map[string]*lab.Keepvip{}}
	t.Cleanup(c.cleanup) // runs before the lab closes
	for _, name := range []string{"a", "b", "c", "client"} {
		c.addNode(name)
	}
	c.client = c.nodes["client"]
	return c
}

func (c *clCluster) addNode(name string) *lab.Node {
	c.t.Helper()
	for _, na := range clNodeAddrs {
		if na.name == name {
			n, err := c.l.AddNode(name, netip.MustParsePrefix(na.v4), netip.MustParsePrefix(na.v6))
			if err != nil {
				c.t.Fatal(err)
			}
			c.nodes[name] = n
			return n
		}
	}
	c.t.Fatalf("no node %q in clNodeAddrs", name)
	return nil
}

// cleanup dumps the status and log of every daemon when the test failed.
func (c *clCluster) cleanup() {
	if !c.t.Failed() {
		return
	}
	for _, k := range c.all {
		name := k.Node().Name
		select {
		case <-k.Proc().Exited():
			c.t.Logf("%s: keepvip (pid %d) has exited: %v", name, k.Proc().PID(), k.Proc().Wait())
		default:
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			s, err := c.status(ctx, k)
			cancel()
			if err != nil {
				c.t.Logf("%s: status: %v", name, err)
			} else {
				b, _ := json.MarshalIndent(s, "", "  ")
				c.t.Logf("%s: status of keepvip (pid %d):\n%s", name, k.Proc().PID(), b)
			}
		}
		c.t.Logf("%s: log of keepvip (pid %d) without debug lines, last part:\n%s", name, k.Proc().PID(), clTail(clNoDebug(k.Log()), 6000))
	}
}

func clNoDebug(log string) string {
	var out []string
	for _, l := range strings.Split(log, "\n") {
		if !strings.Contains(l, "level=DEBUG") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func clTail(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return "..." + s[len(s)-n:]
}

// clInst is one instance of a generated configuration.
type clInst struct {
	name  string
	prio  int
	vips  []netip.Prefix
	peers []netip.Addr
	extra []string // further fields, "key: value"
}

func clV4(prio int, extra ...string) clInst {
	return clInst{name: "v4", prio: prio, vips: []netip.Prefix{clVIP4}, extra: extra}
}

func clV6(prio int, extra ...string) clInst {
	return clInst{name: "v6", prio: prio, vips: []netip.Prefix{clVIP6LL, clVIP6}, extra: extra}
}

// clConfig writes a keepvip configuration.
func clConfig(insts ...clInst) string {
	var b strings.Builder
	b.WriteString("instances:\n")
	for _, in := range insts {
		fmt.Fprintf(&b, "- name: %s\n  interface: eth0\n  vrid: %d\n  priority: %d\n  advertInterval: %v\n", in.name, clVRID, in.prio, clAdv)
		vips := make([]string, len(in.vips))
		for i, v := range in.vips {
			vips[i] = v.String()
		}
		fmt.Fprintf(&b, "  vips: [%s]\n", strings.Join(vips, ", "))
		if len(in.peers) > 0 {
			peers := make([]string, len(in.peers))
			for i, p := range in.peers {
				peers[i] = p.String()
			}
			fmt.Fprintf(&b, "  unicastPeers: [%s]\n", strings.Join(peers, ", "))
		}
		for _, e := range in.extra {
			fmt.Fprintf(&b, "  %s\n", e)
		}
	}
	return b.String()
}

// start runs keepvip with cfg on node name.
func (c *clCluster) start(name, cfg string, args ...string) *lab.Keepvip {
	c.t.Helper()
	k, err := c.nodes[name].StartKeepvip(cfg, args...)
	if err != nil {
		c.t.Fatal(err)
	}
	c.kv[name] = k
	c.all = append(c.all, k)
	return k
}

// startABC starts a, b and c with the configuration cfg returns for each.
func (c *clCluster) startABC(cfg func(name string) string) {
	c.t.Helper()
	for _, n := range []string{"a", "b", "c"} {
		c.start(n, cfg(n))
	}
}

func (c *clCluster) v4(name string) netip.Addr { return c.nodes[name].IPv4.Addr() }
func (c *clCluster) ll(name string) netip.Addr { return c.nodes[name].LinkLocal }

// status asks a daemon for its status.
func (c *clCluster) status(ctx context.Context, k *lab.Keepvip) (*daemon.Status, error) {
	return k.Status(ctx)
}

// inst returns the status of one instance of node name's daemon.
func (c *clCluster) inst(ctx context.Context, name, inst string) (vrrp.Status, error) {
	s, err := c.status(ctx, c.kv[name])
	if err != nil {
		return vrrp.Status{}, err
	}
	for _, in := range s.Instances {
		if in.Name == inst {
			return in, nil
		}
	}
	return vrrp.Status{}, fmt.Errorf("%s: no instance %q (yet)", name, inst)
}

// mustInst is inst that fails the test on error.
func (c *clCluster) mustInst(name, inst string) vrrp.Status {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clWait)
	defer cancel()
	s, err := c.inst(ctx, name, inst)
	if err != nil {
		c.t.Fatal(err)
	}
	return s
}

// alive fails the test if node name's daemon has exited.
func (c *clCluster) alive(name string) {
	c.t.Helper()
	k := c.kv[name]
	select {
	case <-k.Proc().Exited():
		c.t.Fatalf("%s: keepvip exited (%v):\n%s", name, k.Proc().Wait(), clTail(clNoDebug(k.Log()), 3000))
	default:
	}
}

// waitFor polls cond every 10 ms until it holds, failing the test after
// timeout with cond's last description of what it saw.
func (c *clCluster) waitFor(timeout time.Duration, what string, cond func(ctx context.Context) (bool, string)) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	last := ""
	for {
		ok, detail := cond(ctx)
		if ok {
			return
		}
		if detail != "" {
			last = detail
		}
		select {
		case <-ctx.Done():
			c.t.Fatalf("waited %v for %s; last seen: %s", timeout, what, last)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func clBrief(s vrrp.Status) string {
	return fmt.Sprintf("%s state=%v prio=%d master=%v/%d vipsInstalled=%v fault=%q", s.Name, s.State, s.Priority, s.Master, s.MasterPriority, s.VIPsInstalled, s.Fault)
}

// waitInst waits until an instance's status satisfies ok.
func (c *clCluster) waitInst(name, inst, what string, ok func(vrrp.Status) bool) vrrp.Status {
	c.t.Helper()
	var st vrrp.Status
	c.waitFor(clWait, fmt.Sprintf("%s/%s: %s", name, inst, what), func(ctx context.Context) (bool, string) {
		c.alive(name)
		s, err := c.inst(ctx, name, inst)
		if err != nil {
			return false, err.Error()
		}
		st = s
		return ok(s), clBrief(s)
	})
	return st
}

func (c *clCluster) waitState(name, inst string, want vrrp.State) vrrp.Status {
	c.t.Helper()
	return c.waitInst(name, inst, want.String(), func(s vrrp.Status) bool { return s.State == want })
}

// waitBackupOf waits until the instance is BACKUP following master with
// priority prio.
func (c *clCluster) waitBackupOf(name, inst string, master netip.Addr, prio int) vrrp.Status {
	c.t.Helper()
	return c.waitInst(name, inst, fmt.Sprintf("BACKUP following %v/%d", master, prio), func(s vrrp.Status) bool {
		return s.State == vrrp.StateBackup && s.Master == master && int(s.MasterPriority) == prio
	})
}

// clLast returns the last transition to state to.
func clLast(s vrrp.Status, to vrrp.State) (vrrp.Transition, bool) {
	for i := len(s.Transitions) - 1; i >= 0; i-- {
		if s.Transitions[i].To == to {
			return s.Transitions[i], true
		}
	}
	return vrrp.Transition{}, false
}

// mustLast is clLast that fails the test when there is none.
func (c *clCluster) mustLast(s vrrp.Status, node string, to vrrp.State) vrrp.Transition {
	c.t.Helper()
	tr, ok := clLast(s, to)
	if !ok {
		c.t.Fatalf("%s/%s: no transition to %v in %+v", node, s.Name, to, s.Transitions)
	}
	return tr
}

// since returns the transitions at or after t.
func clSince(s vrrp.Status, t time.Time) []vrrp.Transition {
	var out []vrrp.Transition
	for _, tr := range s.Transitions {
		if !tr.At.Before(t) {
			out = append(out, tr)
		}
	}
	return out
}

func clTrString(trs []vrrp.Transition) string {
	var parts []string
	for _, tr := range trs {
		parts = append(parts, fmt.Sprintf("%s %v->%v (%s)", tr.At.Format("15:04:05.000"), tr.From, tr.To, tr.Reason))
	}
	return strings.Join(parts, "; ")
}

// keepvipNodes lists the nodes that run (or ran) keepvip, sorted.
func (c *clCluster) keepvipNodes() []string {
	var names []string
	for n := range c.kv {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// wantVIPs checks that the VIPs are on holder (with their prefix length)
// and on no other keepvip node.
func (c *clCluster) wantVIPs(holder string, vips ...netip.Prefix) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clWait)
	defer cancel()
	for _, name := range c.keepvipNodes() {
		addrs, err := c.nodes[name].Addrs(ctx)
		if err != nil {
			c.t.Fatal(err)
		}
		for _, v := range vips {
			i := slices.IndexFunc(addrs, func(p netip.Prefix) bool { return p.Addr() == v.Addr() })
			switch {
			case i >= 0 && name != holder:
				c.t.Errorf("VIP %v is on %s; want it on %s only (addresses of %s: %v)", v, name, holder, name, addrs)
			case i < 0 && name == holder:
				c.t.Errorf("VIP %v is not on %s (addresses: %v)", v, name, addrs)
			case i >= 0 && addrs[i] != v:
				c.t.Errorf("VIP on %s is %v, want %v", name, addrs[i], v)
			}
		}
	}
}

// hasAddr reports whether a is on node name.
func (c *clCluster) hasAddr(name string, a netip.Addr) bool {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clWait)
	defer cancel()
	ok, err := c.nodes[name].HasAddr(ctx, a)
	if err != nil {
		c.t.Fatal(err)
	}
	return ok
}

// probe starts a 1 ms prober from the client to target and waits for its
// first reply.
func (c *clCluster) probe(target netip.Addr) *lab.Prober {
	c.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	c.t.Cleanup(cancel)
	p, err := lab.StartProber(ctx, c.client, target, time.Millisecond)
	if err != nil {
		c.t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, clWait)
	defer wcancel()
	if _, err := p.WaitReplyAfter(wctx, time.Now()); err != nil {
		c.t.Fatal(err)
	}
	return p
}

// watch starts an advert watcher in the client.
func (c *clCluster) watch() *lab.AdvertWatcher {
	c.t.Helper()
	w, err := lab.StartAdvertWatcher(c.client)
	if err != nil {
		c.t.Fatal(err)
	}
	return w
}

// waitAdvert waits for an advert (seen at or after since) that pred accepts.
func (c *clCluster) waitAdvert(w *lab.AdvertWatcher, since time.Time, what string, pred func(lab.Advert) bool) lab.Advert {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clWait)
	defer cancel()
	a, err := w.WaitAdvertSince(ctx, since, pred)
	if err != nil {
		c.t.Fatalf("%s: %v", what, err)
	}
	return a
}

// lastAdvertFrom returns the last advert src sent for clVRID.
func clLastAdvertFrom(w *lab.AdvertWatcher, src netip.Addr) (lab.Advert, bool) {
	advs := w.Adverts()
	for i := len(advs) - 1; i >= 0; i-- {
		if advs[i].Src == src && advs[i].VRID == clVRID {
			return advs[i], true
		}
	}
	return lab.Advert{}, false
}

// neighMAC returns the client's neighbour entry (MAC) for a, "" if none.
func (c *clCluster) neighMAC(a netip.Addr) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clWait)
	defer cancel()
	out, err := c.client.Exec(ctx, "ip", "-j", "neigh", "show", "to", a.String(), "dev", "eth0")
	if err != nil {
		c.t.Fatal(err)
	}
	var ns []struct {
		Dst    string `json:"dst"`
		LLAddr string `json:"lladdr"`
	}
	if err := json.Unmarshal(out, &ns); err != nil {
		c.t.Fatalf("ip neigh: %v: %s", err, out)
	}
	for _, n := range ns {
		if n.Dst == a.String() {
			return n.LLAddr
		}
	}
	return ""
}

// wantReachedVia pings vip from the client and checks that the client's
// neighbour entry for it is node holder's MAC.
func (c *clCluster) wantReachedVia(vip netip.Addr, holder string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clWait)
	defer cancel()
	if _, err := c.client.Ping(ctx, vip); err != nil {
		c.t.Fatal(err)
	}
	want := c.nodes[holder].MAC.String()
	c.waitFor(2*time.Second, fmt.Sprintf("client neighbour entry of %v = %s's MAC %s", vip, holder, want), func(context.Context) (bool, string) {
		got := c.neighMAC(vip)
		return got == want, "lladdr " + got
	})
}

// clAddrProto returns the IFA_PROTO mark of address a on node n.
func clAddrProto(n *lab.Node, a netip.Addr) (proto uint8, found bool, err error) {
	const ifaProto = 11 // IFA_PROTO, include/uapi/linux/if_addr.h
	err = n.Do(func() error {
		fam := unix.AF_INET
		if a.Is6() {
			fam = unix.AF_INET6
		}
		req := nl.NewNetlinkRequest(unix.RTM_GETADDR, unix.NLM_F_DUMP)
		req.AddData(nl.NewIfAddrmsg(fam))
		msgs, err := req.Execute(unix.NETLINK_ROUTE, unix.RTM_NEWADDR)
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if len(m) < unix.SizeofIfAddrmsg {
				continue
			}
			attrs, err := nl.ParseRouteAttr(m[unix.SizeofIfAddrmsg:])
			if err != nil {
				return err
			}
			var addr netip.Addr
			var p uint8
			for _, at := range attrs {
				switch at.Attr.Type {
				case unix.IFA_LOCAL, unix.IFA_ADDRESS:
					if x, ok := netip.AddrFromSlice(at.Value); ok && (!addr.IsValid() || at.Attr.Type == unix.IFA_LOCAL) {
						addr = x.Unmap()
					}
				case ifaProto:
					if len(at.Value) > 0 {
						p = at.Value[0]
					}
				}
			}
			if addr == a {
				proto, found = p, true
			}
		}
		return nil
	})
	return proto, found, err
}

// clWithin checks lo <= got <= hi.
func clWithin(t *testing.T, what string, got, lo, hi time.Duration) {
	t.Helper()
	if got < lo || got > hi {
		t.Errorf("%s = %v, want within [%v, %v]", what, got, lo, hi)
	}
}

// ---------------------------------------------------------------------------
// 1. Election

func TestClusterElection(t *testing.T) {
	t.Run("priorities", func(t *testing.T) {
		c := newClCluster(t)
		c.startABC(func(n string) string { return clConfig(clV4(clPrio[n])) })
		st := c.waitState("a", "v4", vrrp.StateMaster)
		for _, n := range []string{"b", "c"} {
			s := c.waitBackupOf(n, "v4", c.v4("a"), 150)
			if got, want := time.Duration(s.MasterDownInterval), clMDI(clPrio[n]); got != want {
				t.Errorf("%s: masterDownInterval %v, want %v (3 × %v + (256-%d) × %v / 256)", n, got, want, clAdv, clPrio[n], clAdv)
			}
			if time.Duration(s.MasterAdvertInterval) != clAdv {
				t.Errorf("%s: masterAdvertInterval %v, want %v", n, s.MasterAdvertInterval, clAdv)
			}
			if s.VIPsInstalled {
				t.Errorf("%s: BACKUP reports vipsInstalled", n)
			}
		}
		st = c.mustInst("a", "v4")
		if st.State != vrrp.StateMaster || st.Master != c.v4("a") || st.MasterPriority != 150 || !st.VIPsInstalled || st.Source != c.v4("a") {
			t.Errorf("a: %s source=%v, want MASTER, master %v/150, VIPs installed, source %v", clBrief(st), st.Source, c.v4("a"), c.v4("a"))
		}
		c.wantVIPs("a", clVIP4)
		c.wantReachedVia(clVIP4.Addr(), "a")
		// Stable: nothing moves over several intervals.
		time.Sleep(5 * clAdv)
		for _, n := range []string{"a", "b", "c"} {
			s := c.mustInst(n, "v4")
			want := vrrp.StateBackup
			if n == "a" {
				want = vrrp.StateMaster
			}
			if s.State != want {
				t.Errorf("%s: %v after settling, want %v; transitions %s", n, s.State, want, clTrString(s.Transitions))
			}
		}
	})

	// With equal priorities the address breaks the tie (RFC 9568 §6.4.3
	// (745)) when routers meet as masters. The nodes start partitioned so
	// that all three are masters, then join.
	t.Run("equal-priorities", func(t *testing.T) {
		c := newClCluster(t)
		for _, n := range []string{"a", "b", "c"} {
			if err := c.l.CutLink(c.nodes[n]); err != nil {
				t.Fatal(err)
			}
		}
		c.startABC(func(string) string { return clConfig(clV4(100), clV6(100)) })
		for _, n := range []string{"a", "b", "c"} {
			c.waitState(n, "v4", vrrp.StateMaster)
			c.waitState(n, "v6", vrrp.StateMaster)
		}
		heal := time.Now()
		for _, n := range []string{"a", "b", "c"} {
			if err := c.l.HealLink(c.nodes[n]); err != nil {
				t.Fatal(err)
			}
		}
		var conv time.Duration
		for _, n := range []string{"a", "b"} {
			for inst, master := range map[string]netip.Addr{"v4": c.v4("c"), "v6": c.ll("c")} {
				s := c.waitBackupOf(n, inst, master, 100)
				tr := c.mustLast(s, n, vrrp.StateBackup)
				if !strings.Contains(tr.Reason, "same priority") || !strings.Contains(tr.Reason, "higher address") {
					t.Errorf("%s/%s: stepped down with reason %q, want the same priority and a higher address", n, inst, tr.Reason)
				}
				conv = max(conv, tr.At.Sub(heal))
			}
		}
		for _, inst := range []string{"v4", "v6"} {
			s := c.mustInst("c", inst)
			if s.State != vrrp.StateMaster || len(s.Transitions) != 2 {
				t.Errorf("c/%s: %s, transitions %s; want MASTER since startup", inst, clBrief(s), clTrString(s.Transitions))
			}
		}
		c.wantVIPs("c", clVIP4, clVIP6LL, clVIP6)
		t.Logf("figure: equal priorities: three masters joined, c (highest address) alone master %v after the heal", conv.Round(time.Millisecond))
		if conv > 2*clAdv+clSlack {
			t.Errorf("convergence %v after the heal, want <= 2 × %v + %v", conv, clAdv, clSlack)
		}
	})

	// RFC 9568 §6.4.2 (460)-(470): a backup preempts only a master of lower
	// priority, so with equal priorities the first master stays master
	// even though the others have higher addresses.
	t.Run("equal-priorities-first-master-stays", func(t *testing.T) {
		c := newClCluster(t)
		c.start("a", clConfig(clV4(100)))
		c.waitState("a", "v4", vrrp.StateMaster)
		c.start("b", clConfig(clV4(100)))
		c.start("c", clConfig(clV4(100)))
		for _, n := range []string{"b", "c"} {
			c.waitBackupOf(n, "v4", c.v4("a"), 100)
		}
		time.Sleep(5 * clAdv)
		for _, n := range []string{"b", "c"} {
			s := c.mustInst(n, "v4")
			if s.State != vrrp.StateBackup || len(s.Transitions) != 1 {
				t.Errorf("%s: %s, transitions %s; want BACKUP since startup", n, clBrief(s), clTrString(s.Transitions))
			}
		}
		c.wantVIPs("a", clVIP4)
	})

	// An IPv4 and an IPv6 router with the same VRID elect independently:
	// a for IPv4, c for IPv6.
	t.Run("dual-stack", func(t *testing.T) {
		c := newClCluster(t)
		w := c.watch()
		prio6 := map[string]int{"a": 100, "b": 120, "c": 150}
		c.startABC(func(n string) string { return clConfig(clV4(clPrio[n]), clV6(prio6[n])) })
		c.waitState("a", "v4", vrrp.StateMaster)
		c.waitState("c", "v6", vrrp.StateMaster)
		for _, n := range []string{"b", "c"} {
			c.waitBackupOf(n, "v4", c.v4("a"), 150)
		}
		for _, n := range []string{"a", "b"} {
			s := c.waitBackupOf(n, "v6", c.ll("c"), 150)
			if s.Source != c.ll(n) {
				t.Errorf("%s/v6: source %v, want its link-local address %v", n, s.Source, c.ll(n))
			}
			if s.Family != "ipv6" {
				t.Errorf("%s/v6: family %q", n, s.Family)
			}
		}
		c.wantVIPs("a", clVIP4)
		c.wantVIPs("c", clVIP6LL, clVIP6)
		// On the wire: the IPv6 advert lists the link-local VIP first
		// (RFC 9568 §5.2.9), both are version 3 with TTL/hop limit 255.
		adv6 := c.waitAdvert(w, time.Time{}, "IPv6 advert from c", func(a lab.Advert) bool { return a.Src == c.ll("c") && a.VRID == clVRID })
		if want := []netip.Addr{clVIP6LL.Addr(), clVIP6.Addr()}; !slices.Equal(adv6.Addrs, want) {
			t.Errorf("IPv6 advert lists %v, want %v (link-local first)", adv6.Addrs, want)
		}
		if adv6.Dst != vrrp.GroupIPv6 || adv6.TTL != 255 || adv6.Version != 3 || adv6.Priority != 150 || adv6.Interval != clAdv {
			t.Errorf("IPv6 advert: %v", adv6)
		}
		adv4 := c.waitAdvert(w, time.Time{}, "IPv4 advert from a", func(a lab.Advert) bool { return a.Src == c.v4("a") && a.VRID == clVRID })
		if !slices.Equal(adv4.Addrs, []netip.Addr{clVIP4.Addr()}) || adv4.Dst != vrrp.GroupIPv4 || adv4.TTL != 255 || adv4.Version != 3 || adv4.Priority != 150 || adv4.Interval != clAdv {
			t.Errorf("IPv4 advert: %v", adv4)
		}
		// Once every router has settled, only the two masters advertise.
		var settled time.Time
		for _, n := range []string{"a", "b", "c"} {
			for _, inst := range []string{"v4", "v6"} {
				s := c.mustInst(n, inst)
				if at := s.Transitions[len(s.Transitions)-1].At; at.After(settled) {
					settled = at
				}
			}
		}
		time.Sleep(3 * clAdv)
		for _, adv := range w.Adverts() {
			if adv.VRID == clVRID && adv.Src != c.v4("a") && adv.Src != c.ll("c") && adv.Time.After(settled.Add(20*time.Millisecond)) {
				t.Errorf("advert from a non-master after the election settled at %s: %v", settled.Format("15:04:05.000"), adv)
			}
		}
		c.wantReachedVia(clVIP4.Addr(), "a")
		c.wantReachedVia(clVIP6.Addr(), "c")
	})
}

// ---------------------------------------------------------------------------
// 2. Failover when the master dies

func TestClusterFailover(t *testing.T) {
	// A node death: the daemon is SIGKILLed and the node is cut off.
	t.Run("kill-and-cut", func(t *testing.T) {
		c := newClCluster(t)
		c.startABC(func(n string) string { return clConfig(clV4(clPrio[n])) })
		c.waitState("a", "v4", vrrp.StateMaster)
		c.waitBackupOf("b", "v4", c.v4("a"), 150)
		c.waitBackupOf("c", "v4", c.v4("a"), 150)
		p := c.probe(clVIP4.Addr())
		w := c.watch()
		c.waitAdvert(w, time.Now(), "advert from a", func(a lab.Advert) bool { return a.Src == c.v4("a") })
		if err := c.kv["a"].Kill(); err != nil {
			t.Fatal(err)
		}
		if err := c.l.CutLink(c.nodes["a"]); err != nil {
			t.Fatal(err)
		}
		last, _ := clLastAdvertFrom(w, c.v4("a"))
		bs := c.waitState("b", "v4", vrrp.StateMaster)
		tr := c.mustLast(bs, "b", vrrp.StateMaster)
		mdi := clMDI(120)
		takeover := tr.At.Sub(last.Time)
		ownView := tr.At.Sub(bs.LastAdvert)
		if !strings.Contains(tr.Reason, "no advert") {
			t.Errorf("b became MASTER for %q, want Master_Down_Interval expiry", tr.Reason)
		}
		clWithin(t, "b's takeover after a's last advert (seen by the client)", takeover, mdi-50*time.Millisecond, mdi+clSlack)
		clWithin(t, "b's takeover after the last advert it received", ownView, mdi-time.Millisecond, mdi+clSlack)

		ctx, cancel := context.WithTimeout(context.Background(), clWait)
		defer cancel()
		rec, err := p.WaitReplyAfter(ctx, last.Time.Add(mdi))
		if err != nil {
			t.Fatal(err)
		}
		gap, ok := p.LongestGap(last.Time, rec.Sent)
		if !ok {
			t.Fatalf("no client outage at all after a died: the prober cannot tell a from b")
		}
		back := gap.Recovered.Sent.Sub(last.Time)
		t.Logf("figure: kill+cut failover: b MASTER %v after a's last advert (Master_Down_Interval %v, b's own view %v); client outage %v (%d probes lost), back %v after a's last advert",
			takeover.Round(time.Millisecond), mdi, ownView.Round(time.Millisecond), gap.Duration.Round(time.Millisecond), gap.Lost, back.Round(time.Millisecond))
		if gap.Duration > mdi+clSlack {
			t.Errorf("client outage %v, want <= Master_Down_Interval %v + %v", gap.Duration, mdi, clSlack)
		}
		if back > mdi+clSlack {
			t.Errorf("client back %v after a's last advert, want <= %v + %v", back, mdi, clSlack)
		}
		c.waitBackupOf("c", "v4", c.v4("b"), 120)
		delete(c.kv, "a") // a's kernel still holds its VIP: a dead node
		c.wantVIPs("b", clVIP4)
	})

	// A crash of the daemon alone: the node stays on the network with the
	// VIP it held; keepvip restarts with it in place and, having the
	// highest priority and preemption, resumes as master at once.
	t.Run("kill-and-restart", func(t *testing.T) {
		c := newClCluster(t)
		cfg := func(n string) string { return clConfig(clV4(clPrio[n])) }
		c.startABC(cfg)
		c.waitState("a", "v4", vrrp.StateMaster)
		c.waitBackupOf("b", "v4", c.v4("a"), 150)
		c.waitBackupOf("c", "v4", c.v4("a"), 150)
		w := c.watch()
		c.waitAdvert(w, time.Now(), "advert from a", func(a lab.Advert) bool { return a.Src == c.v4("a") })
		if err := c.kv["a"].Kill(); err != nil {
			t.Fatal(err)
		}
		last, _ := clLastAdvertFrom(w, c.v4("a"))
		bs := c.waitState("b", "v4", vrrp.StateMaster)
		tr := c.mustLast(bs, "b", vrrp.StateMaster)
		mdi := clMDI(120)
		takeover := tr.At.Sub(last.Time)
		clWithin(t, "b's takeover after a's last advert", takeover, mdi-50*time.Millisecond, mdi+clSlack)
		c.waitBackupOf("c", "v4", c.v4("b"), 120)
		t.Logf("figure: SIGKILL failover (link up): b MASTER %v after a's last advert (Master_Down_Interval %v)", takeover.Round(time.Millisecond), mdi)

		// The VIP stays on a, marked as keepvip's.
		proto, found, err := clAddrProto(c.nodes["a"], clVIP4.Addr())
		if err != nil {
			t.Fatal(err)
		}
		if !found || proto != vrrp.AddrProto {
			t.Fatalf("stale VIP on a: found %v, IFA_PROTO %#x; want it there with %#x", found, proto, vrrp.AddrProto)
		}

		// Restart: a finds its VIP in place and keeps it; listening, it
		// hears b, a worse master elected meanwhile, and preempts it at
		// once (it would preempt b anyway). The VIP never leaves a.
		restart := time.Now()
		c.start("a", cfg("a"))
		as := c.waitState("a", "v4", vrrp.StateMaster)
		mtr := c.mustLast(as, "a", vrrp.StateMaster)
		if !strings.Contains(mtr.Reason, "restarted holding its VIPs: preempting") {
			t.Errorf("a after restart: %+v; want MASTER preempting b with the VIP it kept", mtr)
		}
		if !c.hasAddr("a", clVIP4.Addr()) {
			t.Error("a's VIP is gone after the restart")
		}
		if strings.Contains(c.kv["a"].Log(), "removed a VIP left behind") {
			t.Errorf("a removed the VIP it resumed with")
		}
		t.Logf("figure: restart: a MASTER %v after it was started, preempting b with the VIP it kept", mtr.At.Sub(restart).Round(time.Millisecond))
		c.waitBackupOf("b", "v4", c.v4("a"), 150)
		c.waitBackupOf("c", "v4", c.v4("a"), 150)
		c.wantVIPs("a", clVIP4)
		c.wantReachedVia(clVIP4.Addr(), "a")
	})
}

// ---------------------------------------------------------------------------
// 3. Handoff on SIGTERM

func TestClusterHandoff(t *testing.T) {
	c := newClCluster(t)
	c.startABC(func(n string) string { return clConfig(clV4(clPrio[n])) })
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitBackupOf("b", "v4", c.v4("a"), 150)
	c.waitBackupOf("c", "v4", c.v4("a"), 150)
	p := c.probe(clVIP4.Addr())
	w := c.watch()
	c.waitAdvert(w, time.Now(), "advert from a", func(a lab.Advert) bool { return a.Src == c.v4("a") })
	time.Sleep(20 * time.Millisecond)

	ka := c.kv["a"]
	sig := time.Now()
	if err := ka.Stop(10 * time.Second); err != nil {
		t.Fatalf("a did not stop on SIGTERM: %v", err)
	}
	if err := ka.Proc().Wait(); err != nil {
		t.Errorf("a's keepvip exited with %v, want status 0", err)
	}
	bs := c.waitState("b", "v4", vrrp.StateMaster)
	tr := c.mustLast(bs, "b", vrrp.StateMaster)
	skew := clSkew(120)
	handoff := tr.At.Sub(sig)
	if !strings.Contains(tr.Reason, "priority 0") {
		t.Errorf("b became MASTER for %q, want a's priority 0 advert", tr.Reason)
	}
	clWithin(t, "b's takeover after SIGTERM to a", handoff, skew, skew+clSlack)

	zero := c.waitAdvert(w, sig, "priority 0 advert from a", func(a lab.Advert) bool { return a.Src == c.v4("a") && a.Priority == 0 })
	first := c.waitAdvert(w, zero.Time, "first advert from b", func(a lab.Advert) bool { return a.Src == c.v4("b") && a.Priority == 120 })
	wire := first.Time.Sub(zero.Time)
	clWithin(t, "a's priority 0 advert to b's first advert, on the wire", wire, skew-20*time.Millisecond, skew+clSlack)

	cs := c.waitBackupOf("c", "v4", c.v4("b"), 120)
	if _, ok := clLast(cs, vrrp.StateMaster); ok {
		t.Logf("note: c was MASTER for a moment: %s", clTrString(cs.Transitions))
	}
	if log := ka.Log(); !strings.Contains(log, "handed off to "+c.v4("b").String()) {
		t.Errorf("a's log does not show the handoff to b (VIP held until b advertised):\n%s", clTail(clNoDebug(log), 2000))
	}
	delete(c.kv, "a")
	if c.hasAddr("a", clVIP4.Addr()) {
		t.Errorf("a kept its VIP after exiting")
	}
	c.wantVIPs("b", clVIP4)

	// The client saw (nearly) nothing.
	ctx, cancel := context.WithTimeout(context.Background(), clWait)
	defer cancel()
	if _, err := p.WaitReplyAfter(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	end := time.Now()
	gap, lost := p.LongestGap(sig, end)
	var outage time.Duration
	if lost {
		outage = gap.Duration
	}
	st := p.Stats()
	t.Logf("figure: SIGTERM handoff: b MASTER %v after SIGTERM (Skew_Time %v), %v between a's priority 0 and b's first advert on the wire; client outage %v (%d probes lost; %d sent, %d dups)",
		handoff.Round(100*time.Microsecond), skew, wire.Round(100*time.Microsecond), outage, gap.Lost, st.Sent, st.Dups)
	if outage > 30*time.Millisecond {
		t.Errorf("client outage %v during the handoff, want <= 30ms (longest gap from probe %d)", outage, gap.FirstLost.Seq)
	}
}

// ---------------------------------------------------------------------------
// 4. Partition and heal

func TestClusterSplitBrain(t *testing.T) {
	run := func(t *testing.T, prio map[string]int, winner, other string) {
		c := newClCluster(t)
		cfg := func(n string) string { return clConfig(clV4(prio[n])) }
		c.start(winner, cfg(winner))
		c.waitState(winner, "v4", vrrp.StateMaster)
		for _, n := range []string{"a", "b", "c"} {
			if n != winner {
				c.start(n, cfg(n))
			}
		}
		for _, n := range []string{"a", "b", "c"} {
			if n != winner {
				c.waitBackupOf(n, "v4", c.v4(winner), prio[winner])
			}
		}
		wTrs := len(c.mustInst(winner, "v4").Transitions)

		cut := time.Now()
		if err := c.l.CutLink(c.nodes[winner]); err != nil {
			t.Fatal(err)
		}
		// The rest elect one new master; with equal priorities whichever
		// of them times out first keeps it (see first-master-stays), or
		// if both do, the higher address.
		var newMaster string
		c.waitFor(clWait, "one master on the other side of the cut", func(ctx context.Context) (bool, string) {
			var seen []string
			st := map[string]vrrp.Status{}
			newMaster = ""
			for _, n := range []string{"a", "b", "c"} {
				if n == winner {
					continue
				}
				s, err := c.inst(ctx, n, "v4")
				if err != nil {
					return false, err.Error()
				}
				st[n] = s
				seen = append(seen, n+": "+clBrief(s))
				if s.State == vrrp.StateMaster {
					if newMaster != "" {
						return false, strings.Join(seen, "; ")
					}
					newMaster = n
				}
			}
			if newMaster == "" {
				return false, strings.Join(seen, "; ")
			}
			for n, s := range st {
				if n != newMaster && (s.State != vrrp.StateBackup || s.Master != c.v4(newMaster)) {
					return false, strings.Join(seen, "; ")
				}
			}
			return true, ""
		})
		if other != "" && newMaster != other {
			t.Errorf("%s became master on the cut side, want %s", newMaster, other)
		}
		ns := c.mustInst(newMaster, "v4")
		takeover := c.mustLast(ns, newMaster, vrrp.StateMaster).At.Sub(cut)
		if takeover > clMDI(prio[newMaster])+clSlack {
			t.Errorf("%s MASTER %v after the cut, want <= Master_Down_Interval %v + %v", newMaster, takeover, clMDI(prio[newMaster]), clSlack)
		}
		// Two masters, each with the VIP.
		ws := c.mustInst(winner, "v4")
		if ws.State != vrrp.StateMaster || len(ws.Transitions) != wTrs {
			t.Errorf("%s (cut off): %s, transitions %s; want still MASTER", winner, clBrief(ws), clTrString(ws.Transitions))
		}
		if !c.hasAddr(winner, clVIP4.Addr()) || !c.hasAddr(newMaster, clVIP4.Addr()) {
			t.Errorf("split brain: VIP on %s %v, on %s %v; want both", winner, c.hasAddr(winner, clVIP4.Addr()), newMaster, c.hasAddr(newMaster, clVIP4.Addr()))
		}
		time.Sleep(3 * clAdv)

		heal := time.Now()
		if err := c.l.HealLink(c.nodes[winner]); err != nil {
			t.Fatal(err)
		}
		ns = c.waitBackupOf(newMaster, "v4", c.v4(winner), prio[winner])
		trs := clSince(ns, heal)
		if len(trs) != 1 || trs[0].From != vrrp.StateMaster || trs[0].To != vrrp.StateBackup {
			t.Fatalf("%s after the heal: %s; want MASTER->BACKUP", newMaster, clTrString(trs))
		}
		down := trs[0]
		conv := down.At.Sub(heal)
		for _, n := range []string{"a", "b", "c"} {
			if n != winner {
				c.waitBackupOf(n, "v4", c.v4(winner), prio[winner])
			}
		}
		ws = c.mustInst(winner, "v4")
		if ws.State != vrrp.StateMaster || len(ws.Transitions) != wTrs {
			t.Errorf("%s: %s, transitions %s; want MASTER throughout", winner, clBrief(ws), clTrString(ws.Transitions))
		}
		c.wantVIPs(winner, clVIP4)
		t.Logf("figure: split brain: %s MASTER %v after the cut; one master (%s) again %v after the heal (%s)", newMaster, takeover.Round(time.Millisecond), winner, conv.Round(time.Millisecond), down.Reason)
		if conv > 2*clAdv+clSlack {
			t.Errorf("one master %v after the heal, want <= 2 × %v + %v", conv, clAdv, clSlack)
		}
		// A client that had not talked to the VIP reaches it on the
		// winner (TestClusterSplitBrainClient covers one that had).
		c.wantReachedVia(clVIP4.Addr(), winner)
	}
	t.Run("priorities", func(t *testing.T) { run(t, clPrio, "a", "b") })
	t.Run("equal-priorities", func(t *testing.T) { run(t, map[string]int{"a": 100, "b": 100, "c": 100}, "c", "") })
}

// After a partition heals, a client that followed the cut-off side's
// master (b) must come back to the winner (a) within a couple of advert
// intervals, as it does after any other takeover. The heal is timed just
// after one of b's adverts, so that a's next advert reaches b before b's
// next one reaches a: b yields at once, and a never hears a lower-priority
// master, which is the only case where a re-announces its VIPs
// (lowerPriorityAdvert). Unless something else refreshes the client's
// neighbour entry, the client keeps sending to b's MAC until the entry
// fails (about 4.5 s here). keepalived 2.2.7 behaves the same in this
// scenario (3.3 s measured with lab.StartKeepalived). keepvip closes the
// gap: a master that yields first sends one last advert at its own
// priority, which a answers with an advert and a GARP burst.
func TestClusterSplitBrainClient(t *testing.T) {
	c := newClCluster(t)
	c.startABC(func(n string) string { return clConfig(clV4(clPrio[n])) })
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitBackupOf("b", "v4", c.v4("a"), 150)
	c.waitBackupOf("c", "v4", c.v4("a"), 150)
	vip := clVIP4.Addr()
	p := c.probe(vip)
	w := c.watch()
	aMAC, bMAC := c.nodes["a"].MAC.String(), c.nodes["b"].MAC.String()
	if mac := c.neighMAC(vip); mac != aMAC {
		t.Fatalf("client's neighbour entry for %v: %q, want a's %s", vip, mac, aMAC)
	}

	if err := c.l.CutLink(c.nodes["a"]); err != nil {
		t.Fatal(err)
	}
	c.waitState("b", "v4", vrrp.StateMaster)
	c.waitFor(clWait, "the client to follow b's GARPs", func(context.Context) (bool, string) {
		mac := c.neighMAC(vip)
		return mac == bMAC, "lladdr " + mac
	})
	ctx, cancel := context.WithTimeout(context.Background(), clWait)
	defer cancel()
	if _, err := p.WaitReplyAfter(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	lowerBefore := strings.Count(c.kv["a"].Log(), "lower-priority master")

	c.waitAdvert(w, time.Now(), "advert from b", func(a lab.Advert) bool { return a.Src == c.v4("b") })
	heal := time.Now()
	if err := c.l.HealLink(c.nodes["a"]); err != nil {
		t.Fatal(err)
	}
	bs := c.waitBackupOf("b", "v4", c.v4("a"), 150)
	yielded := c.mustLast(bs, "b", vrrp.StateBackup)
	c.waitBackupOf("c", "v4", c.v4("a"), 150)
	c.wantVIPs("a", clVIP4)
	time.Sleep(3 * clAdv)
	macAfter := c.neighMAC(vip)
	answered := strings.Count(c.kv["a"].Log(), "lower-priority master") > lowerBefore

	// Wait (bounded) for the client to get through again, to measure.
	rctx, rcancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer rcancel()
	rec, recErr := p.WaitReplyAfter(rctx, yielded.At)
	end := time.Now()
	if recErr == nil {
		end = rec.Sent
	}
	gap, _ := p.LongestGap(heal, end)
	t.Logf("figure: split brain, client side: b yielded %v after the heal (%s); a answered a lower-priority advert: %v; client's entry for %v %v later: %s (a %s, b %s); client outage %v (open %v, %d probes lost)",
		yielded.At.Sub(heal).Round(time.Millisecond), yielded.Reason, answered, vip, 3*clAdv, macAfter, aMAC, bMAC, gap.Duration.Round(time.Millisecond), gap.Open || recErr != nil, gap.Lost)
	if recErr != nil || gap.Duration > 2*clAdv+clSlack {
		t.Errorf("after the heal the client could not reach %v for %v (%v; its neighbour entry still pointed at b's %s %v after b yielded, and a sent no GARP because it never heard b's adverts)",
			vip, gap.Duration.Round(time.Millisecond), recErr, macAfter, 3*clAdv)
	}
}

// ---------------------------------------------------------------------------
// 5. Carrier loss: Fault

func TestClusterLinkFault(t *testing.T) {
	c := newClCluster(t)
	c.startABC(func(n string) string { return clConfig(clV4(clPrio[n])) })
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitBackupOf("b", "v4", c.v4("a"), 150)
	c.waitBackupOf("c", "v4", c.v4("a"), 150)

	down := time.Now()
	if err := c.l.LinkDown(c.nodes["a"]); err != nil {
		t.Fatal(err)
	}
	as := c.waitState("a", "v4", vrrp.StateFault)
	ftr := c.mustLast(as, "a", vrrp.StateFault)
	if !strings.Contains(as.Fault, "eth0") || !strings.Contains(as.Fault, "down") {
		t.Errorf("a's fault reason %q does not name the link", as.Fault)
	}
	if as.VIPsInstalled || c.hasAddr("a", clVIP4.Addr()) {
		t.Errorf("a in FAULT still has its VIP")
	}
	bs := c.waitState("b", "v4", vrrp.StateMaster)
	takeover := c.mustLast(bs, "b", vrrp.StateMaster).At.Sub(down)
	if takeover > clMDI(120)+clSlack {
		t.Errorf("b MASTER %v after a's link went down, want <= %v + %v", takeover, clMDI(120), clSlack)
	}
	c.waitBackupOf("c", "v4", c.v4("b"), 120)
	c.wantVIPs("b", clVIP4)
	t.Logf("figure: link down: a FAULT %v after carrier loss (%q), b MASTER after %v (Master_Down_Interval %v)", ftr.At.Sub(down).Round(time.Millisecond), as.Fault, takeover.Round(time.Millisecond), clMDI(120))

	up := time.Now()
	if err := c.l.LinkUp(c.nodes["a"]); err != nil {
		t.Fatal(err)
	}
	as = c.waitState("a", "v4", vrrp.StateMaster)
	trs := clSince(as, up)
	if len(trs) != 2 || trs[0].From != vrrp.StateFault || trs[0].To != vrrp.StateBackup || trs[1].To != vrrp.StateMaster {
		t.Errorf("a after link up: %s; want FAULT->BACKUP->MASTER", clTrString(trs))
	} else {
		preempt := trs[1].At.Sub(trs[0].At)
		clWithin(t, "a's preemption after leaving FAULT", preempt, clMDI(150)-time.Millisecond, clMDI(150)+clSlack)
		t.Logf("figure: link up: a BACKUP %v after carrier, MASTER %v later (Master_Down_Interval %v)", trs[0].At.Sub(up).Round(time.Millisecond), preempt.Round(time.Millisecond), clMDI(150))
	}
	if as.Fault != "" {
		t.Errorf("a: fault %q after recovery", as.Fault)
	}
	c.waitBackupOf("b", "v4", c.v4("a"), 150)
	c.waitBackupOf("c", "v4", c.v4("a"), 150)
	c.wantVIPs("a", clVIP4)
	c.wantReachedVia(clVIP4.Addr(), "a")
}

// ---------------------------------------------------------------------------
// 6. GARP, NA and adverts on the wire, decoded by tshark

func TestClusterAnnouncements(t *testing.T) {
	lab.Require(t, "tshark")
	c := newClCluster(t)
	prio := map[string]int{"a": 150, "b": 120, "c": 50} // c well behind b: only b takes over
	garp := "garp: {masterDelay: 0s}"
	c.startABC(func(n string) string {
		v4 := clV4(prio[n], garp)
		v4.vips = []netip.Prefix{clVIP4, clVIP4b}
		return clConfig(v4, clV6(prio[n], garp))
	})
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitState("a", "v6", vrrp.StateMaster)
	for _, n := range []string{"b", "c"} {
		c.waitBackupOf(n, "v4", c.v4("a"), 150)
		c.waitBackupOf(n, "v6", c.ll("a"), 150)
	}
	capt, err := c.client.StartCapture("")
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * clAdv)
	if err := c.kv["a"].Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	delete(c.kv, "a")
	for _, inst := range []string{"v4", "v6"} {
		c.waitState("b", inst, vrrp.StateMaster)
	}
	c.waitBackupOf("c", "v4", c.v4("b"), 120)
	c.waitBackupOf("c", "v6", c.ll("b"), 120)
	time.Sleep(5 * clAdv)
	// If c was master for a moment, b answered its adverts with a further
	// burst (lowerPriorityRepeat).
	cMaster := false
	for _, inst := range []string{"v4", "v6"} {
		if _, ok := clLast(c.mustInst("c", inst), vrrp.StateMaster); ok {
			cMaster = true
		}
	}
	bMAC := c.nodes["b"].MAC.String()

	// Gratuitous ARP: requests, sender = target = VIP, from b's MAC, to
	// broadcast, target MAC ff:ff:ff:ff:ff:ff.
	rows, err := capt.Fields("arp.opcode == 1 && arp.src.proto_ipv4 == arp.dst.proto_ipv4",
		"frame.time_epoch", "eth.src", "eth.dst", "arp.src.hw_mac", "arp.src.proto_ipv4", "arp.dst.hw_mac", "arp.dst.proto_ipv4")
	if err != nil {
		t.Fatal(err)
	}
	for _, vip := range []netip.Prefix{clVIP4, clVIP4b} {
		var times []float64
		for _, r := range rows {
			if r[4] != vip.Addr().String() {
				continue
			}
			if r[1] != bMAC || r[3] != bMAC || r[2] != clBroadcast || r[5] != clBroadcast || r[6] != vip.Addr().String() {
				t.Errorf("gratuitous ARP for %v: eth %s->%s, sender %s/%s, target %s/%s; want from b's %s to broadcast, target MAC broadcast", vip.Addr(), r[1], r[2], r[3], r[4], r[5], r[6], bMAC)
			}
			ts, _ := strconv.ParseFloat(r[0], 64)
			times = append(times, ts)
		}
		t.Logf("figure: %d gratuitous ARPs for %v from b", len(times), vip.Addr())
		clCheckBurst(t, "gratuitous ARPs for "+vip.Addr().String(), times, cMaster)
	}

	// Unsolicited NAs: Override set, Solicited clear, target the VIP, TLLA
	// b's MAC, to ff02::1 with hop limit 255.
	rows, err = capt.Fields("icmpv6.type == 136 && icmpv6.nd.na.flag.s == 0 && eth.src == "+bMAC,
		"frame.time_epoch", "ipv6.src", "ipv6.dst", "ipv6.hlim", "icmpv6.nd.na.target_address", "icmpv6.nd.na.flag.o", "icmpv6.nd.na.flag.s", "icmpv6.opt.linkaddr", "icmpv6.checksum.status")
	if err != nil {
		t.Fatal(err)
	}
	for _, vip := range []netip.Prefix{clVIP6LL, clVIP6} {
		var times []float64
		for _, r := range rows {
			if r[4] != vip.Addr().String() {
				continue
			}
			if r[2] != "ff02::1" || r[3] != "255" || r[5] != "1" || r[6] != "0" || r[7] != bMAC || r[8] != "1" {
				t.Errorf("NA for %v: %s -> %s hlim %s, O=%s S=%s, linkaddr %s, checksum status %s; want to ff02::1, hlim 255, O=1 S=0, linkaddr %s, good checksum", vip.Addr(), r[1], r[2], r[3], r[5], r[6], r[7], r[8], bMAC)
			}
			ts, _ := strconv.ParseFloat(r[0], 64)
			times = append(times, ts)
		}
		t.Logf("figure: %d unsolicited NAs for %v from b", len(times), vip.Addr())
		clCheckBurst(t, "unsolicited NAs for "+vip.Addr().String(), times, cMaster)
	}

	// Every VRRP advert: version 3, good checksum, TTL/hop limit 255, to
	// the group; the IPv6 ones list the link-local VIP first.
	rows, err = capt.Fields("vrrp", "ip.src", "ipv6.src", "ip.dst", "ipv6.dst", "ip.ttl", "ipv6.hlim", "vrrp.version", "vrrp.virt_rtr_id", "vrrp.prio", "vrrp.checksum.status", "vrrp.ipv6_addr")
	if err != nil {
		t.Fatal(err)
	}
	count := map[string]int{}
	for _, r := range rows {
		v6 := r[1] != ""
		src, dst, ttl := r[0], r[2], r[4]
		if v6 {
			src, dst, ttl = r[1], r[3], r[5]
		}
		key := fmt.Sprintf("%s prio %s", src, r[8])
		count[key]++
		if ttl != "255" || r[6] != "3" || r[7] != strconv.Itoa(clVRID) || r[9] != "1" {
			t.Errorf("advert %s -> %s: ttl %s, version %s, vrid %s, checksum status %s; want 255, 3, %d, 1 (good)", src, dst, ttl, r[6], r[7], r[9], clVRID)
		}
		if (!v6 && dst != vrrp.GroupIPv4.String()) || (v6 && dst != vrrp.GroupIPv6.String()) {
			t.Errorf("advert %s -> %s, want to the VRRP group", src, dst)
		}
		if v6 && !strings.HasPrefix(r[10], clVIP6LL.Addr().String()+",") {
			t.Errorf("IPv6 advert from %s lists %s, want %v first", src, r[10], clVIP6LL.Addr())
		}
	}
	t.Logf("figure: adverts captured: %v", count)
	for _, k := range []string{
		c.v4("a").String() + " prio 150", c.v4("a").String() + " prio 0", c.v4("b").String() + " prio 120",
		c.ll("a").String() + " prio 150", c.ll("a").String() + " prio 0", c.ll("b").String() + " prio 120",
	} {
		if count[k] == 0 {
			t.Errorf("no advert from %s captured", k)
		}
	}
}

// clCheckBurst checks that announcements came as one burst of garp
// masterRepeat (5) messages.
func clCheckBurst(t *testing.T, what string, times []float64, extraBursts bool) {
	t.Helper()
	if len(times) == 0 {
		t.Errorf("no %s", what)
		return
	}
	if extraBursts {
		if len(times) < 5 || len(times)%5 != 0 {
			t.Errorf("%d %s, want bursts of 5", len(times), what)
		}
		return
	}
	if len(times) != 5 {
		t.Errorf("%d %s, want 5 (garp masterRepeat) in a single burst", len(times), what)
		return
	}
	if span := time.Duration((slices.Max(times) - slices.Min(times)) * float64(time.Second)); span > 50*time.Millisecond {
		t.Errorf("%s spread over %v, want one burst", what, span)
	}
}

// ---------------------------------------------------------------------------
// 7. Unicast

func TestClusterUnicast(t *testing.T) {
	c := newClCluster(t)
	w := c.watch()
	uni := func(n string, prio int, peers ...string) string {
		in := clV4(prio)
		for _, p := range peers {
			in.peers = append(in.peers, c.v4(p))
		}
		return clConfig(in)
	}
	others := func(n string, set ...string) []string {
		var out []string
		for _, o := range set {
			if o != n {
				out = append(out, o)
			}
		}
		return out
	}
	cfg := func(n string) string { return uni(n, clPrio[n], others(n, "a", "b", "c")...) }
	c.startABC(cfg)
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitBackupOf("b", "v4", c.v4("a"), 150)
	c.waitBackupOf("c", "v4", c.v4("a"), 150)
	c.wantVIPs("a", clVIP4)
	if s := c.mustInst("a", "v4"); !slices.Equal(s.Peers, []netip.Addr{c.v4("b"), c.v4("c")}) {
		t.Errorf("a's unicast peers %v", s.Peers)
	}

	// Failover: a dies.
	if err := c.kv["a"].Kill(); err != nil {
		t.Fatal(err)
	}
	if err := c.l.CutLink(c.nodes["a"]); err != nil {
		t.Fatal(err)
	}
	bs := c.waitState("b", "v4", vrrp.StateMaster)
	takeover := c.mustLast(bs, "b", vrrp.StateMaster).At.Sub(bs.LastAdvert)
	clWithin(t, "unicast: b's takeover after the last advert it received", takeover, clMDI(120)-time.Millisecond, clMDI(120)+clSlack)
	c.waitBackupOf("c", "v4", c.v4("b"), 120)
	t.Logf("figure: unicast failover: b MASTER %v after a's last advert (Master_Down_Interval %v)", takeover.Round(time.Millisecond), clMDI(120))

	// a comes back and preempts.
	if err := c.l.HealLink(c.nodes["a"]); err != nil {
		t.Fatal(err)
	}
	c.start("a", cfg("a"))
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitBackupOf("b", "v4", c.v4("a"), 150)
	c.waitBackupOf("c", "v4", c.v4("a"), 150)
	c.wantVIPs("a", clVIP4)

	// d (priority 200) joins, knowing a, b and c; they do not know it yet.
	c.addNode("d")
	c.start("d", uni("d", 200, "a", "b", "c"))
	c.waitState("d", "v4", vrrp.StateMaster)
	for _, n := range []string{"a", "b", "c"} {
		c.waitInst(n, "v4", "adverts from d dropped as not-peer", func(s vrrp.Status) bool { return s.Drops["not-peer"] >= 3 })
	}
	before := map[string]vrrp.Status{}
	for _, n := range []string{"a", "b", "c"} {
		before[n] = c.mustInst(n, "v4")
	}
	if s := before["a"]; s.State != vrrp.StateMaster || s.MasterPriority != 150 {
		t.Errorf("a heeded a non-peer: %s", clBrief(s))
	}
	for _, n := range []string{"b", "c"} {
		if s := before[n]; s.State != vrrp.StateBackup || s.Master != c.v4("a") {
			t.Errorf("%s heeded a non-peer: %s", n, clBrief(s))
		}
	}
	t.Logf("not-peer drops before the reload: a %d, b %d, c %d", before["a"].Drops["not-peer"], before["b"].Drops["not-peer"], before["c"].Drops["not-peer"])

	// Reload a, b and c with d as a peer: d takes over, nobody restarts.
	reload := time.Now()
	for _, n := range []string{"a", "b", "c"} {
		if err := c.kv[n].Reload(uni(n, clPrio[n], others(n, "a", "b", "c", "d")...)); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []string{"a", "b", "c"} {
		s := c.waitBackupOf(n, "v4", c.v4("d"), 200)
		if len(s.Peers) != 3 || !slices.Contains(s.Peers, c.v4("d")) {
			t.Errorf("%s's peers after the reload: %v, want 3 including d", n, s.Peers)
		}
		if old := before[n].Transitions; len(s.Transitions) < len(old) || !slices.Equal(s.Transitions[:len(old)], old) {
			t.Errorf("%s: the transitions from before the reload are gone: %s", n, clTrString(s.Transitions))
		}
		for _, tr := range clSince(s, reload) {
			if tr.To == vrrp.StateInit || tr.From == vrrp.StateInit {
				t.Errorf("%s restarted on reload: %s", n, clTrString(clSince(s, reload)))
			}
		}
		if s.AdvertsSent < before[n].AdvertsSent || s.AdvertsReceived < before[n].AdvertsReceived {
			t.Errorf("%s: counters went back (sent %d->%d, received %d->%d): restarted?", n, before[n].AdvertsSent, s.AdvertsSent, before[n].AdvertsReceived, s.AdvertsReceived)
		}
	}
	ds := c.mustInst("d", "v4")
	if ds.State != vrrp.StateMaster || len(ds.Transitions) != 2 {
		t.Errorf("d: %s, transitions %s", clBrief(ds), clTrString(ds.Transitions))
	}
	c.wantVIPs("d", clVIP4)
	np := c.mustInst("a", "v4").Drops["not-peer"]
	time.Sleep(3 * clAdv)
	if np2 := c.mustInst("a", "v4").Drops["not-peer"]; np2 != np {
		t.Errorf("a still drops adverts as not-peer after the reload: %d -> %d", np, np2)
	}
	c.wantReachedVia(clVIP4.Addr(), "d")
	t.Logf("figure: unicast reload: d master of all, %v after the reload", time.Since(reload).Round(time.Millisecond))

	// Unicast means no multicast adverts.
	for _, adv := range w.Adverts() {
		if adv.VRID == clVRID {
			t.Errorf("the client saw an advert in unicast mode: %v", adv)
			break
		}
	}
}

// ---------------------------------------------------------------------------
// 8. Garbage on the wire

// clSend4 sends each payload in an IPv4 packet of protocol 112 from n's
// address to dst with the given TTL.
func clSend4(n *lab.Node, dst netip.Addr, ttl int, payloads ...[]byte) error {
	idx, err := n.IfIndex()
	if err != nil {
		return err
	}
	return n.Do(func() error {
		pc, err := net.ListenPacket("ip4:112", "0.0.0.0")
		if err != nil {
			return err
		}
		defer pc.Close()
		rc, err := ipv4.NewRawConn(pc)
		if err != nil {
			return err
		}
		if err := rc.SetMulticastInterface(&net.Interface{Index: idx}); err != nil {
			return err
		}
		for _, p := range payloads {
			h := &ipv4.Header{Version: 4, Len: ipv4.HeaderLen, TOS: 0xc0, TotalLen: ipv4.HeaderLen + len(p), TTL: ttl,
				Protocol: vrrp.IPProtocol, Src: n.IPv4.Addr().AsSlice(), Dst: dst.AsSlice()}
			if err := rc.WriteTo(h, p, nil); err != nil {
				return fmt.Errorf("sending %d bytes to %v: %w", len(p), dst, err)
			}
		}
		return nil
	})
}

// clSend6 sends each payload in an IPv6 packet of protocol 112 from n's
// link-local address to dst with the given hop limit.
func clSend6(n *lab.Node, dst netip.Addr, hops int, payloads ...[]byte) error {
	idx, err := n.IfIndex()
	if err != nil {
		return err
	}
	return n.Do(func() error {
		c, err := net.ListenPacket("ip6:112", "::")
		if err != nil {
			return err
		}
		defer c.Close()
		pc := ipv6.NewPacketConn(c)
		cm := &ipv6.ControlMessage{HopLimit: hops, Src: n.LinkLocal.AsSlice(), IfIndex: idx}
		for _, p := range payloads {
			if _, err := pc.WriteTo(p, cm, &net.IPAddr{IP: dst.AsSlice()}); err != nil {
				return fmt.Errorf("sending %d bytes to %v: %w", len(p), dst, err)
			}
		}
		return nil
	})
}

// clFixChecksum sets the checksum of a VRRP message carried over IPv4
// from src to dst as keepvip sends it (IPv4 pseudo-header), whatever the
// message says, so that it reaches the checks behind the checksum.
func clFixChecksum(b []byte, src, dst netip.Addr) []byte {
	b[6], b[7] = 0, 0
	var s uint32
	add := func(p []byte) {
		for i := 0; i+1 < len(p); i += 2 {
			s += uint32(p[i])<<8 | uint32(p[i+1])
		}
		if len(p)%2 == 1 {
			s += uint32(p[len(p)-1]) << 8
		}
	}
	add(src.AsSlice())
	add(dst.AsSlice())
	s += vrrp.IPProtocol + uint32(len(b))
	add(b)
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	b[6], b[7] = byte(^s>>8), byte(^s)
	return b
}

func TestClusterRobustness(t *testing.T) {
	c := newClCluster(t)
	c.startABC(func(n string) string { return clConfig(clV4(clPrio[n]), clV6(clPrio[n])) })
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitState("a", "v6", vrrp.StateMaster)
	for _, n := range []string{"b", "c"} {
		c.waitBackupOf(n, "v4", c.v4("a"), 150)
		c.waitBackupOf(n, "v6", c.ll("a"), 150)
	}
	time.Sleep(2 * clAdv)
	before := map[string]vrrp.Status{}
	for _, n := range []string{"a", "b", "c"} {
		for _, inst := range []string{"v4", "v6"} {
			before[n+"/"+inst] = c.mustInst(n, inst)
		}
	}

	cl4, cl6 := c.v4("client"), c.ll("client")
	// Every crafted advert claims priority 254: accepted, it would move
	// the master.
	mk := func(version uint8, interval time.Duration, src, dst netip.Addr, vips ...netip.Prefix) []byte {
		adv := vrrp.Advertisement{Version: version, VRID: clVRID, Priority: 254, Interval: interval}
		for _, v := range vips {
			adv.Addrs = append(adv.Addrs, v.Addr())
		}
		b, err := adv.Marshal(src, dst, vrrp.ChecksumPseudoHeader)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good4 := func() []byte { return mk(3, clAdv, cl4, vrrp.GroupIPv4, clVIP4) }
	withSum := clFixChecksum

	badSum := good4()
	badSum[6] ^= 0x01
	badSum[7] ^= 0x01
	truncated := good4()
	truncated[3] = 2 // two addresses announced, one present
	trailing := append(good4(), 0, 0, 0, 0)
	countZero := good4()[:8]
	countZero[3] = 0
	countZero = withSum(countZero, cl4, vrrp.GroupIPv4)
	intervalZero := good4()
	intervalZero[4], intervalZero[5] = 0, 0
	intervalZero = withSum(intervalZero, cl4, vrrp.GroupIPv4)
	version4 := good4()
	version4[0] = 4<<4 | 1
	version4 = withSum(version4, cl4, vrrp.GroupIPv4)
	typ2 := good4()
	typ2[0] = 3<<4 | 2
	typ2 = withSum(typ2, cl4, vrrp.GroupIPv4)
	v2 := mk(2, time.Second, cl4, vrrp.GroupIPv4, clVIP4)

	rng := rand.New(rand.NewPCG(51, 9568))
	var random, noise [][]byte
	for range 20 {
		// Random bodies under a version 3 advert header for our VRID:
		// attributed to the instance whatever check they fail.
		b := make([]byte, 8+rng.IntN(40))
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		b[0], b[1] = 3<<4|1, clVRID
		random = append(random, b)
		// Pure noise, some too short to carry a VRID.
		nb := make([]byte, rng.IntN(64))
		for i := range nb {
			nb[i] = byte(rng.Uint32())
		}
		noise = append(noise, nb)
	}

	send := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("sending %s: %v", what, err)
		}
	}
	send("noise", clSend4(c.client, vrrp.GroupIPv4, 255, noise...))
	send("random adverts", clSend4(c.client, vrrp.GroupIPv4, 255, random...))
	send("short packet", clSend4(c.client, vrrp.GroupIPv4, 255, []byte{0x31, clVRID, 1}))
	send("malformed adverts", clSend4(c.client, vrrp.GroupIPv4, 255, badSum, truncated, trailing, countZero, intervalZero, version4, typ2, v2))
	send("TTL 64 advert", clSend4(c.client, vrrp.GroupIPv4, 64, good4()))
	send("unicast advert", clSend4(c.client, c.v4("a"), 255, mk(3, clAdv, cl4, c.v4("a"), clVIP4)))
	good6 := mk(3, clAdv, cl6, vrrp.GroupIPv6, clVIP6LL, clVIP6)
	badSum6 := mk(3, clAdv, cl6, vrrp.GroupIPv6, clVIP6LL, clVIP6)
	badSum6[7] ^= 0x10
	send("IPv6 hop limit 64 advert", clSend6(c.client, vrrp.GroupIPv6, 64, good6))
	send("IPv6 bad checksum advert", clSend6(c.client, vrrp.GroupIPv6, 255, badSum6))

	// What a (the master) must count, beyond what it counted before.
	want4 := map[string]uint64{
		"ttl": 1, "checksum": 1, "truncated": 1, "trailing": 1, "count-zero": 1, "interval": 1,
		"version": 1, "version-mismatch": 1, "unexpected-unicast": 1,
	}
	exact4 := map[string]bool{"ttl": true, "version-mismatch": true, "unexpected-unicast": true}
	want6 := map[string]uint64{"ttl": 1, "checksum": 1}
	delta := func(now, was vrrp.Status) map[string]uint64 {
		d := map[string]uint64{}
		for r, n := range now.Drops {
			if n > was.Drops[r] {
				d[r] = n - was.Drops[r]
			}
		}
		return d
	}
	missing := func(d, want map[string]uint64) []string {
		var out []string
		for r, n := range want {
			if d[r] < n {
				out = append(out, r)
			}
		}
		sort.Strings(out)
		return out
	}
	// Wait for what can arrive, then judge.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for ctx.Err() == nil {
		d4 := delta(c.mustInst("a", "v4"), before["a/v4"])
		d6 := delta(c.mustInst("a", "v6"), before["a/v6"])
		if len(missing(d4, want4)) == 0 && len(missing(d6, want6)) == 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(3 * clAdv)

	a4, a6 := c.mustInst("a", "v4"), c.mustInst("a", "v6")
	d4, d6 := delta(a4, before["a/v4"]), delta(a6, before["a/v6"])
	t.Logf("figure: drops counted by a: IPv4 %v, IPv6 %v", d4, d6)
	if m := missing(d4, want4); len(m) > 0 {
		t.Errorf("a's IPv4 instance did not count drops for %v (counted %v)", m, d4)
	}
	if m := missing(d6, want6); len(m) > 0 {
		t.Errorf("a's IPv6 instance did not count drops for %v (counted %v)", m, d6)
	}
	for r := range exact4 {
		if d4[r] != want4[r] {
			t.Errorf("a counted %d %q drops, want %d", d4[r], r, want4[r])
		}
	}
	var total uint64
	for _, n := range d4 {
		total += n
	}
	// Every attributable packet sent: the 20 random adverts and the 9
	// crafted ones other than the unknown type (which
	// TestClusterDropTypeAttributed covers).
	if sent := uint64(len(random) + 9); total < sent {
		t.Errorf("a counted %d IPv4 drops, want at least the %d packets sent for VRID %d", total, sent, clVRID)
	}
	for k, was := range before {
		n, inst, _ := strings.Cut(k, "/")
		c.alive(n)
		s := c.mustInst(n, inst)
		if s.State != was.State || len(s.Transitions) != len(was.Transitions) || s.Master != was.Master || s.MasterPriority != was.MasterPriority {
			t.Errorf("%s: garbage changed the state: %s -> %s, transitions %s", k, clBrief(was), clBrief(s), clTrString(s.Transitions))
		}
	}
	if a4.AdvertsReceived != before["a/v4"].AdvertsReceived || a6.AdvertsReceived != before["a/v6"].AdvertsReceived {
		t.Errorf("the master accepted garbage: adverts received %d -> %d (IPv4), %d -> %d (IPv6)",
			before["a/v4"].AdvertsReceived, a4.AdvertsReceived, before["a/v6"].AdvertsReceived, a6.AdvertsReceived)
	}
	c.wantVIPs("a", clVIP4, clVIP6LL, clVIP6)
}

// clMetrics fetches /metrics from addr inside node n.
func clMetrics(n *lab.Node, addr string) (string, error) {
	var conn net.Conn
	err := n.Do(func() error {
		var err error
		conn, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	})
	if err != nil {
		return "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "GET /metrics HTTP/1.0\r\nHost: keepvip\r\n\r\n"); err != nil {
		return "", err
	}
	b, err := io.ReadAll(conn)
	return string(b), err
}

// An advert of an unknown type for a configured VRID must be counted for
// that VRID's instance, like the other malformed adverts of
// TestClusterRobustness: the VRID is right there in byte 1. (It was not:
// the parser returned on the type check before reading it.)
func TestClusterDropTypeAttributed(t *testing.T) {
	c := newClCluster(t)
	const metrics = "127.0.0.1:9742"
	c.start("a", clConfig(clV4(150)), "--metrics-addr", metrics)
	c.waitState("a", "v4", vrrp.StateMaster)
	cl4 := c.v4("client")
	adv := vrrp.Advertisement{Version: 3, VRID: clVRID, Priority: 254, Interval: clAdv, Addrs: []netip.Addr{clVIP4.Addr()}}
	b, err := adv.Marshal(cl4, vrrp.GroupIPv4, vrrp.ChecksumPseudoHeader)
	if err != nil {
		t.Fatal(err)
	}
	b[0] = 3<<4 | 2 // type 2: not an advertisement
	b = clFixChecksum(b, cl4, vrrp.GroupIPv4)
	if err := clSend4(c.client, vrrp.GroupIPv4, 255, b); err != nil {
		t.Fatal(err)
	}
	var got uint64
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		if got = c.mustInst("a", "v4").Drops["type"]; got > 0 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	m, err := clMetrics(c.nodes["a"], metrics)
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(m, "\n") {
		if strings.HasPrefix(l, "keepvip_vrrp_packets_dropped_total{") {
			lines = append(lines, l)
		}
	}
	t.Logf("a's drop metrics: %q", lines)
	if got != 1 {
		t.Errorf("a's status counts %d drops with reason \"type\" for an advert of type 2 to VRID %d, want 1 (drops %v)", got, clVRID, c.mustInst("a", "v4").Drops)
	}
	if !slices.ContainsFunc(lines, func(l string) bool {
		return strings.Contains(l, `reason="type"`) && strings.Contains(l, `vrid="51"`)
	}) {
		t.Errorf("no keepvip_vrrp_packets_dropped_total series with reason=\"type\" and vrid=\"51\"")
	}
}

// ---------------------------------------------------------------------------
// 9. Configuration reload

func TestClusterReload(t *testing.T) {
	c := newClCluster(t)
	c.startABC(func(n string) string { return clConfig(clV4(clPrio[n])) })
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitBackupOf("b", "v4", c.v4("a"), 150)
	c.waitBackupOf("c", "v4", c.v4("a"), 150)
	w := c.watch()
	ka := c.kv["a"]
	was := c.mustInst("a", "v4")

	// A bad file changes nothing.
	if err := ka.Reload(clConfig(clV4(900))); err != nil {
		t.Fatal(err)
	}
	var errs []string
	c.waitFor(clWait, "a's configErrors", func(ctx context.Context) (bool, string) {
		s, err := c.status(ctx, ka)
		if err != nil {
			return false, err.Error()
		}
		errs = s.ConfigErrors
		return len(errs) > 0, "none"
	})
	if !slices.ContainsFunc(errs, func(e string) bool { return strings.Contains(e, "instances[0].priority") }) {
		t.Errorf("configErrors %q do not name instances[0].priority", errs)
	}
	t.Logf("configErrors: %q", errs)
	bad := time.Now()
	adv := c.waitAdvert(w, bad, "advert from a after the bad reload", func(a lab.Advert) bool { return a.Src == c.v4("a") })
	if s := c.mustInst("a", "v4"); s.State != vrrp.StateMaster || s.Priority != 150 || adv.Priority != 150 || len(s.Transitions) != len(was.Transitions) {
		t.Errorf("a after a bad reload: %s, advert priority %d, transitions %s; want unchanged", clBrief(s), adv.Priority, clTrString(s.Transitions))
	}

	// The fixed file applies live: a drops to 110, b (120) preempts.
	fix := time.Now()
	if err := ka.Reload(clConfig(clV4(110))); err != nil {
		t.Fatal(err)
	}
	c.waitFor(clWait, "a's new configuration", func(ctx context.Context) (bool, string) {
		s, err := c.status(ctx, ka)
		if err != nil {
			return false, err.Error()
		}
		var prio uint8
		for _, in := range s.Instances {
			prio = in.Priority
		}
		return len(s.ConfigErrors) == 0 && prio == 110 && s.ConfigLoaded.After(fix.Add(-time.Millisecond)),
			fmt.Sprintf("configErrors %q, priority %d, loaded %v", s.ConfigErrors, prio, s.ConfigLoaded)
	})
	adv = c.waitAdvert(w, fix, "advert from a with priority 110", func(a lab.Advert) bool { return a.Src == c.v4("a") && a.Priority == 110 })
	bs := c.waitState("b", "v4", vrrp.StateMaster)
	takeover := c.mustLast(bs, "b", vrrp.StateMaster).At.Sub(fix)
	if takeover > clMDI(120)+clSlack {
		t.Errorf("b preempted %v after a's priority dropped, want <= %v + %v", takeover, clMDI(120), clSlack)
	}
	as := c.waitBackupOf("a", "v4", c.v4("b"), 120)
	trs := clSince(as, fix)
	if len(trs) != 1 || trs[0].From != vrrp.StateMaster || trs[0].To != vrrp.StateBackup {
		t.Errorf("a's transitions since the reload: %s; want only MASTER->BACKUP (no restart)", clTrString(trs))
	}
	if as.Priority != 110 || as.AdvertsSent < was.AdvertsSent {
		t.Errorf("a after the reload: priority %d, adverts sent %d (was %d)", as.Priority, as.AdvertsSent, was.AdvertsSent)
	}
	c.waitBackupOf("c", "v4", c.v4("b"), 120)
	c.wantVIPs("b", clVIP4)
	t.Logf("figure: reload: a advertised priority 110 %v after SIGHUP; b preempted %v after it (Master_Down_Interval %v)", adv.Time.Sub(fix).Round(time.Millisecond), takeover.Round(time.Millisecond), clMDI(120))
}
