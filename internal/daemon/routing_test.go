package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepvip/keepvip/config"
	"github.com/keepvip/keepvip/internal/clock"
)

// bgpConfig is a configuration whose BGP speaker listens on 127.0.0.1:port
// with one passive peer (nothing is dialled).
func bgpConfig(t *testing.T, asn uint32, port int) *config.Config {
	t.Helper()
	cfg, err := config.Parse(fmt.Appendf(nil, `
instances:
- {name: web, interface: eth0, vrid: 51, vips: [192.0.2.100/24]}
routing:
  bgp:
    asn: %d
    routerID: 192.0.2.11
    listenPort: %d
    listenAddresses: [127.0.0.1]
    peers:
    - {address: 127.0.0.2, asn: 65000, passive: true}
`, asn, port))
	if err != nil {
		t.Fatal(err)
	}
	return cfg
}

// A BGP speaker that cannot start (its port is taken) is retried every
// retryEvery; the hold on preemption counts from the first attempt, so
// it ends preemptHoldMax later and not never. Another speaker (a new
// ASN) starts a new hold, which a late successful start does not extend.
func TestBGPStartFailureDoesNotHoldPreemptionForever(t *testing.T) {
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	port := taken.Addr().(*net.TCPAddr).Port

	clk := clock.NewFake(time.Unix(1_000_000, 0))
	r := newRoutingClock(slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry(), clk)
	defer r.stop()
	ctx := context.Background()

	// waitRetry steps the clock to the next retry and applies cfg, as the
	// daemon does on r.retry.
	waitRetry := func(cfg *config.Config) error {
		t.Helper()
		clk.Advance(retryEvery)
		select {
		case <-r.retry:
		case <-time.After(5 * time.Second):
			t.Fatalf("no retry %v after a failed start", retryEvery)
		}
		return r.apply(ctx, cfg.Desired().Exporter)
	}
	readySignalled := func() bool {
		select {
		case <-r.ready:
			return true
		case <-time.After(2 * time.Second):
			return false
		}
	}
	drainReady := func() {
		select {
		case <-r.ready:
		default:
		}
	}

	cfg := bgpConfig(t, 65001, port)
	if err := r.apply(ctx, cfg.Desired().Exporter); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("apply with port %d taken = %v; want address already in use", port, err)
	}
	start := clk.Now()
	for elapsed := time.Duration(0); elapsed < preemptHoldMax; elapsed = clk.Now().Sub(start) {
		if !r.holdPreemption(cfg.Desired().Exporter) {
			t.Fatalf("%v after the first attempt: preemption not held; want held for %v", elapsed, preemptHoldMax)
		}
		if err := waitRetry(cfg); err == nil {
			t.Fatalf("retry %v after the first attempt started BGP with its port taken", elapsed)
		}
	}
	if got := clk.Now().Sub(start); got != preemptHoldMax {
		t.Fatalf("test steps reached %v; want exactly %v", got, preemptHoldMax)
	}
	if r.holdPreemption(cfg.Desired().Exporter) {
		t.Errorf("%v after the first attempt, retried every %v: preemption still held; want let go after %v",
			preemptHoldMax, retryEvery, preemptHoldMax)
	}
	if !readySignalled() {
		t.Errorf("%v after the first attempt: ready not signalled, so the daemon never lets instances preempt", preemptHoldMax)
	}
	// Still failing, a minute on: not held.
	for range 6 {
		if err := waitRetry(cfg); err == nil {
			t.Fatal("BGP started with its port taken")
		}
	}
	if r.holdPreemption(cfg.Desired().Exporter) {
		t.Errorf("%v after the first attempt: preemption held again", clk.Now().Sub(start))
	}

	// Another speaker (a new ASN) is a new hold, counted from its first
	// attempt; the port is freed and the retry starts it, which does not
	// extend the hold.
	drainReady()
	cfg2 := bgpConfig(t, 65002, port)
	if err := r.apply(ctx, cfg2.Desired().Exporter); err == nil {
		t.Fatal("BGP started with its port taken")
	}
	start2 := clk.Now()
	if !r.holdPreemption(cfg2.Desired().Exporter) {
		t.Error("a new BGP speaker: preemption not held")
	}
	taken.Close()
	if err := waitRetry(cfg2); err != nil {
		t.Fatalf("retry with the port free: %v", err)
	}
	if s := r.status(ctx); s == nil || s.Exporter != "bgp" || len(s.Peers) != 1 {
		t.Fatalf("status after the retry = %+v; want bgp with one peer", s)
	}
	if !r.holdPreemption(cfg2.Desired().Exporter) {
		t.Error("BGP started, its session down, within the hold: preemption not held")
	}
	clk.Advance(start2.Add(preemptHoldMax).Sub(clk.Now()) - time.Millisecond)
	if !r.holdPreemption(cfg2.Desired().Exporter) {
		t.Error("1ms before the new hold ends: preemption not held")
	}
	clk.Advance(time.Millisecond)
	if r.holdPreemption(cfg2.Desired().Exporter) {
		t.Errorf("%v after the new speaker's first attempt (started %v later): preemption still held", preemptHoldMax, retryEvery)
	}
	if !readySignalled() {
		t.Error("the new hold ended: ready not signalled")
	}
}
