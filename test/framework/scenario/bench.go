package scenario

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/keepvip/keepvip/test/framework/lab"
)

// The benchmark runs two routers of one implementation, both priority 100
// (so the backup's Skew_Time is that of priority 100), and a client on the
// same bridge. Each measured run:
//
//   - failover: waits for the master's advert as seen by the client, then
//     at t0 cuts the master's link and crashes the daemon (a node that
//     dies). Measured: the client's outage, the longest run of unanswered
//     1 ms pings after t0 (first lost ping to first ping the new master
//     answered), and the takeover, from the dead master's last advert to
//     the new master's first one on the wire. Expected for both: about
//     Master_Down_Interval = 3 × advert + Skew_Time.
//   - handoff: sends SIGTERM to the master at t0. Measured: the takeover
//     (new master's first advert after t0; expected Skew_Time) and the
//     client's longest run of unanswered pings after t0.
//
// The dead or stopped node then "reboots": its VIP is removed by hand if
// the crash left it, its link is healed and the daemon starts again, as a
// backup (equal priority: it does not preempt). Roles alternate.

var benchVIP = netip.MustParsePrefix("192.0.2.100/24")

type sample struct {
	outage   time.Duration // client-visible
	takeover time.Duration // new master's first advert
}

// Bench measures failover and handoff of keepvip and of keepalived with
// the same settings, runs times per case (quick: only 100 ms adverts), and
// prints BENCH lines with keepalived's medians as the reference.
func Bench(ctx context.Context, runs int, quick bool) error {
	if runs < 1 {
		return errors.New("bench: -runs must be at least 1")
	}
	adverts := []time.Duration{100 * time.Millisecond, time.Second}
	if quick {
		adverts = adverts[:1]
	}
	impls := []impl{keepvipImpl{}, keepalivedImpl{}}
	type key struct {
		impl, kind string
		adv        time.Duration
	}
	results := map[key][]sample{}
	for _, adv := range adverts {
		for _, im := range impls {
			for _, kind := range []string{"failover", "handoff"} {
				fmt.Fprintf(os.Stderr, "bench: %s %s, advert %v, %d runs\n", im.Name(), kind, adv, runs)
				s, err := benchCase(ctx, im, kind, adv, runs)
				if err != nil {
					return fmt.Errorf("%s %s at %v: %w", im.Name(), kind, adv, err)
				}
				results[key{im.Name(), kind, adv}] = s
			}
		}
	}
	for _, adv := range adverts {
		tag := adv.String() // 100ms, 1s
		bound := masterDown(100, adv) + 20*time.Millisecond
		for _, kind := range []string{"failover", "handoff"} {
			med := map[string]sample{}
			for _, im := range impls {
				s := results[key{im.Name(), kind, adv}]
				m := sample{outage: median(s, func(x sample) time.Duration { return x.outage }), takeover: median(s, func(x sample) time.Duration { return x.takeover })}
				med[im.Name()] = m
				fmt.Fprintf(os.Stderr, "  %-10s %-8s %-6s client outage: %s\n", im.Name(), kind, tag, series(s, func(x sample) time.Duration { return x.outage }))
				fmt.Fprintf(os.Stderr, "  %-10s %-8s %-6s takeover:       %s\n", im.Name(), kind, tag, series(s, func(x sample) time.Duration { return x.takeover }))
				fmt.Printf("BENCH %s_%s_%s_client_outage_median %.1f ms\n", kind, im.Name(), tag, msf(m.outage))
				fmt.Printf("BENCH %s_%s_%s_takeover_median %.1f ms\n", kind, im.Name(), tag, msf(m.takeover))
			}
			kv, ka := med["keepvip"], med["keepalived"]
			if kind == "failover" {
				fmt.Printf("BENCH failover_%s_bound %.1f ms\n", tag, msf(bound))
				fmt.Printf("BENCH failover_%s_keepvip_vs_keepalived %.3f ratio\n", tag, float64(kv.outage)/float64(ka.outage))
			} else {
				fmt.Printf("BENCH handoff_%s_takeover_keepvip_vs_keepalived %.3f ratio\n", tag, float64(kv.takeover)/float64(ka.takeover))
			}
		}
	}
	return nil
}

