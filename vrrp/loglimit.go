package vrrp

import (
	"sync"
	"time"
)

// logLimiter bounds the log lines that a stream of events can cause, in
// lines and in memory, whatever the keys: each key (such as the source of
// a packet) logs at most once per every, and all keys together at most
// budget lines per window of every. Keys come from the network and can be
// spoofed at will, so the budget, not the number of keys, bounds the
// output.
//
// It remembers the keys that logged, and drops those older than every
// when the table is full. A key that logged within the last every spent a
// line of the budget of the current window or of the one before (anything
// older has expired), so fewer than 2 × budget of them are live: a table
// of 2 × budget entries never has to forget, and so reset, the limit of a
// key that logged recently.
//
// It is safe for concurrent use: the socket readers and the instances of
// a Manager share one.
type logLimiter struct {
	every  time.Duration
	budget int

	mu         sync.Mutex
	last       map[string]time.Time
	window     time.Time // start of the current window
	used       int       // lines allowed in the current window
	suppressed int       // lines refused for the budget in the current window
}

func newLogLimiter(every time.Duration, budget int) *logLimiter {
	return &logLimiter{every: every, budget: budget, last: map[string]time.Time{}}
}

// allow reports whether a line for key may be written at now. The first
// call after a window in which lines were refused for the budget also
// returns how many, for one summary line.
func (l *logLimiter) allow(now time.Time, key string) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.window.IsZero() || now.Sub(l.window) >= l.every {
		suppressed = l.suppressed
		l.window, l.used, l.suppressed = now, 0, 0
	}
	if t, seen := l.last[key]; seen && now.Sub(t) < l.every {
		return false, suppressed
	}
	if l.used >= l.budget {
		l.suppressed++
		return false, suppressed
	}
	if len(l.last) >= 2*l.budget {
		for k, t := range l.last {
			if now.Sub(t) >= l.every {
				delete(l.last, k)
			}
		}
		if len(l.last) >= 2*l.budget {
			// Not reached (see the type's comment); refuse rather
			// than grow.
			l.suppressed++
			return false, suppressed
		}
	}
	l.last[key] = now
	l.used++
	return true, suppressed
}

// keys returns how many keys the limiter remembers.
func (l *logLimiter) keys() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.last)
}
