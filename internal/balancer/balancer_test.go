package balancer

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keepvip/keepvip/healthcheck"
	"github.com/keepvip/keepvip/lvs"
)

// fakeDirector is IPVS as far as the Balancer can tell: Sync replaces the
// table, Update sets the services it is given.
type fakeDirector struct {
	mu      sync.Mutex
	table   map[lvs.Key]lvs.Service
	synced  []lvs.Service
	kept    []lvs.Key
	syncs   int
	tries   []time.Time        // Update calls, failed ones included
	failed  []time.Time        // Update calls that failed
	updates chan []lvs.Service // if set, gets every successful Update

	// Set before the calls they change.
	beforeSync func()       // if set, runs as Sync starts: the weights are computed
	updateErr  func() error // if set, what Update returns
}

func newFakeDirector() *fakeDirector { return &fakeDirector{table: map[lvs.Key]lvs.Service{}} }

func (f *fakeDirector) Sync(_ context.Context, d []lvs.Service, keep ...lvs.Key) error {
	if f.beforeSync != nil {
		f.beforeSync()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.syncs++
	f.synced, f.kept = d, keep
	clear(f.table)
	for _, s := range d {
		f.table[s.Key] = s
	}
	return nil
}

func (f *fakeDirector) Update(_ context.Context, set []lvs.Service, _ []lvs.Key) error {
	f.mu.Lock()
	f.tries = append(f.tries, time.Now())
	var err error
	if f.updateErr != nil {
		err = f.updateErr()
	}
	if err == nil {
		for _, s := range set {
			f.table[s.Key] = s
		}
	} else {
		f.failed = append(f.failed, time.Now())
	}
	f.mu.Unlock()
	if err == nil && f.updates != nil {
		f.updates <- set
	}
	return err
}

// updateTries returns when Update was called, and when it failed.
func (f *fakeDirector) updateTries() (all, failed []time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.tries), slices.Clone(f.failed)
}

// reals lists the real servers IPVS has for k with their weights.
func (f *fakeDirector) reals(k lvs.Key) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.table[k]
	if !ok {
		return "no service"
	}
	var out []string
	for _, r := range s.Reals {
		out = append(out, fmt.Sprintf("%s:%d=%d", r.Addr, r.Port, r.Weight))
	}
	return strings.Join(out, " ")
}

// fakeChecker holds health as healthcheck.Checker does: a target whose
// address or kind changes is a new check and starts healthy; a forgotten
// one is gone.
type fakeChecker struct {
	mu      sync.Mutex
	targets []healthcheck.Target
	down    map[string]bool
}

func (f *fakeChecker) Sync(_ context.Context, ts []healthcheck.Target) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := map[string]healthcheck.Target{}
	for _, t := range f.targets {
		old[t.Key] = t
	}
	down := map[string]bool{}
	for _, t := range ts {
		if o, ok := old[t.Key]; ok && o.Addr == t.Addr && o.Kind == t.Kind {
			down[t.Key] = f.down[t.Key]
		}
	}
	f.targets, f.down = slices.Clone(ts), down
	return nil
}

func (f *fakeChecker) Healthy(key string) (healthy, ok bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, t := range f.targets {
		if t.Key == key {
			return !f.down[key], true
		}
	}
	return false, false
}

func (f *fakeChecker) Results(context.Context) ([]healthcheck.Result, error) { return nil, nil }

func (f *fakeChecker) target(i int) healthcheck.Target {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.targets[i]
}

// set changes a target's health and tells b, as the checker does.
func (f *fakeChecker) set(b *Balancer, key string, healthy bool) {
	f.mu.Lock()
	if f.down == nil {
		f.down = map[string]bool{}
	}
	f.down[key] = !healthy
	f.mu.Unlock()
	b.HealthChanged(healthcheck.Result{Key: key, Healthy: healthy})
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

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

// run starts a Balancer over fakes whose successful Updates come on
// d.updates.
func run(t *testing.T, o Options) (*Balancer, *fakeDirector, *fakeChecker) {
	d := newFakeDirector()
	d.updates = make(chan []lvs.Service, 10)
	b, c := start(t, d, o)
	return b, d, c
}

// start starts a Balancer over d and a fake checker, until the test ends.
// In a synctest bubble, call it inside.
func start(t *testing.T, d *fakeDirector, o Options) (*Balancer, *fakeChecker) {
	c := &fakeChecker{}
	o.Logger = quiet()
	b := New(d, c, o)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return b, c
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
	b, d, c := run(t, Options{})
	if err := b.Sync(context.Background(), []Service{svc(lvs.TCP, 80, Drain)}); err != nil {
		t.Fatal(err)
	}
	if len(c.targets) != 2 || c.targets[0].Addr != netip.MustParseAddrPort("10.0.0.1:8080") {
		t.Fatalf("targets = %+v", c.targets)
	}
	key := c.targets[1].Key
	c.set(b, key, false)
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
	c.set(b, key, true)
	if u := next(t, d); u[0].Reals[1].Weight != 3 {
		t.Errorf("healthy again, weight = %d; want the configured 3", u[0].Reals[1].Weight)
	}
}

func TestHealthRemoves(t *testing.T) {
	b, d, c := run(t, Options{})
	if err := b.Sync(context.Background(), []Service{svc(lvs.TCP, 80, Remove)}); err != nil {
		t.Fatal(err)
	}
	c.set(b, c.targets[0].Key, false)
	u := next(t, d)
	if len(u[0].Reals) != 1 || u[0].Reals[0].Addr != netip.MustParseAddr("10.0.0.2") {
		t.Errorf("after 10.0.0.1 went down with remove: %+v", u[0].Reals)
	}
}

func TestUDPIsNotCheckedWithTCP(t *testing.T) {
	b, d, c := run(t, Options{})
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
	b, d, _ := run(t, Options{})
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
	applied := make(chan struct{}, 10)
	b, d, c := run(t, Options{OnApplied: func() { applied <- struct{}{} }})
	ctx := context.Background()
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
		c.set(b, tg.Key, false)
	}
	for b.Serving(vip) {
		next(t, d)
	}
	select {
	case <-applied:
	case <-time.After(5 * time.Second):
		t.Fatal("onApplied not called")
	}
	c.set(b, c.targets[0].Key, true)
	next(t, d)
	if !b.Serving(vip) {
		t.Error("not serving with a real server back")
	}
}
