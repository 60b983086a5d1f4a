package balancer

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keepvip/keepvip/healthcheck"
	"github.com/keepvip/keepvip/lvs"
)

type fakeDirector struct {
	mu      sync.Mutex
	synced  []lvs.Service
	kept    []lvs.Key
	updates chan []lvs.Service
}

func (f *fakeDirector) Sync(_ context.Context, d []lvs.Service, keep ...lvs.Key) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.synced, f.kept = d, keep
	return nil
}

func (f *fakeDirector) Update(_ context.Context, set []lvs.Service, _ []lvs.Key) error {
	f.updates <- set
	return nil
}

type fakeChecker struct{ targets []healthcheck.Target }

func (f *fakeChecker) Sync(_ context.Context, t []healthcheck.Target) error {
	f.targets = t
	return nil
}
func (f *fakeChecker) Results(context.Context) ([]healthcheck.Result, error) { return nil, nil }

func svc(proto lvs.Protocol, port uint16, action Action) Service {
	c := healthcheck.DefaultCheck()
	return Service{
		Name: "web",
		Service: lvs.Service{
			Key:       lvs.Key{Addr: netip.MustParseAddr("192.0.2.100"), Port: port, Proto: proto},
			Scheduler: "rr",
			Reals: []lvs.RealServer{
				{Addr: netip.MustParseAddr("10.0.0.1"), Port: 8080, Weight: 3},
				{Addr: netip.MustParseAddr("10.0.0.2"), Port: 8080, Weight: 3},
			},
		},
		Check:       &c,
		OnUnhealthy: action,
	}
}

func run(t *testing.T) (*Balancer, *fakeDirector, *fakeChecker) {
	d := &fakeDirector{updates: make(chan []lvs.Service, 10)}
	c := &fakeChecker{}
	b := New(slog.New(slog.NewTextHandler(io.Discard, nil)), d, c, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return b, d, c
}

func next(t *testing.T, d *fakeDirector) []lvs.Service {
	t.Helper()
	select {
	case u := <-d.updates:
		return u
	case <-time.After(5 * time.Second):
		t.Fatal("no IPVS update")
		return nil
	}
}

func TestHealthDrainsAndRestores(t *testing.T) {
	b, d, c := run(t)
	if err := b.Sync(context.Background(), []Service{svc(lvs.TCP, 80, Drain)}); err != nil {
		t.Fatal(err)
	}
	if len(c.targets) != 2 || c.targets[0].Addr != netip.MustParseAddrPort("10.0.0.1:8080") {
		t.Fatalf("targets = %+v", c.targets)
	}
	key := c.targets[1].Key
	b.HealthChanged(healthcheck.Result{Key: key, Healthy: false})
	u := next(t, d)
	if len(u) != 1 || u[0].Reals[1].Weight != 0 || u[0].Reals[0].Weight != 3 {
		t.Fatalf("after 10.0.0.2 went down: %+v", u)
	}
	// A later Sync keeps what health says.
	if err := b.Sync(context.Background(), []Service{svc(lvs.TCP, 80, Drain)}); err != nil {
		t.Fatal(err)
	}
	if w := d.synced[0].Reals[1].Weight; w != 0 {
		t.Errorf("Sync restored weight %d of an unhealthy real server", w)
	}
	b.HealthChanged(healthcheck.Result{Key: key, Healthy: true})
	if u := next(t, d); u[0].Reals[1].Weight != 3 {
		t.Errorf("healthy again, weight = %d; want the configured 3", u[0].Reals[1].Weight)
	}
}

func TestHealthRemoves(t *testing.T) {
	b, d, c := run(t)
	if err := b.Sync(context.Background(), []Service{svc(lvs.TCP, 80, Remove)}); err != nil {
		t.Fatal(err)
	}
	b.HealthChanged(healthcheck.Result{Key: c.targets[0].Key, Healthy: false})
	u := next(t, d)
	if len(u[0].Reals) != 1 || u[0].Reals[0].Addr != netip.MustParseAddr("10.0.0.2") {
		t.Errorf("after 10.0.0.1 went down with remove: %+v", u[0].Reals)
	}
}

func TestUDPIsNotCheckedWithTCP(t *testing.T) {
	b, d, c := run(t)
	udp := svc(lvs.UDP, 53, Drain)
	udp.Reals[0].Port, udp.Reals[1].Port = 53, 53
	err := b.Sync(context.Background(), []Service{udp, svc(lvs.TCP, 80, Drain)})
	if err == nil || !strings.Contains(err.Error(), "healthCheck.type: a udp service cannot be checked with tcp on its own port") {
		t.Fatalf("Sync = %v", err)
	}
	if len(d.synced) != 1 || d.synced[0].Proto != lvs.TCP || len(c.targets) != 2 {
		t.Errorf("the good service was not applied: %+v", d.synced)
	}
	// Never applied here, but perhaps by a keepvip before a restart: the
	// director is told to leave the kernel's version alone.
	if len(d.kept) != 1 || d.kept[0] != udp.Key {
		t.Errorf("kept = %v; want [%v]", d.kept, udp.Key)
	}
	// With an explicit TCP port to check, it is allowed.
	udp.CheckPort = 8053
	if err := b.Sync(context.Background(), []Service{udp}); err != nil {
		t.Fatal(err)
	}
	if c.targets[0].Addr.Port() != 8053 {
		t.Errorf("checked port = %d; want 8053", c.targets[0].Addr.Port())
	}
}

func TestInvalidVersionKeepsTheLastGood(t *testing.T) {
	b, d, _ := run(t)
	if err := b.Sync(context.Background(), []Service{svc(lvs.TCP, 80, Drain)}); err != nil {
		t.Fatal(err)
	}
	bad := svc(lvs.TCP, 80, Drain)
	bad.Reals[0].Weight = -5
	err := b.Sync(context.Background(), []Service{bad})
	if err == nil || !strings.Contains(err.Error(), "the last good version stays") {
		t.Fatalf("Sync = %v", err)
	}
	if len(d.synced) != 1 || d.synced[0].Reals[0].Weight != 3 {
		t.Errorf("IPVS got %+v; want the last good version", d.synced)
	}
}

// Serving follows health: a VIP whose real servers are all down serves
// nothing, and onApplied is told once IPVS has the change.
func TestServing(t *testing.T) {
	d := &fakeDirector{updates: make(chan []lvs.Service, 10)}
	c := &fakeChecker{}
	applied := make(chan struct{}, 10)
	b := New(slog.New(slog.NewTextHandler(io.Discard, nil)), d, c, func() { applied <- struct{}{} })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	vip := netip.MustParseAddr("192.0.2.100")
	if b.Serving(vip) {
		t.Error("serving before any service")
	}
	if err := b.Sync(ctx, []Service{svc(lvs.TCP, 80, Drain)}); err != nil {
		t.Fatal(err)
	}
	if !b.Serving(vip) || b.Serving(netip.MustParseAddr("192.0.2.7")) {
		t.Error("Serving wrong after Sync")
	}
	for _, tg := range c.targets {
		b.HealthChanged(healthcheck.Result{Key: tg.Key, Healthy: false})
	}
	for b.Serving(vip) {
		next(t, d)
	}
	select {
	case <-applied:
	case <-time.After(5 * time.Second):
		t.Fatal("onApplied not called")
	}
	b.HealthChanged(healthcheck.Result{Key: c.targets[0].Key, Healthy: true})
	next(t, d)
	if !b.Serving(vip) {
		t.Error("not serving with a real server back")
	}
}
