package vrrp

import (
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

const ms = time.Millisecond

// mdi is Master_Down_Interval for priority prio at interval adv.
func mdi(prio int, adv time.Duration) time.Duration {
	return 3*adv + time.Duration(256-prio)*adv/256
}

func wantState(t *testing.T, r *simRouter, want State) {
	t.Helper()
	if r.in.state != want {
		t.Fatalf("%s state = %v; want %v (transitions %+v)", r.in.cfg.Name, r.in.state, want, r.in.stats.transitions)
	}
}

func TestStartupBackupThenMasterAfterMasterDownInterval(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.1", nil)
	wantState(t, r, StateBackup)
	// (150)-(160): Master_Down_Interval = 3 × 1 s + 156/256 s = 3.609375 s.
	want := mdi(100, time.Second)
	if want != 3609375*time.Microsecond {
		t.Fatalf("formula gives %v", want)
	}
	s.runFor(want - time.Microsecond)
	wantState(t, r, StateBackup)
	if len(s.capture) != 0 {
		t.Fatalf("a backup sent %d adverts", len(s.capture))
	}
	s.runFor(time.Microsecond)
	wantState(t, r, StateMaster)
	// (250)-(280): advert first, then VIPs and a burst of 5 GARPs.
	if len(s.capture) != 1 || s.capture[0].adv.Priority != 100 || s.capture[0].dst != GroupIPv4 {
		t.Fatalf("adverts on becoming master = %+v; want one priority 100 to 224.0.0.18", s.capture)
	}
	if !r.vips.on[netip.MustParsePrefix("192.0.2.100/24")] {
		t.Errorf("VIP not installed on becoming master: %v", r.vips.log)
	}
	if r.ann.sent != 5 {
		t.Errorf("announcements in first burst = %d; want 5 (garp_master_repeat)", r.ann.sent)
	}
	// Adver_Timer: one advert per second from then on.
	s.runFor(3*time.Second + ms)
	adverts := s.sent(0, simStart)
	if len(adverts) != 4 {
		t.Fatalf("adverts after 3 s as master = %d; want 4", len(adverts))
	}
	for i := 1; i < len(adverts); i++ {
		if gap := adverts[i].at.Sub(adverts[i-1].at); gap != time.Second {
			t.Errorf("advert %d came %v after the previous; want 1s", i, gap)
		}
	}
}

func TestOwnerBecomesMasterAtOnceAndDropsAdverts(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.100", func(c *Config) { c.Priority = 255 })
	wantState(t, r, StateMaster)
	if tr := r.lastTransition(); tr.From != StateInit || tr.At != simStart {
		t.Errorf("owner transition = %+v; want INIT->MASTER at start", tr)
	}
	s.inject(r, "192.0.2.200", "224.0.0.18", Advertisement{Priority: 254})
	wantState(t, r, StateMaster)
	if r.in.stats.drops.get(DropOwner) != 1 {
		t.Errorf("owner drops = %v; want 1", r.in.stats.drops.snapshot())
	}
}

func TestBackupFollowsMasterAndLearnsInterval(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.1", nil)
	// A master advertising every 2 s: Master_Down_Interval becomes
	// 3×2 + 156×2/256 = 7.21875 s (the interop notes measured 7.219 s).
	s.inject(r, "192.0.2.2", "224.0.0.18", Advertisement{Priority: 200, Interval: 2 * time.Second})
	if r.in.masterAdverInterval != 2*time.Second {
		t.Fatalf("learned interval = %v; want 2s", r.in.masterAdverInterval)
	}
	if r.in.heard.master != netip.MustParseAddr("192.0.2.2") {
		t.Errorf("master = %v; want 192.0.2.2", r.in.heard.master)
	}
	s.runFor(7218750*time.Microsecond - time.Microsecond)
	wantState(t, r, StateBackup)
	s.runFor(time.Microsecond)
	wantState(t, r, StateMaster)
	// The record says how long it heard nothing, and the takeover
	// histogram has it.
	if tr := r.lastTransition(); tr.SinceAdvert != Duration(7218750*time.Microsecond) {
		t.Errorf("transition's time since the last advert = %v; want Master_Down_Interval 7.21875s", tr.SinceAdvert)
	}
	if n := testutil.CollectAndCount(r.in.m.failover, "keepvip_vrrp_takeover_seconds"); n != 1 {
		t.Errorf("takeover histogram series: %d; want 1", n)
	}
	// On becoming master it advertises its own interval again.
	if got := s.capture[len(s.capture)-1].adv.Interval; got != time.Second {
		t.Errorf("new master advertises %v; want its own 1s", got)
	}
}

func TestBackupTakesOverSkewTimeAfterPriorityZero(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.1", func(c *Config) { c.Interval = 100 * ms })
	s.inject(r, "192.0.2.2", "224.0.0.18", Advertisement{Priority: 200, Interval: 100 * ms})
	s.runFor(50 * ms)
	s.inject(r, "192.0.2.2", "224.0.0.18", Advertisement{Priority: 0, Interval: 100 * ms})
	// (430): Master_Down_Timer = Skew_Time = 156 × 100 ms / 256 = 60.9375 ms.
	skew := 60937500 * time.Nanosecond
	s.runFor(skew - time.Microsecond)
	wantState(t, r, StateBackup)
	s.runFor(time.Microsecond)
	wantState(t, r, StateMaster)
	if got := r.lastTransition().Reason; got != "master 192.0.2.2 sent priority 0 (Skew_Time 60.9375ms)" {
		t.Errorf("reason = %q", got)
	}
}

func TestPreemption(t *testing.T) {
	lower := Advertisement{Priority: 50}
	t.Run("preempt discards a lower master", func(t *testing.T) {
		s := newSim(t)
		r := s.add("192.0.2.1", nil)
		for range 5 {
			s.inject(r, "192.0.2.2", "224.0.0.18", lower)
			s.runFor(time.Second)
		}
		// (470): the adverts were discarded, so the timer from startup ran out.
		wantState(t, r, StateMaster)
		if got := r.in.since.Sub(simStart); got != mdi(100, time.Second) {
			t.Errorf("preempted after %v; want Master_Down_Interval from startup %v", got, mdi(100, time.Second))
		}
	})
	t.Run("nopreempt follows a lower master", func(t *testing.T) {
		s := newSim(t)
		r := s.add("192.0.2.1", func(c *Config) { c.Preempt = false })
		for range 10 {
			s.inject(r, "192.0.2.2", "224.0.0.18", lower)
			s.runFor(time.Second)
		}
		wantState(t, r, StateBackup)
		if r.in.heard.prio != 50 {
			t.Errorf("master priority = %d; want 50", r.in.heard.prio)
		}
	})
	t.Run("preempt_delay follows a lower master until it expires", func(t *testing.T) {
		s := newSim(t)
		r := s.add("192.0.2.1", func(c *Config) { c.PreemptDelay = 5 * time.Second })
		var tookOver time.Duration
		for range 20 {
			s.inject(r, "192.0.2.2", "224.0.0.18", lower)
			s.runFor(time.Second)
			if r.in.state == StateMaster && tookOver == 0 {
				tookOver = r.in.since.Sub(simStart)
			}
		}
		// Adverts up to 5 s are followed; the one at 5 s is discarded,
		// so the master is down 3.609 s after the one at 4 s.
		if want := 4*time.Second + mdi(100, time.Second); tookOver != want {
			t.Errorf("took over at %v; want %v", tookOver, want)
		}
	})
}

func TestMasterElection(t *testing.T) {
	tests := []struct {
		name      string
		src       string
		prio      uint8
		wantState State
	}{
		{"higher priority wins", "192.0.2.0", 150, StateBackup},
		{"equal priority, higher address wins", "192.0.2.9", 100, StateBackup},
		{"equal priority, lower address loses", "192.0.2.0", 100, StateMaster},
		{"lower priority loses", "192.0.2.9", 99, StateMaster},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newSim(t)
			r := s.add("192.0.2.5", nil)
			s.runFor(4 * time.Second)
			wantState(t, r, StateMaster)
			before := len(s.capture)
			s.inject(r, tt.src, "224.0.0.18", Advertisement{Priority: tt.prio, Interval: 2 * time.Second})
			wantState(t, r, tt.wantState)
			switch tt.wantState {
			case StateBackup:
				// One last advert at its own priority, so that the new
				// master re-announces the VIPs.
				if got := s.capture[before:]; len(got) != 1 || got[0].adv.Priority != 100 {
					t.Errorf("adverts when yielding = %+v; want one at priority 100", got)
				}
				if len(r.vips.on) != 0 {
					t.Errorf("VIPs left on a router that became backup: %v", r.vips.on)
				}
				if r.in.masterAdverInterval != 2*time.Second {
					t.Errorf("learned interval = %v; want 2s", r.in.masterAdverInterval)
				}
			case StateMaster:
				// keepalived answers a lower master at once to force
				// the election.
				if len(s.capture) != before+1 {
					t.Errorf("adverts sent in reply = %d; want 1", len(s.capture)-before)
				}
			}
		})
	}
}