func msf(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func median(s []sample, f func(sample) time.Duration) time.Duration {
	v := make([]time.Duration, len(s))
	for i, x := range s {
		v[i] = f(x)
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

func series(s []sample, f func(sample) time.Duration) string {
	parts := make([]string, len(s))
	for i, x := range s {
		parts[i] = fmt.Sprintf("%.0f", msf(f(x)))
	}
	v := make([]time.Duration, len(s))
	for i, x := range s {
		v[i] = f(x)
	}
	slices.Sort(v)
	return fmt.Sprintf("median %.1f ms, min %.1f, max %.1f  [%s]", msf(median(s, f)), msf(v[0]), msf(v[len(v)-1]), strings.Join(parts, " "))
}

type benchNode struct {
	node *lab.Node
	r    router
}

func benchCase(ctx context.Context, im impl, kind string, adv time.Duration, runs int) ([]sample, error) {
	l, err := lab.New(func(string, ...any) {})
	if err != nil {
		return nil, err
	}
	defer l.Close()
	var nodes [2]*benchNode
	for i, addr := range []string{"192.0.2.11/24", "192.0.2.12/24"} {
		n, err := l.AddNode(fmt.Sprintf("r%d", i+1), netip.MustParsePrefix(addr), netip.Prefix{})
		if err != nil {
			return nil, err
		}
		nodes[i] = &benchNode{node: n}
	}
	client, err := l.AddNode("client", netip.MustParsePrefix("192.0.2.50/24"), netip.Prefix{})
	if err != nil {
		return nil, err
	}
	// Equal priorities: the higher address (r2) wins the first election.
	if nodes[1].r, err = im.Start(nodes[1].node, 100, adv, benchVIP); err != nil {
		return nil, err
	}
	mdi := masterDown(100, adv)
	limit := func() (context.Context, context.CancelFunc) {
		return context.WithTimeout(ctx, 4*mdi+5*time.Second)
	}
	w, cancel := limit()
	err = nodes[1].r.WaitMaster(w)
	cancel()
	if err != nil {
		return nil, err
	}
	if nodes[0].r, err = im.Start(nodes[0].node, 100, adv, benchVIP); err != nil {
		return nil, err
	}
	probe, err := lab.StartProber(ctx, client, benchVIP.Addr(), time.Millisecond)
	if err != nil {
		return nil, err
	}
	defer probe.Stop()
	watch, err := lab.StartAdvertWatcher(client)
	if err != nil {
		return nil, err
	}
	defer watch.Close()

	master, backup := nodes[1], nodes[0]
	var out []sample
	for run := 0; run < runs; run++ {
		w, cancel := limit()
		s, err := benchRun(w, l, im, kind, adv, master, backup, client, probe, watch)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("run %d: %w", run+1, err)
		}
		out = append(out, s)
		master, backup = backup, master
	}
	return out, nil
}

func benchRun(ctx context.Context, l *lab.Lab, im impl, kind string, adv time.Duration, master, backup *benchNode,
	client *lab.Node, probe *lab.Prober, watch *lab.AdvertWatcher) (sample, error) {
	if err := backup.r.WaitBackup(ctx); err != nil {
		return sample{}, err
	}
	if err := master.r.WaitMaster(ctx); err != nil {
		return sample{}, err
	}
	// Every run starts from the same client state: a freshly resolved,
	// REACHABLE neighbour entry for the VIP. Otherwise what earlier runs
	// left in the client's cache decides the last millisecond: an entry
	// caught re-resolving queues pings that the new master's ARP reply
	// releases before its GARP even arrives.
	if out, err := client.Exec(ctx, "ip", "neigh", "flush", "dev", "eth0"); err != nil {
		return sample{}, fmt.Errorf("flushing the client's neighbours: %w: %s", err, out)
	}
	if _, err := probe.WaitReplyAfter(ctx, time.Now()); err != nil {
		return sample{}, fmt.Errorf("client cannot reach the VIP before the run: %w", err)
	}
	msrc, bsrc := master.node.IPv4.Addr(), backup.node.IPv4.Addr()
	last, err := watch.WaitAdvert(ctx, func(a lab.Advert) bool { return a.Src == msrc && a.Priority > 0 })
	if err != nil {
		return sample{}, err
	}
	t0 := time.Now()
	stopped := make(chan error, 1)
	switch kind {
	case "failover":
		if err := l.CutLink(master.node); err != nil {
			return sample{}, err
		}
		stopped <- master.r.Crash()
	case "handoff":
		go func() { stopped <- master.r.Term(10 * time.Second) }()
	}
	a, err := watch.WaitAdvertSince(ctx, t0, func(a lab.Advert) bool { return a.Src == bsrc && a.Priority > 0 })
	if err != nil {
		return sample{}, fmt.Errorf("no advert from the new master: %w", err)
	}
	if err := backup.r.WaitMaster(ctx); err != nil {
		return sample{}, err
	}
	if err := <-stopped; err != nil && !errors.Is(err, lab.ErrKilled) {
		return sample{}, fmt.Errorf("stopping the master: %w", err)
	}
	if _, err := probe.WaitReplyAfter(ctx, time.Now()); err != nil {
		return sample{}, err
	}
	// Let the client settle, then take the longest run of unanswered
	// pings after t0 (none for a handoff without a gap).
	time.Sleep(50 * time.Millisecond)
	var s sample
	if g, ok := probe.LongestGap(t0, time.Now()); ok && !g.Open {
		s.outage = g.Duration
	} else if kind == "failover" {
		return sample{}, errors.New("the client saw no outage: the cut did not take effect")
	}
	if kind == "failover" {
		// The backup's timer runs from the last advert it heard.
		s.takeover = a.Time.Sub(last.Time)
	} else {
		s.takeover = a.Time.Sub(t0)
	}
	// Reboot the old master: a crash left the VIP on its interface.
	if kind == "failover" {
		master.node.Exec(ctx, "ip", "addr", "del", benchVIP.String(), "dev", "eth0")
		if err := l.HealLink(master.node); err != nil {
			return sample{}, err
		}
	}
	r, err := im.Start(master.node, 100, adv, benchVIP)
	if err != nil {
		return sample{}, err
	}
	master.r = r
	return s, nil
}
