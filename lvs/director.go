package lvs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"

	"github.com/keepvip/keepvip/internal/durable"
)

// kernel is what the Director needs of IPVS. Deleting a service or a real
// server that is already gone succeeds, and so does adding a real server
// that is there (it is updated). Other errors are the kernel's: EEXIST for
// adding a service that exists, ESRCH for a service that is not there,
// ENOENT for changing a real server that is not there.
type kernel interface {
	// Services returns every virtual service; with its real servers and
	// their connections only if withReals says so (nil: every one).
	Services(withReals func(Key) bool) ([]ServiceStatus, error)
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
	// after a restart it edits and removes those and nothing else.
	// Empty: remembered for the life of the process only.
	StateFile string

	bootID string // tests: the kernel's boot_id; empty: read it
}

// NotOwnedError is the error for a desired virtual service that exists in
// the kernel and that keepvip did not create: kube-proxy's, an
// operator's. The Director leaves it exactly as it is.
type NotOwnedError struct{ Key Key }

func (e *NotOwnedError) Error() string {
	return fmt.Sprintf("IPVS service %s exists and was not created by keepvip (kube-proxy?); not touching it", e.Key)
}

// ServiceError is the error of one virtual service in what Sync and
// Update return (joined); its message names the service.
type ServiceError struct {
	Key Key
	Err error
}

func (e *ServiceError) Error() string { return e.Err.Error() }
func (e *ServiceError) Unwrap() error { return e.Err }

// Director keeps the IPVS virtual services keepvip owns equal to a desired
// set. It never flushes IPVS and never changes or removes a service it did
// not create: kube-proxy's, an operator's; a desired service found in the
// kernel that it did not create is refused (NotOwnedError). Which services
// it created is recorded in the state file before they are created, so
// that a restarted keepvip adopts them in place and established
// connections survive.
type Director struct {
	k      kernel
	log    *slog.Logger
	state  string
	bootID string

	mu sync.Mutex
	// cache is the kernel's view: every service in the table, with the
	// real servers of those keepvip owns.
	cache map[Key]*Service
	// applied holds each desired service as last given and applied
	// without error: one that compares equal is skipped, so that a sync
	// of a large table with one change costs only that change.
	applied map[Key]*Service
	want    map[Key]bool
	loaded  bool
	owned   map[Key]bool
	dirty   bool          // owned changed since the state file was written
	errs    map[Key]error // the last error of each desired service
	closed  bool
	ops     int // kernel operations done by the last Sync, for tests and benchmarks
}

// NewDirector returns a Director over the given kernel.
func newDirector(k kernel, o Options) (*Director, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.bootID == "" {
		o.bootID = readBootID()
	}
	d := &Director{k: k, log: o.Logger, state: o.StateFile, bootID: o.bootID, cache: map[Key]*Service{}, owned: map[Key]bool{},
		applied: map[Key]*Service{}, want: map[Key]bool{}, errs: map[Key]error{}}
	if err := d.loadState(); err != nil {
		return nil, err
	}
	return d, nil
}

// readBootID returns the kernel's boot_id, which changes at every boot;
// "" if it cannot be read.
func readBootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

var errClosedDirector = errors.New("IPVS director closed")

