package vrrp

import (
	"net/netip"
	"testing"
	"time"
)

// A backup judges each advert by when it came (Packet.At, the kernel's
// receive time), not by when a stalled process got round to it, so that a
// stall changes neither whether nor when it takes over.

// arrivedAdvert is an advert from src that the kernel received at at.
func arrivedAdvert(t *testing.T, r *simRouter, src string, prio uint8, at time.Time) Packet {
	t.Helper()
	adv := Advertisement{Version: 3, VRID: r.in.cfg.VRID, Priority: prio, Interval: r.in.cfg.Interval, Addrs: r.in.cfg.vipAddrs()}
	sa := netip.MustParseAddr(src)
	b, err := adv.Marshal(sa, GroupIPv4, ChecksumPseudoHeader)
	if err != nil {
		t.Fatal(err)
	}
	return Packet{Payload: b, Src: sa, Dst: GroupIPv4, TTL: 255, At: at}
}

func TestBackupJudgesAdvertsByArrival(t *testing.T) {
	t.Run("master died during the stall", func(t *testing.T) {
		// The master's last adverts came early in a 1 s stall: it has
		// been silent for longer than Master_Down_Interval when the
		// backup runs again, which takes over at once rather than
		// Master_Down_Interval later.
		s := newSim(t)
		r := s.add("192.0.2.1", func(c *Config) { c.Interval = 100 * ms })
		s.deliver(r, arrivedAdvert(t, r, "192.0.2.2", 200, s.clock.Now()))
		stall := s.clock.Now()
		s.clock.Advance(time.Second)
		for _, d := range []time.Duration{100 * ms, 200 * ms} {
			s.deliver(r, arrivedAdvert(t, r, "192.0.2.2", 200, stall.Add(d)))
		}
		wantState(t, r, StateBackup)
		// The instance goroutine finds its timer expired (in the past:
		// the sim's event loop would move its clock back to it).
		r.in.handleTimers(s.clock.Now())
		wantState(t, r, StateMaster)
		if got, want := r.in.since, s.clock.Now(); !got.Equal(want) {
			t.Errorf("took over at %v; want at once, %v", got, want)
		}
		if got, want := r.lastTransition().Reason, "no advert for 800ms (Master_Down_Interval 360.9375ms)"; got != want {
			t.Errorf("reason %q; want %q", got, want)
		}
	})
	t.Run("master alive: timer from the last advert", func(t *testing.T) {
		s := newSim(t)
		r := s.add("192.0.2.1", func(c *Config) { c.Interval = 100 * ms })
		stall := s.clock.Now()
		s.clock.Advance(time.Second)
		for d := 100 * ms; d <= time.Second; d += 100 * ms {
			s.deliver(r, arrivedAdvert(t, r, "192.0.2.2", 200, stall.Add(d)))
		}
		r.in.handleTimers(s.clock.Now())
		wantState(t, r, StateBackup)
		if got, want := r.in.timers.masterDown, stall.Add(time.Second+mdi(100, 100*ms)); !got.Equal(want) {
			t.Errorf("Master_Down_Timer at %v; want %v (last advert + Master_Down_Interval)", got, want)
		}
	})
	t.Run("preempt delay ends during the stall", func(t *testing.T) {
		// A lower-priority master advertises every 100 ms; the
		// backup may preempt from 1 s on. Without a stall it follows
		// the advert of 0.95 s and takes over Master_Down_Interval
		// after it. Stalled from 0.9 s to 1.1 s, it reads that advert
		// after the delay, and must still follow it.
		at := func(d time.Duration) time.Time { return simStart.Add(d) }
		want := at(950*ms + mdi(200, 100*ms))
		for _, stalled := range []bool{false, true} {
			s := newSim(t)
			r := s.add("192.0.2.1", func(c *Config) {
				c.Interval, c.Priority, c.PreemptDelay = 100*ms, 200, time.Second
			})
			for d := 50 * ms; d <= 1450*ms; d += 100 * ms {
				if stalled && d == 950*ms {
					s.runFor(at(1100 * ms).Sub(s.clock.Now())) // nothing due: the stall
					s.deliver(r, arrivedAdvert(t, r, "192.0.2.2", 100, at(950*ms)))
					s.deliver(r, arrivedAdvert(t, r, "192.0.2.2", 100, at(1050*ms)))
					d = 1050 * ms
					continue
				}
				s.runFor(at(d).Sub(s.clock.Now()))
				if r.in.state == StateBackup {
					s.deliver(r, arrivedAdvert(t, r, "192.0.2.2", 100, s.clock.Now()))
				}
			}
			wantState(t, r, StateMaster)
			if !r.in.since.Equal(want) {
				t.Errorf("stalled %v: preempted at %v; want %v", stalled, r.in.since.Sub(simStart), want.Sub(simStart))
			}
		}
	})
}
