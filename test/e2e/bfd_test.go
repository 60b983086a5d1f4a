package e2e

// BFD end to end (the lab is scenario.StartBFD's): two keepvip nodes
// announce an ECMP VIP over BGP to FRR with bfdd, BIRD with BFD and, for
// reference in the same run, FRR without BFD, all with hold time 3 s. A
// node fails three ways — its link is cut, its keepvip hangs (SIGSTOP: its
// TCP sessions stay up), its keepvip is killed (the kernel closes them) —
// and the routers' kernels are watched for the moment they stop routing to
// it.

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/keepvip/keepvip/test/framework/lab"
	"github.com/keepvip/keepvip/test/framework/scenario"
)

func TestRoutedBFD(t *testing.T) {
	l := lab.ForTest(t, "vtysh", lab.FRRBinary, "/usr/lib/frr/zebra", "/usr/lib/frr/bfdd", "bird", "birdc")
	s, err := scenario.StartBFD(l)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	t.Cleanup(func() {
		if !t.Failed() {
			return
		}
		if st, err := s.KA.Status(ctx); err == nil && st.Routing != nil {
			t.Logf("a's BFD sessions: %+v", st.Routing.BFD)
		}
		var lines []string
		for _, line := range strings.Split(s.KA.Log(), "\n") {
			if strings.Contains(line, "BFD") || strings.Contains(line, "BGP session") {
				lines = append(lines, line)
			}
		}
		frrBFD, _ := s.FRR.BFDVTY(ctx, "show bfd peers brief")
		birdBFD, _ := s.BIRD.Cmd(ctx, "show bfd sessions")
		t.Logf("a's BFD and BGP log:\n%s\nFRR's BFD:\n%s\nBIRD's BFD:\n%s\nFRR's bfdd:\n%s", clTail(strings.Join(lines, "\n"), 6000), frrBFD, birdBFD,
			clTail(s.FRR.Daemon("bfdd").Log(), 3000))
	})
	if err := s.WaitConverged(ctx, 40*time.Second); err != nil {
		t.Fatal(err)
	}
	st, err := s.KA.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Routing.BFD) != 2 {
		t.Fatalf("a's BFD sessions: %+v; want the two peers with bfd", st.Routing.BFD)
	}
	for _, b := range st.Routing.BFD {
		if b.TxInterval != 100_000_000 || b.DetectionTime != 300_000_000 || b.RemoteDetectMult != scenario.BFDMult {
			t.Errorf("a's BFD session with %s: TX %v, detection %v, peer's multiplier %d; want 100ms, 300ms, 3", b.Remote, b.TxInterval, b.DetectionTime, b.RemoteDetectMult)
		}
	}
	if out, err := s.FRR.BFDVTY(ctx, "show bfd peers"); err != nil || strings.Count(out, "Status: up") != 2 {
		t.Errorf("FRR's bfdd: %v\n%s", err, out)
	}

	// The BFD detection time from the last packet before the failure,
	// which is at most one interval before it, then the router's own
	// work (FRR's bgpd and zebra take ~90 ms: see the kill below, the
	// same with and without BFD), and slack for a busy machine.
	const bfdBound = scenario.BFDMult*scenario.BFDInterval + 300*time.Millisecond
	fail := func(how string, refWaits bool) {
		t.Helper()
		f, err := s.Fail(ctx, how)
		for _, r := range scenario.BFDRouters {
			if d, ok := f.Gone[r]; ok {
				t.Logf("figure: %s: %s stopped routing to a after %v", how, r, d.Round(time.Millisecond))
			}
		}
		if f.FRRDetect > 0 {
			t.Logf("figure: %s: FRR's bfdd declared a down after %v, its route changed %v later", how,
				f.FRRDetect.Round(time.Millisecond), (f.Gone[scenario.BFDRouterFRR] - f.FRRDetect).Round(time.Millisecond))
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range []string{scenario.BFDRouterFRR, scenario.BFDRouterBIRD} {
			if d := f.Gone[r]; d > bfdBound {
				t.Errorf("%s: %s took %v; want the detection time (%v) and the router's own work", how, r, d, scenario.BFDMult*scenario.BFDInterval)
			}
		}
		if d := f.Gone[scenario.BFDRouterRef]; refWaits && d < scenario.BFDHold-time.Second {
			t.Errorf("%s: the reference without BFD stopped routing to a after %v: the failure did not last a hold time", how, d)
		}
	}

	fail(scenario.BFDLinkCut, true)
	if err := s.WaitConverged(ctx, 40*time.Second); err != nil {
		t.Fatalf("after the link came back: %v", err)
	}
	if st, err := s.KA.Status(ctx); err != nil || st.Routing.BFD[0].Flaps == 0 {
		t.Errorf("a's BFD sessions after the cut: %+v %v; want a flap", st.Routing.BFD, err)
	}
	if !strings.Contains(s.KA.Log(), `msg="BGP session reset" peer=192.0.2.1 why="BFD session down: control detection time expired"`) {
		t.Error("a did not reset its BGP session with FRR when their BFD session failed")
	}

	// A hang: the routers with BFD drop a as for a cut; the reference
	// waits for the hold time although a's TCP sessions are up. When it
	// goes on, everything comes back, and stays: no flapping of BFD or
	// BGP (with BIRD, which makes a new BFD session for each BGP
	// session, a reset that outlived its session once made them flap
	// every 3 s).
	fail(scenario.BFDHung, true)
	if err := s.WaitConverged(ctx, 40*time.Second); err != nil {
		t.Fatalf("after keepvip went on: %v", err)
	}
	before, err := s.KA.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second)
	after, err := s.KA.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, b := range after.Routing.BFD {
		if b.State != "up" || b.Flaps != before.Routing.BFD[i].Flaps {
			t.Errorf("a's BFD session with %s 5 s after it came back: %s, %d flaps (were %d)", b.Remote, b.State, b.Flaps, before.Routing.BFD[i].Flaps)
		}
	}
	for i, p := range after.Routing.Peers {
		if p.State != "established" || !p.Since.Equal(before.Routing.Peers[i].Since) {
			t.Errorf("a's BGP session with %s 5 s after it came back: %s since %v (was since %v)", p.Address, p.State, p.Since, before.Routing.Peers[i].Since)
		}
	}

	// Killed, the kernel closes a's TCP sessions: every router drops it
	// at once, BFD or not.
	fail(scenario.BFDKilled, false)
}
