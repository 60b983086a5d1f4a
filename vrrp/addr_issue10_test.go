package vrrp

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/keepvip/keepvip/test/framework/netnstest"
)

// Issue #10: releasing a VIP must never take an address that is not
// keepvip's with it. An IPv4 VIP with a prefix length that is the first
// address of its subnet on the interface is the subnet's primary: the
// addresses of the subnet added after it (an operator's, another
// instance's VIP) are its secondaries, and with promote_secondaries off,
// the kernel's default, removing the primary removes them too.
//
// Each case lays out, in one subnet and in this order, keepvip's VIPs and
// foreign addresses (added by "ip addr add", the way an operator would),
// then releases instance a's VIPs one way and checks, with the address
// notifications as evidence, that no foreign address and no VIP of
// instance b was removed, even for a moment.
func TestAddrIssue10ReleaseKeepsForeignAddresses(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	va, vb := vethPair(t)
	// vt's carrier is a's tracked link: vu down puts a in Fault, b not.
	netnstest.Sh(t, `ip link add vt type veth peer name vu && ip link set vt up && ip link set vu up`)
	mon := startAddrMonitor(t)

	type family struct {
		name  string
		fam   Family
		addr  func(host int) netip.Prefix
		peer  netip.Addr
		group netip.Addr
	}
	families := []family{
		{"IPv4", IPv4, func(h int) netip.Prefix {
			return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 51, 100, byte(h)}), 24)
		}, netip.MustParseAddr("192.0.2.2"), GroupIPv4},
		{"IPv6", IPv6, func(h int) netip.Prefix {
			return netip.MustParsePrefix(fmt.Sprintf("2001:db8:10::%x/64", h))
		}, netip.Addr{}, GroupIPv6},
	}
	// Layouts: the order in which addresses arrive on the interface. a1
	// and a2 are instance a's VIPs, b1 instance b's, f* foreign.
	layouts := []struct {
		name  string
		order []string
	}{
		{"VIP first", []string{"a1", "f1", "a2", "f2", "b1", "f3"}},
		{"foreign first", []string{"f0", "a1", "f1", "a2", "b1", "f2"}},
	}
	host := map[string]int{"f0": 0x10, "a1": 0x64, "f1": 0x96, "a2": 0x65, "f2": 0xc8, "b1": 0x66, "f3": 0xfa}
	releases := []string{"failover", "fault", "live change", "instance removed", "stop", "start-up cleanup"}

	for _, f := range families {
		for _, lay := range layouts {
			for _, rel := range releases {
				t.Run(f.name+"/"+lay.name+"/"+rel, func(t *testing.T) {
					// Each case starts from the kernel's defaults.
					netnstest.Sh(t, `sysctl -qw net.ipv4.conf.va.promote_secondaries=0 net.ipv4.conf.all.promote_secondaries=0
						ip addr flush dev va to 198.51.100.0/24; ip -6 addr flush dev va to 2001:db8:10::/64; ip link set vu up`)
					begin := mon.mark()
					p := func(name string) netip.Prefix { return f.addr(host[name]) }
					var foreign []netip.Prefix
					var aVIPs []netip.Prefix
					for _, n := range lay.order {
						switch n[0] {
						case 'f':
							foreign = append(foreign, p(n))
						case 'a':
							aVIPs = append(aVIPs, p(n))
						}
					}
					addForeign := func(q netip.Prefix) {
						t.Helper()
						nodad := ""
						if f.fam == IPv6 {
							nodad = " nodad"
						}
						netnstest.Sh(t, fmt.Sprintf("ip addr add %s dev va%s", q, nodad))
					}
					cfgA := testConfig("a", "va", 20, p("a1").String())
					cfgA.Priority = 250
					cfgA.Track = []string{"vt"}
					cfgB := testConfig("b", "va", 21, p("b1").String())
					cfgB.Priority = PriorityOwner // master at once
					if f.fam == IPv6 {
						// RFC 9568 §5.2.9: an IPv6 router's first address
						// is link-local.
						cfgA.VIPs = append([]netip.Prefix{netip.MustParsePrefix("fe80::20/64")}, cfgA.VIPs...)
						cfgB.VIPs = append([]netip.Prefix{netip.MustParsePrefix("fe80::21/64")}, cfgB.VIPs...)
					}

					var m *Manager
					if rel == "start-up cleanup" {
						// What a keepvip killed while it held a's and b's
						// VIPs leaves behind: the same layout, marked.
						for _, n := range lay.order {
							if n[0] == 'f' {
								addForeign(p(n))
								continue
							}
							if err := addrRequest(nil, unix.RTM_NEWADDR, unix.NLM_F_CREATE|unix.NLM_F_EXCL, va.Index, p(n)); err != nil {
								t.Fatalf("adding %s marked as keepvip's: %v", p(n), err)
							}
						}
						mark := mon.mark()
						mark.ip = begin.ip
						m = NewManager(Options{Logger: discard()})
						if err := m.Start(); err != nil {
							t.Fatal(err)
						}
						defer m.Stop()
						// No instance claims them: the first Sync removes them.
						if err := m.Sync(nil); err != nil {
							t.Fatal(err)
						}
						mon.sync(t, va.Index)
						mon.check(t, mark, "after the start-up cleanup", foreign, nil)
						for _, n := range []string{"a1", "a2", "b1"} {
							if _, ok := hasAddr(t, va.Index, p(n).Addr()); ok {
								t.Errorf("the stale VIP %s was not removed at start", p(n))
							}
						}
						return
					}

					m = NewManager(Options{Logger: discard()})
					if err := m.Start(); err != nil {
						t.Fatal(err)
					}
					stopped := false
					defer func() {
						if !stopped {
							m.Stop()
						}
					}()
					// Build the layout: a's second VIP and b come by live
					// changes, so that foreign addresses arrive between.
					for _, n := range lay.order {
						switch n {
						case "a1":
							if err := m.Sync([]Config{cfgA}); err != nil {
								t.Fatal(err)
							}
							waitState(t, m, "a", StateMaster)
						case "a2":
							cfgA.VIPs = append(cfgA.VIPs, p("a2"))
							if err := m.Sync([]Config{cfgA}); err != nil {
								t.Fatal(err)
							}
						case "b1":
							if err := m.Sync([]Config{cfgA, cfgB}); err != nil {
								t.Fatal(err)
							}
							waitState(t, m, "b", StateMaster)
						default:
							addForeign(p(n))
						}
						if n[0] != 'f' {
							waitPrefixes(t, va.Index, p(n).Addr(), []netip.Prefix{p(n)}, 3*time.Second, "VIP "+n+" added")
						}
					}
					if f.fam == IPv4 && lay.name == "VIP first" {
						// The case of the issue: a's VIP is the primary.
						if e, _ := hasAddr(t, va.Index, p("a1").Addr()); e.flags&unix.IFA_F_SECONDARY != 0 {
							t.Fatalf("a1 %s is a secondary; the layout needs it primary", p("a1"))
						}
					}

					mark := mon.mark()
					// The layout, with its secondaries, is evidence too.
					mark.ip = begin.ip
					keep := []netip.Prefix{p("b1")} // b's VIP, kept unless b stops
					gone := aVIPs
					switch rel {
					case "failover":
						pr := newPeer(t, vb, f.fam)
						src := f.peer
						if f.fam == IPv6 {
							a, err := sourceAddr(vb.Index, IPv6, nil, nil)
							if err != nil {
								t.Fatal(err)
							}
							src = a
						}
						stop := pr.advertise(Advertisement{Version: 3, VRID: 20, Priority: 254, Interval: 100 * time.Millisecond, Addrs: cfgA.vipAddrs()}, src, f.group, 100*time.Millisecond)
						defer stop()
						waitState(t, m, "a", StateBackup)
					case "fault":
						netnstest.Sh(t, "ip link set vu down")
						waitState(t, m, "a", StateFault)
					case "live change":
						// a1 is no longer configured; a2 stays.
						cfgA.VIPs = slices.DeleteFunc(slices.Clone(cfgA.VIPs), func(q netip.Prefix) bool { return q == p("a1") })
						if err := m.Sync([]Config{cfgA, cfgB}); err != nil {
							t.Fatal(err)
						}
						gone = []netip.Prefix{p("a1")}
						keep = append(keep, p("a2"))
					case "instance removed":
						if err := m.Sync([]Config{cfgB}); err != nil {
							t.Fatal(err)
						}
					case "stop":
						stopped = true
						if err := m.Stop(); err != nil {
							t.Fatal(err)
						}
						gone = append(gone, p("b1"))
						keep = nil
					}
					for _, q := range gone {
						waitPrefixes(t, va.Index, q.Addr(), nil, 3*time.Second, rel+": "+q.String()+" released")
					}
					mon.sync(t, va.Index)
					mon.check(t, mark, "after the "+rel, foreign, keep)
					if !stopped {
						for _, s := range m.Status() {
							for _, e := range s.Errors {
								if strings.Contains(e, "removed") {
									t.Errorf("instance %s reports: %s", s.Name, e)
								}
							}
						}
					}
					if rel == "stop" && f.fam == IPv4 {
						// Stop leaves the setting as it found it.
						if b, err := os.ReadFile("/proc/sys/net/ipv4/conf/va/promote_secondaries"); err != nil || string(b) != "0\n" {
							t.Errorf("promote_secondaries of va after Stop = %q (%v); want 0 again, as found", b, err)
						}
					}
				})
			}
		}
	}
}