func TestMasterAnswersPriorityZeroAtOnce(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.5", func(c *Config) { c.LowerPriorityAdvert = false })
	s.runFor(4 * time.Second)
	s.runFor(500 * ms)
	before := len(s.capture)
	s.inject(r, "192.0.2.9", "224.0.0.18", Advertisement{Priority: 0})
	if len(s.capture) != before+1 {
		t.Fatalf("adverts in reply to priority 0 = %d; want 1", len(s.capture)-before)
	}
	// (715) Adver_Timer restarts from now.
	if got := r.in.timers.adver.Sub(s.clock.Now()); got != time.Second {
		t.Errorf("next advert in %v; want 1s", got)
	}
	// Without LowerPriorityAdvert a lower master is simply discarded.
	before = len(s.capture)
	s.inject(r, "192.0.2.9", "224.0.0.18", Advertisement{Priority: 50})
	if len(s.capture) != before {
		t.Errorf("replied to a lower master with lower_prio_no_advert")
	}
}

func TestShutdown(t *testing.T) {
	t.Run("backup stops silently", func(t *testing.T) {
		s := newSim(t)
		r := s.add("192.0.2.1", nil)
		r.in.shutdown(s.clock.Now())
		if !r.in.stopped || len(s.capture) != 0 {
			t.Errorf("stopped=%v, sent %d", r.in.stopped, len(s.capture))
		}
	})
	t.Run("master without hold sends priority 0 and drops VIPs", func(t *testing.T) {
		s := newSim(t)
		r := s.add("192.0.2.1", func(c *Config) { c.HandoffHold = false })
		s.runFor(4 * time.Second)
		r.in.shutdown(s.clock.Now())
		last := s.capture[len(s.capture)-1]
		if last.adv.Priority != 0 {
			t.Errorf("last advert priority = %d; want 0", last.adv.Priority)
		}
		if !r.in.stopped || len(r.vips.on) != 0 {
			t.Errorf("stopped=%v VIPs=%v", r.in.stopped, r.vips.on)
		}
	})
	t.Run("master holds VIPs until the new master advertises", func(t *testing.T) {
		s := newSim(t)
		s.latency = 0
		a := s.add("192.0.2.1", func(c *Config) { c.Priority = 200; c.Interval = 100 * ms })
		b := s.add("192.0.2.2", func(c *Config) { c.Interval = 100 * ms })
		s.runFor(time.Second)
		wantState(t, a, StateMaster)
		wantState(t, b, StateBackup)
		stop := s.clock.Now()
		a.in.shutdown(stop)
		if a.in.stopped || len(a.vips.on) == 0 {
			t.Fatal("stopping master gave its VIPs up before the handoff")
		}
		s.runFor(200 * ms)
		wantState(t, b, StateMaster)
		if !a.in.stopped || len(a.vips.on) != 0 {
			t.Fatalf("old master still holds VIPs after the new one advertised: stopped=%v", a.in.stopped)
		}
		// Both hold the VIP from b's takeover (Skew_Time after the
		// priority 0) until handoffGrace after a heard b's first advert,
		// so that b's GARP reaches clients first.
		if got, want := b.in.since.Sub(stop), 60937500*time.Nanosecond; got != want {
			t.Errorf("backup took over %v after priority 0; want Skew_Time %v", got, want)
		}
		if got, want := a.lastTransition(), b.in.since.Add(handoffGrace); got.At != want || got.Reason != "shutdown: handed off to 192.0.2.2" {
			t.Errorf("old master released at %v (%q); want %v, handoffGrace after the new master advertised", got.At, got.Reason, want)
		}
	})
	t.Run("hold ends after 2 intervals without a backup", func(t *testing.T) {
		s := newSim(t)
		a := s.add("192.0.2.1", func(c *Config) { c.Interval = 100 * ms })
		s.runFor(time.Second)
		stop := s.clock.Now()
		a.in.shutdown(stop)
		s.runFor(time.Second)
		if !a.in.stopped || a.lastTransition().At.Sub(stop) != 200*ms {
			t.Errorf("hold ended at %v after shutdown (stopped=%v); want 200ms", a.lastTransition().At.Sub(stop), a.in.stopped)
		}
	})
}

