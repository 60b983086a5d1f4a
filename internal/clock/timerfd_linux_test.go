package clock

import (
	"io"
	"testing"
	"time"
)

func TestPreciseTimerFiresAfterDeadlineAndResets(t *testing.T) {
	var c Precise
	tm := c.NewTimer(time.Hour)
	defer tm.(io.Closer).Close()
	// Re-arm a long timer to a short one: only the short deadline fires.
	start := time.Now()
	if !tm.Reset(20 * time.Millisecond) {
		t.Error("Reset of an armed timer reported it was not armed")
	}
	at := <-tm.C()
	if got := at.Sub(start); got < 20*time.Millisecond || got > 200*time.Millisecond {
		t.Errorf("fired after %v; want 20ms (and not absurdly late)", got)
	}
	// Stop prevents firing.
	tm.Reset(10 * time.Millisecond)
	if !tm.Stop() {
		t.Error("Stop of an armed timer reported it was not armed")
	}
	select {
	case <-tm.C():
		t.Fatal("stopped timer fired")
	case <-time.After(50 * time.Millisecond):
	}
	// Many quick re-arms never deliver a stale expiration early.
	for i := 0; i < 200; i++ {
		tm.Reset(time.Duration(i%3) * 100 * time.Microsecond)
		d := 2 * time.Millisecond
		armed := time.Now()
		tm.Reset(d)
		at := <-tm.C()
		if at.Sub(armed) < d {
			t.Fatalf("round %d: fired %v after arming a %v timer", i, at.Sub(armed), d)
		}
	}
}

// The point of Precise: it fires closer to its deadline than a Go timer.
// This is reported, not asserted in time (the machine may be loaded); the
// benchmark measures failover end to end.
func TestPreciseTimerLateness(t *testing.T) {
	var c Precise
	var lateFD, lateGo []time.Duration
	for i := 0; i < 20; i++ {
		d := 5*time.Millisecond + time.Duration(i)*137*time.Microsecond
		tm := c.NewTimer(d)
		start := time.Now()
		tm.Reset(d)
		at := <-tm.C()
		lateFD = append(lateFD, at.Sub(start)-d)
		tm.(io.Closer).Close()
		start = time.Now()
		gt := time.NewTimer(d)
		at = <-gt.C
		lateGo = append(lateGo, at.Sub(start)-d)
	}
	t.Logf("median lateness: timerfd %v, Go timer %v", medianOf(lateFD), medianOf(lateGo))
}

func medianOf(v []time.Duration) time.Duration {
	s := append([]time.Duration(nil), v...)
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s[len(s)/2]
}
