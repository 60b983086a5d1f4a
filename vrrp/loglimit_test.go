package vrrp

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"
)

func TestLogLimiter(t *testing.T) {
	t.Run("a flood of keys is bounded in lines and memory", func(t *testing.T) {
		l := newLogLimiter(10*time.Second, 50)
		rng := rand.New(rand.NewPCG(1, 2))
		now := simStart
		allowed, summaries, maxKeys := map[int]int{}, 0, 0
		for i := range 200000 {
			// Random keys, 1000 a second, for 200 s.
			now = now.Add(time.Millisecond)
			ok, suppressed := l.allow(now, fmt.Sprintf("src:%d", rng.Uint64()))
			if ok {
				allowed[i/10000]++
			}
			if suppressed > 0 {
				summaries++
			}
			maxKeys = max(maxKeys, l.keys())
		}
		for w, n := range allowed {
			if n > 50 {
				t.Errorf("%d lines allowed in the 10 s window %d; want at most 50", n, w)
			}
		}
		if maxKeys > 100 {
			t.Errorf("the limiter remembered %d keys; want at most 2 × budget", maxKeys)
		}
		if summaries < 19 || summaries > 20 {
			t.Errorf("%d summaries over 20 windows; want one per window after the first", summaries)
		}
		t.Logf("200000 distinct keys over 200 s: lines per window %v, at most %d keys remembered, %d summaries", allowed, maxKeys, summaries)
	})
	t.Run("a flood does not reset the limit of a key", func(t *testing.T) {
		l := newLogLimiter(10*time.Second, 50)
		if ok, _ := l.allow(simStart, "master"); !ok {
			t.Fatal("first line refused")
		}
		for i := range 10000 {
			l.allow(simStart.Add(time.Second), fmt.Sprintf("spoofed:%d", i))
		}
		if ok, _ := l.allow(simStart.Add(5*time.Second), "master"); ok {
			t.Error("a key logged twice within its interval after a flood of other keys")
		}
		ok, suppressed := l.allow(simStart.Add(11*time.Second), "master")
		if !ok || suppressed != 10000-49 {
			t.Errorf("next window: allowed %v, summary of %d suppressed; want true and %d", ok, suppressed, 10000-49)
		}
	})
}

// A VIP that cannot be removed is retried for as long as it takes, with
// waits that double up to vipRetryMax.
func TestFailedVIPRemovalBackoffIsBounded(t *testing.T) {
	s := newSim(t)
	r := s.add("192.0.2.1", nil)
	s.runFor(4 * time.Second)
	wantState(t, r, StateMaster)
	f := &timedDeletes{fakeAddrs: r.vips, failUntil: s.clock.Now().Add(10 * time.Minute), clock: s}
	r.in.io.addrs = f
	// A better router preempts it, and stays master.
	s.add("192.0.2.9", func(c *Config) { c.Priority = 200 })
	start := s.clock.Now()
	s.runFor(11 * time.Minute)
	wantState(t, r, StateBackup)
	var gaps []time.Duration
	for i := 1; i < len(f.attempts); i++ {
		gaps = append(gaps, f.attempts[i].Sub(f.attempts[i-1]))
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, vipRetryMax, vipRetryMax}
	for i, w := range want {
		if i >= len(gaps) || gaps[i] != w {
			t.Fatalf("waits between attempts %v; want them to start %v", gaps, want)
		}
	}
	for _, g := range gaps {
		if g > vipRetryMax {
			t.Errorf("a wait of %v; want at most %v", g, vipRetryMax)
		}
	}
	if len(r.vips.on) != 0 {
		t.Errorf("VIP still on once the kernel lets it go: %v", r.vips.on)
	}
	// Mended, the next failure starts from vipRetry again.
	if r.in.vips.backoff != 0 {
		t.Errorf("backoff after success = %v; want reset", r.in.vips.backoff)
	}
	t.Logf("%d attempts from %v to %v", len(f.attempts), f.attempts[0].Sub(start), f.attempts[len(f.attempts)-1].Sub(start))
}

// timedDeletes fails every delete until failUntil.
type timedDeletes struct {
	*fakeAddrs
	failUntil time.Time
	clock     *sim
	attempts  []time.Time
}

func (f *timedDeletes) DeleteVIP(ifindex int, p netip.Prefix) error {
	now := f.clock.clock.Now()
	f.attempts = append(f.attempts, now)
	if now.Before(f.failUntil) {
		return errNoAddr
	}
	return f.fakeAddrs.DeleteVIP(ifindex, p)
}