func TestLinkTracking(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.1", func(c *Config) { c.Track = []string{"uplink"} })
	// The uplink was never reported up: the router starts in fault.
	wantState(t, r, StateFault)
	r.in.handleLink(s.clock.Now(), "uplink", true)
	wantState(t, r, StateBackup)
	s.runFor(4 * time.Second)
	wantState(t, r, StateMaster)
	before := len(s.capture)
	r.in.handleLink(s.clock.Now(), "uplink", false)
	wantState(t, r, StateFault)
	if len(r.vips.on) != 0 {
		t.Errorf("VIPs kept in fault: %v", r.vips.on)
	}
	// Its own link is still up, so it tells the backups to take over now.
	if got := s.sent(0, s.clock.Now()); len(s.capture) != before+1 || got[0].adv.Priority != 0 {
		t.Errorf("adverts on fault = %+v; want one with priority 0", got)
	}
	s.runFor(10 * time.Second)
	wantState(t, r, StateFault)
	s.inject(r, "192.0.2.9", "224.0.0.18", Advertisement{Priority: 50})
	if r.in.stats.drops.get(DropInactive) != 1 {
		t.Errorf("advert in fault not dropped as inactive: %v", r.in.stats.drops.snapshot())
	}
	// Own link down: nothing can be sent.
	r.in.handleLink(s.clock.Now(), "uplink", true)
	wantState(t, r, StateBackup)
	s.runFor(4 * time.Second)
	before = len(s.capture)
	r.in.handleLink(s.clock.Now(), "eth0", false)
	if len(s.capture) != before {
		t.Errorf("sent on a link that is down")
	}
	r.in.handleLink(s.clock.Now(), "eth0", true)
	wantState(t, r, StateBackup)
}

func TestUnicastChecks(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.1", func(c *Config) {
		c.Peers = []netip.Addr{netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")}
	})
	s.inject(r, "192.0.2.2", "192.0.2.1", Advertisement{Priority: 200})
	s.inject(r, "192.0.2.9", "192.0.2.1", Advertisement{Priority: 200})
	s.inject(r, "192.0.2.3", "224.0.0.18", Advertisement{Priority: 200})
	if r.in.stats.received != 1 || r.in.stats.drops.get(DropNotPeer) != 1 || r.in.stats.drops.get(DropUnexpectedMulti) != 1 {
		t.Errorf("received %d drops %v; want 1 accepted, 1 not-peer, 1 unexpected-multicast", r.in.stats.received, r.in.stats.drops.snapshot())
	}
	// Peers change at run time without a restart.
	cfg := r.in.cfg
	cfg.Peers = []netip.Addr{netip.MustParseAddr("192.0.2.9")}
	r.in.reconfigure(s.clock.Now(), cfg, map[string]bool{"eth0": true})
	s.inject(r, "192.0.2.9", "192.0.2.1", Advertisement{Priority: 200})
	s.inject(r, "192.0.2.2", "192.0.2.1", Advertisement{Priority: 200})
	if r.in.stats.received != 2 || r.in.stats.drops.get(DropNotPeer) != 2 {
		t.Errorf("after peer change: received %d drops %v", r.in.stats.received, r.in.stats.drops.snapshot())
	}
	// It sends one copy to each peer, by unicast.
	s.runFor(10 * time.Second)
	for _, w := range s.capture {
		if w.dst != netip.MustParseAddr("192.0.2.9") {
			t.Errorf("advert sent to %v; want only the peer 192.0.2.9", w.dst)
		}
	}
	// A multicast instance drops unicast adverts.
	m := s.add("192.0.2.4", nil)
	s.inject(m, "192.0.2.2", "192.0.2.4", Advertisement{Priority: 200})
	if m.in.stats.drops.get(DropUnexpectedUni) != 1 {
		t.Errorf("multicast instance drops = %v", m.in.stats.drops.snapshot())
	}
}

