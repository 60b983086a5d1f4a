package kernel

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keepvip/keepvip/routes"
	"github.com/keepvip/keepvip/test/framework/netnstest"
)

func show(t *testing.T, args string) string {
	t.Helper()
	// ip -6 fails on a table that has no IPv6 route: 2>/dev/null, and
	// the IPv4 half decides.
	out := netnstest.Sh(t, "ip -4 route show "+args+"; ip -6 route show "+args+" 2>/dev/null || true")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	for i, l := range lines {
		lines[i] = strings.TrimSpace(l)
	}
	return strings.Join(lines, "\n")
}

func TestOptionsValidate(t *testing.T) {
	for _, tc := range []struct {
		o    Options
		want string
	}{
		{Options{Table: 200}, ""},
		{Options{Table: 254, Protocol: 186}, ""},
		{Options{}, "table: 0 is outside 1-4294967295"},
		{Options{Table: 255}, "table: 255 is the kernel's local table"},
		{Options{Table: 200, Protocol: 4}, "protocol: 4 is not 5-255"},
		{Options{Table: 200, Protocol: 300}, "protocol: 300 is not 5-255"},
	} {
		err := tc.o.Validate()
		if got := ""; err != nil {
			got = err.Error()
			if tc.want == "" || !strings.Contains(got, tc.want) {
				t.Errorf("%+v.Validate() = %q; want %q", tc.o, got, tc.want)
			}
		} else if tc.want != "" {
			t.Errorf("%+v.Validate() = nil; want %q", tc.o, tc.want)
		}
	}
}

