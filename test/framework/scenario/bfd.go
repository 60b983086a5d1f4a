package scenario

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/keepvip/keepvip/test/framework/lab"
)

// BFD for routed HA, as the e2e test and the benchmark both run it: two
// keepvip nodes, a (192.0.2.11) and b (192.0.2.12), announce an ECMP VIP
// over BGP to three routers on one segment, all with BGP hold time 3 s,
// the least BGP allows:
//   - FRR with zebra and bfdd (neighbor … bfd 3 100 100),
//   - BIRD with its BFD protocol (bfd on; 100 ms × 3),
//   - FRR with zebra and no BFD: the reference.
//
// Each router installs the VIP's route in its kernel with both nodes as
// next hops (zebra; BIRD's kernel protocol with merge paths), and `ip -ts
// monitor route` on each router timestamps the moment a's next hop leaves
// it when a fails.

// Names of the routers in BFDSetup's figures.
const (
	BFDRouterFRR  = "FRR with BFD"
	BFDRouterBIRD = "BIRD with BFD"
	BFDRouterRef  = "FRR without BFD (reference)"
)

// BFD settings of every session: 100 ms × 3.
const (
	BFDInterval = 100 * time.Millisecond
	BFDMult     = 3
	// BFDHold is the BGP hold time of every session.
	BFDHold = 3 * time.Second
	bfdVIP  = "192.0.2.200"
)

func bfdFRRConf(self string, withBFD bool) string {
	c := fmt.Sprintf("log stdout informational\nlog timestamp precision 3\nrouter bgp 65000\n bgp router-id %s\n no bgp ebgp-requires-policy\n", self)
	for _, n := range []string{"192.0.2.11", "192.0.2.12"} {
		c += fmt.Sprintf(" neighbor %[1]s remote-as 65001\n neighbor %[1]s timers 1 3\n neighbor %[1]s timers connect 1\n", n)
		if withBFD {
			c += fmt.Sprintf(" neighbor %s bfd %d %d %d\n", n, BFDMult, BFDInterval.Milliseconds(), BFDInterval.Milliseconds())
		}
	}
	return c + " address-family ipv4 unicast\n  maximum-paths 4\n exit-address-family\n"
}

const bfdBIRDConf = `router id 192.0.2.2;
protocol device {}
protocol kernel { ipv4 { export all; }; merge paths on; }
protocol bfd {
  interface "eth0" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; };
}
template bgp kv {
  local 192.0.2.2 as 65000;
  hold time 3;
  connect retry time 1;
  # After a session error (BFD down is one) BIRD waits 60 s by default
  # before it takes the session up again.
  error wait time 1, 5;
  bfd on;
  ipv4 { import all; export none; };
}
protocol bgp a from kv { neighbor 192.0.2.11 as 65001; }
protocol bgp b from kv { neighbor 192.0.2.12 as 65001; }
`

func bfdKeepvipConf(self string) string {
	bfd := fmt.Sprintf("bfd: {minTx: %s, minRx: %s, multiplier: %d}", BFDInterval, BFDInterval, BFDMult)
	return fmt.Sprintf(`instances: []
routing:
  ecmp: [{vip: %s}]
  bgp:
    asn: 65001
    routerID: %s
    peers:
    - {address: 192.0.2.1, asn: 65000, holdTime: 3s, keepaliveInterval: 1s, %s}
    - {address: 192.0.2.2, asn: 65000, holdTime: 3s, keepaliveInterval: 1s, %s}
    - {address: 192.0.2.3, asn: 65000, holdTime: 3s, keepaliveInterval: 1s}
`, bfdVIP, self, bfd, bfd)
}

// BFDSetup is the running lab.
type BFDSetup struct {
	Lab        *lab.Lab
	A, B       *lab.Node
	KA, KB     *lab.Keepvip
	FRR, Ref   *lab.FRR
	BIRD       *lab.BIRD
	routerNode map[string]*lab.Node
}

// BFDRouters are the routers' names, in the order of the figures.
var BFDRouters = []string{BFDRouterFRR, BFDRouterBIRD, BFDRouterRef}