func TestVersion2(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.1", func(c *Config) { c.Version = 2; c.AuthPassword = "secret12" })
	auth := [8]byte([]byte("secret12"))
	s.inject(r, "192.0.2.2", "224.0.0.18", Advertisement{Version: 2, Priority: 200, AuthType: 1, AuthData: auth})
	s.inject(r, "192.0.2.2", "224.0.0.18", Advertisement{Version: 2, Priority: 200, AuthType: 1, AuthData: [8]byte([]byte("wrongpas"))})
	s.inject(r, "192.0.2.2", "224.0.0.18", Advertisement{Version: 2, Priority: 200, AuthType: 1, AuthData: auth, Interval: 2 * time.Second})
	s.inject(r, "192.0.2.2", "224.0.0.18", Advertisement{Version: 3, Priority: 200})
	if r.in.stats.received != 1 || r.in.stats.drops.get(DropAuth) != 1 || r.in.stats.drops.get(DropIntervalMismatch) != 1 || r.in.stats.drops.get(DropVersionMismatch) != 1 {
		t.Fatalf("received %d drops %v", r.in.stats.received, r.in.stats.drops.snapshot())
	}
	// RFC 3768: Skew_Time = (256 − 100)/256 s, whatever the interval.
	s.runFor(mdi(100, time.Second) - time.Microsecond)
	wantState(t, r, StateBackup)
	s.runFor(time.Microsecond)
	wantState(t, r, StateMaster)
	got := s.capture[0].adv
	if got.Version != 2 || got.AuthType != 1 || got.AuthData != auth {
		t.Errorf("v2 advert sent = %+v", got)
	}
}

func TestGARPSchedule(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.1", func(c *Config) {
		c.VIPs = append(c.VIPs, netip.MustParsePrefix("192.0.2.101/24"))
		c.GARP = GARP{Repeat: 3, Delay: 5 * time.Second, Refresh: 10 * time.Second, RefreshRepeat: 2, Interval: 20 * ms, LowerPriorityRepeat: 1}
	})
	s.runFor(mdi(100, time.Second))
	became := r.in.since
	s.runFor(16 * time.Second)
	var offsets []time.Duration
	for _, at := range r.ann.times {
		offsets = append(offsets, at.Sub(became))
	}
	want := []time.Duration{
		0, 20 * ms, 40 * ms, // first burst, rounds spaced by the interval
		5 * time.Second, 5*time.Second + 20*ms, 5*time.Second + 40*ms, // garp_master_delay
		10 * time.Second, 10*time.Second + 20*ms, // refresh
	}
	if !slices.Equal(offsets, want) {
		t.Errorf("announcement rounds at %v; want %v", offsets, want)
	}
	if r.ann.sent != 2*len(want) {
		t.Errorf("messages = %d; want %d (one per VIP per round)", r.ann.sent, 2*len(want))
	}
	if tr := r.lastTransition(); tr.To != StateMaster || tr.Announced != r.ann.sent || tr.SinceAdvert != Duration(mdi(100, time.Second)) {
		t.Errorf("the transition to master counts %d announcements (want %d) and %v since an advert (want Master_Down_Interval: it listened that long)", tr.Announced, r.ann.sent, tr.SinceAdvert)
	}
	// Leaving master cancels what is pending.
	s.inject(r, "192.0.2.9", "224.0.0.18", Advertisement{Priority: 200, Addrs: r.in.cfg.vipAddrs()})
	n := len(r.ann.times)
	s.runFor(3 * time.Second) // below Master_Down_Interval: still backup
	wantState(t, r, StateBackup)
	if len(r.ann.times) != n {
		t.Errorf("announced %d rounds as backup", len(r.ann.times)-n)
	}
}

func TestReconfigureAsMaster(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.1", nil)
	s.runFor(4 * time.Second)
	cfg := r.in.cfg
	cfg.VIPs = []netip.Prefix{netip.MustParsePrefix("192.0.2.101/32")}
	cfg.Priority = 120
	before := len(s.capture)
	r.in.reconfigure(s.clock.Now(), cfg, map[string]bool{"eth0": true})
	wantState(t, r, StateMaster)
	if len(r.vips.on) != 1 || !r.vips.on[netip.MustParsePrefix("192.0.2.101/32")] {
		t.Errorf("VIPs after reconfigure = %v", r.vips.on)
	}
	got := s.capture[before:]
	if len(got) != 1 || got[0].adv.Priority != 120 || got[0].adv.Addrs[0] != netip.MustParseAddr("192.0.2.101") {
		t.Errorf("adverts after reconfigure = %+v; want one with the new priority and VIP", got)
	}
}

func TestAddressListMismatchIsAcceptedAndCounted(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.1", nil)
	s.inject(r, "192.0.2.2", "224.0.0.18", Advertisement{Priority: 200, Addrs: []netip.Addr{netip.MustParseAddr("192.0.2.77")}})
	if r.in.stats.received != 1 || r.in.heard.master != netip.MustParseAddr("192.0.2.2") {
		t.Errorf("mismatched advert not followed: received %d master %v", r.in.stats.received, r.in.heard.master)
	}
}

func TestStartsInFaultWithoutSourceAndRetries(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.1", nil)
	fails := 2
	r.in.io.source = func(*Config) (netip.Addr, error) {
		if fails > 0 {
			fails--
			return netip.Addr{}, errNoAddr
		}
		return r.addr, nil
	}
	r.in.state = StateInit
	r.in.start(s.clock.Now())
	wantState(t, r, StateFault)
	s.runFor(sourceRetry)
	wantState(t, r, StateFault)
	s.runFor(sourceRetry)
	wantState(t, r, StateBackup)
}

var errNoAddr = &FieldError{Field: "test", Reason: "no address"}

