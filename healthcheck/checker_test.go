package healthcheck

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// scriptProber answers from a per-target script and records every attempt
// with its (fake) time.
type scriptProber struct {
	mu       sync.Mutex
	fail     map[string]bool // key -> fails
	attempts map[string][]time.Time
	block    chan struct{} // if set, attempts wait on it
	inflight int
	maxIn    int
}

func newScriptProber() *scriptProber {
	return &scriptProber{fail: map[string]bool{}, attempts: map[string][]time.Time{}}
}

func (p *scriptProber) Probe(ctx context.Context, t *Target) error {
	p.mu.Lock()
	p.attempts[t.Key] = append(p.attempts[t.Key], time.Now())
	p.inflight++
	p.maxIn = max(p.maxIn, p.inflight)
	fail := p.fail[t.Key]
	block := p.block
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.inflight--
		p.mu.Unlock()
	}()
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if fail {
		return errors.New("connection refused")
	}
	return nil
}

func (p *scriptProber) setFail(key string, fail bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.fail[key] = fail
}

func (p *scriptProber) times(key string) []time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.attempts[key])
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func target(key string, mod func(*Check)) Target {
	c := DefaultCheck()
	c.Interval, c.Timeout, c.DelayBeforeRetry = 10*time.Second, 3*time.Second, time.Second
	if mod != nil {
		mod(&c)
	}
	return Target{Key: key, Addr: netip.MustParseAddrPort("10.0.0.1:80"), Check: c}
}

// start runs a Checker with p inside the current synctest bubble.
func start(t *testing.T, p prober, o Options) (*Checker, *[]Result) {
	t.Helper()
	var mu sync.Mutex
	var changes []Result
	o.Logger = quiet()
	o.OnChange = func(r Result) { mu.Lock(); changes = append(changes, r); mu.Unlock() }
	c := newChecker(o, p)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return c, &changes
}

func result(t *testing.T, c *Checker, key string) Result {
	t.Helper()
	rs, err := c.Results(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rs {
		if r.Key == key {
			return r
		}
	}
	t.Fatalf("no result for %s", key)
	return Result{}
}

func TestRoundsRetriesAndFall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newScriptProber()
		c, changes := start(t, p, Options{Concurrency: 4})
		tg := target("a", func(c *Check) { c.Retries = 2; c.Fall = 2; c.Rise = 3 })
		t0 := time.Now()
		c.Sync(context.Background(), []Target{tg})
		ph := phase("a", tg.Interval)
		time.Sleep(ph + 25*time.Second)
		synctest.Wait()
		// Rounds at the phase and every interval after it.
		got := p.times("a")
		want := []time.Time{t0.Add(ph), t0.Add(ph + 10*time.Second), t0.Add(ph + 20*time.Second)}
		if !slices.Equal(got, want) {
			t.Fatalf("attempts at %v; want %v", got, want)
		}
		if r := result(t, c, "a"); !r.Healthy || r.Reason != "ok" || r.Streak != 3 {
			t.Errorf("result = %+v", r)
		}
		// Failing: each round makes 1 + 2 retries, 1 s apart; after 2
		// failed rounds (Fall) the target is down.
		p.setFail("a", true)
		before := len(p.times("a"))
		time.Sleep(10 * time.Second) // round 4, failing
		synctest.Wait()
		if r := result(t, c, "a"); !r.Healthy {
			t.Fatal("down after one failed round with fall 2")
		}
		time.Sleep(10 * time.Second) // round 5
		synctest.Wait()
		r := result(t, c, "a")
		if r.Healthy || r.Reason != "connection refused" {
			t.Fatalf("after two failed rounds: %+v", r)
		}
		att := p.times("a")[before:]
		if len(att) != 6 || att[1].Sub(att[0]) != time.Second || att[2].Sub(att[1]) != time.Second {
			t.Errorf("failed rounds made attempts at %v; want 3 per round, 1 s apart", att)
		}
		if len(*changes) != 1 || (*changes)[0].Healthy {
			t.Errorf("changes = %+v; want one to unhealthy", *changes)
		}
		// Rise 3: healthy again after three good rounds.
		p.setFail("a", false)
		time.Sleep(20 * time.Second)
		synctest.Wait()
		if result(t, c, "a").Healthy {
			t.Fatal("up after two good rounds with rise 3")
		}
		time.Sleep(10 * time.Second)
		synctest.Wait()
		if r := result(t, c, "a"); !r.Healthy || r.Changed.IsZero() {
			t.Fatalf("not up after three good rounds: %+v", r)
		}
	})
}

func TestSpreadAndConcurrencyBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newScriptProber()
		p.block = make(chan struct{})
		c, _ := start(t, p, Options{Concurrency: 8})
		var ts []Target
		for i := range 1000 {
			ts = append(ts, target(fmt.Sprintf("svc/10.0.%d.%d:80", i/250, i%250), nil))
		}
		t0 := time.Now()
		c.Sync(context.Background(), ts)
		// With every attempt stuck, no more than 8 are in flight.
		time.Sleep(20 * time.Second)
		synctest.Wait()
		p.mu.Lock()
		maxIn := p.maxIn
		p.mu.Unlock()
		if maxIn != 8 {
			t.Errorf("%d attempts in flight at most; want the bound 8", maxIn)
		}
		close(p.block)
		synctest.Wait()
		// First rounds are spread over the interval: no tenth of it
		// holds more than twice its share.
		c2, _ := start(t, newScriptProber(), Options{Concurrency: 1000})
		p2 := c2.prober.(*scriptProber)
		t0 = time.Now()
		c2.Sync(context.Background(), ts)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		var slots [10]int
		for _, tg := range ts {
			at := p2.times(tg.Key)
			if len(at) == 0 {
				t.Fatalf("%s not checked in its first interval", tg.Key)
			}
			slots[int(at[0].Sub(t0)/time.Second)%10]++
		}
		for i, n := range slots {
			if n > 200 {
				t.Errorf("second %d of the interval started %d of 1000 checks: %v", i, n, slots)
			}
		}
	})
}

func TestSyncKeepsStateAndForgets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newScriptProber()
		c, _ := start(t, p, Options{})
		a, b := target("a", nil), target("b", nil)
		p.setFail("a", true)
		c.Sync(context.Background(), []Target{a, b})
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if result(t, c, "a").Healthy {
			t.Fatal("a should be down")
		}
		// Same target with a new interval: state kept.
		a.Interval = 20 * time.Second
		c.Sync(context.Background(), []Target{a})
		synctest.Wait()
		if r := result(t, c, "a"); r.Healthy {
			t.Errorf("a lost its state on a settings change: %+v", r)
		}
		// b is forgotten: no more attempts.
		n := len(p.times("b"))
		time.Sleep(60 * time.Second)
		synctest.Wait()
		if len(p.times("b")) != n {
			t.Error("a removed target is still checked")
		}
		// A new address is a new target: healthy until checked.
		a.Addr = netip.MustParseAddrPort("10.0.0.9:80")
		c.Sync(context.Background(), []Target{a})
		synctest.Wait()
		if r := result(t, c, "a"); !r.Healthy || r.Reason != "not checked yet" {
			t.Errorf("a with a new address kept old state: %+v", r)
		}
	})
}

func TestValidate(t *testing.T) {
	c := DefaultCheck()
	if errs := c.Validate(); len(errs) != 0 {
		t.Fatalf("defaults invalid: %v", errs)
	}
	c.Kind, c.Path, c.Status = HTTP, "health", 42
	c.Timeout = 10 * time.Second
	c.Rise = 0
	var got []string
	for _, e := range c.Validate() {
		got = append(got, e.Error())
	}
	want := []string{
		"timeout: 10s must be at least 10ms and at most the interval (5s)",
		"rise: 0 is outside 1-100",
		`path: "health" must start with /`,
		"status: 42 is not an HTTP status",
	}
	if !slices.Equal(got, want) {
		t.Errorf("Validate = %q\nwant %q", got, want)
	}
}