// StartBFD builds the lab in l and starts every daemon.
func StartBFD(l *lab.Lab) (*BFDSetup, error) {
	add := func(name, addr string) (*lab.Node, error) {
		return l.AddNode(name, netip.MustParsePrefix(addr+"/24"), netip.Prefix{})
	}
	s := &BFDSetup{Lab: l, routerNode: map[string]*lab.Node{}}
	var err error
	for _, n := range []struct {
		router, name, addr string
	}{{BFDRouterFRR, "frr", "192.0.2.1"}, {BFDRouterBIRD, "bird", "192.0.2.2"}, {BFDRouterRef, "ref", "192.0.2.3"}} {
		if s.routerNode[n.router], err = add(n.name, n.addr); err != nil {
			return nil, err
		}
	}
	if s.A, err = add("a", "192.0.2.11"); err != nil {
		return nil, err
	}
	if s.B, err = add("b", "192.0.2.12"); err != nil {
		return nil, err
	}
	if s.FRR, err = s.routerNode[BFDRouterFRR].StartFRRWithZebra(bfdFRRConf("192.0.2.1", true), true); err != nil {
		return nil, err
	}
	if s.Ref, err = s.routerNode[BFDRouterRef].StartFRRWithZebra(bfdFRRConf("192.0.2.3", false), false); err != nil {
		return nil, err
	}
	if s.BIRD, err = s.routerNode[BFDRouterBIRD].StartBIRD(bfdBIRDConf); err != nil {
		return nil, err
	}
	if s.KA, err = s.A.StartKeepvip(bfdKeepvipConf("192.0.2.11")); err != nil {
		return nil, err
	}
	if s.KB, err = s.B.StartKeepvip(bfdKeepvipConf("192.0.2.12")); err != nil {
		return nil, err
	}
	return s, nil
}

// vipVia returns the next hops of the VIP's route in a router's kernel.
func (s *BFDSetup) vipVia(ctx context.Context, router string) string {
	out, err := s.routerNode[router].Exec(ctx, "ip", "-4", "route", "show", bfdVIP+"/32")
	if err != nil {
		return err.Error()
	}
	var via []string
	for _, f := range []string{"192.0.2.11", "192.0.2.12"} {
		if strings.Contains(string(out), "via "+f) {
			via = append(via, f)
		}
	}
	return strings.Join(via, " ")
}

// WaitConverged waits until every router routes the VIP to both nodes
// and the nodes' four BFD sessions are up.
func (s *BFDSetup) WaitConverged(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ok := true
		var got []string
		for _, r := range BFDRouters {
			v := s.vipVia(ctx, r)
			got = append(got, r+": "+v)
			ok = ok && v == "192.0.2.11 192.0.2.12"
		}
		up := 0
		for _, k := range []*lab.Keepvip{s.KA, s.KB} {
			if st, err := k.Status(ctx); err == nil && st.Routing != nil {
				for _, b := range st.Routing.BFD {
					if b.State == "up" {
						up++
					}
				}
			}
		}
		if ok && up == 4 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %d of 4 BFD sessions up; routes %v", timeout, up, got)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// BFDFailure is what one failure of a cost.
type BFDFailure struct {
	// Gone is, per router, how long after the failure a's next hop left
	// the VIP's route in its kernel; a router that still routed to a 10 s
	// later is missing.
	Gone map[string]time.Duration
	// FRRDetect is when FRR's bfdd declared its session with a down,
	// after the failure; 0 if it did not log it.
	FRRDetect time.Duration
}

// Failure kinds.
const (
	BFDLinkCut = "link cut"
	BFDHung    = "keepvip hung (SIGSTOP)"
	BFDKilled  = "keepvip killed"
)

// Fail makes a fail as how says, waits until every router has stopped
// routing to it (at most 10 s), and undoes the failure (a killed keepvip
// stays dead).
func (s *BFDSetup) Fail(ctx context.Context, how string) (BFDFailure, error) {
	var do, undo func() error
	switch how {
	case BFDLinkCut:
		do, undo = func() error { return s.Lab.CutLink(s.A) }, func() error { return s.Lab.HealLink(s.A) }
	case BFDHung:
		do = func() error { return s.KA.Proc().Signal(syscall.SIGSTOP) }
		undo = func() error { return s.KA.Proc().Signal(syscall.SIGCONT) }
	case BFDKilled:
		do = s.KA.Kill
	default:
		return BFDFailure{}, fmt.Errorf("no failure %q", how)
	}
	mons := map[string]*lab.Proc{}
	defer func() {
		for _, m := range mons {
			m.Kill()
		}
	}()
	for _, r := range BFDRouters {
		m, err := s.routerNode[r].Start("ipmon", "ip", "-ts", "monitor", "route")
		if err != nil {
			return BFDFailure{}, err
		}
		mons[r] = m
	}
	time.Sleep(200 * time.Millisecond) // the monitors listen
	// Taken before the failure: the figures are at most this much late
	// (the cut itself is an `ip link` command in the switch).
	at := time.Now()
	if err := do(); err != nil {
		return BFDFailure{}, err
	}
	f := BFDFailure{Gone: map[string]time.Duration{}}
	deadline := time.Now().Add(10 * time.Second)
	for len(f.Gone) < len(BFDRouters) && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		for _, r := range BFDRouters {
			if _, ok := f.Gone[r]; ok {
				continue
			}
			for _, e := range vipRouteEvents(mons[r].Log()) {
				if e.at.After(at) && (strings.HasPrefix(e.text, "Deleted") || !strings.Contains(e.text, "192.0.2.11")) {
					f.Gone[r] = e.at.Sub(at)
					break
				}
			}
		}
	}
	if down, ok := frrBFDDown(s.FRR.Daemon("bfdd").Log(), "192.0.2.11", at); ok {
		f.FRRDetect = down.Sub(at)
	}
	var err error
	if len(f.Gone) < len(BFDRouters) {
		var still []string
		for _, r := range BFDRouters {
			if _, ok := f.Gone[r]; !ok {
				still = append(still, fmt.Sprintf("%s (%s)", r, s.vipVia(ctx, r)))
			}
		}
		err = fmt.Errorf("%s: still routing to a 10 s later: %s", how, strings.Join(still, ", "))
	}
	if undo != nil {
		err = errors.Join(err, undo())
	}
	return f, err
}

