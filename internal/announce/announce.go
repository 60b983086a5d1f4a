// Package announce makes the routes a node announces follow its VRRP
// states: the master of an instance announces its VIPs; a backup
// withdraws them or, when so configured, announces them with a worse path
// (longer AS path, lower local preference), so that routers already have
// the backup's route when the master goes and switch at once.
//
// The daemon gives it the VIPs and routes of config.Desired and the
// exporter (routes/bgp or routes/kernel); vrrp's transitions drive it.
//
// One goroutine (Run) owns the exporter: VRRP transitions and new
// configurations only post to it, so the VRRP goroutines never wait on
// BGP.
package announce

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/keepvip/keepvip/routes"
	"github.com/keepvip/keepvip/vrrp"
)

// VIP is one address an instance's state decides the route of.
type VIP struct {
	Instance string
	// Master is the route while the instance is master (its Prefix is
	// the VIP's host prefix).
	Master routes.Route
	// Backup is the route while it is backup; nil: none (withdrawn).
	Backup *routes.Route
}

// Controller follows states and keeps the exporter's routes in line.
type Controller struct {
	log *slog.Logger

	kick chan struct{}

	mu     sync.Mutex
	exp    routes.Exporter // nil: states are followed, nothing announced
	vips   []VIP
	static []routes.Route // announced whatever the states (ecmp, Service IPs)
	states map[string]vrrp.State
	since  time.Time // the oldest change not yet synced
	synced []routes.Route
	err    error
	// onSynced, if set, is told how long a change took to reach the
	// exporter (metrics).
	onSynced func(time.Duration)
}

// New returns a Controller over exp (nil: none yet, see SetExporter);
// call Run.
func New(exp routes.Exporter, log *slog.Logger, onSynced func(time.Duration)) *Controller {
	return &Controller{exp: exp, log: log, kick: make(chan struct{}, 1), states: map[string]vrrp.State{}, onSynced: onSynced}
}

// SetExporter replaces the exporter (nil: none); the next sync goes to
// the new one with every route. The caller closes the old one.
func (c *Controller) SetExporter(exp routes.Exporter) {
	c.mu.Lock()
	c.exp = exp
	c.changed()
	c.mu.Unlock()
}

// Set replaces the VIPs whose routes follow the states, and the routes
// announced whatever they are.
func (c *Controller) Set(vips []VIP, static []routes.Route) {
	c.mu.Lock()
	c.vips, c.static = slices.Clone(vips), slices.Clone(static)
	c.changed()
	c.mu.Unlock()
}

// Transition takes a state change of an instance; it never blocks (it is
// called from the instance's goroutine).
func (c *Controller) Transition(instance string, t vrrp.Transition) {
	c.mu.Lock()
	c.states[instance] = t.To
	c.changed()
	c.mu.Unlock()
}

// changed marks a change and wakes Run. Call with c.mu.
func (c *Controller) changed() {
	if c.since.IsZero() {
		c.since = time.Now()
	}
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Desired returns the routes the states call for now.
func (c *Controller) Desired() []routes.Route {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.desiredLocked()
}

func (c *Controller) desiredLocked() []routes.Route {
	out := slices.Clone(c.static)
	seen := map[netip.Prefix]bool{}
	for _, r := range out {
		seen[r.Prefix] = true
	}
	for _, v := range c.vips {
		var r *routes.Route
		switch c.states[v.Instance] {
		case vrrp.StateMaster:
			r = &v.Master
		case vrrp.StateBackup:
			r = v.Backup
		}
		if r != nil && !seen[r.Prefix] {
			seen[r.Prefix] = true
			out = append(out, *r)
		}
	}
	slices.SortFunc(out, func(a, b routes.Route) int { return routes.ComparePrefixes(a.Prefix, b.Prefix) })
	return out
}

// retryEvery is how soon a Sync that failed is tried again.
const retryEvery = 2 * time.Second

// Run syncs the exporter after every change until ctx ends, and retries
// a failed Sync.
func (c *Controller) Run(ctx context.Context) {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		case <-retry.C:
		}
		c.mu.Lock()
		want, since, exp := c.desiredLocked(), c.since, c.exp
		c.since = time.Time{}
		c.mu.Unlock()
		if exp == nil {
			continue
		}
		err := exp.Sync(ctx, want)
		if err != nil && ctx.Err() == nil {
			c.log.Error("announcing routes", "err", err)
			retry.Reset(retryEvery)
		}
		c.mu.Lock()
		c.synced, c.err = want, err
		c.mu.Unlock()
		if !since.IsZero() && c.onSynced != nil {
			c.onSynced(time.Since(since))
		}
	}
}

// Status is what the controller last gave the exporter.
func (c *Controller) Status() (synced []routes.Route, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.synced), c.err
}