// addrMonitor records the kernel's address notifications, as `ip monitor
// address` shows them, and runs `ip -ts monitor address` alongside for the
// failure message.
type addrMonitor struct {
	mu     sync.Mutex
	events []addrEvent
	ip     *lockedBuffer
}

type addrEvent struct {
	at      time.Time
	added   bool
	ifindex int
	prefix  netip.Prefix
}

func (e addrEvent) String() string {
	verb := "added  "
	if !e.added {
		verb = "Deleted"
	}
	return fmt.Sprintf("%s %s %s dev %s", e.at.Format("15:04:05.000000"), verb, e.prefix, testIfName(e.ifindex))
}

func startAddrMonitor(t *testing.T) *addrMonitor {
	t.Helper()
	m := &addrMonitor{ip: &lockedBuffer{}}
	ch := make(chan netlink.AddrUpdate, 1024)
	done := make(chan struct{})
	if err := netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{ReceiveBufferSize: 1 << 20}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { close(done) })
	go func() {
		for u := range ch {
			a, ok := netip.AddrFromSlice(u.LinkAddress.IP)
			if !ok {
				continue
			}
			bits, _ := u.LinkAddress.Mask.Size()
			m.mu.Lock()
			m.events = append(m.events, addrEvent{time.Now(), u.NewAddr, u.LinkIndex, netip.PrefixFrom(a.Unmap(), bits)})
			m.mu.Unlock()
		}
	}()
	cmd := exec.Command("ip", "-ts", "monitor", "address")
	cmd.Stdout, cmd.Stderr = m.ip, m.ip
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return m
}

