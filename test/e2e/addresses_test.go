package e2e

// Issue #10, end to end with the keepvip binary: keepvip never loses an
// address it did not add (crash, restart, stop), a local user cannot keep
// it from starting, and a link set down is the kernel's doing, not
// another program's.

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keepvip/keepvip/test/framework/lab"
	"github.com/keepvip/keepvip/vrrp"
)

var (
	// adVIPs4 and adVIPs6 are VIPs in subnets that no node address is in,
	// so that the first of them is the primary of its subnet on eth0.
	adVIPs4 = []netip.Prefix{netip.MustParsePrefix("198.51.100.100/24"), netip.MustParsePrefix("198.51.100.101/24")}
	adVIPs6 = []netip.Prefix{netip.MustParsePrefix("fe80::52/64"), netip.MustParsePrefix("2001:db8:10::100/64")}
	// adForeign are an operator's addresses, added after the VIPs.
	adForeign = []netip.Prefix{netip.MustParsePrefix("198.51.100.200/24"), netip.MustParsePrefix("2001:db8:10::200/64")}
)

// adSyncWait bounds a wait for `ip monitor` to catch up: not a measured
// figure, so generous for a loaded machine.
const adSyncWait = 30 * time.Second

func adConfig(prio int) string {
	return clConfig(
		clInst{name: "v4", prio: prio, vips: adVIPs4},
		clInst{name: "v6", prio: prio, vips: adVIPs6},
	)
}

// adMonitor is `ip -ts monitor address` in a node: what it prints is the
// evidence of every check on addresses.
type adMonitor struct {
	c       *clCluster
	n       *lab.Node
	p       *lab.Proc
	markers int
}

func (c *clCluster) adMonitor(name string) *adMonitor {
	c.t.Helper()
	p, err := c.nodes[name].Start("ip-monitor", "ip", "-ts", "monitor", "address")
	if err != nil {
		c.t.Fatal(err)
	}
	m := &adMonitor{c: c, n: c.nodes[name], p: p}
	m.sync() // listening from here on
	return m
}

// sync adds and removes a marker address, a new one each time, and waits
// until the monitor printed its removal: everything before it has been
// printed by then. It returns the length of the output at that point.
func (m *adMonitor) sync() int {
	m.c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), adSyncWait)
	defer cancel()
	m.c.waitFor(adSyncWait, "ip monitor to show the marker address", func(context.Context) (bool, string) {
		m.markers++
		marker := netip.PrefixFrom(netip.AddrFrom4([4]byte{203, 0, 113, byte(1 + m.markers%250)}), 32)
		from := len(m.p.Log())
		if _, err := m.n.Exec(ctx, "sh", "-c", fmt.Sprintf("ip addr add %s dev eth0 && ip addr del %s dev eth0", marker, marker)); err != nil {
			m.c.t.Fatal(err)
		}
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			if len(m.events(from, "Deleted", marker)) > 0 {
				return true, ""
			}
			time.Sleep(10 * time.Millisecond)
		}
		// Not listening yet (the first sync), or slow: a new marker.
		return false, m.p.Log()
	})
	return len(m.p.Log())
}

var adEventRE = regexp.MustCompile(`(?m)^\[[^\]]+\] (Deleted )?\d+: \S+\s+inet6? (\S+)`)

// events returns the lines from offset from on that add ("") or remove
// ("Deleted") p.
func (m *adMonitor) events(from int, kind string, p netip.Prefix) []string {
	log := m.p.Log()
	var out []string
	for _, ev := range adEventRE.FindAllStringSubmatch(log[min(from, len(log)):], -1) {
		if strings.TrimSpace(ev[1]) == kind && ev[2] == p.String() {
			out = append(out, ev[0])
		}
	}
	return out
}

// appearances counts how often p appeared in the monitor's output between
// offsets from and to: additions while it was absent (present tells
// whether it was there at from).
func (m *adMonitor) appearances(from, to int, p netip.Prefix, present bool) (n int, first string) {
	log := m.p.Log()
	for _, ev := range adEventRE.FindAllStringSubmatch(log[min(from, len(log)):min(to, len(log))], -1) {
		if ev[2] != p.String() {
			continue
		}
		added := ev[1] == ""
		if added && !present {
			if n++; n == 1 {
				first = ev[0]
			}
		}
		present = added
	}
	return n, first
}

