package healthcheck

import (
	"container/heap"
	"context"
	"hash/fnv"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepvip/keepvip/internal/clock"
)

// prober runs one attempt against a target.
type prober interface {
	Probe(ctx context.Context, t *Target) error
}

// Options configures a Checker.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: not exported
	Clock      clock.Clock           // nil: the wall clock
	// Concurrency bounds the attempts in flight at once. Default 256.
	Concurrency int
	// OnChange is called when a target becomes healthy or unhealthy, on
	// the checker's goroutine: it must not block.
	OnChange func(Result)
}

// Checker checks targets. One goroutine owns every target's state; a
// bounded pool of workers runs the attempts. Each target starts at a fixed
// phase within its interval (a hash of its key), so that many targets are
// spread in time instead of checked all at once.
//
// The Checker is the one place that knows whether a target is healthy:
// its owner reads that with Healthy when it needs it, and OnChange only
// tells it when to read again.
type Checker struct {
	log     *slog.Logger
	clock   clock.Clock
	prober  prober
	workers int
	change  func(Result)
	m       *metrics

	set   chan syncRequest
	query chan chan []Result
	out   chan outcome
	jobs  chan job

	// Owned by the run goroutine, which alone writes them. It writes the
	// membership of targets and each target's res.Healthy with mu held,
	// so that Healthy can read them from any goroutine.
	mu      sync.RWMutex
	targets map[string]*tstate
	queue   dueQueue
	gen     uint64
	healthy int // targets healthy now
}

type tstate struct {
	t          Target
	res        Result
	gen        uint64
	due        time.Time
	roundStart time.Time
	attempt    int
	lastOK     bool // result of the last round
	inflight   bool
	index      int // in queue; -1 when not queued
}

type syncRequest struct {
	targets []Target
	done    chan struct{} // closed once applied
}

type job struct {
	key string
	gen uint64
	t   Target
}

type outcome struct {
	key string
	gen uint64
	err error
	at  time.Time
}

// New returns a Checker; Run runs it.
func New(o Options) *Checker { return newChecker(o, netProber{}) }

func newChecker(o Options, p prober) *Checker {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 256
	}
	return &Checker{
		log:     o.Logger,
		clock:   o.Clock,
		prober:  p,
		workers: o.Concurrency,
		change:  o.OnChange,
		m:       newMetrics(o.Registerer),
		set:     make(chan syncRequest),
		query:   make(chan chan []Result),
		out:     make(chan outcome, o.Concurrency),
		jobs:    make(chan job),
		targets: map[string]*tstate{},
	}
}

// Sync sets the whole set of targets; targets missing from it are
// forgotten.
//
// A target whose key, address and kind are unchanged keeps its health and
// streak, and its other settings apply from its next round, except a new
// interval, which applies at once: the next round starts within the new
// interval of the change (not at the end of the old one).
//
// A new target starts healthy, as keepalived assumes of a new real server
// (without "alpha"), and so does one whose address or kind changed: a
// changed check is a new check, and what the old one found says nothing
// of what it will find. Its result reads "not checked yet" until its first
// round; OnChange is not called for it (nothing was checked).
//
// Sync returns once the checker has applied the targets: Healthy answers
// for the new set from then on.
func (c *Checker) Sync(ctx context.Context, targets []Target) error {
	req := syncRequest{targets: slices.Clone(targets), done: make(chan struct{})}
	select {
	case c.set <- req:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-req.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Healthy reports whether the target key is healthy now, and whether the
// checker has it at all. It does not wait for the checker's goroutine, so
// it may be called from OnChange and with the caller's own locks held.
func (c *Checker) Healthy(key string) (healthy, ok bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	st, ok := c.targets[key]
	if !ok {
		return false, false
	}
	return st.res.Healthy, true
}

// Results returns what is known of every target, by key.
func (c *Checker) Results(ctx context.Context) ([]Result, error) {
	reply := make(chan []Result, 1)
	select {
	case c.query <- reply:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case r := <-reply:
		return r, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Run checks until ctx is cancelled, then waits for attempts in flight.
func (c *Checker) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		wg.Wait()
	}()
	for range c.workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.work(wctx)
		}()
	}
	timer := c.clock.NewTimer(time.Hour)
	timer.Stop()
	for {
		now := c.clock.Now()
		var jobs chan job
		var next job
		if top := c.queue.peek(); top != nil {
			if !top.due.After(now) {
				jobs = c.jobs
				next = job{key: top.t.Key, gen: top.gen, t: top.t}
				timer.Stop()
			} else {
				timer.Reset(top.due.Sub(now))
			}
		} else {
			timer.Stop()
		}
		select {
		case <-ctx.Done():
			return nil
		case jobs <- next:
			st := c.targets[next.key]
			heap.Remove(&c.queue, st.index)
			st.inflight = true
		case o := <-c.out:
			c.finish(o)
		case req := <-c.set:
			c.sync(req.targets)
			close(req.done)
		case reply := <-c.query:
			reply <- c.results()
		case <-timer.C():
		}
	}
}

