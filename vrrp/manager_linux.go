package vrrp

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

	"github.com/keepvip/keepvip/internal/clock"
	"github.com/keepvip/keepvip/internal/rootonly"
)

// Options configures a Manager.
type Options struct {
	Logger     *slog.Logger
	Registerer prometheus.Registerer // nil: metrics are kept but not exported
	Clock      clock.Clock           // nil: the wall clock with timerfd timers (clock.Precise)
	// OnTransition, if set, is told of every state change of every
	// instance, from the instance's own goroutine at the moment of the
	// change: it must not block (post to a channel and return). Routes
	// that follow VRRP state are driven by it.
	OnTransition func(instance string, t Transition)
	// LockDir holds the lock that makes a Manager the only one in its
	// network namespace (see netnsLock): a directory of root's, created
	// 0700 if missing, which only root may write to (one that others may
	// write to is made so, unless it is sticky: then it is refused). ""
	// is DefaultLockDir.
	LockDir string
	// KeepLock: Stop keeps the network namespace's lock, for Unlock to
	// release when the process has undone everything else it did (a
	// keepvip waiting to take over starts when the lock is free).
	KeepLock bool
	// Inherit is what the keepvip before this one on the host left it
	// when it handed over (Manager.Leave): nil when this keepvip started
	// on its own.
	Inherit *Handover
}

// HandedOver names an instance handed over as master.
type HandedOver struct {
	Name      string `json:"name"`
	Interface string `json:"interface"`
	VRID      uint8  `json:"vrid"`
	Family    string `json:"family"`
}

func handedOver(c *Config) HandedOver {
	return HandedOver{Name: c.Name, Interface: c.Interface, VRID: c.VRID, Family: c.Family().String()}
}

// Handover is what a Manager that leaves (Leave) passes to the keepvip
// taking over on the same host, which gets it as Options.Inherit: with it,
// the VIPs stay where they are and the other routers never notice that
// the process changed.
type Handover struct {
	// Masters are the instances that were master as it left. The
	// successor's instance of the same name, interface, VRID and family,
	// finding its VIPs in place, is master again at once instead of
	// listening first (see Instance.resume); one that differs in any of
	// them starts as after a crash.
	Masters []HandedOver `json:"masters,omitempty"`
	// Promote are the interfaces (by index) where keepvip turned
	// promote_secondaries on: the successor turns it off again when it
	// no longer needs it, as the one that turned it on would have.
	Promote []int `json:"promote,omitempty"`
}

// DefaultLockDir is where Managers lock their network namespaces: the
// directory of keepvip's status socket, writable wherever keepvip runs
// (in deploy/, a volume of the pod's own).
const DefaultLockDir = "/run/keepvip"

// netnsLock is a Manager's hold on its network namespace.
//
// Two keepvips in one network namespace would prune each other's VIPs, so
// a Manager holds a lock on its network namespace while it runs: a
// flock(2) on a file named after the namespace (its nsfs inode) in
// LockDir. The directory must be root's and writable by no one else (see
// rootOnlyDir) and the file is created 0600, so a process that is not root
// cannot open the file, let alone hold the lock; the lock goes with the
// process however it ends. keepvip used to bind the abstract unix socket lockName instead,
// which any local user can bind first, and so keep keepvip from starting.
//
// A file excludes only the keepvips that see the same directory: two in
// one network namespace with different LockDirs (two pods of the DaemonSet
// on a node, each with its own /run/keepvip; one in a pod, one on the
// host) would not meet. The abstract socket belongs to the network
// namespace, so a Manager still binds it, but as a second opinion only: if
// it is taken, its holder's credentials (SO_PEERCRED) decide. Root is
// taken for another keepvip (an older one among them) and refuses this
// one; anyone else is a squatter, logged and ignored.
type netnsLock struct {
	f      *os.File
	path   string
	l      net.Listener  // the abstract socket; nil if another process holds it
	served chan struct{} // closed when l's accept loop has ended
}

// lockName is the abstract unix socket every keepvip binds (see netnsLock).
const lockName = "@keepvip-vrrp"

