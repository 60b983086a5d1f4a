package lvs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
)

// kernel is what the Director needs of IPVS. Errors for a service or real
// server that is already gone (deleting) or already there (adding) are the
// implementation's to absorb.
type kernel interface {
	Services() ([]Service, error) // every virtual service, with its real servers
	// Stats returns the connections of every real server of k.
	Stats(k Key) (map[RealKey]Conns, error)
	AddService(s *Service) error
	UpdateService(s *Service) error
	DeleteService(k Key) error
	AddReal(k Key, r RealServer) error
	UpdateReal(k Key, r RealServer) error
	DeleteReal(k Key, r RealServer) error
}

// Options configures a Director.
type Options struct {
	Logger *slog.Logger
	// StateFile records which virtual services keepvip created, so that
	// after a restart it removes those no longer wanted and nothing else.
	// Empty: remembered for the life of the process only.
	StateFile string
}

// Director keeps the IPVS virtual services keepvip owns equal to a desired
// set. It never flushes IPVS and never changes or removes a service it was
// not asked for: kube-proxy's, an operator's. A service it is asked for
// that already exists is adopted and edited in place, so that a restarted
// keepvip keeps established connections.
type Director struct {
	k     kernel
	log   *slog.Logger
	state string

	mu    sync.Mutex
	cache map[Key]*Service // the kernel's view of keepvip's services (and desired ones found there)
	// applied holds each desired service as last given and applied
	// without error: one that compares equal is skipped, so that a sync
	// of a large table with one change costs only that change.
	applied map[Key]*Service
	want    map[Key]bool
	loaded  bool
	owned   map[Key]bool
	dirty   bool // owned changed since the state file was written
	ops     int  // kernel operations done by the last Sync, for tests and benchmarks
}

// NewDirector returns a Director over the given kernel.
func newDirector(k kernel, o Options) (*Director, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	d := &Director{k: k, log: o.Logger, state: o.StateFile, cache: map[Key]*Service{}, owned: map[Key]bool{},
		applied: map[Key]*Service{}, want: map[Key]bool{}}
	if err := d.loadState(); err != nil {
		return nil, err
	}
	return d, nil
}

// load reads the kernel's table once.
func (d *Director) load() error {
	if d.loaded {
		return nil
	}
	svcs, err := d.k.Services()
	if err != nil {
		return fmt.Errorf("reading the IPVS table: %w", err)
	}
	clear(d.cache)
	clear(d.applied)
	for i := range svcs {
		s := svcs[i].normalize()
		d.cache[s.Key] = &s
	}
	// Forget owned services that are gone (an operator, a reboot).
	for k := range d.owned {
		if _, ok := d.cache[k]; !ok {
			delete(d.owned, k)
			d.dirty = true
		}
	}
	d.loaded = true
	return nil
}

// Resync reads the kernel's table again, so that the next Sync also repairs
// changes made behind keepvip's back (ipvsadm by hand).
func (d *Director) Resync() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.loaded = false
}

