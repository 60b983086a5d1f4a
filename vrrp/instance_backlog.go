package vrrp

// A stalled instance (a paused process, a busy CPU) takes in the adverts
// queued for it before acting on an expired timer, and its timers run
// from when each advert reached the host (issue #10).

import (
	"fmt"
	"time"
)

// backlogWait is an expired timer waiting for the socket reader.
type backlogWait struct {
	done    <-chan struct{} // closed when the reader has caught up; nil: not waiting
	since   time.Time       // when the wait began
	until   time.Time       // act anyway then
	expired time.Time       // the timer's deadline
	state   State           // the state it expired in
}

// awaitedTimer returns the earliest timer whose action depends on adverts
// that may still be queued, zero if none is set.
func (in *Instance) awaitedTimer() time.Time {
	switch in.state {
	case StateBackup:
		return in.timers.masterDown
	case StateMaster:
		if in.handoff.active {
			if in.handoff.zeroAt.IsZero() || in.handoff.holdUntil.Before(in.handoff.zeroAt) {
				return in.handoff.holdUntil
			}
			return in.handoff.zeroAt
		}
	}
	return time.Time{}
}

// awaitedDue reports whether a timer has expired whose action depends on
// adverts that may still be queued.
func (in *Instance) awaitedDue(now time.Time) bool {
	t := in.awaitedTimer()
	return !t.IsZero() && !now.Before(t)
}

// drainRx handles the adverts the socket reader has handed over, without
// waiting for more, and returns how many there were.
func (in *Instance) drainRx(now time.Time) int {
	for n := range cap(in.rx) {
		select {
		case r := <-in.rx:
			in.handlePacket(now, r.pkt, r.adv)
		default:
			return n
		}
	}
	return cap(in.rx)
}

// caughtUp reports whether every advert that had reached the socket when
// the expired timer was first looked at has been handled. If not, it
// starts or continues the wait.
func (in *Instance) caughtUp(now time.Time) bool {
	if in.wait.done == nil {
		if in.io.backlog == nil {
			return true
		}
		expired := in.awaitedTimer()
		done := in.io.backlog.backlog()
		// What the reader handed over before it answered.
		in.drainRx(now)
		if !in.awaitedDue(now) {
			in.logQueued(now, expired, now)
			return true
		}
		if done == nil {
			return true
		}
		in.wait = backlogWait{done: done, since: now, until: now.Add(in.backlogWaitMax()), expired: expired, state: in.state}
		return false
	}
	select {
	case <-in.wait.done:
	default:
		if now.Before(in.wait.until) {
			return false
		}
		in.fail("backlog", fmt.Errorf("the socket reader did not hand over the queued adverts within %v; acting on the expired timer", in.wait.until.Sub(in.wait.since)))
	}
	in.drainRx(now)
	in.endWait(now)
	return true
}

// endWait ends a wait for queued adverts.
func (in *Instance) endWait(now time.Time) {
	w := in.wait
	in.wait = backlogWait{}
	if in.state == w.state && !in.awaitedDue(now) {
		in.logQueued(now, w.expired, w.since)
	}
}

// logQueued logs that adverts which were queued when a timer expired (at
// expired; noticed at since) reset it.
func (in *Instance) logQueued(now, expired, since time.Time) {
	in.logLimited(now, "queued", "a timer expired while adverts were queued; they reset it",
		"state", in.state.String(), "late", since.Sub(expired), "waited", now.Sub(since))
}

// backlogWaitMax is how long an expired timer waits for the socket reader.
func (in *Instance) backlogWaitMax() time.Duration {
	return min(max(in.masterAdverInterval, minBacklogWait), maxBacklogWait)
}

// arrival returns when p came: its kernel receive time, or now if it has
// none (or one after now).
func arrival(now time.Time, p Packet) time.Time {
	if p.At.IsZero() || p.At.After(now) {
		return now
	}
	return p.At
}
