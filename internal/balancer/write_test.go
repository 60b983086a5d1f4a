package balancer

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepvip/keepvip/lvs"
)

// A change of health that comes after Sync computed the weights and before
// it wrote them ends up in IPVS: Sync's stale weights never overwrite it.
// The change is injected at that moment by the fake director, which then
// lets every other goroutine run before Sync's write lands.
func TestHealthChangeWhileSyncWrites(t *testing.T) {
	for _, tc := range []struct {
		name          string
		before, after bool // health of 10.0.0.2
		want          string
	}{
		{"goes down", true, false, "10.0.0.1:8080=3 10.0.0.2:8080=0"},
		{"comes back", false, true, "10.0.0.1:8080=3 10.0.0.2:8080=3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx := context.Background()
				d := newFakeDirector()
				b, c := start(t, d, Options{})
				s := svc(lvs.TCP, 80, Drain)
				if err := b.Sync(ctx, []Service{s}); err != nil {
					t.Fatal(err)
				}
				key := c.target(1).Key
				c.set(b, key, tc.before)
				synctest.Wait()

				// The next Sync (a configuration change or a resync).
				d.beforeSync = func() {
					c.set(b, key, tc.after)
					synctest.Wait() // anything else that would write does so now
				}
				if err := b.Sync(ctx, []Service{s}); err != nil {
					t.Fatal(err)
				}
				synctest.Wait()
				if got := d.reals(s.Key); got != tc.want {
					t.Errorf("IPVS has %s; want %s (the health that came while Sync wrote)", got, tc.want)
				}
			})
		})
	}
}

// Two Syncs at once (the daemon's apply and its periodic resync) are
// written one after the other: IPVS ends with the version the Balancer
// keeps as desired, not with whichever write landed last.
func TestConcurrentSyncsAreSerialised(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		d := newFakeDirector()
		b, _ := start(t, d, Options{})
		older, newer := svc(lvs.TCP, 80, Drain), svc(lvs.TCP, 80, Drain)
		newer.Reals = append(slices.Clone(newer.Reals), lvs.RealServer{Addr: netip.MustParseAddr("10.0.0.3"), Port: 8080, Weight: 3})

		// The first Sync's write to IPVS is slow.
		release := make(chan struct{})
		var calls atomic.Int32
		d.beforeSync = func() {
			if calls.Add(1) == 1 {
				<-release
			}
		}
		errs := make(chan error, 2)
		go func() { errs <- b.Sync(ctx, []Service{older}) }()
		synctest.Wait() // older is being written
		go func() { errs <- b.Sync(ctx, []Service{newer}) }()
		synctest.Wait() // newer is done, or waits its turn
		close(release)
		for range 2 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		want := "10.0.0.1:8080=3 10.0.0.2:8080=3 10.0.0.3:8080=3"
		if got := d.reals(older.Key); got != want {
			t.Errorf("IPVS has %s; want the version of the last Sync, %s", got, want)
		}
		if got := b.Services(); len(got) != 1 || len(got[0].Reals) != 3 {
			t.Errorf("desired = %+v; want the last Sync's", got)
		}
	})
}

// failures reads the counter of failed IPVS updates.
func failures(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "keepvip_balancer_ipvs_update_failures_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("no keepvip_balancer_ipvs_update_failures_total")
	return 0
}