// lockNetns takes the lock of the caller's network namespace in dir.
func lockNetns(dir string, log *slog.Logger) (*netnsLock, error) {
	ns, err := netnsInode()
	if err != nil {
		return nil, fmt.Errorf("locking the network namespace: %w", err)
	}
	if err := rootOnlyDir(dir, log); err != nil {
		return nil, fmt.Errorf("locking the network namespace: %w", err)
	}
	path := filepath.Join(dir, fmt.Sprintf("vrrp-netns-%d.lock", ns))
	f, err := flockFile(path)
	if err != nil {
		return nil, err
	}
	lk := &netnsLock{f: f, path: path}
	if err := lk.bindAbstract(log); err != nil {
		lk.release()
		return nil, err
	}
	pruneLockFiles(dir, path)
	return lk, nil
}

// pruneLockFiles removes the lock files that no keepvip holds, left by
// keepvips that were killed (with them the files of namespaces long gone
// would pile up on a host that runs many). Each is removed while locked,
// as release does, so that no keepvip can be holding it meanwhile. It is
// tidying only: what cannot be done is left for the next start.
func pruneLockFiles(dir, own string) {
	stale, _ := filepath.Glob(filepath.Join(dir, "vrrp-netns-*.lock"))
	for _, path := range stale {
		if path == own {
			continue
		}
		f, err := os.OpenFile(path, os.O_RDWR|syscall.O_NOFOLLOW, 0)
		if err != nil {
			continue
		}
		if unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB) == nil {
			fi, err1 := f.Stat()
			now, err2 := os.Lstat(path)
			if err1 == nil && err2 == nil && os.SameFile(fi, now) {
				os.Remove(path)
			}
		}
		f.Close()
	}
}

// netnsInode identifies the network namespace of the calling thread, to
// which the sockets it opens belong.
func netnsInode() (uint64, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("identifying the network namespace: %w", err)
	}
	return st.Ino, nil
}

// rootOnlyDir makes sure dir exists and only root can create files in it:
// whoever can could make the lock file theirs and hold it. A directory of
// root's that others may write to is made writable by root only: in
// deploy/, /run/keepvip is an emptyDir volume, which Kubernetes creates
// 0777 (no one outside the pod can reach it, but the lock must not depend
// on that). A sticky one is a shared directory such as /tmp, not keepvip's
// to change, and one of another owner is not keepvip's either: both are
// refused. dir's parents are taken to be root's: whoever can write to one
// could replace dir.
func rootOnlyDir(dir string, log *slog.Logger) error {
	return rootonly.Dir(dir, "lock directory", "hold keepvip's lock", log)
}

// flockFile opens path, creating it 0600, and locks it for good. A lock
// held for a moment only is waited for: another keepvip's pruneLockFiles
// takes it to see whether the file is stale.
func flockFile(path string) (*os.File, error) {
	busyUntil := time.Now().Add(200 * time.Millisecond)
	for range 50 {
		f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NOFOLLOW, 0o600)
		if errors.Is(err, unix.ELOOP) {
			// A symbolic link: not keepvip's doing. Replaced below.
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("replacing lock file %s, a symbolic link: %w", path, err)
			}
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("opening lock file: %w", err)
		}
		fi, err := f.Stat()
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("checking lock file: %w", err)
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); !fi.Mode().IsRegular() || !ok || st.Uid != 0 || fi.Mode().Perm()&0o077 != 0 {
			// keepvip makes it a regular file, root's, 0600. This one
			// others may be able to open and hold; only root can have
			// put it in the root-only directory, and no keepvip holds
			// it: make a new one.
			f.Close()
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("replacing lock file %s, which others could open: %w", path, err)
			}
			continue
		}
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			f.Close()
			if !errors.Is(err, unix.EWOULDBLOCK) {
				return nil, fmt.Errorf("locking %s: %w", path, err)
			}
			if time.Now().After(busyUntil) {
				return nil, fmt.Errorf("another keepvip is running in this network namespace (it holds %s)", path)
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		// A stopping keepvip removes the file while it still holds it.
		// If that happened between the open and the flock, this is a
		// lock on a file that no one else will open: try again.
		if now, err := os.Lstat(path); err == nil && os.SameFile(fi, now) {
			return f, nil
		}
		f.Close()
	}
	return nil, fmt.Errorf("locking %s: the file keeps being replaced", path)
}