// Several routers on one segment.
func TestElectionOnASegment(t *testing.T) {
	t.Run("highest priority wins and a kill hands over", func(t *testing.T) {
		s := newSim(t)
		adv := 100 * ms
		a := s.add("192.0.2.1", func(c *Config) { c.Priority = 200; c.Interval = adv })
		b := s.add("192.0.2.2", func(c *Config) { c.Priority = 150; c.Interval = adv })
		c := s.add("192.0.2.3", func(c *Config) { c.Priority = 100; c.Interval = adv })
		s.runFor(2 * time.Second)
		if got := s.masters(); !slices.Equal(got, []int{0}) {
			t.Fatalf("masters = %v; want [0]", got)
		}
		wantState(t, b, StateBackup)
		wantState(t, c, StateBackup)
		// Kill the master right after it advertised.
		s.runFor(a.in.timers.adver.Sub(s.clock.Now()))
		s.runFor(s.latency)
		killed := s.clock.Now()
		s.kill(a)
		s.runFor(2 * time.Second)
		if got := s.masters(); !slices.Equal(got, []int{1}) {
			t.Fatalf("masters after kill = %v; want [1]", got)
		}
		// b's master-down timer ran from a's last advert.
		if got, want := b.in.since.Sub(killed), mdi(150, adv); got != want {
			t.Errorf("failover took %v after the last advert; want Master_Down_Interval %v", got, want)
		}
		wantState(t, c, StateBackup)
		if c.in.heard.master != b.addr {
			t.Errorf("c follows %v; want %v", c.in.heard.master, b.addr)
		}
	})
	t.Run("equal priorities elect the highest address", func(t *testing.T) {
		s := newSim(t)
		for _, a := range []string{"192.0.2.7", "192.0.2.30", "192.0.2.4"} {
			s.add(a, func(c *Config) { c.Interval = 100 * ms })
		}
		s.runFor(3 * time.Second)
		if got := s.masters(); !slices.Equal(got, []int{1}) {
			t.Fatalf("masters = %v; want [1] (192.0.2.30)", got)
		}
	})
	t.Run("split brain on a partition heals to one master", func(t *testing.T) {
		s := newSim(t)
		a := s.add("192.0.2.1", func(c *Config) { c.Priority = 200; c.Interval = 100 * ms })
		b := s.add("192.0.2.2", func(c *Config) { c.Interval = 100 * ms })
		s.runFor(time.Second)
		s.cut[0] = true
		s.runFor(time.Second)
		if got := s.masters(); !slices.Equal(got, []int{0, 1}) {
			t.Fatalf("masters during the partition = %v; want both", got)
		}
		delete(s.cut, 0)
		s.runFor(200 * ms)
		if got := s.masters(); !slices.Equal(got, []int{0}) {
			t.Fatalf("masters after healing = %v; want [0]", got)
		}
		if len(b.vips.on) != 0 || len(a.vips.on) != 1 {
			t.Errorf("VIPs after healing: a=%v b=%v", a.vips.on, b.vips.on)
		}
	})
}

type fakeFilter struct{ blocked map[netip.Addr]bool }

func (f *fakeFilter) Block(a netip.Addr) error   { f.blocked[a] = true; return nil }
func (f *fakeFilter) Unblock(a netip.Addr) error { delete(f.blocked, a); return nil }

func TestAcceptModeOffFiltersOnlyWhileMaster(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.1", func(c *Config) { c.Accept = false })
	f := &fakeFilter{blocked: map[netip.Addr]bool{}}
	r.in.io.filter = f
	vip := netip.MustParseAddr("192.0.2.100")
	s.runFor(4 * time.Second)
	wantState(t, r, StateMaster)
	if !f.blocked[vip] {
		t.Fatal("non-accept master does not filter its VIP")
	}
	s.inject(r, "192.0.2.9", "224.0.0.18", Advertisement{Priority: 200})
	wantState(t, r, StateBackup)
	if len(f.blocked) != 0 {
		t.Errorf("backup still filters %v", f.blocked)
	}
	// Turning accept on live lifts the filter of a master.
	s.runFor(4 * time.Second)
	wantState(t, r, StateMaster)
	cfg := r.in.cfg
	cfg.Accept = true
	r.in.reconfigure(s.clock.Now(), cfg, map[string]bool{"eth0": true})
	if len(f.blocked) != 0 {
		t.Errorf("accept turned on, still filtering %v", f.blocked)
	}
	// The owner always accepts (RFC 9568 §6.4.3).
	o := s.add("192.0.2.100", func(c *Config) { c.Accept = false; c.Priority = 255; c.VRID = 52 })
	of := &fakeFilter{blocked: map[netip.Addr]bool{}}
	o.in.io.filter = of
	o.in.state = StateInit
	o.in.start(s.clock.Now())
	wantState(t, o, StateMaster)
	if len(of.blocked) != 0 {
		t.Errorf("owner filters %v", of.blocked)
	}
}

// failingAddrs fails the first n adds.
type failingAddrs struct {
	*fakeAddrs
	n int
}

func (f *failingAddrs) AddVIP(ifindex int, p netip.Prefix) error {
	if f.n > 0 {
		f.n--
		return errNoAddr
	}
	return f.fakeAddrs.AddVIP(ifindex, p)
}

func TestFailedVIPAddIsRetriedAndAnnounced(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.1", nil)
	r.in.io.addrs = &failingAddrs{fakeAddrs: r.vips, n: 2}
	s.runFor(mdi(100, time.Second))
	wantState(t, r, StateMaster)
	if len(r.vips.on) != 0 {
		t.Fatalf("VIP on after a failed add: %v", r.vips.on)
	}
	announced := r.ann.sent
	// Retried after 1 s (fails again), then 2 s later (backoff).
	s.runFor(vipRetry + 2*vipRetry + ms)
	if len(r.vips.on) != 1 {
		t.Fatalf("failed VIP add not retried: %v", r.vips.log)
	}
	if r.ann.sent <= announced {
		t.Error("the VIP added on retry was not announced")
	}
	// Removed behind our back: put back at once and announced again.
	announced = r.ann.sent
	delete(r.vips.on, r.in.cfg.VIPs[0])
	r.in.vipGone(s.clock.Now(), r.in.cfg.VIPs[0])
	if len(r.vips.on) != 1 || r.ann.sent <= announced {
		t.Errorf("VIP removed by another program not restored and announced: on=%v", r.vips.on)
	}
}