func TestTableSync(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	netnstest.Sh(t, `ip link set lo up
		ip link add eth0 type veth peer name peer0
		ip link set eth0 up; ip link set peer0 up
		ip addr add 10.0.0.1/24 dev eth0
		ip addr add 2001:db8:1::1/64 dev eth0 nodad
		ip route add 203.0.113.0/24 via 10.0.0.9 table 200 proto static`)
	tab, err := New(Options{Table: 200, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	p := netip.MustParsePrefix
	want := []routes.Route{
		{Prefix: p("192.0.2.100/32"), Communities: []routes.Community{65000<<16 | 1}, Prepend: 2},
		{Prefix: p("198.51.100.0/24"), NextHop: netip.MustParseAddr("10.0.0.2")},
		{Prefix: p("2001:db8::100/128")},
	}
	if err := tab.Sync(ctx, want); err != nil {
		t.Fatal(err)
	}
	const ours = "table 200 proto 0x6b"
	if got := show(t, ours); got != "192.0.2.100 dev lo scope link\n198.51.100.0/24 via 10.0.0.2 dev eth0\n2001:db8::100 dev lo metric 1024 pref medium" {
		t.Errorf("after Sync:\n%s", got)
	}
	got, err := tab.Routes()
	if err != nil {
		t.Fatal(err)
	}
	wantBack := []routes.Route{{Prefix: p("192.0.2.100/32")}, {Prefix: p("198.51.100.0/24"), NextHop: netip.MustParseAddr("10.0.0.2")}, {Prefix: p("2001:db8::100/128")}}
	if d := cmp.Diff(wantBack, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }), cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
		t.Errorf("Routes() (-want +got):\n%s", d)
	}

	// The same set again changes nothing a routing daemon would see:
	// watch the kernel's route notifications, which is what BIRD and FRR
	// read.
	mon := exec.Command("ip", "monitor", "route")
	var events bytes.Buffer
	mon.Stdout = &events
	if err := mon.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // subscribed
	if err := tab.Sync(ctx, want); err != nil {
		t.Fatal(err)
	}
	// A control write, so that the monitor is known to be listening.
	netnstest.Sh(t, "ip route add 203.0.113.99/32 dev lo table 201")
	time.Sleep(200 * time.Millisecond)
	mon.Process.Kill()
	mon.Wait()
	if got := strings.TrimSpace(events.String()); !strings.HasPrefix(got, "203.0.113.99 dev lo table 201") || strings.Count(got, "\n") != 0 {
		t.Errorf("route notifications during a second Sync with the same routes:\n%s", got)
	}

	// A bad route is reported and the others apply; a changed next hop is
	// replaced; a route no longer wanted is removed; the static route of
	// someone else stays.
	err = tab.Sync(ctx, []routes.Route{
		{Prefix: p("192.0.2.100/32")},
		{Prefix: p("198.51.100.0/24"), NextHop: netip.MustParseAddr("10.0.0.3")},
		{Prefix: p("192.0.2.7/24")},
	})
	if err == nil || !strings.Contains(err.Error(), "route 192.0.2.7/24: prefix 192.0.2.7/24 has host bits set") {
		t.Errorf("Sync with a bad route = %v", err)
	}
	if got := show(t, ours); got != "192.0.2.100 dev lo scope link\n198.51.100.0/24 via 10.0.0.3 dev eth0" {
		t.Errorf("after the second Sync:\n%s", got)
	}
	if got := show(t, "table 200 proto static"); got != "203.0.113.0/24 via 10.0.0.9 dev eth0" {
		t.Errorf("someone else's route: %q", got)
	}

	// A route that cannot be installed (no way to the next hop) is
	// reported by prefix; the rest applies.
	err = tab.Sync(ctx, []routes.Route{{Prefix: p("192.0.2.100/32")}, {Prefix: p("198.51.100.0/24"), NextHop: netip.MustParseAddr("172.16.0.1")}})
	if err == nil || !strings.Contains(err.Error(), "installing 198.51.100.0/24 via 172.16.0.1 in table 200") {
		t.Errorf("Sync with an unreachable next hop = %v", err)
	}
	if got := show(t, ours); got != "192.0.2.100 dev lo scope link\n198.51.100.0/24 via 10.0.0.3 dev eth0" {
		t.Errorf("a failed change cost the route in force:\n%s", got)
	}

	// A route of someone else's for a prefix keepvip is asked for is not
	// taken over.
	netnstest.Sh(t, "ip route add 192.0.2.77/32 via 10.0.0.9 table 200 proto static")
	err = tab.Sync(ctx, []routes.Route{{Prefix: p("192.0.2.100/32")}, {Prefix: p("198.51.100.0/24"), NextHop: netip.MustParseAddr("10.0.0.3")}, {Prefix: p("192.0.2.77/32")}})
	if err == nil || !strings.Contains(err.Error(), "has a route for 192.0.2.77/32 that keepvip did not install") {
		t.Errorf("Sync over someone else's route = %v", err)
	}
	if got := show(t, "table 200 proto static"); !strings.Contains(got, "192.0.2.77 via 10.0.0.9 dev eth0") {
		t.Errorf("someone else's route was changed:\n%s", got)
	}

	// Close removes keepvip's routes only.
	if err := tab.Close(); err != nil {
		t.Fatal(err)
	}
	if got := show(t, ours); got != "" {
		t.Errorf("after Close:\n%s", got)
	}
	if got := show(t, "table 200"); got != "192.0.2.77 via 10.0.0.9 dev eth0 proto static\n203.0.113.0/24 via 10.0.0.9 dev eth0 proto static" {
		t.Errorf("after Close, table 200:\n%s", got)
	}
	if err := tab.Sync(ctx, want); err == nil {
		t.Error("Sync after Close succeeded")
	}
}

// A route left by a keepvip that crashed is keepvip's: the next one
// removes it when it is not wanted.
func TestTableAdoptsLeftovers(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	netnstest.Sh(t, `ip link set lo up
		ip route add 192.0.2.50/32 dev lo table 200 proto 0x6b
		ip route add 192.0.2.51/32 dev lo table 200 proto 0x6c`)
	tab, err := New(Options{Table: 200, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer tab.Close()
	if err := tab.Sync(context.Background(), []routes.Route{{Prefix: netip.MustParsePrefix("192.0.2.100/32")}}); err != nil {
		t.Fatal(err)
	}
	if got := show(t, "table 200"); got != "192.0.2.51 dev lo proto 108 scope link\n192.0.2.100 dev lo proto 107 scope link" {
		t.Errorf("table 200:\n%s", got)
	}
}
