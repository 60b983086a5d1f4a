package vrrp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepvip/keepvip/internal/clock"
)

// Options configures a Manager.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: metrics are kept but not exported
	Clock      clock.Clock           // nil: the wall clock with timerfd timers (clock.Precise)
}

// Manager runs the virtual routers of this host. Sync takes the full desired
// set and starts, updates or stops instances to match; the sockets, the
// announcers and the VIP bookkeeping they share belong to the Manager.
type Manager struct {
	log     *slog.Logger
	clock   clock.Clock
	metrics *Metrics
	addrs   *netlinkAddrs
	filter  *nftFilter
	links   linkWatcher

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu         sync.Mutex
	insts      map[string]*managed
	sockets    map[sockKey]*socket
	announcers map[int]*linkAnnouncer
}

type managed struct {
	cfg    Config
	in     *Instance
	cancel context.CancelFunc
	sock   *socket
}

type sockKey struct {
	ifindex int
	fam     Family
}

// socket is one raw VRRP socket and the instances it feeds, by VRID.
type socket struct {
	conn   *rawConn
	ifname string
	fam    Family
	mu     sync.RWMutex
	byVRID map[uint8]*Instance
	done   chan struct{}
}

func (s *socket) lookup(vrid uint8) *Instance {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.byVRID[vrid]
}