// A failed write of a health change to IPVS is tried again, after a
// backoff that grows while it keeps failing and is bounded, until it
// succeeds.
func TestFailedUpdateIsRetried(t *testing.T) {
	for _, tc := range []struct {
		name    string
		failFor time.Duration // Update fails until then
		// the times of the failed tries, from the first
		wantFailed []time.Duration
	}{
		{"once", time.Millisecond, []time.Duration{0}},
		{"for five minutes", 5 * time.Minute, []time.Duration{
			0, retryMin, 3 * retryMin, 7 * retryMin, 15 * retryMin, 31 * retryMin, 63 * retryMin, // doubling
			63*retryMin + retryMax, 63*retryMin + 2*retryMax, 63*retryMin + 3*retryMax, // at most retryMax apart
		}}, // and at 63*retryMin + 4*retryMax (5m3s), it works
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ctx := context.Background()
				d := newFakeDirector()
				reg := prometheus.NewRegistry()
				b, c := start(t, d, Options{Registerer: reg})
				s := svc(lvs.TCP, 80, Drain)
				if err := b.Sync(ctx, []Service{s}); err != nil {
					t.Fatal(err)
				}
				t0 := time.Now()
				d.updateErr = func() error {
					if time.Since(t0) < tc.failFor {
						return errors.New("no buffer space available")
					}
					return nil
				}
				c.set(b, c.target(1).Key, false)
				synctest.Wait()
				if got := d.reals(s.Key); got != "10.0.0.1:8080=3 10.0.0.2:8080=3" {
					t.Fatalf("IPVS has %s after a failed update", got)
				}

				time.Sleep(tc.failFor + retryMax)
				synctest.Wait()
				if got, want := d.reals(s.Key), "10.0.0.1:8080=3 10.0.0.2:8080=0"; got != want {
					t.Errorf("IPVS has %s once updates work again; want %s", got, want)
				}
				tries, failed := d.updateTries()
				var got []time.Duration
				for _, at := range failed {
					got = append(got, at.Sub(t0))
				}
				if !slices.Equal(got, tc.wantFailed) {
					t.Errorf("failed tries at %v; want %v", got, tc.wantFailed)
				}
				if n := failures(t, reg); n != float64(len(tc.wantFailed)) {
					t.Errorf("failures counted: %v; want %d", n, len(tc.wantFailed))
				}
				// Nothing left to retry: no more tries.
				time.Sleep(10 * retryMax)
				synctest.Wait()
				if all, _ := d.updateTries(); len(all) != len(tries) {
					t.Errorf("%d more tries after the update succeeded", len(all)-len(tries))
				}
			})
		})
	}
}

// While one service's updates keep failing, another's health changes are
// written at once, not after the first one's backoff.
func TestFailingServiceDoesNotDelayOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		d := newFakeDirector()
		b, c := start(t, d, Options{})
		bad, good := svc(lvs.TCP, 80, Drain), svc(lvs.TCP, 443, Drain)
		if err := b.Sync(ctx, []Service{bad, good}); err != nil {
			t.Fatal(err)
		}
		d.updateErr = func() error { return errors.New("no buffer space available") }
		c.set(b, TargetKey(bad.Key, bad.Reals[1]), false)
		synctest.Wait()
		time.Sleep(10 * retryMin) // the backoff grows
		synctest.Wait()
		d.mu.Lock()
		d.updateErr = nil
		d.mu.Unlock()
		c.set(b, TargetKey(good.Key, good.Reals[1]), false)
		synctest.Wait()
		if got, want := d.reals(good.Key), "10.0.0.1:8080=3 10.0.0.2:8080=0"; got != want {
			t.Errorf("IPVS has %s for the other service; want %s at once", got, want)
		}
	})
}

// Resync writes the last Sync's services with the health of now; before
// any Sync it writes nothing (an empty Sync would remove what a keepvip
// before a restart left).
func TestResync(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		d := newFakeDirector()
		b, c := start(t, d, Options{})
		if err := b.Resync(ctx); err != nil || d.syncs != 0 {
			t.Fatalf("Resync before any Sync = %v, and %d writes to IPVS; want none", err, d.syncs)
		}
		older, newer := svc(lvs.TCP, 80, Drain), svc(lvs.TCP, 80, Drain)
		newer.Reals = append(slices.Clone(newer.Reals), lvs.RealServer{Addr: netip.MustParseAddr("10.0.0.3"), Port: 8080, Weight: 3})
		for _, s := range []Service{older, newer} {
			if err := b.Sync(ctx, []Service{s}); err != nil {
				t.Fatal(err)
			}
		}
		c.set(b, c.target(2).Key, false)
		synctest.Wait()
		d.mu.Lock()
		clear(d.table) // someone flushed IPVS
		d.mu.Unlock()
		if err := b.Resync(ctx); err != nil {
			t.Fatal(err)
		}
		if got, want := d.reals(newer.Key), "10.0.0.1:8080=3 10.0.0.2:8080=3 10.0.0.3:8080=0"; got != want {
			t.Errorf("after Resync, IPVS has %s; want %s", got, want)
		}
	})
}