// bindAbstract binds lockName, or finds out who holds it.
func (lk *netnsLock) bindAbstract(log *slog.Logger) error {
	l, err := net.Listen("unix", lockName)
	if err == nil {
		lk.l, lk.served = l, make(chan struct{})
		go func() {
			// Connections only ask who holds the socket: each one
			// is closed at once, so that they cannot fill the
			// backlog and make this keepvip look absent.
			defer close(lk.served)
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
		return nil
	}
	if !errors.Is(err, unix.EADDRINUSE) {
		return fmt.Errorf("binding %s: %w", lockName, err)
	}
	cred, err := abstractHolder()
	if err == nil && cred.Uid == 0 {
		return fmt.Errorf("another keepvip is running in this network namespace (pid %d holds %s, but not %s: does it use another lock directory?)", cred.Pid, lockName, lk.path)
	}
	args := []any{"socket", lockName, "lock", lk.path}
	if err != nil {
		args = append(args, "holder", err.Error())
	} else {
		args = append(args, "pid", cred.Pid, "uid", cred.Uid)
	}
	log.Warn("a process that is not root holds the socket keepvip binds; going on, since keepvip holds its lock file, but a keepvip with another lock directory in this network namespace cannot be detected meanwhile", args...)
	return nil
}

// abstractHolder returns the credentials of the process that holds
// lockName, as the kernel recorded them when it listened.
func abstractHolder() (*unix.Ucred, error) {
	cred, err := rootonly.Peer(lockName)
	if errors.Is(err, rootonly.ErrNoListener) {
		return nil, fmt.Errorf("unknown: %w", err)
	}
	return cred, err
}

// Running reports whether a keepvip runs in the caller's network
// namespace, and its pid: a process of root's holds the socket that every
// Manager binds while it runs (see netnsLock).
func Running() (int32, bool) {
	cred, err := abstractHolder()
	if err != nil || cred.Uid != 0 {
		return 0, false
	}
	return cred.Pid, true
}

// release gives the lock up.
func (lk *netnsLock) release() {
	if lk.l != nil {
		lk.l.Close()
		<-lk.served
	}
	// Removed while held, so that no one else takes a lock on it
	// meanwhile (see flockFile); a keepvip that dies leaves it behind,
	// unlocked, for the next one.
	os.Remove(lk.path)
	lk.f.Close()
}

// Manager runs the virtual routers of this host. Sync takes the full desired
// set and starts, updates or stops instances to match; the sockets, the
// announcers and the VIP bookkeeping they share belong to the Manager.
type Manager struct {
	log          *slog.Logger
	clock        clock.Clock
	metrics      *Metrics
	onTransition func(string, Transition)
	addrs        *netlinkAddrs
	filter       *nftFilter
	links        linkWatcher
	lockDir      string
	lock         *netnsLock
	// leftovers are the VIPs an earlier keepvip left here (marked
	// AddrProto), found by Start and kept until the first Sync says whose
	// they are: an instance that had them resumes with them (see
	// Instance.start), the rest are removed. nil once dealt with.
	leftovers map[addrKey]bool
	// takeOver are the instances that the keepvip before this one handed
	// over as master (Options.Inherit), by name, until the first Sync.
	takeOver map[string]HandedOver
	// leaving is set by Leave: instances stop without a handoff.
	leaving  atomic.Bool
	keepLock bool
	// peerLog bounds the log lines that received packets cause, for the
	// socket readers and every instance together.
	peerLog *logLimiter

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	syncMu sync.Mutex // one Sync at a time

	mu         sync.Mutex
	insts      map[string]*managed
	stopping   map[string]*managed // by slot: instances handing off
	pending    map[string]Config   // desired, waiting for their interface
	sockets    map[sockKey]*socket
	announcers map[int]*linkAnnouncer
}

type managed struct {
	cfg      Config
	in       *Instance
	cancel   context.CancelFunc
	sock     *socket
	ifindex  int
	released chan struct{} // closed once stopped and out of its socket
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
	if o.LockDir == "" {
		o.LockDir = DefaultLockDir
	}
	ctx, cancel := context.WithCancel(context.Background())
	m := &Manager{
		log:          o.Logger,
		clock:        o.Clock,
		metrics:      NewMetrics(o.Registerer),
		onTransition: o.OnTransition,
		lockDir:      o.LockDir,
		addrs:        newNetlinkAddrs(o.Logger),
		filter:       newNFTFilter(),
		ctx:          ctx,
		cancel:       cancel,
		insts:        map[string]*managed{},
		stopping:     map[string]*managed{},
		pending:      map[string]Config{},
		sockets:      map[sockKey]*socket{},
		announcers:   map[int]*linkAnnouncer{},
		peerLog:      newLogLimiter(logEvery, peerLogBudget),
		keepLock:     o.KeepLock,
	}
	if h := o.Inherit; h != nil {
		m.takeOver = map[string]HandedOver{}
		for _, mi := range h.Masters {
			m.takeOver[mi.Name] = mi
		}
		for _, ifindex := range h.Promote {
			m.addrs.turnedOn[ifindex] = true
		}
	}
	m.links.log = o.Logger
	m.links.onLink = m.onLink
	m.links.onAddrGone = m.onAddrGone
	m.links.onAddrResync = m.resyncAddrs
	return m
}

// Start makes sure no other keepvip runs in this network namespace (it
// takes the namespace's lock in Options.LockDir; see netnsLock), follows
// links and addresses, and finds the VIPs that a previous keepvip left
// behind (marked with AddrProto). It does not remove them yet: a keepvip
// that crashed and restarted while it was master still holds them, and
// clients still reach it there; removing them would leave nobody holding
// them until a backup's Master_Down_Interval ran out. The first Sync hands
// each to the instance it belongs to, which resumes as master with it or
// hands it off (Instance.start), and removes the others.
func (m *Manager) Start() error {
	lock, err := lockNetns(m.lockDir, m.log)
	if err != nil {
		return err
	}
	m.lock = lock
	if !addrProtoSupported() {
		m.log.Warn("this kernel does not keep address marks (IFA_PROTO needs Linux 6.1): VIPs left by a crashed keepvip are not recognised at start; remove them by hand")
	}
	if err := m.links.start(m.ctx.Done()); err != nil {
		return err
	}
	if m.takeOver != nil {
		// Handed over: what the keepvip before this one filtered stays
		// filtered until this one's instances take it over.
		if err := m.filter.adopt(); err != nil {
			return err
		}
	} else if err := pruneFilter(); err != nil {
		return err
	}
	left, err := m.addrs.listStale()
	if err != nil {
		return fmt.Errorf("looking for VIPs an earlier keepvip left: %w", err)
	}
	if len(left) > 0 {
		var vips []netip.Prefix
		for k := range left {
			vips = append(vips, k.prefix)
		}
		m.log.Info("found VIPs left by an earlier keepvip; they stay until the configuration says whose they are", "vips", vips)
	}
	m.mu.Lock()
	m.leftovers = left
	m.mu.Unlock()
	return nil
}

// settleLeftoversLocked removes the leftover VIPs no instance took over,
// once: at the end of the first Sync, or at Stop without one.
func (m *Manager) settleLeftoversLocked() error {
	if m.leftovers == nil {
		return nil
	}
	removed, err := m.addrs.removeStale(m.leftovers)
	m.leftovers = nil
	for _, p := range removed {
		m.log.Warn("removed a VIP left behind by an earlier keepvip", "vip", p)
	}
	if err != nil {
		return fmt.Errorf("removing stale VIPs: %w", err)
	}
	return nil
}

// addrProtoSupported reports whether the kernel (6.1 or later) stores
// IFA_PROTO, with which keepvip marks its VIPs.
func addrProtoSupported() bool {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return false
	}
	rel := unix.ByteSliceToString(u.Release[:])
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		return false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		return false
	}
	return major > 6 || major == 6 && minor >= 1
}