// monMark is a position in what the monitor saw: check looks at the
// notifications that follow events, and shows `ip monitor` from ip on.
type monMark struct{ events, ip int }

func (m *addrMonitor) mark() monMark {
	m.mu.Lock()
	defer m.mu.Unlock()
	return monMark{len(m.events), m.ip.Len()}
}

// sync adds and removes a marker address and waits until its removal is
// seen: every notification before it has been recorded by then.
func (m *addrMonitor) sync(t *testing.T, ifindex int) {
	t.Helper()
	marker := netip.MustParsePrefix("203.0.113.99/32")
	netnstest.Sh(t, fmt.Sprintf("ip addr add %s dev %s && ip addr del %s dev %s", marker, testIfName(ifindex), marker, testIfName(ifindex)))
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		m.mu.Lock()
		seen := slices.ContainsFunc(m.events, func(e addrEvent) bool { return !e.added && e.prefix == marker })
		if seen {
			m.events = slices.DeleteFunc(m.events, func(e addrEvent) bool { return e.prefix == marker })
		}
		m.mu.Unlock()
		if seen {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the address notifications did not arrive")
}

// check fails t if an address of foreign or keep was removed after mark,
// or is not on the interface now, with the notifications since mark (and
// all that `ip monitor` saw) as evidence.
func (m *addrMonitor) check(t *testing.T, mark monMark, when string, foreign, keep []netip.Prefix) {
	t.Helper()
	m.mu.Lock()
	since := slices.Clone(m.events[min(mark.events, len(m.events)):])
	m.mu.Unlock()
	var problems []string
	for _, set := range []struct {
		what string
		ps   []netip.Prefix
	}{{"foreign address", foreign}, {"VIP of the other instance", keep}} {
		for _, q := range set.ps {
			for _, e := range since {
				if !e.added && e.prefix == q {
					problems = append(problems, fmt.Sprintf("%s %s was removed (%s)", set.what, q, e))
					break
				}
			}
			if len(prefixesOfAny(t, q)) == 0 {
				problems = append(problems, fmt.Sprintf("%s %s is not on the interface", set.what, q))
			}
		}
	}
	if len(problems) == 0 {
		return
	}
	var ev strings.Builder
	for _, e := range since {
		fmt.Fprintf(&ev, "\t%s\n", e)
	}
	t.Errorf("%s:\n  %s\naddress notifications since the release began:\n%s`ip -ts monitor address` since the case began:\n%s\nnow on va:\n%s",
		when, strings.Join(problems, "\n  "), ev.String(), m.ip.since(mark.ip),
		netnstest.Sh(t, "ip addr show dev va"))
}

// prefixesOfAny returns the prefixes q's address has on any interface.
func prefixesOfAny(t *testing.T, q netip.Prefix) []netip.Prefix {
	t.Helper()
	addrs, err := listAddrs(nil, FamilyOf(q.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Prefix
	for _, e := range addrs {
		if e.prefix == q {
			out = append(out, e.prefix)
		}
	}
	return out
}

// lockedBuffer is a bytes.Buffer safe for a writer and a reader.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string { return l.since(0) }

// since returns what was written from offset off on.
func (l *lockedBuffer) since(off int) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b.Bytes()[min(max(off, 0), l.b.Len()):])
}

func (l *lockedBuffer) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Len()
}

