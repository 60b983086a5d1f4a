package vrrp

// Drop counters and bounded logging: lines caused by received packets
// are limited whatever their sources; counters carry the detail.

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// dropCounts counts drops by reason; the socket reader adds to it too.
type dropCounts struct {
	mu sync.Mutex
	n  map[DropReason]uint64
}

// countDrop counts a dropped packet for the status command. Safe from any
// goroutine.
func (in *Instance) countDrop(r DropReason) {
	in.stats.drops.mu.Lock()
	defer in.stats.drops.mu.Unlock()
	if in.stats.drops.n == nil {
		in.stats.drops.n = map[DropReason]uint64{}
	}
	in.stats.drops.n[r]++
}

func (d *dropCounts) get(r DropReason) uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.n[r]
}

func (d *dropCounts) snapshot() map[string]uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.n) == 0 {
		return nil
	}
	out := make(map[string]uint64, len(d.n))
	for r, n := range d.n {
		out[string(r)] = n
	}
	return out
}

// logLimited logs msg at Info at most once per logEvery for key, within
// the budget shared by everything received (see logLimiter), and reports
// whether it did (with msg "" it only reports).
func (in *Instance) logLimited(now time.Time, key, msg string, args ...any) bool {
	return in.limited(now, slog.LevelInfo, key, msg, args...)
}

// debugLimited is logLimited at Debug; it costs nothing when Debug is off.
func (in *Instance) debugLimited(now time.Time, key, msg string, args ...any) {
	if in.log.Enabled(context.Background(), slog.LevelDebug) {
		in.limited(now, slog.LevelDebug, key, msg, args...)
	}
}

func (in *Instance) limited(now time.Time, level slog.Level, key, msg string, args ...any) bool {
	ok, suppressed := in.logs.peer.allow(now, key)
	if suppressed > 0 {
		logSuppressed(in.log, suppressed)
	}
	if ok && msg != "" {
		in.log.Log(context.Background(), level, msg, args...)
	}
	return ok
}

// logSuppressed is the one line that stands for those a log budget
// refused in the window that ended.
func logSuppressed(log *slog.Logger, n int) {
	log.Warn("log lines about received packets suppressed: too many sources or kinds", "suppressed", n, "window", logEvery)
}

// fail records a failed operation: counted, kept for status, logged once
// per errorLogEvery while it repeats.
func (in *Instance) fail(op string, err error) {
	in.m.errors.WithLabelValues(in.cfg.Name, op).Inc()
	msg := op + ": " + err.Error()
	now := in.clock.Now()
	in.stats.errs = append(in.stats.errs, now.Format(time.RFC3339)+" "+msg)
	if len(in.stats.errs) > maxErrors {
		in.stats.errs = slices.Delete(in.stats.errs, 0, len(in.stats.errs)-maxErrors)
	}
	ok, suppressed := in.logs.err.allow(now, msg)
	if suppressed > 0 {
		in.log.Warn("failure lines suppressed", "suppressed", suppressed, "window", errorLogEvery)
	}
	if ok {
		in.log.Warn("vrrp operation failed", "op", op, "err", err)
	}
}