// load reads the kernel's table once.
func (d *Director) load() error {
	if d.closed {
		return errClosedDirector
	}
	if d.loaded {
		return nil
	}
	svcs, err := d.k.Services(func(k Key) bool { return d.owned[k] })
	if err != nil {
		return fmt.Errorf("reading the IPVS table: %w", err)
	}
	clear(d.cache)
	clear(d.applied)
	for i := range svcs {
		s := svcs[i].Service.normalize()
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

// Close closes the IPVS handle; the services stay in the kernel. Later
// calls fail.
func (d *Director) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	if c, ok := d.k.(io.Closer); ok {
		return c.Close()
	}
	return nil
}

// batch is the work of one Sync or Update.
type batch struct {
	d    *Director
	prev map[Key]error // the errors before, for logging refusals once
	errs []error
	todo []*Service
	// creating holds the services to create, owned (written ahead) but
	// not yet tried.
	creating map[Key]bool
}

func (b *batch) fail(k Key, err error) {
	b.errs = append(b.errs, &ServiceError{Key: k, Err: err})
	var no *NotOwnedError
	if errors.As(err, &no) && !errors.As(b.prev[k], &no) {
		b.d.log.Warn("refusing a virtual service keepvip did not create", "service", k.String(), "err", err)
	}
	b.d.errs[k] = err
}

// take decides what to do with a valid desired service: refuse it if the
// kernel has it and keepvip did not create it; else apply it, after
// recording it as owned if it is to be created.
func (b *batch) take(s *Service) bool {
	d := b.d
	if _, exists := d.cache[s.Key]; exists && !d.owned[s.Key] {
		b.fail(s.Key, &NotOwnedError{Key: s.Key})
		return false
	}
	if _, exists := d.cache[s.Key]; !exists && !d.owned[s.Key] {
		d.owned[s.Key] = true
		d.dirty = true
		b.creating[s.Key] = true
	}
	b.todo = append(b.todo, s)
	return true
}

// run applies the services taken. Ownership of the services to create is
// written to the state file first: a crash between the two then leaves
// no service keepvip would not know it created (a recorded one the kernel
// lacks is forgotten when the table is read).
func (b *batch) run(ctx context.Context) {
	d := b.d
	defer func() {
		// Not tried (cancelled): not created, not owned.
		for k := range b.creating {
			delete(d.owned, k)
			d.dirty = true
		}
	}()
	if len(b.creating) > 0 {
		if err := d.saveState(); err != nil {
			for k := range b.creating {
				b.fail(k, fmt.Errorf("not creating virtual service %s: recording it in the state file first: %w", k, err))
			}
			// The others go ahead.
			b.todo = slices.DeleteFunc(b.todo, func(s *Service) bool { return b.creating[s.Key] })
		}
	}
	for _, s := range b.todo {
		if err := ctx.Err(); err != nil {
			b.errs = append(b.errs, err)
			return
		}
		delete(b.creating, s.Key)
		if err := d.syncService(s.normalize()); err != nil {
			b.fail(s.Key, err)
			continue
		}
		delete(d.errs, s.Key)
		c := *s
		c.Reals = slices.Clone(s.Reals)
		d.applied[s.Key] = &c
	}
}

// remove deletes an owned service.
func (b *batch) remove(k Key) {
	d := b.d
	if err := d.k.DeleteService(k); err != nil {
		b.fail(k, fmt.Errorf("removing virtual service %s: %w", k, err))
		return
	}
	d.ops++
	delete(d.cache, k)
	delete(d.owned, k)
	delete(d.applied, k)
	delete(d.errs, k)
	d.dirty = true
}

// Sync makes keepvip's virtual services equal to desired. Only differences
// reach the kernel: a service edited in place, a real server added,
// changed or removed. Invalid services are reported and skipped, and so
// are services in the kernel keepvip did not create (NotOwnedError); the
// others are applied. Services keepvip created that are neither desired
// nor in keep are removed: keep names services whose desired version is
// invalid, which stay as the kernel has them. The error joins one
// ServiceError per failed service.
func (d *Director) Sync(ctx context.Context, desired []Service, keep ...Key) (err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ops = 0
	if err := d.load(); err != nil {
		return err
	}
	// The state file is written whatever happens below, cancellation
	// included: what was created is recorded.
	defer func() { err = errors.Join(err, d.saveState()) }()
	// Sync sees every desired service: their errors start afresh.
	b := &batch{d: d, prev: d.errs, creating: map[Key]bool{}}
	d.errs = make(map[Key]error, len(b.prev))
	want := d.want
	clear(want)
	for _, k := range keep {
		if d.owned[k] {
			want[k] = true
		}
	}
	for i := range desired {
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
				b.fail(s.Key, fmt.Errorf("virtual service %s (kept as it was): %w", s.Key, errors.Join(ve...)))
			} else {
				b.fail(s.Key, fmt.Errorf("virtual service %s: %w", s.Key, errors.Join(ve...)))
			}
			continue
		}
		delete(d.applied, s.Key)
		if want[s.Key] {
			b.fail(s.Key, fmt.Errorf("virtual service %s: listed twice", s.Key))
			continue
		}
		if b.take(s) {
			want[s.Key] = true
		}
	}
	b.run(ctx)
	if ctx.Err() != nil {
		return errors.Join(b.errs...)
	}
	var gone []Key
	for k := range d.owned {
		if !want[k] {
			gone = append(gone, k)
		}
	}
	slices.SortFunc(gone, compareKeys)
	for _, k := range gone {
		b.remove(k)
	}
	return errors.Join(b.errs...)
}

// Update applies the desired state of some services only: each service in
// set is made so (created, edited in place, its real servers added, changed
// or removed), and each key in remove is removed if keepvip owns it. The
// others are not looked at, so the cost is that of the change whatever the
// size of the table: an endpoint change or a health-check result. Sync
// remains the full reconciliation.
func (d *Director) Update(ctx context.Context, set []Service, remove []Key) (err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.ops = 0
	if err := d.load(); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, d.saveState()) }()
	b := &batch{d: d, prev: d.errs, creating: map[Key]bool{}}
	for i := range set {
		s := &set[i]
		if a := d.applied[s.Key]; a != nil && sameDesired(a, s) {
			continue
		}
		delete(d.applied, s.Key)
		if ve := s.Validate(); len(ve) > 0 {
			b.fail(s.Key, fmt.Errorf("virtual service %s: %w", s.Key, errors.Join(ve...)))
			continue
		}
		b.take(s)
	}
	b.run(ctx)
	if ctx.Err() != nil {
		return errors.Join(b.errs...)
	}
	for _, k := range remove {
		if d.owned[k] {
			b.remove(k)
		}
	}
	return errors.Join(b.errs...)
}

// sameDesired reports whether b is the service a was, as given.
func sameDesired(a, b *Service) bool {
	return a.Key == b.Key && a.Scheduler == b.Scheduler && a.Flags == b.Flags && a.Persistence == b.Persistence &&
		a.PersistenceMask == b.PersistenceMask && slices.Equal(a.Reals, b.Reals)
}

