package clock

import (
	"sort"
	"sync"
	"time"
)

// Fake is a manual clock for tests. Time moves only when Advance or Set is
// called; timers whose deadline is reached then fire in deadline order.
type Fake struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

// NewFake returns a fake clock reading start.
func NewFake(start time.Time) *Fake { return &Fake{now: start} }

// Now returns the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// NewTimer returns a timer that fires when the fake time reaches Now()+d.
func (f *Fake) NewTimer(d time.Duration) Timer {
	f.mu.Lock()
	defer f.mu.Unlock()
	t := &fakeTimer{clock: f, c: make(chan time.Time, 1)}
	t.at = f.now.Add(d)
	t.armed = true
	f.timers = append(f.timers, t)
	f.fireLocked()
	return t
}

// Advance moves the fake time forward by d, firing the timers it passes.
func (f *Fake) Advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
	f.fireLocked()
}

// Next returns the deadline of the earliest armed timer.
func (f *Fake) Next() (time.Time, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var next time.Time
	ok := false
	for _, t := range f.timers {
		if t.armed && (!ok || t.at.Before(next)) {
			next, ok = t.at, true
		}
	}
	return next, ok
}

func (f *Fake) fireLocked() {
	sort.SliceStable(f.timers, func(i, j int) bool { return f.timers[i].at.Before(f.timers[j].at) })
	for _, t := range f.timers {
		if t.armed && !t.at.After(f.now) {
			t.armed = false
			select {
			case t.c <- t.at:
			default:
			}
		}
	}
}

type fakeTimer struct {
	clock *Fake
	c     chan time.Time
	at    time.Time
	armed bool
}

func (t *fakeTimer) C() <-chan time.Time { return t.c }

func (t *fakeTimer) Stop() bool {
	t.clock.mu.Lock()
	defer t.clock.mu.Unlock()
	was := t.armed
	t.armed = false
	t.drain()
	return was
}

func (t *fakeTimer) Reset(d time.Duration) bool {
	t.clock.mu.Lock()
	defer t.clock.mu.Unlock()
	was := t.armed
	t.drain()
	t.at = t.clock.now.Add(d)
	t.armed = true
	t.clock.fireLocked()
	return was
}

func (t *fakeTimer) drain() {
	select {
	case <-t.c:
	default:
	}
}