// NewManager returns a Manager; call Start before Sync.
func NewManager(o Options) *Manager {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Clock == nil {
		o.Clock = clock.Precise{}
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{
		log:        o.Logger,
		clock:      o.Clock,
		metrics:    NewMetrics(o.Registerer),
		addrs:      newNetlinkAddrs(o.Logger),
		filter:     newNFTFilter(),
		ctx:        ctx,
		cancel:     cancel,
		insts:      map[string]*managed{},
		sockets:    map[sockKey]*socket{},
		announcers: map[int]*linkAnnouncer{},
	}
	m.links.notify = m.onLink
	return m
}

// Start follows link state and removes VIPs that a previous keepvip left
// behind (marked with AddrProto): no instance holds a VIP before it has been
// elected.
func (m *Manager) Start() error {
	if err := m.links.start(m.ctx.Done()); err != nil {
		return err
	}
	if err := pruneFilter(); err != nil {
		return err
	}
	removed, err := m.addrs.pruneStale()
	for _, p := range removed {
		m.log.Warn("removed a VIP left behind by an earlier keepvip", "vip", p)
	}
	if err != nil {
		return fmt.Errorf("removing stale VIPs: %w", err)
	}
	return nil
}

// Sync makes the running instances match cfgs. Instances that are unchanged
// keep running untouched; changed ones are updated in place when they are
// the same router (interface, VRID, family, version) and restarted
// otherwise. An instance that cannot start is reported in the returned
// error and the others are still applied.
func (m *Manager) Sync(cfgs []Config) error {
	var errs []error
	desired := map[string]Config{}
	slots := map[string]string{}
	for _, c := range cfgs {
		if ve := c.Validate(); len(ve) > 0 {
			errs = append(errs, fmt.Errorf("instance %q: %w", c.Name, errors.Join(ve...)))
			continue
		}
		if _, dup := desired[c.Name]; dup {
			errs = append(errs, fmt.Errorf("instance %q: name used twice", c.Name))
			continue
		}
		slot := slotOf(&c)
		if other, dup := slots[slot]; dup {
			errs = append(errs, fmt.Errorf("instance %q: VRID %d (%s) on %s is already used by instance %q", c.Name, c.VRID, c.Family(), c.Interface, other))
			continue
		}
		slots[slot] = c.Name
		desired[c.Name] = c
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx.Err() != nil {
		return errors.New("vrrp manager is stopped")
	}
	for name, mi := range m.insts {
		d, keep := desired[name]
		if keep && mi.cfg.sameRouter(&d) {
			continue
		}
		// A router that is replaced, or whose slot another instance
		// needs, is stopped before the new one takes the slot; a removed
		// one hands off in the background.
		_, slotNeeded := slots[slotOf(&mi.cfg)]
		m.stopLocked(name, mi, keep || slotNeeded)
	}
	names := make([]string, 0, len(desired))
	for n := range desired {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, name := range names {
		c := desired[name]
		if mi, ok := m.insts[name]; ok {
			if !reflect.DeepEqual(mi.cfg, c) {
				links := m.links.snapshot(c.tracked())
				mi.in.do(func() { mi.in.reconfigure(m.clock.Now(), c, links) })
				mi.cfg = c
				m.log.Info("instance updated", "instance", name)
			}
			continue
		}
		if err := m.startLocked(c); err != nil {
			errs = append(errs, fmt.Errorf("instance %q: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

func slotOf(c *Config) string {
	return fmt.Sprintf("%s/%s/%d", c.Interface, c.Family(), c.VRID)
}

func (m *Manager) startLocked(c Config) error {
	ifi, err := net.InterfaceByName(c.Interface)
	if err != nil {
		return fmt.Errorf("interface %s: %w", c.Interface, err)
	}
	fam := c.Family()
	sock, err := m.socketLocked(ifi, fam)
	if err != nil {
		return err
	}
	if other := sock.lookup(c.VRID); other != nil {
		return fmt.Errorf("VRID %d (%s) on %s is still held by a stopping instance %q", c.VRID, fam, c.Interface, other.cfg.Name)
	}
	ann, err := m.announcerLocked(ifi)
	if err != nil {
		return err
	}
	io := instanceIO{
		tx:       sock.conn,
		addrs:    m.addrs,
		announce: ann,
		filter:   m.filter,
		ifindex:  ifi.Index,
		source: func(c *Config) (netip.Addr, error) {
			vips := map[netip.Addr]bool{}
			for _, v := range c.VIPs {
				vips[v.Addr()] = true
			}
			return sourceAddr(ifi.Index, fam, c.Peers, vips)
		},
	}
	in := newInstance(c, io, m.clock, m.log, m.metrics, m.links.snapshot(c.tracked()))
	sock.mu.Lock()
	sock.byVRID[c.VRID] = in
	sock.mu.Unlock()
	ctx, cancel := context.WithCancel(m.ctx)
	m.insts[c.Name] = &managed{cfg: c, in: in, cancel: cancel, sock: sock}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		in.run(ctx)
	}()
	return nil
}

// stopLocked stops an instance; with wait it returns once the instance has
// stopped and released its VRID, otherwise that happens in the background.
func (m *Manager) stopLocked(name string, mi *managed, wait bool) {
	delete(m.insts, name)
	mi.cancel()
	release := func() {
		<-mi.in.done
		mi.sock.mu.Lock()
		if mi.sock.byVRID[mi.cfg.VRID] == mi.in {
			delete(mi.sock.byVRID, mi.cfg.VRID)
		}
		mi.sock.mu.Unlock()
		m.metrics.forget(&mi.cfg)
	}
	m.log.Info("instance stopping", "instance", name)
	if wait {
		release()
		m.closeIdleLocked()
		return
	}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		release()
		m.mu.Lock()
		defer m.mu.Unlock()
		m.closeIdleLocked()
	}()
}

// closeIdleLocked closes sockets and announcers no instance uses any more.
func (m *Manager) closeIdleLocked() {
	used := map[int]bool{}
	for key, s := range m.sockets {
		s.mu.RLock()
		n := len(s.byVRID)
		s.mu.RUnlock()
		if n == 0 {
			s.conn.Close()
			<-s.done
			delete(m.sockets, key)
			continue
		}
		used[key.ifindex] = true
	}
	for idx, a := range m.announcers {
		if !used[idx] {
			a.Close()
			delete(m.announcers, idx)
		}
	}
}

func (m *Manager) socketLocked(ifi *net.Interface, fam Family) (*socket, error) {
	key := sockKey{ifi.Index, fam}
	if s, ok := m.sockets[key]; ok {
		return s, nil
	}
	conn, err := listenRaw(ifi, fam)
	if err != nil {
		return nil, err
	}
	s := &socket{conn: conn, ifname: ifi.Name, fam: fam, byVRID: map[uint8]*Instance{}, done: make(chan struct{})}
	m.sockets[key] = s
	go m.read(s)
	return s, nil
}

func (m *Manager) announcerLocked(ifi *net.Interface) (*linkAnnouncer, error) {
	if a, ok := m.announcers[ifi.Index]; ok {
		return a, nil
	}
	a, err := newLinkAnnouncer(ifi)
	if err != nil {
		return nil, err
	}
	m.announcers[ifi.Index] = a
	return a, nil
}

// read is the reader of one socket: it applies the instance-independent
// receive checks and hands each advert to the instance of its VRID.
func (m *Manager) read(s *socket) {
	defer close(s.done)
	buf := make([]byte, 65536)
	log := m.log.With("interface", s.ifname, "family", s.fam.String())
	var lastErr time.Time
	for {
		p, err := s.conn.ReadPacket(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			if time.Since(lastErr) > errorLogEvery {
				log.Warn("reading VRRP socket", "err", err)
				lastErr = time.Now()
			}
			continue
		}
		adv, reason, err := decode(p, s.fam)
		if reason != "" {
			m.metrics.drop(s.ifname, s.fam, adv.VRID, reason)
			if in := s.lookup(adv.VRID); in != nil {
				// Counted for the instance's status too; the
				// instance goroutine is not involved.
				in.countDrop(reason)
			}
			log.Debug("dropped VRRP packet", "from", p.Src, "reason", string(reason), "err", err)
			continue
		}
		in := s.lookup(adv.VRID)
		if in == nil {
			m.metrics.drop(s.ifname, s.fam, adv.VRID, DropUnknown)
			continue
		}
		p.Payload = nil
		if !in.deliver(received{pkt: p, adv: adv}) {
			m.metrics.drop(s.ifname, s.fam, adv.VRID, DropQueueFull)
			in.countDrop(DropQueueFull)
		}
	}
}

func (m *Manager) onLink(name string, up bool) {
	m.mu.Lock()
	var affected []*Instance
	for _, mi := range m.insts {
		if slices.Contains(mi.cfg.tracked(), name) {
			affected = append(affected, mi.in)
		}
	}
	m.mu.Unlock()
	state := "down"
	if up {
		state = "up"
	}
	if len(affected) > 0 {
		m.log.Info("tracked link changed", "link", name, "state", state)
	}
	for _, in := range affected {
		in.do(func() { in.handleLink(m.clock.Now(), name, up) })
	}
}

// Status returns a snapshot of every running instance, by name.
func (m *Manager) Status() []Status {
	m.mu.Lock()
	insts := make([]*Instance, 0, len(m.insts))
	for _, mi := range m.insts {
		insts = append(insts, mi.in)
	}
	m.mu.Unlock()
	out := make([]Status, 0, len(insts))
	for _, in := range insts {
		if s, ok := in.Status(); ok {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b Status) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Stop shuts every instance down (masters send priority 0 and hand off),
// waits for them, closes the sockets and removes any VIP still held.
func (m *Manager) Stop() error {
	m.mu.Lock()
	m.cancel()
	m.mu.Unlock()
	m.wg.Wait()
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, mi := range m.insts {
		mi.sock.mu.Lock()
		delete(mi.sock.byVRID, mi.cfg.VRID)
		mi.sock.mu.Unlock()
		delete(m.insts, name)
	}
	m.closeIdleLocked()
	err := errors.Join(m.addrs.releaseAll(), m.filter.Close())
	m.addrs.close()
	return err
}
