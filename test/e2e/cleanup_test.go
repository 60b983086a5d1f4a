package e2e

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

// keepvip cleanup after a crash removes exactly what keepvip owns — its
// VIPs (both families), its ECMP address, its routes in the routing
// table, its nftables table, its state files — and nothing of anyone
// else's around them: an operator's address in the VIPs' subnet, a route
// of another protocol in the same table, another nftables table. It
// refuses while a keepvip runs. (IPVS services: test/ipvs.)
func TestCleanupRemovesOnlyKeepvips(t *testing.T) {
	l := lab.ForTest(t)
	n, err := l.AddNode("a", netip.MustParsePrefix("192.0.2.11/24"), netip.MustParsePrefix("2001:db8::11/64"))
	if err != nil {
		t.Fatal(err)
	}
	sh := func(script string) string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		out, err := n.Exec(ctx, "sh", "-c", script)
		if err != nil {
			t.Fatalf("%s: %v\n%s", script, err, out)
		}
		return string(out)
	}
	state := filepath.Join(l.Dir(), "state-a")
	k, err := n.StartKeepvip(`
instances:
- {name: v4, interface: eth0, vrid: 51, priority: 200, accept: false, advertInterval: 100ms, vips: [198.51.100.100/24]}
- {name: v6, interface: eth0, vrid: 52, priority: 200, advertInterval: 100ms, vips: ["2001:db8:10::100/64"]}
routing:
  exporter: kernel
  kernelTable: {table: 100}
  static: [203.0.113.0/24]
  ecmp: [{vip: 192.0.2.200}]
`, "--state-dir", state)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, in := range []string{"v4", "v6"} {
		if err := k.WaitState(ctx, in, vrrp.StateMaster); err != nil {
			t.Fatalf("%s: %v\n%s", in, err, k.Log())
		}
	}
	// Everyone else's, around keepvip's.
	sh(`ip addr add 198.51.100.200/24 dev eth0
		ip addr add 2001:db8:10::200/64 dev eth0 nodad
		ip route add 203.0.114.0/24 dev lo table 100 proto static
		nft add table inet other`)
	// keepvip's: its VIPs and ECMP address (Debian 12's ip does not
	// show address marks), its routes, its table.
	keepvips := `ip addr show | grep -c -e ' 198.51.100.100/24 ' -e ' 2001:db8:10::100/64 ' -e ' 192.0.2.200/32 ' || true
		ip route show table all proto 0x6b | grep -c . || true
		nft list tables | grep -c 'inet keepvip' || true`
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		if got := strings.Fields(sh(keepvips)); len(got) == 3 && got[0] == "3" && got[1] == "4" && got[2] == "1" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("keepvip's addresses, routes and table are not all there:\n%s\n%s", sh("ip -d addr show; ip route show table all proto 0x6b; nft list tables"), k.Log())
		}
	}
	bin, err := lab.KeepvipBinary()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := n.Exec(ctx, bin, "cleanup", "--state-dir", state); err == nil || !strings.Contains(string(out), "a keepvip may be running here") {
		t.Errorf("cleanup beside a running keepvip = %v\n%s", err, out)
	}
	if err := k.Kill(); err != nil {
		t.Fatal(err)
	}
	out, err := n.Exec(ctx, bin, "cleanup", "--state-dir", state)
	if err != nil {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	t.Logf("cleanup:\n%s", out)
	if got := strings.Fields(sh(keepvips)); strings.Join(got, " ") != "0 0 0" {
		t.Errorf("keepvip's things left (addresses, routes, table): %v\n%s", got, sh("ip -d addr show; ip route show table all; nft list tables"))
	}
	for _, want := range []string{"198.51.100.200/24", "2001:db8:10::200/64", "192.0.2.11/24"} {
		if !strings.Contains(sh("ip addr show"), want) {
			t.Errorf("the address %s is gone", want)
		}
	}
	if !strings.Contains(sh("ip route show table 100"), "203.0.114.0/24") {
		t.Errorf("the route of another protocol is gone")
	}
	if !strings.Contains(sh("nft list tables"), "inet other") {
		t.Errorf("another nftables table is gone")
	}
	entries, _ := os.ReadDir(state)
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "vrrp-netns-") {
			t.Errorf("left in the state directory: %s", e.Name())
		}
	}
	// Again: nothing to do, and no error.
	if out, err := n.Exec(ctx, bin, "cleanup", "--state-dir", state); err != nil || !strings.Contains(string(out), "nothing of keepvip's is left") {
		t.Errorf("a second cleanup = %v\n%s", err, out)
	}
}