// syncService applies one valid service keepvip owns. A service removed
// behind keepvip's back (ESRCH) is created again, once.
func (d *Director) syncService(s Service) error {
	err := d.applyService(s)
	if errors.Is(err, syscall.ESRCH) && d.owned[s.Key] {
		d.log.Warn("a virtual service keepvip created was removed behind its back; creating it again", "service", s.Key.String())
		delete(d.cache, s.Key)
		err = d.applyService(s)
	}
	return err
}

func (d *Director) applyService(s Service) error {
	cur, exists := d.cache[s.Key]
	if !exists {
		if err := d.k.AddService(&s); err != nil {
			// Not created: not keepvip's.
			delete(d.owned, s.Key)
			d.dirty = true
			if errors.Is(err, syscall.EEXIST) {
				// Created by someone else since the table was read.
				d.cache[s.Key] = &Service{Key: s.Key}
				return &NotOwnedError{Key: s.Key}
			}
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
			err := d.k.UpdateReal(cur.Key, r)
			if errors.Is(err, syscall.ENOENT) {
				// Removed behind keepvip's back: add it again.
				d.ops++
				err = d.k.AddReal(cur.Key, r)
			}
			if err != nil {
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
// connection counts of their real servers. It does not hold up Sync and
// Update while it reads: each kernel request goes in turn with theirs.
func (d *Director) Status() ([]ServiceStatus, error) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, errClosedDirector
	}
	owned := maps.Clone(d.owned)
	d.mu.Unlock()
	all, err := d.k.Services(func(k Key) bool { return owned[k] })
	if err != nil {
		return nil, fmt.Errorf("reading the IPVS table: %w", err)
	}
	out := make([]ServiceStatus, 0, len(owned))
	for _, s := range all {
		if owned[s.Key] {
			s.Service = s.Service.normalize()
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b ServiceStatus) int { return a.Key.Compare(b.Key) })
	return out, nil
}

// Errors returns the last error of each desired service that has one:
// invalid, refused (NotOwnedError) or failed in the kernel.
func (d *Director) Errors() map[Key]error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.errs)
}

// Current returns the kernel's image of those of keys that keepvip owns
// (as last read or written), reading the table first if need be.
func (d *Director) Current(keys []Key) (map[Key]Service, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.load(); err != nil {
		return nil, err
	}
	out := make(map[Key]Service, len(keys))
	for _, k := range keys {
		if c, ok := d.cache[k]; ok && d.owned[k] {
			s := *c
			s.Reals = slices.Clone(c.Reals)
			out[k] = s
		}
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
	// BootID is the kernel's boot_id when the file was written: the IPVS
	// table does not survive a reboot, and what keepvip owned with it.
	BootID   string     `json:"bootID,omitempty"`
	Services []stateKey `json:"services"`
}

type stateKey struct {
	Addr   netip.Addr `json:"addr"`
	Port   uint16     `json:"port,omitempty"`
	Proto  string     `json:"protocol,omitempty"`
	FWMark uint32     `json:"fwmark,omitempty"`
}

// loadState reads the owned set. Without a state file keepvip owns
// nothing: a desired service already in the kernel is refused, not taken
// over.
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
		// A damaged file must not stop the daemon. It is kept for a
		// human to read; keepvip then owns nothing, so it refuses the
		// services it made before rather than take over others.
		bak := d.state + ".bak"
		if rerr := os.Rename(d.state, bak); rerr != nil {
			d.log.Error("ignoring a damaged IPVS state file; keepvip now refuses the services it created before (remove them by hand)",
				"file", d.state, "err", err, "keeping it failed", rerr)
		} else {
			d.log.Error("ignoring a damaged IPVS state file, kept as "+bak+"; keepvip now refuses the services it created before (remove them by hand)",
				"file", d.state, "err", err)
		}
		d.dirty = true
		return nil
	}
	if f.BootID != "" && d.bootID != "" && f.BootID != d.bootID {
		d.log.Info("the IPVS state file is from before a reboot: keepvip owns no service yet", "file", d.state)
		d.dirty = true
		return nil
	}
	if f.BootID != d.bootID {
		d.dirty = true // written again with this boot's
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

// saveState writes the owned set when it changed: to a temporary file,
// synced, renamed over the old one, and the directory synced, so that a
// crash leaves the old file or the new one.
func (d *Director) saveState() error {
	if d.state == "" || !d.dirty {
		return nil
	}
	keys := make([]Key, 0, len(d.owned))
	for k := range d.owned {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, compareKeys)
	f := stateFile{BootID: d.bootID, Services: make([]stateKey, len(keys))}
	for i, k := range keys {
		f.Services[i] = stateKey{Addr: k.Addr, Port: k.Port, FWMark: k.FWMark}
		if k.Proto != 0 {
			f.Services[i].Proto = k.Proto.String()
		}
	}
	b, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return fmt.Errorf("writing IPVS state: %w", err)
	}
	if err := durable.WriteFile(d.state, b, 0o600); err != nil {
		return fmt.Errorf("saving the IPVS state: %w", err)
	}
	d.dirty = false
	return nil
}
