// Package balancer joins IPVS and health checks: it takes the desired
// virtual services with their checks, keeps the health checker's targets
// in line with them, and programs IPVS with the weights health allows
// (an unhealthy real server drained to weight 0, or removed). Standalone
// mode and the Kubernetes reconciler both feed it, through the daemon
// (config.Desired.VirtualServers); its weights go to lvs, its health to
// `keepvip status`.
package balancer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepvip/keepvip/healthcheck"
	"github.com/keepvip/keepvip/internal/clock"
	"github.com/keepvip/keepvip/lvs"
)

// Action is what happens to an unhealthy real server.
type Action uint8

// The actions.
const (
	// Drain sets its weight to 0: no new connections, existing ones
	// finish (keepalived's inhibit_on_failure).
	Drain Action = iota
	// Remove takes it out of the virtual service (keepalived's default).
	Remove
)

func (a Action) String() string {
	if a == Remove {
		return "remove"
	}
	return "drain"
}

// Service is a virtual service as configured: its real servers with their
// configured weights, and how they are checked.
type Service struct {
	Name string
	lvs.Service
	// Check, when set, checks every real server; nil: none (they are
	// always healthy).
	Check *healthcheck.Check
	// CheckPort is the port to check; 0: each real server's port.
	CheckPort   uint16
	OnUnhealthy Action
}

// FieldError is a problem with one field of a Service.
type FieldError = lvs.FieldError

// Validate returns every problem with s, each naming its field.
func (s *Service) Validate() []error {
	errs := s.Service.Validate()
	if s.Check == nil {
		return errs
	}
	for _, e := range s.Check.Validate() {
		var fe *healthcheck.FieldError
		if errors.As(e, &fe) {
			errs = append(errs, &FieldError{Field: "healthCheck." + fe.Field, Reason: fe.Reason})
		}
	}
	if s.Proto != lvs.TCP && s.FWMark == 0 && s.CheckPort == 0 {
		// kube-keepalived-vip checked UDP services over TCP and took
		// every real server out (its issue #44).
		errs = append(errs, &FieldError{Field: "healthCheck.type", Reason: fmt.Sprintf(
			"a %s service cannot be checked with %s on its own port; set healthCheck.port to a TCP port the real servers answer on, or use type none",
			s.Proto, s.Check.Kind)})
	}
	if s.FWMark != 0 && s.CheckPort == 0 {
		for i, r := range s.Reals {
			if r.Port == 0 {
				errs = append(errs, &FieldError{Field: fmt.Sprintf("realServers[%d].port", i),
					Reason: "a firewall-mark service's real servers need a port to be checked, or set healthCheck.port"})
				break
			}
		}
	}
	return errs
}

// director is what the Balancer needs of lvs.Director.
type director interface {
	// Sync programs desired; keep names services to leave as the kernel
	// has them (their desired version is invalid).
	Sync(ctx context.Context, desired []lvs.Service, keep ...lvs.Key) error
	Update(ctx context.Context, set []lvs.Service, remove []lvs.Key) error
}

// checker is what the Balancer needs of healthcheck.Checker.
type checker interface {
	// Sync sets the targets and returns once Healthy answers for them.
	Sync(ctx context.Context, targets []healthcheck.Target) error
	// Healthy reports a target's health now, without blocking on the
	// checker; ok is false for a target it does not have.
	Healthy(key string) (healthy, ok bool)
	Results(ctx context.Context) ([]healthcheck.Result, error)
}

// Options configures a Balancer.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: not exported
	Clock      clock.Clock           // nil: the wall clock
	// OnApplied, if set, is called (from Run, without blocking it for
	// long) after health changes were written to IPVS: routes that
	// depend on Serving follow.
	OnApplied func()
}

// Backoff of the retries of a failed IPVS update: it doubles from
// retryMin up to retryMax while updates keep failing.
const (
	retryMin = time.Second
	retryMax = time.Minute
)

// Balancer keeps IPVS and the health checks in line with the desired
// services and with health.
//
// Health has one source, the checker: the weights written to IPVS are
// computed from its state (Healthy) at the moment they are written, never
// kept here. IPVS has one writer at a time (Sync, Resync or Run), which
// computes the weights and writes them without another writer in between;
// a change of health that arrives meanwhile is pending, and Run writes it
// after.
type Balancer struct {
	log   *slog.Logger
	dir   director
	hc    checker
	clock clock.Clock
	m     *metrics

	// writer is held (a value in it) by whoever computes and writes
	// weights to IPVS, from the computation to the end of the write; a
	// channel rather than a mutex so that waiting for it honours ctx.
	writer chan struct{}

	mu      sync.Mutex
	synced  bool // Sync was called: desired is what is wanted
	desired map[lvs.Key]*Service
	keep    []lvs.Key          // invalid services never applied here: the kernel's version stays
	owner   map[string]lvs.Key // health check target -> its service
	pending map[lvs.Key]bool   // services whose health changed since Run last wrote them
	wake    chan struct{}

	onApplied func()
}