// A new interval applies at once: the next round starts within the new
// interval of the change, not at the end of the old one (a check changed
// from 60 s to 5 s used to wait up to 60 s), and rounds then follow the
// new interval.
func TestIntervalChangeAppliesAtOnce(t *testing.T) {
	for _, tc := range []struct {
		name     string
		from, to time.Duration
	}{
		{"shorter", time.Minute, 5 * time.Second},
		{"longer", 5 * time.Second, time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := newScriptProber()
				c, _ := start(t, p, Options{})
				tg := target("a", func(c *Check) { c.Interval = tc.from })
				if err := c.Sync(context.Background(), []Target{tg}); err != nil {
					t.Fatal(err)
				}
				// Change it just after its first round: the next one as
				// planned is almost a whole old interval away.
				time.Sleep(phase("a", tc.from) + time.Second)
				synctest.Wait()
				if n := len(p.times("a")); n != 1 {
					t.Fatalf("%d rounds before the change; want 1", n)
				}
				tg.Interval = tc.to
				if err := c.Sync(context.Background(), []Target{tg}); err != nil {
					t.Fatal(err)
				}
				time.Sleep(tc.to)
				synctest.Wait()
				if n := len(p.times("a")); n != 2 {
					t.Fatalf("%d rounds within the new interval (%v) of the change; want 1", n-1, tc.to)
				}
				time.Sleep(2 * tc.to)
				synctest.Wait()
				after := p.times("a")[1:]
				for i := 1; i < len(after); i++ {
					if d := after[i].Sub(after[i-1]); d != tc.to {
						t.Errorf("rounds %v apart after the change; want the new interval %v", d, tc.to)
					}
				}
			})
		})
	}
}

// Healthy answers for a new set of targets as soon as Sync returns. A check
// that changed its address or kind starts healthy, as a new target does;
// other settings keep the target's health.
func TestSyncChangedCheckStartsHealthy(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*Target)
		want   bool
	}{
		{"port", func(t *Target) { t.Addr = netip.MustParseAddrPort("10.0.0.1:81") }, true},
		{"type", func(t *Target) { t.Kind = HTTP }, true},
		{"rise", func(t *Target) { t.Rise = 3 }, false},
		{"interval", func(t *Target) { t.Interval = 5 * time.Second }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				p := newScriptProber()
				c, changes := start(t, p, Options{})
				if _, ok := c.Healthy("a"); ok {
					t.Fatal("Healthy knows a target never synced")
				}
				tg := target("a", nil)
				p.setFail("a", true)
				if err := c.Sync(context.Background(), []Target{tg}); err != nil {
					t.Fatal(err)
				}
				// No synctest.Wait: Sync returns once applied.
				if h, ok := c.Healthy("a"); !h || !ok {
					t.Fatalf("Healthy = %v, %v for a new target; want healthy", h, ok)
				}
				time.Sleep(tg.Interval + tg.DelayBeforeRetry)
				synctest.Wait()
				if h, _ := c.Healthy("a"); h {
					t.Fatal("healthy after a failed round")
				}
				tc.change(&tg)
				if err := c.Sync(context.Background(), []Target{tg}); err != nil {
					t.Fatal(err)
				}
				if h, ok := c.Healthy("a"); h != tc.want || !ok {
					t.Errorf("after the change, Healthy = %v, %v; want %v", h, ok, tc.want)
				}
				if r := result(t, c, "a"); r.Healthy != tc.want || (tc.want && r.Reason != "not checked yet") {
					t.Errorf("after the change, result = %+v", r)
				}
				if len(*changes) != 1 {
					t.Errorf("changes = %+v; want only the failed round's", *changes)
				}
				if err := c.Sync(context.Background(), nil); err != nil {
					t.Fatal(err)
				}
				if _, ok := c.Healthy("a"); ok {
					t.Error("Healthy knows a forgotten target")
				}
			})
		})
	}
}
