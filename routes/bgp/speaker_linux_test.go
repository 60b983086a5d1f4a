package bgp_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepvip/keepvip/routes"
	"github.com/keepvip/keepvip/routes/bgp"
	"github.com/keepvip/keepvip/test/framework/lab"
	"github.com/keepvip/keepvip/test/framework/netnstest"
)

// A speaker test runs in a fresh network namespace (netnstest.Enter), which
// it joins to a lab's switch: GoBGP's sockets are opened by its own
// goroutines, so the whole process must be in the namespace they are for.

const selfAddr = "10.0.0.1"

// attachSelf connects this process's network namespace to the lab's
// switch as 10.0.0.1/24 and fd00::1/64 on bgp0.
func attachSelf(t *testing.T, l *lab.Lab) {
	t.Helper()
	sw := l.SwitchNS()
	for _, args := range [][]string{
		{"-n", sw, "link", "add", "p-self", "type", "veth", "peer", "name", "bgp0", "netns", strconv.Itoa(os.Getpid())},
		{"-n", sw, "link", "set", "p-self", "master", lab.BridgeName},
		{"-n", sw, "link", "set", "p-self", "up"},
		{"link", "set", "lo", "up"},
		{"addr", "add", selfAddr + "/24", "dev", "bgp0"},
		{"addr", "add", "fd00::1/64", "dev", "bgp0", "nodad"},
		{"link", "set", "bgp0", "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func frrConf(asn, peerASN int, routerID, password string) string {
	c := fmt.Sprintf(`log stdout informational
router bgp %d
 bgp router-id %s
 no bgp ebgp-requires-policy
 neighbor %s remote-as %d
 neighbor %s timers 3 9
 neighbor %s timers connect 1
`, asn, routerID, selfAddr, peerASN, selfAddr, selfAddr)
	if password != "" {
		c += fmt.Sprintf(" neighbor %s password %s\n", selfAddr, password)
	}
	return c + fmt.Sprintf(` address-family ipv4 unicast
  neighbor %[1]s activate
 exit-address-family
 address-family ipv6 unicast
  neighbor %[1]s activate
 exit-address-family
`, selfAddr)
}

// eventually polls cond every 50 ms until it returns "" (done) or the
// timeout passes, and fails with its last answer.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() string) time.Duration {
	t.Helper()
	start := time.Now()
	last := ""
	for time.Since(start) < timeout {
		if last = cond(); last == "" {
			return time.Since(start)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s: not within %s: %s", what, timeout, last)
	return 0
}

func peerState(sp *bgp.Speaker, addr string) bgp.PeerStatus {
	for _, p := range sp.Peers(context.Background()) {
		if p.Address == addr {
			return p
		}
	}
	return bgp.PeerStatus{}
}

func TestSpeakerWithFRR(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	l := lab.ForTest(t, "vtysh", lab.FRRBinary)
	r1, err := l.AddNode("r1", netip.MustParsePrefix("10.0.0.2/24"), netip.MustParsePrefix("fd00::2/64"))
	if err != nil {
		t.Fatal(err)
	}
	attachSelf(t, l)
	frr, err := r1.StartFRR(frrConf(65000, 65001, "10.0.0.2", "s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	reg := prometheus.NewRegistry()
	sp, err := bgp.New(ctx, bgp.Options{ASN: 65001, RouterID: netip.MustParseAddr(selfAddr), Logger: quiet(), Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	peer := bgp.Peer{Address: netip.MustParseAddr("10.0.0.2"), ASN: 65000, Password: "s3cret", HoldTime: 9 * time.Second, KeepaliveInterval: 3 * time.Second}
	if err := sp.SetPeers(ctx, []bgp.Peer{peer}); err != nil {
		t.Fatal(err)
	}
	took := eventually(t, 20*time.Second, "the session with FRR", func() string {
		if s := peerState(sp, "10.0.0.2"); s.State != "established" {
			return "speaker: " + s.State
		}
		return ""
	})
	t.Logf("established in %s", took.Round(time.Millisecond))
	// SetPeers again with the same peer changes nothing (no reset).
	if err := sp.SetPeers(ctx, []bgp.Peer{peer}); err != nil {
		t.Fatal(err)
	}

	vip := routes.Route{Prefix: netip.MustParsePrefix("192.0.2.100/32"), Communities: []routes.Community{65001<<16 | 100},
		MED: 10, HasMED: true, Prepend: 2}
	vip6 := routes.Route{Prefix: netip.MustParsePrefix("2001:db8::100/128"), NextHop: netip.MustParseAddr("fd00::1")}
	if err := sp.Sync(ctx, []routes.Route{vip, vip6}); err != nil {
		t.Fatal(err)
	}
	check := func(want func(v4 map[string][]lab.FRRPath, v6 map[string][]lab.FRRPath) string) func() string {
		return func() string {
			v4, err := frr.Routes(ctx, "ipv4")
			if err != nil {
				return err.Error()
			}
			v6, err := frr.Routes(ctx, "ipv6")
			if err != nil {
				return err.Error()
			}
			return want(v4, v6)
		}
	}
	eventually(t, 5*time.Second, "the routes on FRR", func() string {
		p, err := frr.Route(ctx, "ipv4", "192.0.2.100/32")
		if err != nil {
			return err.Error()
		}
		q, err := frr.Route(ctx, "ipv6", "2001:db8::100/128")
		if err != nil {
			return err.Error()
		}
		switch {
		case len(p) != 1 || len(q) != 1:
			return fmt.Sprintf("v4 %+v v6 %+v", p, q)
		case p[0].ASPath.String != "65001 65001 65001" || p[0].Med == nil || *p[0].Med != 10 || p[0].Community == nil || p[0].Community.String != "65001:100":
			return fmt.Sprintf("attributes of 192.0.2.100/32: %+v", p[0])
		case len(p[0].Nexthops) == 0 || p[0].Nexthops[0].IP != selfAddr:
			return fmt.Sprintf("next hop of 192.0.2.100/32: %+v", p[0].Nexthops)
		case len(q[0].Nexthops) == 0 || q[0].Nexthops[0].IP != "fd00::1":
			return fmt.Sprintf("next hop of 2001:db8::100/128: %+v", q[0].Nexthops)
		}
		return ""
	})

	// A changed attribute replaces the route; a route left out is
	// withdrawn, the other stays.
	vip.MED = 20
	if err := sp.Sync(ctx, []routes.Route{vip}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, "the change on FRR", check(func(v4, v6 map[string][]lab.FRRPath) string {
		if p := v4["192.0.2.100/32"]; len(p) != 1 || p[0].Med == nil || *p[0].Med != 20 {
			return fmt.Sprintf("192.0.2.100/32: %+v", p)
		}
		if len(v6) != 0 {
			return fmt.Sprintf("v6 not withdrawn: %+v", v6)
		}
		return ""
	}))

	// A bad route is reported and costs nothing that is announced.
	err = sp.Sync(ctx, []routes.Route{vip, {Prefix: netip.MustParsePrefix("2001:db8::7/128")}})
	if err == nil || !strings.Contains(err.Error(), "route 2001:db8::7/128: an IPv6 route needs a next hop") {
		t.Errorf("Sync with an IPv6 route without next hop = %v", err)
	}
	if a := sp.Announced(); len(a) != 1 || a[0].Prefix != vip.Prefix {
		t.Errorf("announced %v", a)
	}

	// The session flaps (FRR restarts): everything is announced again.
	if err := frr.Proc().Kill(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the speaker noticing the session down", func() string {
		if s := peerState(sp, "10.0.0.2"); s.State == "established" {
			return "still established"
		}
		return ""
	})
	if frr, err = r1.StartFRR(frrConf(65000, 65001, "10.0.0.2", "s3cret")); err != nil {
		t.Fatal(err)
	}
	took = eventually(t, 30*time.Second, "the routes on FRR after it restarted", check(func(v4, _ map[string][]lab.FRRPath) string {
		if p := v4["192.0.2.100/32"]; len(p) != 1 || *p[0].Med != 20 {
			return fmt.Sprintf("%+v", v4)
		}
		return ""
	}))
	t.Logf("re-announced %s after FRR came back", took.Round(time.Millisecond))

	// ResetPeer (a failed BFD session): FRR sees the session end with
	// the reason, and it comes back by itself within seconds (GoBGP's
	// idle hold after a reset is 30 s unless set).
	est, _ := frr.VTY(ctx, "show bgp neighbors "+selfAddr+" json")
	if did, err := sp.ResetPeer(ctx, netip.MustParseAddr("10.0.0.2"), "BFD session down"); err != nil || !did {
		t.Fatalf("ResetPeer of an established session: %v %v", did, err)
	}
	if _, err := sp.ResetPeer(ctx, netip.MustParseAddr("10.0.0.9"), "x"); err == nil || !strings.Contains(err.Error(), "resetting BGP peer 10.0.0.9: not a peer") {
		t.Errorf("ResetPeer of a stranger: %v", err)
	}
	reset := time.Now()
	eventually(t, 10*time.Second, "FRR seeing the reset", func() string {
		out, err := frr.VTY(ctx, "show bgp neighbors "+selfAddr+" json")
		if err != nil {
			return err.Error()
		}
		if out == est || !strings.Contains(out, "BFD session down") {
			return "no reset with the reason yet:\n" + out
		}
		return ""
	})
	took = eventually(t, 15*time.Second, "the session back after the reset", func() string {
		if s := peerState(sp, "10.0.0.2"); s.State != "established" || !s.Since.After(reset) {
			return "speaker: " + s.State
		}
		return ""
	})
	t.Logf("established again %s after the reset", took.Round(time.Millisecond))

	// A session that is not established is not reset: GoBGP would keep
	// the reset and end the next session with it. Here the session is
	// down (FRR is stopped), ResetPeer leaves it, and once FRR is back
	// the session comes up and stays up.
	if err := frr.Proc().Kill(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the session down with FRR gone", func() string {
		if s := peerState(sp, "10.0.0.2"); s.State == "established" {
			return "still established"
		}
		return ""
	})
	downEstablished := established(t, reg, "10.0.0.2")
	did, err := sp.ResetPeer(ctx, netip.MustParseAddr("10.0.0.2"), "BFD session down")
	if err != nil {
		t.Fatal(err)
	}
	if frr, err = r1.StartFRR(frrConf(65000, 65001, "10.0.0.2", "s3cret")); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the session back with FRR", func() string {
		if s := peerState(sp, "10.0.0.2"); s.State != "established" {
			return "speaker: " + s.State
		}
		return ""
	})
	time.Sleep(3 * time.Second)
	if s := peerState(sp, "10.0.0.2"); s.State != "established" {
		t.Fatalf("the session after FRR came back: %s", s.State)
	}
	// Exactly one session since FRR came back: not one ended by a stale
	// reset at once and then another.
	if n := established(t, reg, "10.0.0.2") - downEstablished; n != 1 {
		t.Errorf("%v sessions established since FRR came back; want 1 (a reset asked while it was down ended the first)", n)
	}
	if did {
		t.Error("ResetPeer reported a reset of a session that was down")
	}

	// Metrics name the peer.
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	for _, want := range []string{"keepvip_bgp_session_established", "keepvip_bgp_announced_prefixes", "keepvip_bgp_session_transitions_total"} {
		if !strings.Contains(strings.Join(names, " "), want) {
			t.Errorf("metric %s missing from %v", want, names)
		}
	}

	// Close ends the session: FRR drops the routes.
	if err := sp.Close(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "FRR dropping the routes", check(func(v4, _ map[string][]lab.FRRPath) string {
		if len(v4) != 0 {
			return fmt.Sprintf("%+v", v4)
		}
		return ""
	}))
}

// A peer with the wrong password or the wrong ASN never comes up; the
// speaker says so and carries on with the good peer.
func TestSpeakerBadPeers(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	l := lab.ForTest(t, "vtysh", lab.FRRBinary)
	var frrs []*lab.FRR
	for i, c := range []struct {
		asn, peerASN int
		password     string
	}{
		{65000, 65001, "s3cret"}, // good
		{65000, 65001, "other"},  // wrong password
		{65000, 65009, ""},       // expects another ASN from us
	} {
		addr := fmt.Sprintf("10.0.0.%d", i+2)
		n, err := l.AddNode(fmt.Sprintf("r%d", i+1), netip.MustParsePrefix(addr+"/24"), netip.Prefix{})
		if err != nil {
			t.Fatal(err)
		}
		f, err := n.StartFRR(frrConf(c.asn, c.peerASN, addr, c.password))
		if err != nil {
			t.Fatal(err)
		}
		frrs = append(frrs, f)
	}
	attachSelf(t, l)
	ctx := context.Background()
	sp, err := bgp.New(ctx, bgp.Options{ASN: 65001, RouterID: netip.MustParseAddr(selfAddr), Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	err = sp.SetPeers(ctx, []bgp.Peer{
		{Address: netip.MustParseAddr("10.0.0.2"), ASN: 65000, Password: "s3cret"},
		{Address: netip.MustParseAddr("10.0.0.3"), ASN: 65000, Password: "s3cret"},
		{Address: netip.MustParseAddr("10.0.0.4"), ASN: 65000},
		{Address: netip.MustParseAddr("10.0.0.5"), ASN: 0}, // invalid: reported, the rest applies
	})
	if err == nil || !strings.Contains(err.Error(), "asn: 0 is outside") {
		t.Errorf("SetPeers with an invalid peer = %v", err)
	}
	if err := sp.Sync(ctx, []routes.Route{{Prefix: netip.MustParsePrefix("192.0.2.100/32")}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the good session", func() string {
		if s := peerState(sp, "10.0.0.2"); s.State != "established" {
			return s.State
		}
		return ""
	})
	eventually(t, 20*time.Second, "the wrong ASN reported", func() string {
		// FRR refuses our OPEN (bad peer AS); GoBGP reports it as an
		// invalid message.
		s := peerState(sp, "10.0.0.4")
		if s.LastError == "" || s.State == "established" {
			return fmt.Sprintf("%+v", s)
		}
		return ""
	})
	// Some seconds on, the bad ones are still down; the good one has the
	// route.
	time.Sleep(3 * time.Second)
	for _, a := range []string{"10.0.0.3", "10.0.0.4"} {
		if s := peerState(sp, a); s.State == "established" {
			t.Errorf("peer %s came up: %+v", a, s)
		}
	}
	if s := peerState(sp, "10.0.0.3"); s.Address == "" {
		t.Error("the peer with the wrong password is not in the status")
	}
	v4, err := frrs[0].Routes(ctx, "ipv4")
	if err != nil || len(v4["192.0.2.100/32"]) != 1 {
		t.Errorf("the good peer's table: %v %v", v4, err)
	}
	if state, _, err := frrs[1].Neighbor(ctx, selfAddr); err != nil || state == "Established" {
		t.Errorf("FRR with the wrong password: %s %v", state, err)
	}
}

// iBGP to BIRD: local preference reaches the peer (eBGP strips it).
func TestSpeakerIBGPWithBIRD(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	l := lab.ForTest(t, "bird", "birdc")
	r1, err := l.AddNode("bird", netip.MustParsePrefix("10.0.0.2/24"), netip.MustParsePrefix("fd00::2/64"))
	if err != nil {
		t.Fatal(err)
	}
	attachSelf(t, l)
	b, err := r1.StartBIRD(`router id 10.0.0.2;
protocol device {}
protocol direct { ipv4; ipv6; interface "eth0"; }
protocol bgp kv {
  local 10.0.0.2 as 65001;
  neighbor 10.0.0.1 as 65001;
  password "s3cret";
  hold time 9;
  connect retry time 1;
  ipv4 { import all; export none; };
  ipv6 { import all; export none; };
}
`)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	sp, err := bgp.New(ctx, bgp.Options{ASN: 65001, RouterID: netip.MustParseAddr(selfAddr), Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	if err := sp.SetPeers(ctx, []bgp.Peer{{Address: netip.MustParseAddr("10.0.0.2"), ASN: 65001, Password: "s3cret", HoldTime: 9 * time.Second}}); err != nil {
		t.Fatal(err)
	}
	rs := []routes.Route{
		{Prefix: netip.MustParsePrefix("192.0.2.100/32"), LocalPref: 50, HasLocalPref: true, Communities: []routes.Community{65001<<16 | 7}},
		{Prefix: netip.MustParsePrefix("2001:db8::100/128"), NextHop: netip.MustParseAddr("fd00::1"), LocalPref: 50, HasLocalPref: true},
	}
	if err := sp.Sync(ctx, rs); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "the routes on BIRD", func() string {
		out, err := b.Cmd(ctx, "show route all")
		if err != nil {
			return err.Error()
		}
		for _, want := range []string{"192.0.2.100/32", "BGP.local_pref: 50", "(65001,7)", "2001:db8::100/128", "via fd00::1"} {
			if !strings.Contains(out, want) {
				return fmt.Sprintf("no %q in:\n%s", want, out)
			}
		}
		return ""
	})
	// Prepending with an iBGP peer is refused before it reaches the wire.
	bad := rs[0]
	bad.Prepend = 1
	if errs := bgp.Validate(bgp.Options{ASN: 65001, RouterID: netip.MustParseAddr(selfAddr)}, []bgp.Peer{{Address: netip.MustParseAddr("10.0.0.2"), ASN: 65001}}, []routes.Route{bad}); len(errs) != 1 || !strings.Contains(errs[0].Error(), "use localPref") {
		t.Errorf("Validate of prepending with iBGP: %v", errs)
	}
}

// established returns how many times the session with peer was
// established, from keepvip_bgp_session_transitions_total.
func established(t *testing.T, reg *prometheus.Registry, peer string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "keepvip_bgp_session_transitions_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["peer"] == peer && labels["state"] == "established" {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}
