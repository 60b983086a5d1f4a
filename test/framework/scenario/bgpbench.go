package scenario

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"time"

	"github.com/keepvip/keepvip/routes"
	"github.com/keepvip/keepvip/routes/bgp"
	"github.com/keepvip/keepvip/test/framework/lab"
	"github.com/keepvip/keepvip/vrrp"
)

// The BGP benchmark: two keepvip nodes (a priority 150, b 100, 100 ms
// adverts) announce a VIP to FRR's bgpd; withdraw mode. Each run kills the
// master (SIGKILL) and then restarts it, so that it preempts: two VRRP
// transitions per run, each timed from the new master's transition (its
// own clock, as keepvip status reports it: the same host clock) to FRR's
// best path for the VIP pointing at it, polled with vtysh. Then one node
// announces 10,000 prefixes to FRR at once, timed to FRR having received
// them all.

func bgpBenchConf(self string, prio int) string {
	return fmt.Sprintf(`instances:
- {name: vi, interface: eth0, vrid: 51, priority: %d, advertInterval: 100ms, vips: [192.0.2.100/32]}
routing:
  bgp:
    asn: 65001
    routerID: %s
    peers: [{address: 192.0.2.1, asn: 65000, holdTime: 9s, keepaliveInterval: 3s}]
`, prio, self)
}

const bgpBenchFRR = `router bgp 65000
 bgp router-id 192.0.2.1
 no bgp ebgp-requires-policy
 neighbor 192.0.2.11 remote-as 65001
 neighbor 192.0.2.11 timers 3 9
 neighbor 192.0.2.11 timers connect 1
 neighbor 192.0.2.12 remote-as 65001
 neighbor 192.0.2.12 timers 3 9
 neighbor 192.0.2.12 timers connect 1
`