// New returns a Balancer over a director and a checker. Call Run, and
// give the checker Balancer.HealthChanged as its OnChange.
func New(dir director, hc checker, o Options) *Balancer {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	return &Balancer{log: o.Logger, dir: dir, hc: hc, clock: o.Clock, m: newMetrics(o.Registerer),
		writer: make(chan struct{}, 1), desired: map[lvs.Key]*Service{}, owner: map[string]lvs.Key{},
		pending: map[lvs.Key]bool{}, wake: make(chan struct{}, 1), onApplied: o.OnApplied}
}

// Serving reports whether some virtual service of vip has a real server
// that takes new connections (healthy, weight above 0).
func (b *Balancer) Serving(vip netip.Addr) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	for k, s := range b.desired {
		if k.Addr != vip {
			continue
		}
		for _, r := range b.effective(s).Reals {
			if r.Weight > 0 {
				return true
			}
		}
	}
	return false
}

// TargetKey names the health check target of a real server.
func TargetKey(k lvs.Key, r lvs.RealServer) string {
	return k.String() + " " + netip.AddrPortFrom(r.Addr, r.Port).String()
}

// lock takes the writer's place, waiting for the one before to finish.
func (b *Balancer) lock(ctx context.Context) error {
	select {
	case b.writer <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (b *Balancer) unlock() { <-b.writer }

// Sync sets the desired services: the checks follow, and IPVS gets the
// whole set with the weights health allows now. Calls are serialised
// with each other, with Resync and with Run's writes: IPVS and the checks
// end with the version of the last call.
func (b *Balancer) Sync(ctx context.Context, services []Service) error {
	if err := b.lock(ctx); err != nil {
		return fmt.Errorf("waiting to program IPVS: %w", err)
	}
	defer b.unlock()
	// Only writers change desired, and this is the only one now.
	b.mu.Lock()
	prev := b.desired
	b.mu.Unlock()
	var errs []error
	desired := make(map[lvs.Key]*Service, len(services))
	var targets []healthcheck.Target
	var keep []lvs.Key
	for i := range services {
		s := &services[i]
		if ve := s.Validate(); len(ve) > 0 {
			// Bad input never costs what works: the last good version
			// of the service stays.
			if old, ok := prev[s.Key]; ok {
				s = old
				errs = append(errs, fmt.Errorf("virtual service %s (the last good version stays): %w", s.Key, errors.Join(ve...)))
			} else {
				// Never applied by this process, but perhaps by the one
				// before it (a restart): the kernel's version stays.
				keep = append(keep, s.Key)
				errs = append(errs, fmt.Errorf("virtual service %s: %w", s.Key, errors.Join(ve...)))
				continue
			}
		}
		desired[s.Key] = s
		if s.Check == nil {
			continue
		}
		for _, r := range s.Reals {
			port := r.Port
			if s.CheckPort != 0 {
				port = s.CheckPort
			}
			if port == 0 {
				port = s.Port
			}
			targets = append(targets, healthcheck.Target{Key: TargetKey(s.Key, r), Addr: netip.AddrPortFrom(r.Addr, port), Check: *s.Check})
		}
	}
	// The checker first: the weights below read its state for these
	// targets (a changed check starts afresh there).
	if err := b.hc.Sync(ctx, targets); err != nil {
		errs = append(errs, fmt.Errorf("updating health checks: %w", err))
	}
	b.mu.Lock()
	b.synced, b.desired, b.keep = true, desired, keep
	clear(b.owner)
	for _, s := range b.desired {
		if s.Check != nil {
			for _, r := range s.Reals {
				b.owner[TargetKey(s.Key, r)] = s.Key
			}
		}
	}
	effective := b.effectiveAll()
	b.mu.Unlock()
	if err := b.dir.Sync(ctx, effective, keep...); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Resync writes the desired services of the last Sync to IPVS again, with
// the weights health allows now, to repair what changed behind keepvip's
// back. Unlike a Sync of a configuration read before, it can never put
// back an older version than the last Sync's. Before the first Sync it
// does nothing: an empty Sync would remove the services a keepvip before a
// restart left for this one to adopt.
func (b *Balancer) Resync(ctx context.Context) error {
	if err := b.lock(ctx); err != nil {
		return fmt.Errorf("waiting to program IPVS: %w", err)
	}
	defer b.unlock()
	b.mu.Lock()
	synced, effective, keep := b.synced, b.effectiveAll(), slices.Clone(b.keep)
	b.mu.Unlock()
	if !synced {
		return nil
	}
	return b.dir.Sync(ctx, effective, keep...)
}

// effectiveAll returns every desired service as IPVS must have it. Call
// with b.mu.
func (b *Balancer) effectiveAll() []lvs.Service {
	out := make([]lvs.Service, 0, len(b.desired))
	for _, s := range b.desired {
		out = append(out, b.effective(s))
	}
	return out
}

// effective returns s as IPVS must have it given health now. A real server
// the checker does not have (its Sync failed) counts as healthy, as a new
// one does. Call with b.mu.
func (b *Balancer) effective(s *Service) lvs.Service {
	out := s.Service
	out.Reals = make([]lvs.RealServer, 0, len(s.Reals))
	for _, r := range s.Reals {
		if s.Check != nil {
			if healthy, ok := b.hc.Healthy(TargetKey(s.Key, r)); ok && !healthy {
				if s.OnUnhealthy == Remove {
					continue
				}
				r.Weight = 0
			}
		}
		out.Reals = append(out.Reals, r)
	}
	return out
}

// HealthChanged is told by the checker that a target's health changed
// (the checker has the new state already: r is not kept). It does not
// block: Run writes the services concerned.
func (b *Balancer) HealthChanged(r healthcheck.Result) {
	b.mu.Lock()
	if k, ok := b.owner[r.Key]; ok {
		b.pending[k] = true
	}
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// Run writes health changes to IPVS, each as an Update of the services
// concerned, until ctx is cancelled. A failed Update is tried again after
// a backoff (from retryMin, doubling up to retryMax), with the weights
// health allows then; changes that come meanwhile are written at once.
func (b *Balancer) Run(ctx context.Context) {
	retry := b.clock.NewTimer(time.Hour)
	retry.Stop()
	failed := map[lvs.Key]bool{} // services to write again when retry fires
	waiting := false             // retry is armed (failed is not empty)
	var backoff time.Duration
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.wake:
		case <-retry.C():
			waiting = false
			b.mu.Lock()
			for k := range failed {
				b.pending[k] = true
			}
			b.mu.Unlock()
			clear(failed)
		}
		keys, err := b.writePending(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			b.m.updateFailures.Inc()
			for _, k := range keys {
				failed[k] = true
			}
			if waiting {
				b.log.Error("applying health to IPVS", "err", err)
			} else {
				// The first failure, or a retry that failed again.
				backoff = min(max(2*backoff, retryMin), retryMax)
				retry.Reset(backoff)
				waiting = true
				b.log.Error("applying health to IPVS", "err", err, "retryIn", backoff)
			}
		} else {
			for _, k := range keys {
				delete(failed, k)
			}
			if len(failed) == 0 {
				if waiting {
					retry.Stop()
					waiting = false
				}
				backoff = 0
			}
		}
		if len(keys) > 0 && b.onApplied != nil {
			b.onApplied()
		}
	}
}

// writePending writes the services whose health changed with the weights
// health allows now. It returns the keys of the services it wrote.
func (b *Balancer) writePending(ctx context.Context) ([]lvs.Key, error) {
	if err := b.lock(ctx); err != nil {
		return nil, err
	}
	defer b.unlock()
	b.mu.Lock()
	var set []lvs.Service
	var keys []lvs.Key
	for k := range b.pending {
		if s, ok := b.desired[k]; ok {
			set = append(set, b.effective(s))
			keys = append(keys, k)
		}
	}
	clear(b.pending)
	b.mu.Unlock()
	if len(set) == 0 {
		return nil, nil
	}
	if err := b.dir.Update(ctx, set, nil); err != nil {
		return keys, fmt.Errorf("updating the weights of %d virtual services: %w", len(set), err)
	}
	return keys, nil
}

// Health returns the health check results.
func (b *Balancer) Health(ctx context.Context) ([]healthcheck.Result, error) {
	return b.hc.Results(ctx)
}

// Services returns the desired services, sorted by key.
func (b *Balancer) Services() []Service {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]Service, 0, len(b.desired))
	for _, s := range b.desired {
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, c Service) int { return a.Key.Compare(c.Key) })
	return out
}