func TestFaultRetriesDoNotRewriteHistory(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.1", nil)
	r.in.io.source = func(*Config) (netip.Addr, error) { return netip.Addr{}, errNoAddr }
	r.in.state = StateInit
	r.in.start(s.clock.Now())
	s.runFor(10 * sourceRetry)
	faults := 0
	for _, tr := range r.in.stats.transitions {
		if tr.To == StateFault {
			faults++
		}
	}
	if faults != 1 {
		t.Errorf("%d FAULT transitions after 10 failed retries; want 1: %+v", faults, r.in.stats.transitions)
	}
}

func TestLowerPriorityFloodIsRateLimited(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.1", func(c *Config) { c.GARP.Interval = 100 * ms })
	s.runFor(4 * time.Second)
	before, ann := len(s.capture), len(r.ann.times)
	for range 1000 {
		s.inject(r, "192.0.2.9", "224.0.0.18", Advertisement{Priority: 50})
	}
	if got := len(s.capture) - before; got != 1 {
		t.Errorf("1000 lower-priority adverts within one interval drew %d replies; want 1", got)
	}
	s.runFor(30 * time.Second)
	// The reply burst (5 rounds) plus regular cadence: no queue of 5000 rounds.
	if got := len(r.ann.times) - ann; got > 10 {
		t.Errorf("%d announcement rounds after the flood; want the one burst", got)
	}
}

func TestPriorityChangeInBackupKeepsTheRightTimer(t *testing.T) {
	t.Run("after a fault the old advert does not count", func(t *testing.T) {
		s := newSim(t)
		r := s.add("192.0.2.1", nil)
		s.inject(r, "192.0.2.2", "224.0.0.18", Advertisement{Priority: 200})
		r.in.handleLink(s.clock.Now(), "eth0", false)
		s.runFor(57 * time.Second)
		r.in.handleLink(s.clock.Now(), "eth0", true)
		s.inject(r, "192.0.2.2", "224.0.0.18", Advertisement{Priority: 200})
		wantState(t, r, StateBackup)
		// A fresh start; before any advert, a priority change.
		r.in.handleLink(s.clock.Now(), "eth0", false)
		r.in.handleLink(s.clock.Now(), "eth0", true)
		cfg := r.in.cfg
		cfg.Priority = 90
		r.in.reconfigure(s.clock.Now(), cfg, map[string]bool{"eth0": true})
		if !r.in.timers.masterDown.After(s.clock.Now()) {
			t.Fatalf("master down timer is in the past after a priority change: %v", r.in.timers.masterDown.Sub(s.clock.Now()))
		}
	})
	t.Run("after priority 0 the skew timer stays", func(t *testing.T) {
		s := newSim(t)
		r := s.add("192.0.2.1", nil)
		s.inject(r, "192.0.2.2", "224.0.0.18", Advertisement{Priority: 200})
		s.inject(r, "192.0.2.2", "224.0.0.18", Advertisement{Priority: 0})
		want := r.in.timers.masterDown
		cfg := r.in.cfg
		cfg.Priority = 90
		r.in.reconfigure(s.clock.Now(), cfg, map[string]bool{"eth0": true})
		if r.in.timers.masterDown != want {
			t.Errorf("priority change moved the Skew_Time timer by %v", r.in.timers.masterDown.Sub(want))
		}
	})
}

// failingDeletes fails the first n deletes.
type failingDeletes struct {
	*fakeAddrs
	n int
}

func (f *failingDeletes) DeleteVIP(ifindex int, p netip.Prefix) error {
	if f.n > 0 {
		f.n--
		return errNoAddr
	}
	return f.fakeAddrs.DeleteVIP(ifindex, p)
}

func TestFailedVIPRemovalIsRetriedInFault(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.1", nil)
	s.runFor(4 * time.Second)
	wantState(t, r, StateMaster)
	r.in.io.addrs = &failingDeletes{fakeAddrs: r.vips, n: 1}
	r.in.handleLink(s.clock.Now(), "eth0", false)
	wantState(t, r, StateFault)
	if len(r.vips.on) != 1 {
		t.Fatalf("the first delete should have failed: %v", r.vips.on)
	}
	s.runFor(2 * vipRetry)
	if len(r.vips.on) != 0 {
		t.Errorf("a VIP that could not be removed on entering fault is still on the interface: %v", r.vips.log)
	}
}

