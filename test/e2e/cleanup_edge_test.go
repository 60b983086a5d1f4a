package e2e

// keepvip cleanup run by a hostile or careless operator: the wrong
// --route-protocol, a damaged or stale state directory, a kernel without
// IPVS, look-alike nftables tables, promote_secondaries turned off, a
// stale readiness marker, a keepvip with another state directory.

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keepvip/keepvip/test/framework/lab"
	"github.com/keepvip/keepvip/vrrp"
)

// cleanupNode is a lab node with a shell and the keepvip binary.
type cleanupNode struct {
	t   *testing.T
	l   *lab.Lab
	n   *lab.Node
	bin string
}

func newCleanupNode(t *testing.T) *cleanupNode {
	t.Helper()
	l := lab.ForTest(t)
	n, err := l.AddNode("a", netip.MustParsePrefix("192.0.2.11/24"), netip.MustParsePrefix("2001:db8::11/64"))
	if err != nil {
		t.Fatal(err)
	}
	bin, err := lab.KeepvipBinary()
	if err != nil {
		t.Fatal(err)
	}
	return &cleanupNode{t: t, l: l, n: n, bin: bin}
}

func (c *cleanupNode) sh(script string) string {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := c.n.Exec(ctx, "sh", "-c", script)
	if err != nil {
		c.t.Fatalf("%s: %v\n%s", script, err, out)
	}
	return string(out)
}

func (c *cleanupNode) cleanup(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := c.n.Exec(ctx, append([]string{c.bin, "cleanup"}, args...)...)
	return string(out), err
}

