// Package balancer joins IPVS and health checks: it takes the desired
// virtual services with their checks, keeps the health checker's targets
// in line with them, and programs IPVS with the weights health allows
// (an unhealthy real server drained to weight 0, or removed). Standalone
// mode and the Kubernetes reconciler both feed it.
package balancer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"sync"

	"github.com/keepvip/keepvip/healthcheck"
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
	Sync(ctx context.Context, targets []healthcheck.Target) error
	Results(ctx context.Context) ([]healthcheck.Result, error)
}

// Balancer keeps IPVS and the health checks in line with the desired
// services and with health.
type Balancer struct {
	log *slog.Logger
	dir director
	hc  checker

	mu      sync.Mutex
	desired map[lvs.Key]*Service
	owner   map[string]lvs.Key // health check target -> its service
	down    map[string]bool    // unhealthy targets, by key
	pending map[lvs.Key]bool
	wake    chan struct{}

	onApplied func()
}

// New returns a Balancer over a director and a checker. Call Run, and
// give the checker Balancer.HealthChanged as its OnChange. onApplied, if
// set, is called (from Run, without blocking it for long) after health
// changes reached IPVS: routes that depend on Serving follow.
func New(log *slog.Logger, dir director, hc checker, onApplied func()) *Balancer {
	return &Balancer{log: log, dir: dir, hc: hc, desired: map[lvs.Key]*Service{}, owner: map[string]lvs.Key{}, down: map[string]bool{},
		pending: map[lvs.Key]bool{}, wake: make(chan struct{}, 1), onApplied: onApplied}
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

// Sync sets the desired services: the checks follow, and IPVS gets the
// whole set with the weights health allows now.
func (b *Balancer) Sync(ctx context.Context, services []Service) error {
	var errs []error
	b.mu.Lock()
	prev := b.desired
	b.desired = make(map[lvs.Key]*Service, len(services))
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
		b.desired[s.Key] = s
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
	clear(b.owner)
	for _, s := range b.desired {
		if s.Check != nil {
			for _, r := range s.Reals {
				b.owner[TargetKey(s.Key, r)] = s.Key
			}
		}
	}
	for k := range b.down {
		if _, ok := b.owner[k]; !ok {
			delete(b.down, k)
		}
	}
	effective := make([]lvs.Service, 0, len(b.desired))
	for _, s := range b.desired {
		effective = append(effective, b.effective(s))
	}
	clear(b.pending)
	b.mu.Unlock()

	if err := b.hc.Sync(ctx, targets); err != nil {
		errs = append(errs, fmt.Errorf("updating health checks: %w", err))
	}
	if err := b.dir.Sync(ctx, effective, keep...); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// effective returns s as IPVS must have it given health. Call with b.mu.
func (b *Balancer) effective(s *Service) lvs.Service {
	out := s.Service
	out.Reals = make([]lvs.RealServer, 0, len(s.Reals))
	for _, r := range s.Reals {
		if b.down[TargetKey(s.Key, r)] {
			if s.OnUnhealthy == Remove {
				continue
			}
			r.Weight = 0
		}
		out.Reals = append(out.Reals, r)
	}
	return out
}

// HealthChanged takes a change of health from the checker. It does not
// block: the change is applied by Run.
func (b *Balancer) HealthChanged(r healthcheck.Result) {
	b.mu.Lock()
	if r.Healthy {
		delete(b.down, r.Key)
	} else {
		b.down[r.Key] = true
	}
	if k, ok := b.owner[r.Key]; ok {
		b.pending[k] = true
	}
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// Run applies health changes to IPVS, each as an Update of the services
// concerned, until ctx is cancelled.
func (b *Balancer) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.wake:
		}
		b.mu.Lock()
		var set []lvs.Service
		for k := range b.pending {
			if s, ok := b.desired[k]; ok {
				set = append(set, b.effective(s))
			}
		}
		clear(b.pending)
		b.mu.Unlock()
		if len(set) == 0 {
			continue
		}
		if err := b.dir.Update(ctx, set, nil); err != nil {
			b.log.Error("applying health to IPVS", "err", err)
		}
		if b.onApplied != nil {
			b.onApplied()
		}
	}
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