// wantKept fails the test if a foreign address was removed after offset
// from or is not on the node.
func (m *adMonitor) wantKept(from int, when string, foreign ...netip.Prefix) {
	m.c.t.Helper()
	m.sync()
	var problems []string
	for _, f := range foreign {
		if del := m.events(from, "Deleted", f); len(del) > 0 {
			problems = append(problems, fmt.Sprintf("%s was removed: %s", f, del[0]))
		}
		if !m.c.hasAddr(m.n.Name, f.Addr()) {
			problems = append(problems, fmt.Sprintf("%s is not on %s", f, m.n.Name))
		}
	}
	if len(problems) > 0 {
		log := m.p.Log()
		m.c.t.Errorf("%s: foreign addresses lost:\n  %s\nip -ts monitor address since:\n%s", when, strings.Join(problems, "\n  "), log[min(from, len(log)):])
	}
}

func (c *clCluster) waitVIPsOn(name string, vips ...netip.Prefix) {
	c.t.Helper()
	c.waitFor(clWait, fmt.Sprintf("VIPs %v on %s", vips, name), func(ctx context.Context) (bool, string) {
		addrs, err := c.nodes[name].Addrs(ctx)
		if err != nil {
			return false, err.Error()
		}
		for _, v := range vips {
			if !slices.Contains(addrs, v) {
				return false, fmt.Sprintf("addresses %v", addrs)
			}
		}
		return true, ""
	})
}

// TestAddressesForeignSurviveCrashAndStop: an operator adds addresses to
// the subnets of a master's VIPs after them (IPv4: secondaries of the
// VIP). keepvip is killed, started again (which resumes as master with
// the VIPs it left, never removing them) and stopped: the operator's
// addresses stay through all of it. (test/e2e's leftovers test and vrrp's
// TestAddrIssue10ReleaseKeepsForeignAddresses remove VIPs no instance
// takes back.)
func TestAddressesForeignSurviveCrashAndStop(t *testing.T) {
	c := newClCluster(t)
	c.start("a", adConfig(150))
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitState("a", "v6", vrrp.StateMaster)
	c.waitVIPsOn("a", append(adVIPs4, adVIPs6...)...)
	mon := c.adMonitor("a")
	ctx, cancel := context.WithTimeout(context.Background(), clWait)
	defer cancel()
	for _, f := range adForeign {
		if _, err := c.nodes["a"].Exec(ctx, "ip", "addr", "add", f.String(), "dev", "eth0", "nodad"); err != nil {
			t.Fatal(err)
		}
	}
	if out, _ := c.nodes["a"].Exec(ctx, "ip", "-4", "addr", "show", "dev", "eth0", "to", "198.51.100.0/24"); !strings.Contains(string(out), "198.51.100.200/24 scope global secondary") {
		t.Fatalf("the operator's address is not a secondary of the VIP; the test needs it so:\n%s", out)
	}
	from := mon.sync()

	if err := c.kv["a"].Kill(); err != nil {
		t.Fatal(err)
	}
	c.start("a", adConfig(150))
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitState("a", "v6", vrrp.StateMaster)
	c.waitVIPsOn("a", append(adVIPs4, adVIPs6...)...)
	if !strings.Contains(c.kv["a"].Log(), "restarted with its VIPs in place") {
		t.Errorf("the restarted keepvip did not resume with the VIPs the killed one left:\n%s", clTail(clNoDebug(c.kv["a"].Log()), 3000))
	}
	mon.wantKept(from, "after a crash and a restart", append(slices.Clone(adForeign), append(adVIPs4, adVIPs6...)...)...)

	from = mon.sync()
	if err := c.kv["a"].Stop(clWait); err != nil {
		t.Fatal(err)
	}
	for _, v := range append(adVIPs4, adVIPs6...) {
		if c.hasAddr("a", v.Addr()) {
			t.Errorf("VIP %s left on a after SIGTERM", v)
		}
	}
	mon.wantKept(from, "after SIGTERM", adForeign...)
}

