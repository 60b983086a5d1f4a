package vrrp

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

// A keepvip replaced in place (Manager.Leave, then a successor with
// Options.Inherit) is invisible to the other routers: over generated
// moments of the advert cycle, successor start delays and priorities,
// after every step of the simulation
//   - the VIPs never leave the host, and no other router holds them;
//   - no other router changes state;
//
// and the successor is master from its first advert, the leaving master's
// last advert being at its own priority. A successor that starts later
// than the others' Master_Down_Interval is, as it must be, a failover.
func TestHandoverInPlaceIsInvisible(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 1))
	for round := range 200 {
		interval := []time.Duration{20 * ms, 100 * ms, time.Second}[rng.IntN(3)]
		prioA := 101 + rng.IntN(150)
		prioB := 1 + rng.IntN(prioA-1)
		phase := time.Duration(rng.Int64N(int64(interval)))
		// Up to two intervals: the successor has started and waits
		// (deploy/ runs it beside the old pod), so a handover takes
		// milliseconds; two intervals is far beyond that and still
		// inside 3 × interval + skew.
		delay := time.Duration(rng.Int64N(int64(2 * interval)))
		name := fmt.Sprintf("round %d: interval %v, priorities %d/%d, phase %v, delay %v", round, interval, prioA, prioB, phase, delay)

		s := newSim(t)
		cfgA := func(c *Config) { c.Priority = uint8(prioA); c.Interval = interval }
		a := s.add("192.0.2.1", cfgA)
		b := s.add("192.0.2.2", func(c *Config) { c.Priority = uint8(prioB); c.Interval = interval })
		s.runFor(5*interval + phase)
		if len(s.masters()) != 1 || a.in.state != StateMaster {
			t.Fatalf("%s: masters %v before the handover; want a", name, s.masters())
		}
		bTransitions := len(b.in.stats.transitions)

		leaving := true
		a.in.io.leaving = func() bool { return leaving }
		left := s.clock.Now()
		a.in.shutdown(left)
		if !a.in.stopped || !a.in.leftMaster {
			t.Fatalf("%s: leaving master: stopped %v, leftMaster %v", name, a.in.stopped, a.in.leftMaster)
		}
		last := s.sent(a.index, left)
		if len(last) != 1 || last[0].adv.Priority != uint8(prioA) {
			t.Fatalf("%s: leaving master sent %+v; want one advert at its priority %d", name, last, prioA)
		}
		if d := removals(a); len(d) > 0 {
			t.Fatalf("%s: leaving master removed %v", name, d)
		}
		// The successor starts delay later, on the same host: same
		// address, and the kernel's addresses (the VIPs a left) are
		// the ones it finds.
		check := func(when string) {
			t.Helper()
			if !a.vips.on[a.in.cfg.VIPs[0]] {
				t.Fatalf("%s: %s: the VIP left the host", name, when)
			}
			if b.in.state != StateBackup || len(b.in.stats.transitions) != bTransitions || len(b.vips.on) > 0 {
				t.Fatalf("%s: %s: the other router noticed: %s, transitions %+v, VIPs %v", name, when, b.in.state, b.in.stats.transitions, b.vips.on)
			}
		}
		for step := time.Duration(0); step < delay; step += interval / 4 {
			s.runFor(min(interval/4, delay-step))
			check("before the successor")
		}
		s.beforeStart = func(r *simRouter) {
			r.vips = a.vips
			r.in.io.addrs = a.vips
			r.in.inherited = append(r.in.inherited, r.in.cfg.VIPs...)
			r.in.takeOver = true
		}
		started := s.clock.Now()
		c := s.add("192.0.2.1", cfgA)
		s.beforeStart = nil
		wantState(t, c, StateMaster)
		if got := s.sent(c.index, started); len(got) == 0 || !got[0].at.Equal(started) {
			t.Fatalf("%s: successor's adverts %+v; want the first at once", name, got)
		}
		for range 40 {
			s.runFor(interval / 2)
			check("after the successor")
			if c.in.state != StateMaster {
				t.Fatalf("%s: successor %s", name, c.in.state)
			}
		}
		if b.in.heard.master != c.addr {
			t.Fatalf("%s: b follows %v", name, b.in.heard.master)
		}
	}
}

// The handover is only for a master: a leaving backup stops as usual,
// and a successor told to take over an instance whose VIPs are not in
// place (nothing was inherited) starts as any router does.
func TestHandoverOnlyOfWhatIsThere(t *testing.T) {
	s := newSim(t)
	a := s.add("192.0.2.1", func(c *Config) { c.Priority = 200 })
	b := s.add("192.0.2.2", nil)
	s.runFor(5 * time.Second)
	b.in.io.leaving = func() bool { return true }
	b.in.shutdown(s.clock.Now())
	if !b.in.stopped || b.in.leftMaster {
		t.Errorf("leaving backup: stopped %v, leftMaster %v; want stopped, not left as master", b.in.stopped, b.in.leftMaster)
	}
	s.beforeStart = func(r *simRouter) { r.in.takeOver = true }
	c := s.add("192.0.2.2", nil)
	wantState(t, c, StateBackup)
	s.runFor(5 * time.Second)
	wantState(t, c, StateBackup)
	wantState(t, a, StateMaster)
}
