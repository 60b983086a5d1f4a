package vrrp

// The bursts of gratuitous ARPs and unsolicited NAs a master sends.

import (
	"time"
)

// garpSchedule tracks the announcement bursts of a master.
type garpSchedule struct {
	rounds  int       // rounds left in the current burst
	next    time.Time // when the next round is due
	second  time.Time // second burst (garp_master_delay)
	refresh time.Time // next refresh (garp_master_refresh)
}

// startBurst queues n rounds of announcements, each one message per VIP,
// and sends what is due now.
// Bursts that overlap merge: the rounds left are the larger of the two,
// so repeated triggers cannot queue announcements without bound.
func (in *Instance) startBurst(now time.Time, n int) {
	if n <= 0 {
		return
	}
	if in.garp.rounds == 0 {
		in.garp.next = now
	}
	in.garp.rounds = max(in.garp.rounds, n)
	in.runBurst(now)
}

func (in *Instance) runBurst(now time.Time) {
	for in.garp.rounds > 0 && !now.Before(in.garp.next) {
		n, err := in.io.announce.Announce(in.cfg.vipAddrs())
		in.m.announced.WithLabelValues(in.cfg.Name).Add(float64(n))
		if k := len(in.stats.transitions); k > 0 && in.state == StateMaster && in.stats.transitions[k-1].To == StateMaster {
			in.stats.transitions[k-1].Announced += n
		} else {
			in.announcedEarly += n // becomeMaster's first round: recorded with its transition
		}
		if err != nil {
			in.fail("announce", err)
		}
		in.garp.rounds--
		if in.cfg.GARP.Interval > 0 {
			in.garp.next = now.Add(in.cfg.GARP.Interval)
		}
	}
}