// testIfName names an interface for the evidence.
func testIfName(ifindex int) string {
	if ifi, err := net.InterfaceByIndex(ifindex); err == nil {
		return ifi.Name
	}
	return fmt.Sprint(ifindex)
}

// The addresses every node holds at once (HoldAddrs, ECMP routing) are
// released the same way: an IPv4 one with a prefix length that is the
// primary of its subnet must not take the operator's secondary with it.
func TestAddrIssue10HeldAddrsKeepForeign(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	va, _ := vethPair(t)
	mon := startAddrMonitor(t)
	held := []netip.Prefix{netip.MustParsePrefix("198.51.100.100/24"), netip.MustParsePrefix("2001:db8:10::100/64")}
	foreign := []netip.Prefix{netip.MustParsePrefix("198.51.100.200/24"), netip.MustParsePrefix("2001:db8:10::200/64")}
	mark := mon.mark()
	if err := HoldAddrs("va", HeldAddrProto, held); err != nil {
		t.Fatal(err)
	}
	netnstest.Sh(t, "ip addr add 198.51.100.200/24 dev va && ip addr add 2001:db8:10::200/64 dev va nodad")
	if err := HoldAddrs("va", HeldAddrProto, nil); err != nil {
		t.Fatal(err)
	}
	for _, h := range held {
		if len(prefixesOfAny(t, h)) != 0 {
			t.Errorf("held address %s not released", h)
		}
	}
	mon.sync(t, va.Index)
	mon.check(t, mark, "after HoldAddrs released its addresses", foreign, nil)
}
