package vrrp

import (
	"strings"
	"testing"
	"time"
)

// removals returns the VIP deletions a router made.
func removals(r *simRouter) []string {
	var out []string
	for _, l := range r.vips.log {
		if strings.HasPrefix(l, "del ") {
			out = append(out, l)
		}
	}
	return out
}

// A keepvip that died as master and restarts finds its VIPs still there.
// It keeps them and listens for one interval and its skew; nobody else
// has become master (the backups wait three intervals), so it resumes:
// the VIPs never leave the interface, and the backup, which had not
// noticed, keeps following it. This holds with preemption on or off.
func TestRestartedMasterResumes(t *testing.T) {
	for _, preempt := range []bool{true, false} {
		s := newSim(t)
		b := s.add("192.0.2.2", nil)
		a := s.addRestarted("192.0.2.1", func(c *Config) { c.Priority = 150; c.Preempt = preempt })
		wantState(t, a, StateBackup)
		wait := time.Second + a.in.skew()
		s.runFor(wait - time.Microsecond)
		wantState(t, a, StateBackup)
		if len(s.capture) != 0 {
			t.Fatalf("preempt %v: adverts while listening: %+v", preempt, s.capture)
		}
		s.runFor(time.Microsecond)
		wantState(t, a, StateMaster)
		if tr := a.lastTransition(); !strings.Contains(tr.Reason, "resumed") {
			t.Errorf("preempt %v: a's transition %+v; want resumed", preempt, tr)
		}
		s.runFor(20 * time.Second)
		wantState(t, a, StateMaster)
		wantState(t, b, StateBackup)
		if d := removals(a); len(d) > 0 || !a.vips.on[a.in.cfg.VIPs[0]] {
			t.Errorf("preempt %v: a's VIPs: removals %v, held %v; want held throughout", preempt, d, a.vips.on)
		}
		if b.in.heard.master != a.addr || len(b.in.stats.transitions) != 1 {
			t.Errorf("preempt %v: b follows %v with transitions %+v; want a, never master", preempt, b.in.heard.master, b.in.stats.transitions)
		}
	}
}

// If a master was elected while it was down, the restarted router hears
// it within the interval and the election goes on as the RFC says: a
// better master, or any master without preemption, is followed and the
// VIPs go; a worse one is preempted at once when preemption is on, with
// the VIPs it never gave up.
func TestRestartedRouterMeetsAnElectedMaster(t *testing.T) {
	for _, c := range []struct {
		name            string
		masterPrio      uint8
		preempt         bool
		wantA           State
		wantVIPsRemoved bool
	}{
		{"better master", 200, true, StateBackup, true},
		{"worse master, preemption", 50, true, StateMaster, false},
		{"worse master, no preemption", 50, false, StateBackup, true},
	} {
		s := newSim(t)
		b := s.add("192.0.2.2", func(cf *Config) { cf.Priority = c.masterPrio })
		s.runFor(mdi(int(c.masterPrio), time.Second) + ms)
		wantState(t, b, StateMaster)
		start := s.clock.Now()
		a := s.addRestarted("192.0.2.1", func(cf *Config) { cf.Preempt = c.preempt })
		s.runFor(time.Second + 10*ms) // b advertises within the interval
		wantState(t, a, c.wantA)
		if removed := len(removals(a)) > 0; removed != c.wantVIPsRemoved || len(a.vips.on) > 0 == removed {
			t.Errorf("%s: a removed its VIPs: %v (held %v); want %v", c.name, removals(a), a.vips.on, c.wantVIPsRemoved)
		}
		for _, w := range s.capture {
			if w.from == a.index && w.at.Before(start.Add(time.Second)) && c.wantA == StateBackup {
				t.Errorf("%s: a advertised %+v while b was master", c.name, w)
			}
		}
		s.runFor(30 * time.Second)
		wantState(t, a, c.wantA)
		if c.wantA == StateMaster {
			wantState(t, b, StateBackup)
		} else {
			wantState(t, b, StateMaster)
		}
	}
}

// A SIGTERM, or the link going, while it listens: the VIPs it kept go.
func TestRestartedRouterStopsOrFaultsWhileListening(t *testing.T) {
	s := newSim(t)
	a := s.addRestarted("192.0.2.1", nil)
	s.runFor(100 * ms)
	a.in.shutdown(s.clock.Now())
	if !a.in.stopped || len(a.vips.on) != 0 {
		t.Errorf("stopped %v, VIPs %v; want stopped with none", a.in.stopped, a.vips.on)
	}
	s = newSim(t)
	a = s.addRestarted("192.0.2.1", nil)
	s.runFor(100 * ms)
	a.in.handleLink(s.clock.Now(), "eth0", false)
	wantState(t, a, StateFault)
	if len(a.vips.on) != 0 {
		t.Errorf("in fault, a still holds %v", a.vips.on)
	}
}