// The transition hook hears every change, in order, with the time it
// happened on the instance's clock.
func TestTransitionHook(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.1", nil)
	var got []string
	r.in.onChange = func(name string, tr Transition) {
		got = append(got, fmt.Sprintf("%s %v->%v %v", name, tr.From, tr.To, tr.At.Sub(simStart)))
	}
	s.runFor(mdi(100, time.Second))
	// A stopping master keeps its VIPs (and so its routes) until a new
	// master speaks or the hold of two intervals ends: alone, the hold.
	r.in.shutdown(s.clock.Now())
	s.runFor(3 * time.Second)
	want := []string{fmt.Sprintf("%s BACKUP->MASTER %v", r.in.cfg.Name, mdi(100, time.Second)),
		fmt.Sprintf("%s MASTER->INIT %v", r.in.cfg.Name, mdi(100, time.Second)+2*time.Second)}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("hook saw:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// A live change of a VIP's prefix length on a master (issue #9): the old
// prefix goes, the new one comes; a removal the kernel refuses is kept and
// retried until it succeeds, never forgotten.
func TestPrefixChangeRetriesAFailedRemoval(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.1", nil)
	s.runFor(4 * time.Second)
	wantState(t, r, StateMaster)
	old, new := netip.MustParsePrefix("192.0.2.100/24"), netip.MustParsePrefix("192.0.2.100/32")
	r.in.io.addrs = &failingDeletes{fakeAddrs: r.vips, n: 2}
	cfg := r.in.cfg
	cfg.VIPs = []netip.Prefix{new}
	r.in.reconfigure(s.clock.Now(), cfg, map[string]bool{"eth0": true})
	if !r.vips.on[new] {
		t.Fatalf("new prefix not installed: %v", r.vips.log)
	}
	if !r.vips.on[old] {
		t.Fatalf("the first removal of the old prefix should have failed: %v", r.vips.log)
	}
	// Retried after 1 s (fails again), then 2 s later.
	s.runFor(vipRetry + ms)
	if !r.vips.on[old] {
		t.Fatalf("the second removal should have failed: %v", r.vips.log)
	}
	s.runFor(2 * vipRetry)
	if r.vips.on[old] || !r.vips.on[new] {
		t.Fatalf("after the retries: on %v; want only %s (log %v)", r.vips.on, new, r.vips.log)
	}
	// As backup it gives up the new prefix too.
	s.inject(r, "192.0.2.9", "224.0.0.18", Advertisement{Priority: 200})
	wantState(t, r, StateBackup)
	if len(r.vips.on) != 0 {
		t.Errorf("VIPs left on a backup: %v", r.vips.on)
	}
}

// A backup that hears priority 0 twice (a stopping master repeats it in
// case one is lost) takes over Skew_Time after the first: the repeat does
// not postpone the takeover.
func TestBackupHearingPriorityZeroTwiceKeepsTheFirstDeadline(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.1", func(c *Config) { c.Interval = 100 * ms })
	s.inject(r, "192.0.2.2", "224.0.0.18", Advertisement{Priority: 200, Interval: 100 * ms})
	s.runFor(50 * ms)
	first := s.clock.Now()
	s.inject(r, "192.0.2.2", "224.0.0.18", Advertisement{Priority: 0, Interval: 100 * ms})
	s.runFor(30 * ms)
	s.inject(r, "192.0.2.2", "224.0.0.18", Advertisement{Priority: 0, Interval: 100 * ms})
	skew := 60937500 * time.Nanosecond
	s.runFor(first.Add(skew).Sub(s.clock.Now()) - time.Microsecond)
	wantState(t, r, StateBackup)
	s.runFor(time.Microsecond)
	wantState(t, r, StateMaster)
	if got := r.in.since.Sub(first); got != skew {
		t.Errorf("took over %v after the first priority 0; want Skew_Time %v", got, skew)
	}
}

// The planned handoff survives the loss of the stopping master's priority
// 0: it says it again one interval later, while it still holds the VIPs and
// has heard no new master, and the backup takes over before the old master
// lets go.
func TestHandoffSurvivesALostPriorityZero(t *testing.T) {
	for _, tc := range []struct {
		name     string
		interval time.Duration
		version  uint8
		prio     uint8
	}{
		{"v3 100ms priority 100", 100 * ms, 3, 100},
		{"v3 100ms priority 10", 100 * ms, 3, 10},
		{"v3 1s priority 100", time.Second, 3, 100},
		{"v2 1s priority 100", time.Second, 2, 100},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newSim(t)
			a := s.add("192.0.2.1", func(c *Config) { c.Priority = 200; c.Interval = tc.interval; c.Version = tc.version })
			b := s.add("192.0.2.2", func(c *Config) { c.Priority = tc.prio; c.Interval = tc.interval; c.Version = tc.version })
			s.runFor(5 * time.Second)
			wantState(t, a, StateMaster)
			wantState(t, b, StateBackup)
			// Stop right after an advert: the worst case without a
			// repeat is then one interval plus skew.
			s.runFor(a.in.timers.adver.Sub(s.clock.Now()) + s.latency)
			lost := 0
			s.lose = func(w wirePacket, to int) bool {
				if w.from == 0 && w.adv.Priority == 0 && lost == 0 {
					lost++
					return true
				}
				return false
			}
			stop := s.clock.Now()
			a.in.shutdown(stop)
			s.runFor(5 * tc.interval)
			wantState(t, b, StateMaster)
			if !a.in.stopped {
				t.Fatalf("old master still running %v after the stop", 5*tc.interval)
			}
			released := a.lastTransition().At
			if !b.in.since.Before(released) {
				t.Errorf("gap: the old master released the VIPs %v after the stop, the backup took over %v after it",
					released.Sub(stop), b.in.since.Sub(stop))
			}
			// Skew_Time after the repeat, one interval after the first.
			skew := b.in.skew()
			if got, want := b.in.since.Sub(stop), tc.interval+skew+s.latency; got != want {
				t.Errorf("backup took over %v after the stop; want interval + Skew_Time + latency = %v", got, want)
			}
			t.Logf("first priority 0 lost: backup MASTER %v after the stop, old master released %v after it (%q)",
				b.in.since.Sub(stop), released.Sub(stop), a.lastTransition().Reason)
		})
	}
}