// Sync makes keepvip's virtual services equal to desired. Only differences
// reach the kernel: a service edited in place, a real server added,
// changed or removed. Invalid services are reported and skipped; the others
// are applied. Services keepvip created and desired no longer has are
// removed.
func (d *Director) Sync(ctx context.Context, desired []Service) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ops = 0
	if err := d.load(); err != nil {
		return err
	}
	var errs []error
	want := d.want
	clear(want)
	for i := range desired {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, err)...)
		}
		s := &desired[i]
		if a := d.applied[s.Key]; a != nil && !want[s.Key] && sameDesired(a, s) {
			want[s.Key] = true
			continue
		}
		if ve := s.Validate(); len(ve) > 0 {
			// Bad input never costs what works: an invalid version of
			// a service keepvip already programmed leaves it as it is.
			if d.owned[s.Key] {
				want[s.Key] = true
				errs = append(errs, fmt.Errorf("virtual service %s (kept as it was): %w", s.Key, errors.Join(ve...)))
			} else {
				errs = append(errs, fmt.Errorf("virtual service %s: %w", s.Key, errors.Join(ve...)))
			}
			continue
		}
		delete(d.applied, s.Key)
		if want[s.Key] {
			errs = append(errs, fmt.Errorf("virtual service %s: listed twice", s.Key))
			continue
		}
		want[s.Key] = true
		if err := d.syncService(s.normalize()); err != nil {
			errs = append(errs, err)
			continue
		}
		c := *s
		c.Reals = slices.Clone(s.Reals)
		d.applied[s.Key] = &c
	}
	var gone []Key
	for k := range d.owned {
		if !want[k] {
			gone = append(gone, k)
		}
	}
	slices.SortFunc(gone, compareKeys)
	for _, k := range gone {
		if err := d.k.DeleteService(k); err != nil {
			errs = append(errs, fmt.Errorf("removing virtual service %s: %w", k, err))
			continue
		}
		d.ops++
		delete(d.cache, k)
		delete(d.owned, k)
		delete(d.applied, k)
		d.dirty = true
	}
	if err := d.saveState(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Update applies the desired state of some services only: each service in
// set is made so (created, edited in place, its real servers added, changed
// or removed), and each key in remove is removed if keepvip owns it. The
// others are not looked at, so the cost is that of the change whatever the
// size of the table: an endpoint change or a health-check result. Sync
// remains the full reconciliation.
func (d *Director) Update(ctx context.Context, set []Service, remove []Key) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ops = 0
	if err := d.load(); err != nil {
		return err
	}
	var errs []error
	for i := range set {
		if err := ctx.Err(); err != nil {
			return errors.Join(append(errs, err)...)
		}
		s := &set[i]
		if a := d.applied[s.Key]; a != nil && sameDesired(a, s) {
			continue
		}
		delete(d.applied, s.Key)
		if ve := s.Validate(); len(ve) > 0 {
			errs = append(errs, fmt.Errorf("virtual service %s: %w", s.Key, errors.Join(ve...)))
			continue
		}
		if err := d.syncService(s.normalize()); err != nil {
			errs = append(errs, err)
			continue
		}
		c := *s
		c.Reals = slices.Clone(s.Reals)
		d.applied[s.Key] = &c
	}
	for _, k := range remove {
		if !d.owned[k] {
			continue
		}
		if err := d.k.DeleteService(k); err != nil {
			errs = append(errs, fmt.Errorf("removing virtual service %s: %w", k, err))
			continue
		}
		d.ops++
		delete(d.cache, k)
		delete(d.owned, k)
		delete(d.applied, k)
		d.dirty = true
	}
	if err := d.saveState(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// sameDesired reports whether b is the service a was, as given.
func sameDesired(a, b *Service) bool {
	return a.Key == b.Key && a.Scheduler == b.Scheduler && a.Flags == b.Flags && a.Persistence == b.Persistence &&
		a.PersistenceMask == b.PersistenceMask && slices.Equal(a.Reals, b.Reals)
}

func (d *Director) syncService(s Service) error {
	cur, exists := d.cache[s.Key]
	if !exists {
		if err := d.k.AddService(&s); err != nil {
			return fmt.Errorf("adding virtual service %s: %w", s.Key, err)
		}
		d.ops++
		cur = &Service{Key: s.Key, Scheduler: s.Scheduler, Flags: s.Flags, Persistence: s.Persistence, PersistenceMask: s.PersistenceMask}
		d.cache[s.Key] = cur
	} else if !sameAttrs(cur, &s) {
		if err := d.k.UpdateService(&s); err != nil {
			return fmt.Errorf("changing virtual service %s: %w", s.Key, err)
		}
		d.ops++
		cur.Scheduler, cur.Flags, cur.Persistence, cur.PersistenceMask = s.Scheduler, s.Flags, s.Persistence, s.PersistenceMask
	}
	if !d.owned[s.Key] {
		if exists {
			d.log.Info("adopted an existing virtual service", "service", s.Key.String())
		}
		d.owned[s.Key] = true
		d.dirty = true
	}
	return d.syncReals(cur, s.Reals)
}

// syncReals brings cur's real servers to want (both sorted).
func (d *Director) syncReals(cur *Service, want []RealServer) error {
	if slices.Equal(cur.Reals, want) {
		return nil
	}
	var errs []error
	have := make(map[realKey]RealServer, len(cur.Reals))
	for _, r := range cur.Reals {
		have[r.key()] = r
	}
	next := make([]RealServer, 0, len(want))
	for _, r := range want {
		old, ok := have[r.key()]
		delete(have, r.key())
		switch {
		case !ok:
			if err := d.k.AddReal(cur.Key, r); err != nil {
				errs = append(errs, fmt.Errorf("adding real server %s to %s: %w", netip.AddrPortFrom(r.Addr, r.Port), cur.Key, err))
				continue
			}
			d.ops++
		case old != r:
			if err := d.k.UpdateReal(cur.Key, r); err != nil {
				errs = append(errs, fmt.Errorf("changing real server %s of %s: %w", netip.AddrPortFrom(r.Addr, r.Port), cur.Key, err))
				next = append(next, old)
				continue
			}
			d.ops++
		}
		next = append(next, r)
	}
	for _, r := range have {
		if err := d.k.DeleteReal(cur.Key, r); err != nil {
			errs = append(errs, fmt.Errorf("removing real server %s from %s: %w", netip.AddrPortFrom(r.Addr, r.Port), cur.Key, err))
			next = append(next, r)
			continue
		}
		d.ops++
	}
	cur.Reals = Service{Key: cur.Key, Reals: next}.normalize().Reals
	return errors.Join(errs...)
}

// RealKey identifies a real server within a service.
type RealKey struct {
	Addr netip.Addr
	Port uint16
}

// Conns are a real server's connections as the kernel counts them.
type Conns struct {
	Active   int `json:"active"`
	Inactive int `json:"inactive"`
}

// ServiceStatus is a virtual service as the kernel has it now.
type ServiceStatus struct {
	Service
	Conns map[RealKey]Conns
}

// Status reads keepvip's virtual services back from the kernel, with the
// connection counts of their real servers.
func (d *Director) Status() ([]ServiceStatus, error) {
	// Held throughout: the kernel is read with the same handle that Sync
	// and Update write with.
	d.mu.Lock()
	defer d.mu.Unlock()
	keys := make([]Key, 0, len(d.owned))
	for k := range d.owned {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareKeys)
	all, err := d.k.Services()
	if err != nil {
		return nil, fmt.Errorf("reading the IPVS table: %w", err)
	}
	byKey := make(map[Key]Service, len(all))
	for _, s := range all {
		byKey[s.Key] = s.normalize()
	}
	out := make([]ServiceStatus, 0, len(keys))
	for _, k := range keys {
		s, ok := byKey[k]
		if !ok {
			continue // removed behind keepvip's back; the next resync repairs it
		}
		conns, err := d.k.Stats(k)
		if err != nil {
			return nil, fmt.Errorf("reading connections of %s: %w", k, err)
		}
		out = append(out, ServiceStatus{Service: s, Conns: conns})
	}
	return out, nil
}

// Owned returns the keys of the virtual services keepvip owns, sorted.
func (d *Director) Owned() []Key {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Key, 0, len(d.owned))
	for k := range d.owned {
		out = append(out, k)
	}
	slices.SortFunc(out, compareKeys)
	return out
}

type stateFile struct {
	Services []stateKey `json:"services"`
}

type stateKey struct {
	Addr   netip.Addr `json:"addr"`
	Port   uint16     `json:"port,omitempty"`
	Proto  string     `json:"protocol,omitempty"`
	FWMark uint32     `json:"fwmark,omitempty"`
}

func (d *Director) loadState() error {
	if d.state == "" {
		return nil
	}
	b, err := os.ReadFile(d.state)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading IPVS state: %w", err)
	}
	var f stateFile
	if err := json.Unmarshal(b, &f); err != nil {
		// A damaged file must not stop the daemon: keepvip then only
		// forgets which stale services it could prune.
		d.log.Warn("ignoring a damaged IPVS state file", "file", d.state, "err", err)
		return nil
	}
	for _, s := range f.Services {
		k := Key{Addr: s.Addr, Port: s.Port, FWMark: s.FWMark}
		if s.Proto != "" {
			p, err := ParseProtocol(s.Proto)
			if err != nil {
				continue
			}
			k.Proto = p
		}
		d.owned[k] = true
	}
	return nil
}

// saveState writes the owned set when it changed (atomically).
func (d *Director) saveState() error {
	if d.state == "" || !d.dirty {
		return nil
	}
	keys := make([]Key, 0, len(d.owned))
	for k := range d.owned {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareKeys)
	f := stateFile{Services: make([]stateKey, len(keys))}
	for i, k := range keys {
		f.Services[i] = stateKey{Addr: k.Addr, Port: k.Port, FWMark: k.FWMark}
		if k.Proto != 0 {
			f.Services[i].Proto = k.Proto.String()
		}
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(d.state), 0o700); err != nil {
		return fmt.Errorf("writing IPVS state: %w", err)
	}
	tmp := d.state + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("writing IPVS state: %w", err)
	}
	if err := os.Rename(tmp, d.state); err != nil {
		return fmt.Errorf("writing IPVS state: %w", err)
	}
	d.dirty = false
	return nil
}