// A --route-protocol of the kernel's own (0-4: kernel routes of every
// address, routes added by hand, static ones) or out of range is refused
// before anything is touched: keepvip never marks its routes so.
func TestCleanupRefusesKernelRouteProtocols(t *testing.T) {
	c := newCleanupNode(t)
	state := filepath.Join(c.l.Dir(), "state")
	c.sh(`ip route add 203.0.113.0/24 dev lo
		ip route add 203.0.114.0/24 dev lo proto static table 100
		ip route add 203.0.115.0/24 dev lo proto 0x6b table 100`)
	before := c.sh("ip route show table all")
	for _, p := range []string{"1", "2", "3", "4", "256", "-1"} {
		out, err := c.cleanup("--state-dir", state, "--route-protocol", p)
		if err == nil {
			t.Errorf("cleanup --route-protocol %s succeeded:\n%s", p, out)
		}
		if got := c.sh("ip route show table all"); got != before {
			t.Fatalf("cleanup --route-protocol %s changed the routes:\n%s\nwas:\n%s", p, got, before)
		}
	}
	// The protocol the configuration last applied in Kubernetes mode
	// chose is keepvip's too; a kernel one named there is not.
	c.sh(`ip route add 203.0.116.0/24 dev lo proto 50 table 100`)
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(state, "kubernetes-config.json")
	if err := os.WriteFile(cache, []byte(`{"config": {"routing": {"exporter": "kernel", "kernelTable": {"table": 100, "protocol": 3}}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := c.cleanup("--state-dir", state, "--route-protocol", "60"); err != nil {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	if got := c.sh("ip route show table all"); !strings.Contains(got, "203.0.113.0/24") || !strings.Contains(got, "203.0.116.0/24") {
		t.Fatalf("after cleanup with protocol 3 in the cached configuration:\n%s", got)
	}
	if err := os.WriteFile(cache, []byte(`{"config": {"routing": {"exporter": "kernel", "kernelTable": {"table": 100, "protocol": 50}}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := c.cleanup("--state-dir", state, "--route-protocol", "0x6b"); err != nil {
		t.Fatalf("cleanup --route-protocol 0x6b: %v\n%s", err, out)
	}
	got := c.sh("ip route show table all")
	if strings.Contains(got, "203.0.115.0/24") || strings.Contains(got, "203.0.116.0/24") || !strings.Contains(got, "203.0.113.0/24") || !strings.Contains(got, "203.0.114.0/24") {
		t.Errorf("after cleanup --route-protocol 0x6b:\n%s", got)
	}
}

// A damaged IPVS state file is not "nothing to remove": cleanup fails,
// names it, and keeps it (and the older .bak) for the operator, instead
// of renaming it, reporting the node clean and deleting the evidence.
func TestCleanupDamagedIPVSState(t *testing.T) {
	c := newCleanupNode(t)
	state := filepath.Join(c.l.Dir(), "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	damaged := []byte(`{"bootID": "x", "services": [{"addr": "192.0.2.1`)
	if err := os.WriteFile(filepath.Join(state, "ipvs.json"), damaged, 0o600); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(c.l.Dir(), "cleaned")
	if err := os.WriteFile(marker, nil, 0o600); err != nil { // from an earlier run
		t.Fatal(err)
	}
	out, err := c.cleanup("--state-dir", state, "--wait", "--marker", marker)
	if err == nil || !strings.Contains(out, "ipvs.json") || !strings.Contains(out, "damaged") {
		t.Errorf("cleanup with a damaged state file = %v\n%s", err, out)
	}
	if b, err := os.ReadFile(filepath.Join(state, "ipvs.json")); err != nil || string(b) != string(damaged) {
		t.Errorf("the damaged state file was not kept as it was: %q, %v", b, err)
	}
	// A failed cleanup is not done, whatever an earlier run left.
	if out, err := c.cleanup("--done", "--marker", marker); err == nil {
		t.Errorf("cleanup --done after a failed cleanup succeeded\n%s", out)
	}
}

// Without IPVS in the kernel (ip_vs not loaded after a reboot) there is no
// IPVS service to remove: cleanup does not fail for ever (a DaemonSet pod
// in CrashLoopBackOff), it removes the state. The host of this test has
// no IPVS (test/vm has). Temporary files of interrupted writes go too.
func TestCleanupWithoutIPVS(t *testing.T) {
	c := newCleanupNode(t)
	if c.sh("test -d /sys/module/ip_vs && echo yes || true") != "" {
		t.Skip("this kernel has IPVS")
	}
	state := filepath.Join(c.l.Dir(), "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	boot, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		t.Fatal(err)
	}
	st := `{"bootID": "` + strings.TrimSpace(string(boot)) + `", "services": [{"addr": "192.0.2.100", "port": 80, "protocol": "tcp"}]}`
	for name, content := range map[string]string{
		"ipvs.json": st, "ipvs.json.tmp": st, "kubernetes-config.json.123456": "{}", "kubernetes-config.json": "{}",
	} {
		if err := os.WriteFile(filepath.Join(state, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out, err := c.cleanup("--state-dir", state)
	if err != nil {
		t.Fatalf("cleanup without IPVS: %v\n%s", err, out)
	}
	t.Logf("cleanup:\n%s", out)
	entries, _ := os.ReadDir(state)
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "vrrp-netns-") {
			t.Errorf("left in the state directory: %s", e.Name())
		}
	}
}

// Look-alike nftables tables are someone else's; a stale VIP with a prefix
// length is removed without taking the operator's address of its subnet,
// and promote_secondaries, which cleanup has to turn on for that, is off
// again afterwards, as the operator had it.
func TestCleanupLookAlikesAndPromoteSecondaries(t *testing.T) {
	c := newCleanupNode(t)
	state := filepath.Join(c.l.Dir(), "state")
	c.sh(`nft add table ip keepvip
		nft add table inet keepvip2
		nft add table netdev keepvip
		nft add table inet keepvip`)
	// Debian 12's ip cannot mark addresses: netlink, as keepvip does.
	err := c.n.Do(func() error {
		for _, a := range []struct {
			proto uint8
			p     string
		}{{vrrp.AddrProto, "198.51.100.100/24"}, {vrrp.HeldAddrProto, "198.51.100.201/24"}, {0x6a, "198.51.100.202/32"}} {
			if err := vrrp.HoldAddrs("eth0", a.proto, []netip.Prefix{netip.MustParsePrefix(a.p)}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	c.sh(`ip addr add 198.51.100.200/24 dev eth0
		sysctl -qw net.ipv4.conf.eth0.promote_secondaries=0`)
	out, err := c.cleanup("--state-dir", state)
	if err != nil {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	t.Logf("cleanup:\n%s", out)
	tables := c.sh("nft list tables")
	for _, want := range []string{"table ip keepvip", "table inet keepvip2", "table netdev keepvip"} {
		if !strings.Contains(tables, want) {
			t.Errorf("%s is gone:\n%s", want, tables)
		}
	}
	if strings.Contains(tables, "table inet keepvip\n") {
		t.Errorf("table inet keepvip is left:\n%s", tables)
	}
	addrs := c.sh("ip addr show dev eth0")
	for _, gone := range []string{"198.51.100.100/24", "198.51.100.201/24"} {
		if strings.Contains(addrs, gone) {
			t.Errorf("keepvip's %s is left:\n%s", gone, addrs)
		}
	}
	for _, kept := range []string{"198.51.100.200/24", "198.51.100.202/32", "192.0.2.11/24"} {
		if !strings.Contains(addrs, kept) {
			t.Errorf("%s is gone:\n%s", kept, addrs)
		}
	}
	if got := strings.TrimSpace(c.sh("sysctl -n net.ipv4.conf.eth0.promote_secondaries")); got != "0" {
		t.Errorf("cleanup left promote_secondaries = %s on eth0 (it was 0)", got)
	}
}

// The lock is the namespace's, whatever the state directory: cleanup with
// another --state-dir than a running keepvip's is refused too.
func TestCleanupRefusesBesideKeepvipWithOtherStateDir(t *testing.T) {
	c := newCleanupNode(t)
	k, err := c.n.StartKeepvip(`
instances:
- {name: v4, interface: eth0, vrid: 51, priority: 200, advertInterval: 100ms, vips: [198.51.100.100/32]}
`, "--state-dir", filepath.Join(c.l.Dir(), "state-a"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := k.WaitState(ctx, "v4", vrrp.StateMaster); err != nil {
		t.Fatalf("%v\n%s", err, k.Log())
	}
	out, err := c.cleanup("--state-dir", filepath.Join(c.l.Dir(), "state-b"))
	if err == nil || !strings.Contains(out, "keepvip") {
		t.Errorf("cleanup with another state directory beside a running keepvip = %v\n%s", err, out)
	}
	if !strings.Contains(c.sh("ip addr show dev eth0"), "198.51.100.100/32") {
		t.Errorf("the running keepvip's VIP is gone")
	}
}