// BGPBench measures, runs times, how long FRR takes to follow a VRRP
// transition announced over BGP, and how long 10,000 prefixes take to
// reach it; it prints BENCH lines. The program must answer `announce
// ARGS` with Announce: the 10,000 prefixes come from a speaker it runs
// inside a node.
func BGPBench(ctx context.Context, runs int) error {
	if runs < 1 {
		return errors.New("bgpbench: -runs must be at least 1")
	}
	l, err := lab.New(func(string, ...any) {})
	if err != nil {
		return err
	}
	defer l.Close()
	add := func(name, addr string) (*lab.Node, error) {
		return l.AddNode(name, netip.MustParsePrefix(addr+"/24"), netip.Prefix{})
	}
	fn, err := add("frr", "192.0.2.1")
	if err != nil {
		return err
	}
	frr, err := fn.StartFRR(bgpBenchFRR)
	if err != nil {
		return err
	}
	nodes := map[string]*lab.Node{}
	ks := map[string]*lab.Keepvip{}
	addrs := map[string]string{"a": "192.0.2.11", "b": "192.0.2.12"}
	prio := map[string]int{"a": 150, "b": 100}
	for _, name := range []string{"a", "b"} {
		if nodes[name], err = add(name, addrs[name]); err != nil {
			return err
		}
		if ks[name], err = nodes[name].StartKeepvip(bgpBenchConf(addrs[name], prio[name])); err != nil {
			return err
		}
	}
	wait := func(d time.Duration) (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, d) }
	// best polls FRR until the VIP's best path has next hop want; it
	// returns when the poll that saw it started, and the polls' median
	// duration (the resolution).
	var pollTimes []time.Duration
	best := func(want string, timeout time.Duration) (time.Time, error) {
		deadline := time.Now().Add(timeout)
		for time.Now().Before(deadline) {
			start := time.Now()
			paths, err := frr.Route(ctx, "ipv4", "192.0.2.100/32")
			pollTimes = append(pollTimes, time.Since(start))
			if err == nil {
				for _, p := range paths {
					if p.Best() && len(p.Nexthops) > 0 && p.Nexthops[0].IP == want {
						return start, nil
					}
				}
			}
		}
		return time.Time{}, fmt.Errorf("FRR's best path for the VIP is not via %s after %s", want, timeout)
	}
	masterAt := func(k *lab.Keepvip) (time.Time, error) {
		in, err := k.Instance(ctx, "vi")
		if err != nil {
			return time.Time{}, err
		}
		for i := len(in.Transitions) - 1; i >= 0; i-- {
			if in.Transitions[i].To == vrrp.StateMaster {
				return in.Transitions[i].At, nil
			}
		}
		return time.Time{}, errors.New("no transition to MASTER")
	}
	c, cancel := wait(30 * time.Second)
	err = ks["a"].WaitState(c, "vi", vrrp.StateMaster)
	cancel()
	if err != nil {
		return err
	}
	if _, err := best(addrs["a"], 30*time.Second); err != nil {
		return err
	}
	// The UPDATEs as FRR receives them, to time each transition to its
	// UPDATE on the wire (the RIB polls cost vtysh's ~30 ms each).
	capture, err := fn.StartCapture("tcp port 179")
	if err != nil {
		return err
	}
	type transition struct {
		src string
		at  time.Time
	}
	var trs []transition
	var lat []time.Duration
	fmt.Fprintf(os.Stderr, "bgpbench: %d runs of kill and restart of the master\n", runs)
	for i := range runs {
		// The master dies: b takes over.
		if err := ks["a"].Kill(); err != nil {
			return err
		}
		c, cancel := wait(10 * time.Second)
		err := ks["b"].WaitState(c, "vi", vrrp.StateMaster)
		cancel()
		if err != nil {
			return err
		}
		seen, err := best(addrs["b"], 10*time.Second)
		if err != nil {
			return err
		}
		at, err := masterAt(ks["b"])
		if err != nil {
			return err
		}
		lat = append(lat, seen.Sub(at))
		trs = append(trs, transition{addrs["b"], at})
		// a comes back and preempts once its session is up.
		if ks["a"], err = nodes["a"].StartKeepvip(bgpBenchConf(addrs["a"], prio["a"])); err != nil {
			return err
		}
		if seen, err = best(addrs["a"], 30*time.Second); err != nil {
			return fmt.Errorf("run %d: %w", i+1, err)
		}
		if at, err = masterAt(ks["a"]); err != nil {
			return err
		}
		lat = append(lat, seen.Sub(at))
		trs = append(trs, transition{addrs["a"], at})
	}
	time.Sleep(time.Second) // tshark writes what it has seen
	rows, err := capture.Fields("bgp.type == 2 && bgp.nlri_prefix == 192.0.2.100", "frame.time_epoch", "ip.src")
	if err != nil {
		return err
	}
	var wire []time.Duration
	for _, tr := range trs {
		for _, r := range rows {
			var sec, nsec int64
			if _, err := fmt.Sscanf(r[0], "%d.%d", &sec, &nsec); err != nil {
				continue
			}
			ts := time.Unix(sec, nsec)
			if r[1] == tr.src && !ts.Before(tr.at) {
				wire = append(wire, ts.Sub(tr.at))
				break
			}
		}
	}
	if len(wire) != len(trs) {
		var b strings.Builder
		for _, tr := range trs {
			fmt.Fprintf(&b, "transition %s %s\n", tr.src, tr.at.Format("15:04:05.000000"))
		}
		for _, r := range rows {
			fmt.Fprintf(&b, "update %v\n", r)
		}
		return fmt.Errorf("bgpbench: %d of %d transitions have their UPDATE in the capture:\n%s", len(wire), len(trs), b.String())
	}
	slices.Sort(wire)
	fmt.Fprintf(os.Stderr, "bgpbench: VRRP transition to the UPDATE on FRR's wire: %d samples, median %.2f ms, min %.2f, max %.2f\n",
		len(wire), msf(wire[len(wire)/2]), msf(wire[0]), msf(wire[len(wire)-1]))
	fmt.Printf("BENCH bgp_vrrp_transition_to_update_on_wire_median %.2f ms\n", msf(wire[len(wire)/2]))
	fmt.Printf("BENCH bgp_vrrp_transition_to_update_on_wire_max %.2f ms\n", msf(wire[len(wire)-1]))
	slices.Sort(lat)
	slices.Sort(pollTimes)
	med := lat[len(lat)/2]
	fmt.Fprintf(os.Stderr, "bgpbench: VRRP transition to FRR's best path: %d samples, median %.1f ms, min %.1f, max %.1f; vtysh poll median %.1f ms\n",
		len(lat), msf(med), msf(lat[0]), msf(lat[len(lat)-1]), msf(pollTimes[len(pollTimes)/2]))
	fmt.Printf("BENCH bgp_vrrp_transition_to_frr_rib_median %.1f ms\n", msf(med))
	fmt.Printf("BENCH bgp_vrrp_transition_to_frr_rib_max %.1f ms\n", msf(lat[len(lat)-1]))
	fmt.Printf("BENCH bgp_frr_poll_resolution_median %.1f ms\n", msf(pollTimes[len(pollTimes)/2]))

	// 10,000 prefixes from a fresh speaker in node b's namespace (its
	// keepvip stopped first, so that the peering address is free).
	if err := ks["b"].Stop(5 * time.Second); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	out, err := nodes["b"].Exec(ctx, self, "announce", "-n", "10000", "-self", addrs["b"], "-peer", "192.0.2.1", "-vty", frr.VTYSocket())
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if strings.HasPrefix(line, "BENCH ") {
			fmt.Println(line)
		} else {
			fmt.Fprintln(os.Stderr, line)
		}
	}
	if err != nil {
		return err
	}
	return nil
}