// errStopped is returned by Sync once Stop has begun.
var errStopped = errors.New("vrrp manager is stopped")

// Sync makes the running instances match cfgs. Instances that are unchanged
// keep running untouched; changed ones are updated in place when they are
// the same router (interface, VRID, family, version) and restarted
// otherwise. An instance that cannot start is reported in the returned
// error and the others are still applied; one whose interface does not
// exist yet starts when the interface appears. Once Stop has begun, Sync
// changes nothing and returns an error, even if it was already waiting
// for a slot to be handed off.
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

	m.syncMu.Lock()
	defer m.syncMu.Unlock()
	m.mu.Lock()
	if m.ctx.Err() != nil {
		m.mu.Unlock()
		return errStopped
	}
	for name, mi := range m.insts {
		if d, keep := desired[name]; keep && mi.cfg.sameRouter(&d) {
			continue
		}
		m.stopLocked(name, mi)
	}
	clear(m.pending)
	// A slot still held by a router that is handing off is waited for,
	// without holding the lock: status, link events and the hand-off
	// itself go on meanwhile.
	var waits []chan struct{}
	for slot := range slots {
		if st, ok := m.stopping[slot]; ok {
			waits = append(waits, st.released)
		}
	}
	m.mu.Unlock()
	for _, w := range waits {
		<-w
	}

	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx.Err() != nil {
		// Stop began while we waited: it has closed, or is closing,
		// what instances and sockets there were, and new ones would
		// outlive it.
		return errStopped
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
				m.addrs.prepare(mi.ifindex, c.VIPs)
				links := m.links.snapshot(c.tracked())
				mi.in.do(func() { mi.in.reconfigure(m.clock.Now(), c, links) })
				mi.cfg = c
				m.log.Info("instance updated", "instance", name)
			}
			continue
		}
		if err := m.startLocked(c); err != nil {
			if errors.Is(err, errNoInterface) {
				m.pending[name] = c
			}
			errs = append(errs, fmt.Errorf("instance %q: %w", name, err))
		}
	}
	if m.takeOver != nil {
		// The first Sync after a handover: each instance has started
		// (and blocked what it filters) before the table left by the
		// keepvip before this one loses what it no longer blocks.
		for _, mi := range m.insts {
			mi.in.do(func() {})
		}
	}
	errs = append(errs, m.settleLeftoversLocked(), m.filter.settle())
	m.takeOver = nil // only the first Sync takes over
	return errors.Join(errs...)
}