// TestAddressesSquatter is not a test of its own: it is the squatter of
// TestAddressesLockSquatter, run as nobody in a node. It binds the abstract
// socket keepvip used to lock its network namespace with, tries the lock
// directory, says so, and waits to be killed.
func TestAddressesSquatter(t *testing.T) {
	if os.Getenv("KEEPVIP_E2E_SQUAT") == "" {
		return
	}
	abstract := "held"
	l, err := net.Listen("unix", "@keepvip-vrrp")
	if err != nil {
		abstract = err.Error()
	} else {
		defer l.Close()
	}
	// The default lock directory (vrrp.DefaultLockDir).
	const lockDir = "/run/keepvip"
	_, derr := os.ReadDir(lockDir)
	f, ferr := os.OpenFile(filepath.Join(lockDir, "squat.lock"), os.O_CREATE|os.O_RDONLY, 0o644)
	if ferr == nil {
		f.Close()
	}
	capEff := "?"
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		if m := regexp.MustCompile(`(?m)^CapEff:\s*(\S+)`).FindSubmatch(b); m != nil {
			capEff = string(m[1])
		}
	}
	fmt.Printf("squatting: uid=%d capeff=%s abstract=%s; lock directory: list: %v; create: %v\n", os.Getuid(), capEff, abstract, derr, ferr)
	time.Sleep(time.Hour)
}

