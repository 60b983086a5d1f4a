package vrrp

import (
	"net"
	"os"
	"strings"
	"testing"

	"github.com/keepvip/keepvip/test/framework/netnstest"
)

// promote_secondaries as keepvip reads and writes it by netlink is the
// setting /proc/sys shows (issue #10: keepvip turns it on for interfaces
// with VIPs that have a prefix length, without needing /proc/sys).
func TestAddrIssue10PromoteSecondariesNetlink(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	va, _ := vethPair(t)
	read := func() string {
		b, err := os.ReadFile("/proc/sys/net/ipv4/conf/va/promote_secondaries")
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	for _, on := range []bool{true, false, true} {
		if err := setPromoteSecondaries(nil, va.Index, on); err != nil {
			t.Fatal(err)
		}
		got, err := promoteSecondaries(nil, va.Index)
		if err != nil {
			t.Fatal(err)
		}
		want := map[bool]string{true: "1", false: "0"}[on]
		if got != on || read() != want {
			t.Errorf("after setting %v by netlink: netlink reads %v, /proc/sys reads %s", on, got, read())
		}
	}
	if _, err := promoteSecondaries(nil, 9999); err == nil {
		t.Error("reading the setting of a missing interface succeeded")
	}
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := promoteSecondaries(nil, lo.Index); err != nil {
		t.Errorf("reading the setting of lo: %v", err)
	}
}