var errNoInterface = errors.New("no such interface (the instance starts when it appears)")

func slotOf(c *Config) string {
	return fmt.Sprintf("%s/%s/%d", c.Interface, c.Family(), c.VRID)
}

func (m *Manager) startLocked(c Config) error {
	ifi, err := net.InterfaceByName(c.Interface)
	if err != nil {
		return fmt.Errorf("interface %s: %w", c.Interface, errNoInterface)
	}
	fam := c.Family()
	sock, err := m.socketLocked(ifi, fam)
	if err != nil {
		return err
	}
	if other := sock.lookup(c.VRID); other != nil {
		return fmt.Errorf("VRID %d (%s) on %s is still held by instance %q", c.VRID, fam, c.Interface, other.cfg.Name)
	}
	ann, err := m.announcerLocked(ifi)
	if err != nil {
		return err
	}
	m.addrs.prepare(ifi.Index, c.VIPs)
	io := instanceIO{
		tx:       sock.conn,
		backlog:  sock.conn,
		addrs:    m.addrs,
		announce: ann,
		filter:   m.filter,
		ifindex:  ifi.Index,
		peerLog:  m.peerLog,
		leaving:  m.leaving.Load,
		source: func(c *Config) (netip.Addr, error) {
			// An owner's VIPs are its own addresses and may be its
			// source; other routers never send from a VIP.
			vips := map[netip.Addr]bool{}
			if c.Priority != PriorityOwner {
				for _, v := range c.VIPs {
					vips[v.Addr()] = true
				}
			}
			return sourceAddr(ifi.Index, fam, c.Peers, vips)
		},
	}
	in := newInstance(c, io, m.clock, m.log, m.metrics, m.links.snapshot(c.tracked()))
	in.onChange = m.onTransition
	for _, p := range c.VIPs {
		if key := (addrKey{ifi.Index, p}); m.leftovers[key] {
			// This process's now, as if it had added it: whatever
			// the instance does with it, it can remove it.
			m.addrs.adopt(key)
			in.inherited = append(in.inherited, p)
			delete(m.leftovers, key)
		}
	}
	if t, ok := m.takeOver[c.Name]; ok {
		delete(m.takeOver, c.Name)
		in.takeOver = len(in.inherited) > 0 && t == handedOver(&c)
	}
	sock.mu.Lock()
	sock.byVRID[c.VRID] = in
	sock.mu.Unlock()
	ctx, cancel := context.WithCancel(m.ctx)
	m.insts[c.Name] = &managed{cfg: c, in: in, cancel: cancel, sock: sock, ifindex: ifi.Index, released: make(chan struct{})}
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		in.run(ctx)
	}()
	return nil
}