// TestAddressesLockSquatter: a process as nobody, without capabilities,
// takes the abstract socket keepvip used to lock its network namespace
// with, before keepvip starts. keepvip starts all the same; a second
// keepvip in the same namespace is refused; keepvips in other namespaces
// of the host run each their own.
func TestAddressesLockSquatter(t *testing.T) {
	c := newClCluster(t)
	// This test binary is the squatter: copied where nobody can run it.
	dir, err := os.MkdirTemp("", "keepvip-squat-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "e2e.test")
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	sq, err := c.nodes["a"].Start("squatter", "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"env", "KEEPVIP_E2E_SQUAT=1", bin, "-test.run=^TestAddressesSquatter$", "-test.v")
	if err != nil {
		t.Fatal(err)
	}
	c.waitFor(clWait, "the squatter to squat", func(context.Context) (bool, string) {
		return strings.Contains(sq.Log(), "squatting:"), sq.Log()
	})
	said := sq.Log()
	if !strings.Contains(said, "uid=65534 capeff=0000000000000000 abstract=held") {
		t.Fatalf("the squatter is not nobody without capabilities holding the socket:\n%s", said)
	}
	t.Logf("squatter: %s", strings.TrimSpace(said[strings.Index(said, "squatting:"):]))

	c.start("a", adConfig(150))
	c.start("b", adConfig(120))
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitState("a", "v6", vrrp.StateMaster)
	c.waitBackupOf("b", "v4", c.v4("a"), 150)
	if log := c.kv["a"].Log(); !strings.Contains(log, "uid=65534") {
		t.Errorf("a does not say who squats its socket:\n%s", clTail(clNoDebug(log), 3000))
	}

	// A second keepvip in a's namespace (its own status socket, so that
	// only the lock can stop it).
	second, err := c.nodes["a"].StartKeepvip(adConfig(150), "--status-socket", filepath.Join(dir, "second.sock"))
	if err != nil {
		t.Fatal(err)
	}
	c.all = append(c.all, second)
	select {
	case <-second.Proc().Exited():
	case <-time.After(clWait):
		t.Fatalf("a second keepvip in a's namespace is still running:\n%s", clTail(second.Log(), 3000))
	}
	if err := second.Proc().Wait(); err == nil || !strings.Contains(second.Log(), "another keepvip is running in this network namespace") {
		t.Errorf("second keepvip in a's namespace exited with %v; want refused as another keepvip:\n%s", err, clTail(second.Log(), 3000))
	}
	c.alive("a")
	c.waitState("a", "v4", vrrp.StateMaster)
}

// TestAddressesLinkDownFlush: a's eth0 is set down, which makes the kernel
// remove its IPv6 addresses, the VIPs among them, and up again, three
// times (whether keepvip hears of the link or of the removals first is a
// race of two netlink sockets; each round is a draw). keepvip does not
// blame another program, does not put the VIPs back on the down link,
// sends nothing there, and takes each VIP again once when the link is up
// and it is master again.
func TestAddressesLinkDownFlush(t *testing.T) {
	c := newClCluster(t)
	k := c.start("a", adConfig(150))
	vips := append(append([]netip.Prefix{}, adVIPs4...), adVIPs6...)
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitState("a", "v6", vrrp.StateMaster)
	c.waitVIPsOn("a", vips...)
	mon := c.adMonitor("a")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for round := 1; round <= 3; round++ {
		from, logFrom := mon.sync(), len(k.Log())
		if _, err := c.nodes["a"].Exec(ctx, "ip", "link", "set", "eth0", "down"); err != nil {
			t.Fatal(err)
		}
		c.waitState("a", "v4", vrrp.StateFault)
		c.waitState("a", "v6", vrrp.StateFault)
		time.Sleep(1500 * time.Millisecond) // longer than a failed VIP add waits to retry
		up := mon.sync()
		if _, err := c.nodes["a"].Exec(ctx, "ip", "link", "set", "eth0", "up"); err != nil {
			t.Fatal(err)
		}
		c.waitState("a", "v4", vrrp.StateMaster)
		c.waitState("a", "v6", vrrp.StateMaster)
		c.waitVIPsOn("a", vips...)
		end := mon.sync()

		var problems []string
		for _, v := range vips {
			if n, first := mon.appearances(from, up, v, true); n > 0 {
				problems = append(problems, fmt.Sprintf("VIP %s added while eth0 was down: %s", v, first))
			}
			if n, _ := mon.appearances(up, end, v, false); n != 1 {
				problems = append(problems, fmt.Sprintf("VIP %s appeared %d times after eth0 came up; want once", v, n))
			}
		}
		fault := map[string]time.Time{}
		for _, inst := range []string{"v4", "v6"} {
			st := c.mustInst("a", inst)
			fault[inst] = c.mustLast(st, "a", vrrp.StateFault).At
			for _, e := range st.Errors {
				// Send errors: see below, with their exact time.
				if !strings.Contains(e, " send: ") {
					problems = append(problems, fmt.Sprintf("%s reports: %s", inst, e))
				}
			}
		}
		log := k.Log()[logFrom:]
		problems = append(problems, adFailures(log, fault)...)
		if len(problems) > 0 {
			ml := mon.p.Log()
			t.Fatalf("round %d, eth0 down and up:\n  %s\nip -ts monitor address from eth0 down on:\n%s\nkeepvip's log meanwhile:\n%s",
				round, strings.Join(problems, "\n  "), ml[min(from, len(ml)):], clTail(clNoDebug(log), 6000))
		}
	}
}

var adFailRE = regexp.MustCompile(`(?m)^time=(\S+) level=WARN msg="vrrp operation failed" instance=(\S+) .*op=(\S+).*$`)

// adFailures returns the failed operations in a daemon's log that a link
// set down must not cause: any VIP or announcement failure, and any
// failed advert after the instance entered FAULT. An advert due at the
// moment the link went down, before keepvip heard of it, may fail: that
// window is the kernel's notification delay, not keepvip's doing.
func adFailures(log string, fault map[string]time.Time) []string {
	var out []string
	for _, m := range adFailRE.FindAllStringSubmatch(log, -1) {
		at, err := time.Parse(time.RFC3339Nano, m[1])
		if m[3] == "send" && err == nil && !at.After(fault[m[2]]) {
			continue
		}
		out = append(out, "logged: "+m[0])
	}
	for _, l := range regexp.MustCompile(`.*another program.*`).FindAllString(log, -1) {
		if !adFailRE.MatchString(l) {
			out = append(out, "logged: "+l)
		}
	}
	return out
}
