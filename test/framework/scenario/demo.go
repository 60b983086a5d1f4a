package scenario

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/keepvip/keepvip/test/framework/lab"
	"github.com/keepvip/keepvip/vrrp"
)

var (
	demoVIP    = netip.MustParsePrefix("192.0.2.100/24")
	demoAdvert = 100 * time.Millisecond
)

// skew and masterDown are RFC 9568 §6.1's Skew_Time and Master_Down_Interval.
func skew(prio int, adv time.Duration) time.Duration {
	return time.Duration(256-prio) * adv / 256
}

func masterDown(prio int, adv time.Duration) time.Duration { return 3*adv + skew(prio, adv) }

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", msf(d)) }

// Demo shows an election among three nodes, a failover and a handoff as a
// client sees them, with `keepvip status` on the way.
func Demo(ctx context.Context) error {
	bin, err := lab.KeepvipBinary()
	if err != nil {
		return err
	}
	l, err := lab.New(func(string, ...any) {})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("\n5. Cleaning up: every namespace and process of the lab is removed.")
		if err := l.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "cleanup:", err)
		}
	}()

	type member struct {
		name string
		addr string
		prio int
		node *lab.Node
		k    *lab.Keepvip
	}
	members := []*member{{name: "node1", addr: "192.0.2.11/24", prio: 150}, {name: "node2", addr: "192.0.2.12/24", prio: 120}, {name: "node3", addr: "192.0.2.13/24", prio: 100}}
	fmt.Printf("keepvip demo: three nodes and a client on one Ethernet segment (network namespaces on a bridge)\n")
	fmt.Printf("VIP %s, VRRPv3, advert interval %v, keepvip %s\n\n", demoVIP, demoAdvert, bin)
	for _, m := range members {
		m.node, err = l.AddNode(m.name, netip.MustParsePrefix(m.addr), netip.Prefix{})
		if err != nil {
			return err
		}
		cfg := fmt.Sprintf(`instances:
  - name: web
    interface: eth0
    vrid: 51
    priority: %d
    advertInterval: %s
    vips: [%s]
`, m.prio, demoAdvert, demoVIP)
		if m.k, err = m.node.StartKeepvip(cfg); err != nil {
			return err
		}
		fmt.Printf("  %s %-15s priority %d\n", m.name, m.addr, m.prio)
	}
	client, err := l.AddNode("client", netip.MustParsePrefix("192.0.2.50/24"), netip.Prefix{})
	if err != nil {
		return err
	}
	fmt.Printf("  client %-14s\n", "192.0.2.50/24")

	fmt.Println("\n1. Election: the highest priority wins")
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := members[0].k.WaitState(wait, "web", vrrp.StateMaster); err != nil {
		return err
	}
	for _, m := range members[1:] {
		if err := m.k.WaitState(wait, "web", vrrp.StateBackup); err != nil {
			return err
		}
	}
	for _, m := range members {
		st, err := m.k.State(wait, "web")
		if err != nil {
			return err
		}
		fmt.Printf("   %s: %v\n", m.name, st)
	}
	fmt.Printf("\n   $ keepvip status   (on node1)\n")
	if err := showStatus(bin, members[0].k); err != nil {
		return err
	}

	fmt.Printf("\n2. The client pings %s every 1 ms\n", demoVIP.Addr())
	probe, err := lab.StartProber(ctx, client, demoVIP.Addr(), time.Millisecond)
	if err != nil {
		return err
	}
	defer probe.Stop()
	if _, err := probe.WaitReplyAfter(wait, time.Now()); err != nil {
		return fmt.Errorf("the client cannot reach the VIP: %w", err)
	}
	watch, err := lab.StartAdvertWatcher(client)
	if err != nil {
		return err
	}
	defer watch.Close()
	fmt.Println("   replies come from node1")

	fmt.Println("\n3. node1 dies: its link is cut and keepvip is killed (SIGKILL), right after an advert")
	src1 := members[0].node.IPv4.Addr()
	last, err := watch.WaitAdvert(wait, func(a lab.Advert) bool { return a.Src == src1 && a.Priority > 0 })
	if err != nil {
		return err
	}
	t0 := time.Now()
	if err := l.CutLink(members[0].node); err != nil {
		return err
	}
	if err := members[0].k.Kill(); err != nil {
		return err
	}
	if err := members[1].k.WaitState(wait, "web", vrrp.StateMaster); err != nil {
		return err
	}
	if _, err := probe.WaitReplyAfter(wait, time.Now()); err != nil {
		return err
	}
	src2 := members[1].node.IPv4.Addr()
	first, err := watch.WaitAdvertSince(wait, t0, func(a lab.Advert) bool { return a.Src == src2 })
	if err != nil {
		return err
	}
	g, ok := probe.LongestGap(t0, time.Now())
	if !ok {
		return fmt.Errorf("the client saw no outage: the cut did not take effect")
	}
	expect := masterDown(120, demoAdvert)
	fmt.Printf("   failover: %.0f ms\n", msf(g.Duration))
	fmt.Printf("   (what the client saw: %d pings unanswered, from the first lost one to the first the new master answered)\n", g.Lost)
	fmt.Printf("   node2 advertised as master %s after node1's last advert;\n", ms(first.Time.Sub(last.Time)))
	fmt.Printf("   RFC 9568 Master_Down_Interval for priority 120 = 3 × %v + %s skew = %s\n", demoAdvert, ms(skew(120, demoAdvert)), ms(expect))
	fmt.Printf("   new master: node2\n\n   $ keepvip status   (on node2)\n")
	if err := showStatus(bin, members[1].k); err != nil {
		return err
	}

	fmt.Println("\n4. node2 is stopped gracefully (SIGTERM): it sends priority 0 and keeps the VIP until node3 advertises")
	src3 := members[2].node.IPv4.Addr()
	t1 := time.Now()
	stopped := make(chan error, 1)
	go func() { stopped <- members[1].k.Stop(5 * time.Second) }()
	adv3, err := watch.WaitAdvertSince(wait, t1, func(a lab.Advert) bool { return a.Src == src3 })
	if err != nil {
		return err
	}
	if err := <-stopped; err != nil {
		return fmt.Errorf("stopping node2: %w", err)
	}
	if _, err := probe.WaitReplyAfter(wait, time.Now()); err != nil {
		return err
	}
	gap := time.Duration(0)
	if g, ok := probe.LongestGap(t1, time.Now()); ok {
		gap = g.Duration
	}
	fmt.Printf("   handoff: node3 advertised as master %s after SIGTERM (Skew_Time for priority 100 = %s)\n",
		ms(adv3.Time.Sub(t1)), ms(skew(100, demoAdvert)))
	fmt.Printf("   the client's longest gap between answered pings: %s\n", ms(gap))
	st, err := members[2].k.State(wait, "web")
	if err != nil {
		return err
	}
	fmt.Printf("   node3: %v\n", st)
	return nil
}

// showStatus runs the real `keepvip status` against a node's daemon.
func showStatus(bin string, k *lab.Keepvip) error {
	out, err := exec.Command(bin, "status", "--socket", k.Socket()).CombinedOutput()
	if err != nil {
		return fmt.Errorf("keepvip status: %w\n%s", err, out)
	}
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		fmt.Println("   " + line)
	}
	return nil
}