// stopLocked stops an instance. It hands off and leaves its socket in the
// background; released is closed when its slot is free.
func (m *Manager) stopLocked(name string, mi *managed) {
	delete(m.insts, name)
	mi.cancel()
	slot := slotOf(&mi.cfg)
	m.stopping[slot] = mi
	m.log.Info("instance stopping", "instance", name)
	m.wg.Add(1)
	go func() {
		defer m.wg.Done()
		<-mi.in.done
		m.mu.Lock()
		mi.sock.mu.Lock()
		if mi.sock.byVRID[mi.cfg.VRID] == mi.in {
			delete(mi.sock.byVRID, mi.cfg.VRID)
		}
		mi.sock.mu.Unlock()
		if m.stopping[slot] == mi {
			delete(m.stopping, slot)
		}
		if _, again := m.insts[name]; !again {
			m.metrics.forget(&mi.cfg)
		}
		m.closeIdleLocked()
		m.mu.Unlock()
		close(mi.released)
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
			if log.Enabled(context.Background(), slog.LevelDebug) {
				// Limited: the sources of a flood are whatever it
				// says they are.
				ok, suppressed := m.peerLog.allow(m.clock.Now(), "drop:"+string(reason)+":"+p.Src.String())
				if suppressed > 0 {
					logSuppressed(log, suppressed)
				}
				if ok {
					log.Debug("dropped VRRP packet", "from", p.Src, "reason", string(reason), "err", err)
				}
			}
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

// onLink follows a link change: tracked links feed the instances' Fault
// state; an interface that was re-created (new index) restarts its
// instances; one that appears starts those waiting for it; a new MAC is
// used in announcements from then on.
func (m *Manager) onLink(name string, info linkInfo) {
	m.mu.Lock()
	if a, ok := m.announcers[info.index]; ok && info.mac != "" {
		a.setMAC(info.mac)
	}
	var affected []*Instance
	for iname, mi := range m.insts {
		if info.index != 0 && mi.cfg.Interface == name && mi.ifindex != info.index && m.ctx.Err() == nil {
			m.log.Info("interface was re-created, restarting the instance", "instance", iname, "interface", name)
			m.stopLocked(iname, mi)
			m.pending[iname] = mi.cfg
			continue
		}
		if slices.Contains(mi.cfg.tracked(), name) {
			affected = append(affected, mi.in)
		}
	}
	if info.index != 0 {
		m.startPendingLocked(name)
	}
	m.mu.Unlock()
	if len(affected) > 0 {
		m.log.Info("tracked link changed", "link", name, "up", info.up)
	}
	for _, in := range affected {
		in.do(func() { in.handleLink(m.clock.Now(), name, info.up) })
	}
}

// startPendingLocked starts the instances waiting for interface name. One
// whose slot is still held by a router handing off is started once that
// router lets go. A started instance takes the current link state from the
// watcher; no older event is replayed to it.
func (m *Manager) startPendingLocked(name string) {
	if m.ctx.Err() != nil {
		return
	}
	for pname, c := range m.pending {
		if c.Interface != name {
			continue
		}
		if st, busy := m.stopping[slotOf(&c)]; busy {
			m.wg.Add(1)
			go func() {
				defer m.wg.Done()
				<-st.released
				m.mu.Lock()
				defer m.mu.Unlock()
				m.startPendingLocked(name)
			}()
			continue
		}
		if err := m.startLocked(c); err != nil {
			m.log.Warn("starting instance on its interface", "instance", pname, "err", err)
			continue
		}
		delete(m.pending, pname)
		m.log.Info("interface appeared, instance started", "instance", pname, "interface", name)
	}
}

// onAddrGone tells the instance that installed a VIP that someone else
// removed it.
//
// The kernel removes a link's IPv6 addresses, VIPs included, when the link
// is set down. That is no one else's doing, and putting the VIPs back on a
// down link (and announcing them there) is no use: the instance is told
// nothing, and its link state does the rest. Its own interface is always
// tracked, so the link change puts it in Fault, whose release of the VIPs
// finds them gone (not an error: keepvip no longer owns them), and when the
// link is up again it starts over as backup and adds them, once, if it
// becomes master. Until the link change reaches it, a master keeps
// counting the VIPs as installed, so that nothing retries adding them.
func (m *Manager) onAddrGone(ifindex int, p netip.Prefix) {
	if !m.addrs.gone(ifindex, p) {
		return // not ours, removed by keepvip itself, or back already
	}
	if why := kernelRemoved(ifindex); why != "" {
		m.log.Info("VIP removed by the kernel: "+why+"; it is added again when the router is master on an up link",
			"vip", p, "interface", ifName(ifindex))
		return
	}
	m.mu.Lock()
	var owners []*Instance
	for _, mi := range m.insts {
		// Every instance on the interface: the one that installed p
		// may no longer have it configured (a live change whose
		// removal is being retried).
		if mi.ifindex == ifindex {
			owners = append(owners, mi.in)
		}
	}
	m.mu.Unlock()
	for _, in := range owners {
		in.do(func() { in.vipGone(m.clock.Now(), p) })
	}
}

// resyncAddrs runs after each address subscription: the notifications of
// the gap before it are lost, so the addresses are listed once and every
// VIP keepvip owns but the kernel no longer has is taken as removed, as if
// its notification had arrived.
func (m *Manager) resyncAddrs() error {
	missing, err := m.addrs.missing()
	if err != nil {
		return fmt.Errorf("listing addresses to find VIPs removed unseen: %w", err)
	}
	for _, k := range missing {
		m.onAddrGone(k.ifindex, k.prefix)
	}
	return nil
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
	err := errors.Join(m.settleLeftoversLocked(), m.addrs.releaseAll())
	if err == nil {
		// No VIP of keepvip's is left whose removal it could matter to.
		err = m.addrs.restorePromote()
	}
	err = errors.Join(err, m.filter.Close())
	m.addrs.close()
	if m.lock != nil && !m.keepLock {
		m.lock.release()
		m.lock = nil
	}
	return err
}

// Unlock releases the network namespace's lock that Stop kept
// (Options.KeepLock).
func (m *Manager) Unlock() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.lock != nil {
		m.lock.release()
		m.lock = nil
	}
}

// Leave stops every instance for a keepvip that takes over on this host
// (see Handover), as a process that is replaced in place should: nothing
// the other routers or the clients see changes. A master sends one last
// advert at its own priority, so that the backups' Master_Down_Timer
// starts again from now, and keeps its VIPs, their filters and
// promote_secondaries; a backup simply stops. The namespace's lock is
// released for the successor, which starts with the Handover as
// Options.Inherit. An instance handing off at the moment (its
// configuration was removed) finishes its handoff.
func (m *Manager) Leave() Handover {
	m.mu.Lock()
	m.leaving.Store(true)
	m.cancel()
	m.mu.Unlock()
	m.wg.Wait()
	m.mu.Lock()
	defer m.mu.Unlock()
	var h Handover
	for name, mi := range m.insts {
		if mi.in.leftMaster {
			h.Masters = append(h.Masters, handedOver(&mi.cfg))
		}
		mi.sock.mu.Lock()
		delete(mi.sock.byVRID, mi.cfg.VRID)
		mi.sock.mu.Unlock()
		delete(m.insts, name)
	}
	slices.SortFunc(h.Masters, func(a, b HandedOver) int { return strings.Compare(a.Name, b.Name) })
	m.closeIdleLocked()
	h.Promote = m.addrs.leave()
	m.addrs.close()
	if m.lock != nil {
		m.lock.release()
		m.lock = nil
	}
	return h
}