// A stopping master repeats priority 0 only while it has heard no new
// master, at its own advert interval, and within the hold, which is capped
// at long intervals.
func TestHandoffRepeatsAndHoldCap(t *testing.T) {
	zeros := func(s *sim, i int, after time.Time) []time.Duration {
		var out []time.Duration
		for _, w := range s.sent(i, after) {
			if w.adv.Priority == 0 {
				out = append(out, w.at.Sub(after))
			}
		}
		return out
	}
	t.Run("one priority 0 when the backup hears it", func(t *testing.T) {
		s := newSim(t)
		a := s.add("192.0.2.1", func(c *Config) { c.Priority = 200; c.Interval = 100 * ms })
		s.add("192.0.2.2", func(c *Config) { c.Interval = 100 * ms })
		s.runFor(time.Second)
		stop := s.clock.Now()
		a.in.shutdown(stop)
		s.runFor(time.Second)
		if got := zeros(s, 0, stop); !slices.Equal(got, []time.Duration{0}) {
			t.Errorf("priority 0 sent at %v after the stop; want only [0s]", got)
		}
	})
	for _, tc := range []struct {
		interval time.Duration
		hold     time.Duration
		zeros    []time.Duration
	}{
		{100 * ms, 200 * ms, []time.Duration{0, 100 * ms}},
		{time.Second, 2 * time.Second, []time.Duration{0, time.Second}},
		{4 * time.Second, 8 * time.Second, []time.Duration{0, 4 * time.Second}},
		// The hold is capped at 10 s: no repeat fits in it any more.
		{10 * time.Second, 10 * time.Second, []time.Duration{0}},
		{40 * time.Second, 10 * time.Second, []time.Duration{0}},
	} {
		t.Run(fmt.Sprintf("alone at %v", tc.interval), func(t *testing.T) {
			s := newSim(t)
			a := s.add("192.0.2.1", func(c *Config) { c.Interval = tc.interval; c.Priority = 255 })
			s.runFor(time.Second)
			stop := s.clock.Now()
			a.in.shutdown(stop)
			s.runFor(time.Minute)
			if !a.in.stopped || a.lastTransition().At.Sub(stop) != tc.hold {
				t.Errorf("hold ended %v after the stop (stopped %v); want %v", a.lastTransition().At.Sub(stop), a.in.stopped, tc.hold)
			}
			if got := zeros(s, 0, stop); !slices.Equal(got, tc.zeros) {
				t.Errorf("priority 0 sent at %v after the stop; want %v", got, tc.zeros)
			}
		})
	}
	// The repeat crosses the new master's first advert (lost on its way to
	// the old master): the new master answers at once (RFC 9568 (705)),
	// and a third router that follows it stays a backup.
	t.Run("a repeat after the new master took over", func(t *testing.T) {
		s := newSim(t)
		a := s.add("192.0.2.1", func(c *Config) { c.Priority = 200; c.Interval = 100 * ms })
		b := s.add("192.0.2.2", func(c *Config) { c.Priority = 150; c.Interval = 100 * ms })
		c := s.add("192.0.2.3", func(c *Config) { c.Priority = 100; c.Interval = 100 * ms })
		s.runFor(time.Second)
		lost := 0
		s.lose = func(w wirePacket, to int) bool {
			if w.from == 1 && to == 0 && lost == 0 {
				lost++
				return true
			}
			return false
		}
		stop := s.clock.Now()
		a.in.shutdown(stop)
		for range 100 {
			s.runFor(5 * ms)
			if c.in.state == StateMaster {
				t.Fatalf("c became MASTER %v after the stop: %+v", s.clock.Now().Sub(stop), c.in.stats.transitions)
			}
		}
		wantState(t, b, StateMaster)
		if got := zeros(s, 0, stop); !slices.Equal(got, []time.Duration{0, 100 * ms}) {
			t.Errorf("priority 0 sent at %v after the stop; want [0s 100ms]", got)
		}
		if got := a.lastTransition(); got.Reason != "shutdown: handed off to 192.0.2.2" || !b.in.since.Before(got.At) {
			t.Errorf("old master released at %v (%q); b MASTER at %v", got.At.Sub(stop), got.Reason, b.in.since.Sub(stop))
		}
	})
}

// Adverts from thousands of (spoofed) sources cost a bounded number of log
// lines, not one each.
func TestLogFloodFromManySourcesIsBounded(t *testing.T) {
	type kind struct {
		name string
		adv  func(i int) Advertisement
	}
	other := []netip.Addr{netip.MustParseAddr("198.51.100.1")}
	kinds := []kind{
		{"priority 0", func(int) Advertisement { return Advertisement{Priority: 0} }},
		{"address list mismatch", func(int) Advertisement { return Advertisement{Priority: 200, Addrs: other} }},
		{"lower priority", func(int) Advertisement { return Advertisement{Priority: 50} }},
	}
	const sources = 5000
	for _, master := range []bool{false, true} {
		for _, k := range kinds {
			t.Run(fmt.Sprintf("%s master=%v", k.name, master), func(t *testing.T) {
				s := newSim(t)
				r := s.add("192.0.2.1", nil)
				if master {
					s.runFor(4 * time.Second)
					wantState(t, r, StateMaster)
				}
				h := newCountingHandler()
				r.in.log = slog.New(h)
				var perWindow []int
				for round := range 3 {
					before, _ := h.total()
					for i := range sources {
						src := netip.AddrFrom4([4]byte{10, byte(round), byte(i >> 8), byte(i)})
						s.inject(r, src.String(), "224.0.0.18", k.adv(i))
						if r.in.state != StateMaster && r.in.state != StateBackup {
							t.Fatalf("state %v", r.in.state)
						}
					}
					after, _ := h.total()
					perWindow = append(perWindow, after-before)
					// Far enough for every limit to expire, short of any
					// timer of the instance firing in between.
					s.clock.Advance(11 * time.Second)
				}
				n, byMsg := h.total()
				t.Logf("%d adverts from distinct sources per window: log records per window %v; by message %v", sources, perWindow, byMsg)
				for i, got := range perWindow {
					if got > 60 {
						t.Errorf("window %d: %d log records for %d adverts from distinct sources; want a bounded number (at most 60)", i, got, sources)
					}
				}
				// A backup reports each kind (once per source, within
				// the budget); a master answers priority 0 without a
				// word.
				if n == 0 && !master {
					t.Errorf("nothing logged at all")
				}
			})
		}
	}
}