func (c *Checker) work(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case j := <-c.jobs:
			actx, cancel := context.WithTimeout(ctx, j.t.Timeout)
			start := time.Now()
			err := c.prober.Probe(actx, &j.t)
			cancel()
			c.m.observe(j.t.Kind, err, time.Since(start))
			select {
			case c.out <- outcome{key: j.key, gen: j.gen, err: err, at: c.clock.Now()}:
			case <-ctx.Done():
				return
			}
		}
	}
}

// phase is where in its interval a target's rounds start.
func phase(key string, interval time.Duration) time.Duration {
	h := fnv.New64a()
	h.Write([]byte(key))
	return time.Duration(h.Sum64() % uint64(interval))
}

func (c *Checker) sync(targets []Target) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := c.clock.Now()
	keep := make(map[string]bool, len(targets))
	for _, t := range targets {
		keep[t.Key] = true
		st, ok := c.targets[t.Key]
		if ok && st.t.Addr == t.Addr && st.t.Kind == t.Kind {
			old := st.t.Interval
			st.t = t // the new settings apply from the next round
			st.res.Kind = t.Kind.String()
			if t.Interval != old && st.index >= 0 && st.attempt == 0 {
				// Waiting for its next round, which was planned with the
				// old interval: start it within the new one, at the
				// target's phase in it (spread as new targets are).
				// A round in progress (in flight or between retries)
				// plans the next one with the new interval when it ends.
				if due := now.Add(phase(t.Key, t.Interval)); due.Before(st.due) {
					st.due, st.roundStart = due, due
				}
				heap.Fix(&c.queue, st.index)
			}
			continue
		}
		if ok {
			c.forget(st)
		}
		c.gen++
		st = &tstate{t: t, gen: c.gen, index: -1, res: Result{Key: t.Key, Addr: t.Addr, Kind: t.Kind.String(), Healthy: true, Reason: "not checked yet"}}
		st.due = now.Add(phase(t.Key, t.Interval))
		st.roundStart = st.due
		c.targets[t.Key] = st
		c.healthy++
		heap.Push(&c.queue, st)
	}
	for key, st := range c.targets {
		if !keep[key] {
			c.forget(st)
		}
	}
	c.m.setCounts(c.healthy, len(c.targets))
}

// forget drops a target. Call with c.mu held.
func (c *Checker) forget(st *tstate) {
	if st.index >= 0 {
		heap.Remove(&c.queue, st.index)
	}
	if st.res.Healthy {
		c.healthy--
	}
	delete(c.targets, st.t.Key)
}

// finish takes the outcome of one attempt: a failed attempt with retries
// left is tried again after DelayBeforeRetry; otherwise the round ends and
// counts towards rise or fall.
func (c *Checker) finish(o outcome) {
	st, ok := c.targets[o.key]
	if !ok || st.gen != o.gen {
		return // forgotten or replaced while in flight
	}
	st.inflight = false
	if o.err != nil && st.attempt < st.t.Retries {
		st.attempt++
		st.due = o.at.Add(st.t.DelayBeforeRetry)
		heap.Push(&c.queue, st)
		return
	}
	st.attempt = 0
	ok = o.err == nil
	r := &st.res
	if r.Checked.IsZero() || ok != st.lastOK {
		r.Streak = 1
	} else {
		r.Streak++
	}
	st.lastOK = ok
	r.Checked = o.at
	r.Reason = "ok"
	if !ok {
		r.Reason = o.err.Error()
	}
	flip := (r.Healthy && !ok && r.Streak >= st.t.Fall) || (!r.Healthy && ok && r.Streak >= st.t.Rise)
	if flip {
		c.mu.Lock()
		r.Healthy = ok
		c.mu.Unlock()
		r.Changed = o.at
		if ok {
			c.healthy++
		} else {
			c.healthy--
		}
		c.m.setCounts(c.healthy, len(c.targets))
		state := "down"
		if ok {
			state = "up"
		}
		c.log.Info("health check: real server "+state, "target", st.t.Key, "address", st.t.Addr.String(), "reason", r.Reason)
		if c.change != nil {
			c.change(*r)
		}
	}
	// Keep the round cadence unless a round overran its interval.
	next := st.roundStart.Add(st.t.Interval)
	if next.Before(o.at) {
		next = o.at.Add(st.t.Interval)
	}
	st.roundStart, st.due = next, next
	heap.Push(&c.queue, st)
}

func (c *Checker) results() []Result {
	out := make([]Result, 0, len(c.targets))
	for _, st := range c.targets {
		out = append(out, st.res)
	}
	slices.SortFunc(out, func(a, b Result) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// dueQueue is a min-heap of targets by due time.
type dueQueue []*tstate

func (q dueQueue) Len() int           { return len(q) }
func (q dueQueue) Less(i, j int) bool { return q[i].due.Before(q[j].due) }
func (q dueQueue) Swap(i, j int) {
	q[i], q[j] = q[j], q[i]
	q[i].index, q[j].index = i, j
}
func (q *dueQueue) Push(x any) {
	st := x.(*tstate)
	st.index = len(*q)
	*q = append(*q, st)
}
func (q *dueQueue) Pop() any {
	old := *q
	st := old[len(old)-1]
	old[len(old)-1] = nil
	st.index = -1
	*q = old[:len(old)-1]
	return st
}
func (q dueQueue) peek() *tstate {
	if len(q) == 0 {
		return nil
	}
	return q[0]
}