// routeEvent is one change of the VIP's route in a router's kernel.
type routeEvent struct {
	at   time.Time
	text string
}

// vipRouteEvents parses `ip -ts monitor route` output: each message is a
// timestamped line and the indented next hop lines after it.
func vipRouteEvents(log string) []routeEvent {
	var all []routeEvent
	sc := bufio.NewScanner(strings.NewReader(log))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "[") {
			end := strings.Index(line, "]")
			if end < 0 {
				continue
			}
			at, err := time.ParseInLocation("2006-01-02T15:04:05.000000", line[1:end], time.Local)
			if err != nil {
				continue
			}
			all = append(all, routeEvent{at, strings.TrimSpace(line[end+1:])})
			continue
		}
		if len(all) > 0 && strings.TrimSpace(line) != "" {
			all[len(all)-1].text += " | " + strings.TrimSpace(line)
		}
	}
	var vip []routeEvent
	for _, e := range all {
		if strings.HasPrefix(e.text, bfdVIP+" ") || strings.HasPrefix(e.text, "Deleted "+bfdVIP+" ") {
			vip = append(vip, e)
		}
	}
	return vip
}

// frrBFDDown returns when FRR's bfdd (debug bfd peer, millisecond
// timestamps) logged its session with peer going from up to down, the
// first time after after.
func frrBFDDown(log, peer string, after time.Time) (time.Time, bool) {
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, "state-change:") || !strings.Contains(line, "peer:"+peer+" ") || !strings.Contains(line, "up -> down") || len(line) < 23 {
			continue
		}
		at, err := time.ParseInLocation("2006/01/02 15:04:05.000", line[:23], time.Local)
		if err == nil && at.After(after.Truncate(time.Millisecond)) {
			return at, true
		}
	}
	return time.Time{}, false
}

// BFDBench cuts a's link runs times, and hangs its keepvip runs times,
// and prints the medians per router as BENCH lines, the reference without
// BFD from the same runs beside them.
func BFDBench(ctx context.Context, runs int) error {
	if runs < 1 {
		return errors.New("bfdbench: -runs must be at least 1")
	}
	l, err := lab.New(func(string, ...any) {})
	if err != nil {
		return err
	}
	defer l.Close()
	s, err := StartBFD(l)
	if err != nil {
		return err
	}
	if err := s.WaitConverged(ctx, 40*time.Second); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "bfdbench: %d link cuts and %d hangs of a keepvip node, BFD %v × %d, BGP hold time %v\n", runs, runs, BFDInterval, BFDMult, BFDHold)
	for _, how := range []string{BFDLinkCut, BFDHung} {
		gone := map[string][]time.Duration{}
		var detect []time.Duration
		for range runs {
			f, err := s.Fail(ctx, how)
			if err != nil {
				return err
			}
			for r, d := range f.Gone {
				gone[r] = append(gone[r], d)
			}
			if f.FRRDetect > 0 {
				detect = append(detect, f.FRRDetect)
			}
			if err := s.WaitConverged(ctx, 40*time.Second); err != nil {
				return fmt.Errorf("after %s: %w", how, err)
			}
		}
		key := map[string]string{BFDLinkCut: "link_cut", BFDHung: "hung"}[how]
		med := func(v []time.Duration) time.Duration {
			slices.Sort(v)
			return v[len(v)/2]
		}
		for _, r := range BFDRouters {
			v := gone[r]
			slices.Sort(v)
			fmt.Fprintf(os.Stderr, "bfdbench: %s: %s stopped routing to the node after: median %.0f ms, min %.0f, max %.0f\n", how, r, msf(med(v)), msf(v[0]), msf(v[len(v)-1]))
		}
		name := map[string]string{BFDRouterFRR: "frr_bfd", BFDRouterBIRD: "bird_bfd", BFDRouterRef: "frr_no_bfd_reference"}
		for _, r := range BFDRouters {
			fmt.Printf("BENCH bfd_%s_%s_route_gone_median %.0f ms\n", key, name[r], msf(med(gone[r])))
		}
		if len(detect) > 0 {
			fmt.Printf("BENCH bfd_%s_frr_bfdd_down_median %.0f ms\n", key, msf(med(detect)))
		}
		fmt.Printf("BENCH bfd_%s_frr_speedup_vs_hold_time %.1f x\n", key, float64(med(gone[BFDRouterRef]))/float64(med(gone[BFDRouterFRR])))
	}
	return nil
}
