package e2e

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keepvip/keepvip/test/framework/lab"
	"github.com/keepvip/keepvip/vrrp"
)

// TestClusterHandoffLostPriorityZero is the SIGTERM handoff of
// TestClusterHandoff with a's priority 0 advert lost on its way to both
// backups (issue #9): their switch ports are detached from the bridge
// around it, carrier up, and reattached as soon as the client has seen it.
// a says priority 0 again one interval later, still holding the VIP, so b
// takes over Skew_Time after that and the client sees no gap. Without the
// repeat the backups wait for Master_Down_Interval while a lets the VIP go
// after its hold of two intervals: a gap of about one interval plus skew.
func TestClusterHandoffLostPriorityZero(t *testing.T) {
	c := newClCluster(t)
	c.startABC(func(n string) string { return clConfig(clV4(clPrio[n])) })
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitBackupOf("b", "v4", c.v4("a"), 150)
	c.waitBackupOf("c", "v4", c.v4("a"), 150)
	p := c.probe(clVIP4.Addr())
	w := c.watch()
	c.waitAdvert(w, time.Now(), "advert from a", func(a lab.Advert) bool { return a.Src == c.v4("a") && a.Priority == 150 })
	for _, n := range []string{"b", "c"} {
		if err := c.l.CutLink(c.nodes[n]); err != nil {
			t.Fatal(err)
		}
	}
	ka := c.kv["a"]
	sig := time.Now()
	if err := ka.Proc().Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	zero := c.waitAdvert(w, sig, "priority 0 advert from a", func(a lab.Advert) bool { return a.Src == c.v4("a") && a.Priority == 0 })
	healed := make(chan error, 2)
	for _, n := range []string{"b", "c"} {
		go func() { healed <- c.l.HealLink(c.nodes[n]) }()
	}
	for range 2 {
		if err := <-healed; err != nil {
			t.Fatal(err)
		}
	}
	if d := time.Since(zero.Time); d > clAdv*8/10 {
		// The repeat is due one interval after the first: the ports
		// must be back before it, or both are lost.
		t.Fatalf("the backups' ports came back %v after the priority 0, too close to the repeat at %v", d, clAdv)
	}
	select {
	case <-ka.Proc().Exited():
	case <-time.After(10 * time.Second):
		t.Fatal("a did not exit after SIGTERM")
	}
	if err := ka.Proc().Wait(); err != nil {
		t.Errorf("a's keepvip exited with %v, want status 0", err)
	}

	bs := c.waitState("b", "v4", vrrp.StateMaster)
	tr := c.mustLast(bs, "b", vrrp.StateMaster)
	delete(c.kv, "a")
	c.waitBackupOf("c", "v4", c.v4("b"), 120)
	c.wantVIPs("b", clVIP4)

	// What the client saw.
	ctx, cancel := context.WithTimeout(context.Background(), clWait)
	defer cancel()
	if _, err := p.WaitReplyAfter(ctx, time.Now()); err != nil {
		t.Fatal(err)
	}
	gap, lost := p.LongestGap(sig, time.Now())
	var outage time.Duration
	if lost {
		outage = gap.Duration
	}
	st := p.Stats()
	t.Logf("figure: SIGTERM handoff, first priority 0 lost: b MASTER %v after SIGTERM (%s); client outage %v (%d probes lost; %d sent)",
		tr.At.Sub(sig).Round(100*time.Microsecond), tr.Reason, outage, gap.Lost, st.Sent)
	if outage > 30*time.Millisecond {
		t.Errorf("client outage %v during the handoff with the first priority 0 lost, want <= 30ms (longest gap from probe %d)", outage, gap.FirstLost.Seq)
	}

	// How: a said priority 0 again one interval later, and b took over
	// Skew_Time after that, while a still held the VIP.
	if !strings.Contains(tr.Reason, "priority 0") {
		t.Errorf("b became MASTER for %q, want a's (repeated) priority 0", tr.Reason)
	}
	rctx, rcancel := context.WithTimeout(context.Background(), time.Second)
	defer rcancel()
	repeat, err := w.WaitAdvertSince(rctx, zero.Time.Add(time.Millisecond), func(a lab.Advert) bool { return a.Src == c.v4("a") && a.Priority == 0 })
	if err != nil {
		t.Fatalf("a did not repeat its priority 0: %v", err)
	}
	first := c.waitAdvert(w, zero.Time, "first advert from b", func(a lab.Advert) bool { return a.Src == c.v4("b") && a.Priority == 120 })
	skew := clSkew(120)
	clWithin(t, "a's repeat after its first priority 0", repeat.Time.Sub(zero.Time), clAdv-20*time.Millisecond, clAdv+clSlack)
	clWithin(t, "a's repeated priority 0 to b's first advert, on the wire", first.Time.Sub(repeat.Time), skew-20*time.Millisecond, skew+clSlack)
	if log := ka.Log(); !strings.Contains(log, "handed off to "+c.v4("b").String()) {
		t.Errorf("a's log does not show the handoff to b (VIP held until b advertised):\n%s", clTail(clNoDebug(log), 2000))
	}
	t.Logf("figure: a's repeat %v after its first priority 0; b's first advert %v after the repeat (Skew_Time %v)",
		repeat.Time.Sub(zero.Time).Round(100*time.Microsecond), first.Time.Sub(repeat.Time).Round(100*time.Microsecond), skew)
}