// Announce runs inside a node (keepvip-lab announce ...): it starts a
// speaker, waits for the session, and times n prefixes to the peer.
func Announce(args []string) error {
	fs := flag.NewFlagSet("announce", flag.ExitOnError)
	n := fs.Int("n", 10000, "prefixes")
	self := fs.String("self", "", "this node's address (router ID)")
	peer := fs.String("peer", "", "the FRR peer")
	vty := fs.String("vty", "", "FRR's vty socket directory")
	fs.Parse(args)
	ctx := context.Background()
	sp, err := bgp.New(ctx, bgp.Options{ASN: 65001, RouterID: netip.MustParseAddr(*self), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	defer sp.Close()
	if err := sp.SetPeers(ctx, []bgp.Peer{{Address: netip.MustParseAddr(*peer), ASN: 65000, HoldTime: 9 * time.Second}}); err != nil {
		return err
	}
	received := func() (int, error) {
		b, err := exec.Command("vtysh", "--vty_socket", *vty, "-d", "bgpd", "-c", "show bgp ipv4 unicast summary json").Output()
		if err != nil {
			return 0, err
		}
		var s struct {
			Peers map[string]struct {
				State  string `json:"state"`
				PfxRcd int    `json:"pfxRcd"`
			} `json:"peers"`
		}
		if err := json.Unmarshal(b, &s); err != nil {
			return 0, err
		}
		p := s.Peers[*self]
		if p.State != "Established" {
			return -1, nil
		}
		return p.PfxRcd, nil
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		got, err := received()
		if err == nil && got == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no session with FRR: %d, %v", got, err)
		}
	}
	rs := make([]routes.Route, *n)
	for i := range rs {
		rs[i] = routes.Route{Prefix: netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 32)}
	}
	timed := func(what string, want int, f func() error) error {
		start := time.Now()
		if err := f(); err != nil {
			return err
		}
		synced := time.Since(start)
		for deadline := start.Add(120 * time.Second); ; time.Sleep(5 * time.Millisecond) {
			got, err := received()
			if err == nil && got == want {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s: FRR has %d prefixes, want %d (%v)", what, got, want, err)
			}
		}
		took := time.Since(start)
		fmt.Printf("announce: %s %d prefixes: Sync returned in %.1f ms, FRR had them all after %.1f ms\n", what, *n, msf(synced), msf(took))
		fmt.Printf("BENCH bgp_%s_%d_prefixes_to_frr %.1f ms\n", what, *n, msf(took))
		return nil
	}
	if err := timed("announce", *n, func() error { return sp.Sync(ctx, rs) }); err != nil {
		return err
	}
	return timed("withdraw", 0, func() error { return sp.Sync(ctx, nil) })
}
