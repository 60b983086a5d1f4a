package vrrp

import (
	"net/netip"
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

// Whatever start does instead of resuming, the kept VIPs are this
// router's to release: in fault at start (a tracked link down), they go.
func TestRestartedRouterInFaultAtStartReleasesItsVIPs(t *testing.T) {
	s := newSim(t)
	a := s.addRestarted("192.0.2.1", func(c *Config) { c.Track = []string{"uplink"} })
	wantState(t, a, StateFault)
	if len(a.vips.on) != 0 || len(a.in.vips.installed) != 0 {
		t.Errorf("in fault at start, a holds %v (installed %v)", a.vips.on, a.in.vips.installed)
	}
	// The link comes back: an ordinary start, nothing kept any more.
	a.in.handleLink(s.clock.Now(), "uplink", true)
	wantState(t, a, StateBackup)
	if a.in.vips.resumed || len(a.vips.on) != 0 {
		t.Errorf("after the link came back a holds %v, resumed %v", a.vips.on, a.in.vips.resumed)
	}
}

// Giving the kept VIPs up before it resumed (a stop, a changed
// configuration), it sends priority 0: the others still take it for the
// master and would otherwise wait out their Master_Down_Interval.
func TestRestartedRouterGivesUpWithPriorityZero(t *testing.T) {
	for _, how := range []string{"shutdown", "reconfigure"} {
		s := newSim(t)
		b := s.add("192.0.2.2", nil)
		a := s.addRestarted("192.0.2.1", func(c *Config) { c.Priority = 150 })
		s.runFor(100 * ms)
		switch how {
		case "shutdown":
			a.in.shutdown(s.clock.Now())
		case "reconfigure":
			cfg := a.in.cfg
			cfg.VIPs = []netip.Prefix{netip.MustParsePrefix("192.0.2.101/24")}
			a.in.reconfigure(s.clock.Now(), cfg, map[string]bool{"eth0": true})
		}
		if len(s.capture) != 1 || s.capture[0].from != a.index || s.capture[0].adv.Priority != PriorityStop {
			t.Fatalf("%s: adverts %+v; want a's priority 0", how, s.capture)
		}
		if a.vips.on[netip.MustParsePrefix("192.0.2.100/24")] {
			t.Errorf("%s: a still holds the kept VIP", how)
		}
		// b takes over after its Skew_Time, not Master_Down_Interval.
		s.runFor(time.Second)
		wantState(t, b, StateMaster)
	}
}

// With Accept_Mode off the kept VIPs are filtered while it listens; one
// that cannot be filtered goes at once.
func TestRestartedRouterFiltersWhatItKeeps(t *testing.T) {
	s := newSim(t)
	f := &fakeFilter{blocked: map[netip.Addr]bool{}}
	a := s.addRouterWith("192.0.2.1", func(c *Config) { c.Accept = false }, true, f)
	if !f.blocked[netip.MustParseAddr("192.0.2.100")] || len(a.vips.on) != 1 {
		t.Errorf("filtered %v, held %v; want the kept VIP held and filtered", f.blocked, a.vips.on)
	}
	s = newSim(t)
	a = s.addRouterWith("192.0.2.1", func(c *Config) { c.Accept = false }, true, nil) // no filter
	if len(a.vips.on) != 0 {
		t.Errorf("with no filter, a holds %v unfiltered", a.vips.on)
	}
}

// A restarted router's socket may hold an advert of the worse master
// elected meanwhile from before the instance started (it came while the
// process set up). Judged as of its arrival, preemption looked held, not
// yet allowed: the router followed the worse master and released the
// VIPs it had kept (seen once in CI). Preemption counts from when the
// instance could act, so it preempts at once with them in place.
func TestRestartedRouterPreemptsWithAnAdvertFromBeforeItStarted(t *testing.T) {
	s := newSim(t)
	b := s.add("192.0.2.2", func(c *Config) { c.Priority = 50 })
	s.runFor(mdi(50, time.Second) + ms)
	wantState(t, b, StateMaster)
	a := s.addRestarted("192.0.2.1", nil)
	wantState(t, a, StateBackup)
	adv := Advertisement{Version: 3, VRID: a.in.cfg.VRID, Priority: 50, Interval: time.Second, Addrs: a.in.cfg.vipAddrs()}
	src, dst := netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("224.0.0.18")
	raw, err := adv.Marshal(src, dst, ChecksumPseudoHeader)
	if err != nil {
		t.Fatal(err)
	}
	now := s.clock.Now()
	pkt := Packet{Payload: raw, Src: src, Dst: dst, TTL: 255, At: now.Add(-5 * ms)}
	dec, reason, _ := decode(pkt, IPv4)
	if reason != "" {
		t.Fatal(reason)
	}
	a.in.handlePacket(now, pkt, dec)
	wantState(t, a, StateMaster)
	if d := removals(a); len(d) > 0 || !a.vips.on[a.in.cfg.VIPs[0]] {
		t.Errorf("a's VIPs: removals %v, held %v; want kept", d, a.vips.on)
	}
}
