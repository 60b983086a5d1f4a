package e2e

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keepvip/keepvip/internal/daemon"
	"github.com/keepvip/keepvip/vrrp"
)

// A keepvip replaced in place (keepvip run --take-over beside the running
// one, as deploy/ upgrades a node): the successor waits and says ready;
// when the running one gets SIGTERM it leaves the VIP where it is and the
// successor is master with it within milliseconds. No other router
// notices (no transition, no priority 0), the client loses no probe, and
// the VIP never leaves the node. The successor then stops as any keepvip
// does, handing off to b.
func TestTakeOverInPlace(t *testing.T) {
	c := newClCluster(t)
	cfg := func(n string) string { return clConfig(clV4(clPrio[n])) }
	c.startABC(cfg)
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitBackupOf("b", "v4", c.v4("a"), 150)
	c.waitBackupOf("c", "v4", c.v4("a"), 150)
	p := c.probe(clVIP4.Addr())
	w := c.watch()

	old := c.kv["a"]
	succ := c.start("a", cfg("a"), "--take-over", "--status-socket", filepath.Join(t.TempDir(), "successor.sock"))
	ctx, cancel := context.WithTimeout(context.Background(), clWait)
	defer cancel()
	for {
		s, err := succ.Status(ctx)
		if err == nil && s.Handover != nil && s.Handover.WaitingFor == int32(old.Proc().PID()) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the successor does not say it waits for pid %d: %+v, %v\n%s", old.Proc().PID(), s, err, succ.Log())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := daemon.GetHealth(ctx, succ.Socket(), true); err != nil {
		t.Fatalf("the waiting successor is not ready: %v", err)
	}
	for {
		s, err := old.Status(ctx)
		if err == nil && s.Handover != nil && s.Handover.Successor == int32(succ.Proc().PID()) {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("the running keepvip does not see its successor: %+v, %v", s, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	bBefore, cBefore := c.waitState("b", "v4", vrrp.StateBackup), c.waitState("c", "v4", vrrp.StateBackup)
	time.Sleep(3 * clAdv)

	sig := time.Now()
	if err := old.Stop(10 * time.Second); err != nil {
		t.Fatalf("the running keepvip did not stop: %v", err)
	}
	if err := old.Proc().Wait(); err != nil {
		t.Errorf("the running keepvip exited with %v; want 0", err)
	}
	as := c.waitState("a", "v4", vrrp.StateMaster)
	tr := c.mustLast(as, "a", vrrp.StateMaster)
	if len(as.Transitions) != 1 || !strings.Contains(tr.Reason, "took over") {
		t.Errorf("successor's transitions %+v; want one, to MASTER, taken over", as.Transitions)
	}
	took := tr.At.Sub(sig)
	time.Sleep(10 * clAdv)
	end := time.Now()

	// What the others and the client saw.
	for name, before := range map[string]vrrp.Status{"b": bBefore, "c": cBefore} {
		now := c.waitBackupOf(name, "v4", c.v4("a"), 150)
		if len(now.Transitions) != len(before.Transitions) {
			t.Errorf("%s changed state across the takeover: %+v", name, now.Transitions[len(before.Transitions):])
		}
	}
	var prev time.Time
	var widest time.Duration
	for _, a := range w.Adverts() {
		if a.Time.Before(sig.Add(-2*clAdv)) || a.VRID != clVRID {
			continue
		}
		if a.Src != c.v4("a") || a.Priority != 150 {
			t.Errorf("advert from %v at priority %d across the takeover; want only a's, at 150", a.Src, a.Priority)
		}
		if !prev.IsZero() {
			widest = max(widest, a.Time.Sub(prev))
		}
		prev = a.Time
	}
	if widest > clAdv+clSlack/3 {
		t.Errorf("a's adverts were %v apart across the takeover; want about the interval %v", widest, clAdv)
	}
	gap, lost := p.LongestGap(sig.Add(-clAdv), end)
	if lost {
		t.Errorf("the client lost %d probes (%v) across the takeover; want none", gap.Lost, gap.Duration)
	}
	if strings.Contains(old.Log(), "priority 0") || strings.Contains(succ.Log(), "removed a VIP left behind") {
		t.Error("a VIP was handed off or removed during the takeover")
	}
	t.Logf("figure: takeover in place: successor MASTER %v after SIGTERM to the running keepvip; widest advert spacing %v (interval %v); client probes lost 0 of %d", took.Round(time.Millisecond), widest.Round(time.Millisecond), clAdv, p.Stats().Sent)

	// And the successor is a keepvip like any: SIGTERM hands off to b.
	if err := succ.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	c.waitState("b", "v4", vrrp.StateMaster)
	delete(c.kv, "a")
	c.wantVIPs("b", clVIP4)
}
