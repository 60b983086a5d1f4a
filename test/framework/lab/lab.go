// Package lab builds throwaway network labs in Linux network namespaces for
// end-to-end tests, demos and benchmarks.
//
// A Lab is one "switch" namespace holding a Linux bridge br0, plus any
// number of nodes. Each node is its own network namespace whose eth0 is a
// veth connected to a port of br0. Everything a Lab creates (namespaces,
// processes, sockets, its temporary directory) is removed by Close.
//
// Names are unique per Lab (kvlab-<pid>-<random>-...), so labs can run
// concurrently and repeatedly. Every process the package starts gets
// SIGKILL as its parent-death signal, so if the Go program dies without
// calling Close its children die with it; the namespaces and temporary
// directories it left behind are removed by the next New (see
// CleanupStale).
//
// All of this needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN). Tests call
// Require first.
package lab

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	// nsPrefix starts every namespace and temporary directory name.
	nsPrefix = "kvlab-"
	// cmdTimeout bounds every setup/teardown command.
	cmdTimeout = 30 * time.Second
	// BridgeName is the bridge in the switch namespace.
	BridgeName = "br0"
	// NodeIfName is the name of every node's interface to the switch.
	NodeIfName = "eth0"
	// EnvKeep, when "1", makes Close keep the temporary directory (logs,
	// configs, captures) and log where it is.
	EnvKeep = "KEEPVIP_LAB_KEEP"
	// keepMarker is the file that marks a directory kept by EnvKeep.
	keepMarker = ".keep"
)

// nodeNameRE restricts node names so that the switch port "p-<name>" is a
// valid interface name of at most 15 characters.
var nodeNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,12}$`)

// nsAddMu serialises `ip netns add` within this process: the first call
// on a machine sets up the /run/netns mount, which is racy.
var nsAddMu sync.Mutex

// Lab is a set of network namespaces connected by a bridge. Create it with
// New and always Close it.
type Lab struct {
	id    string
	swNS  string
	dir   string
	logf  func(format string, args ...any)
	start time.Time
	quiet atomic.Bool // set when Close returns: no more logging

	mu      sync.Mutex
	closed  bool
	nodes   []*Node
	ns      []string // every namespace created, in creation order
	procs   []*Proc
	closers map[int]func() // run in reverse order by Close before killing procs
	nextID  int
	cut     map[string]bool
	logSeq  map[string]int
}

// New creates a lab: a unique id, a temporary directory and a switch
// namespace holding a bridge br0 (STP off, forward delay 0, multicast
// snooping off, so multicast is flooded to every port). logf receives
// progress messages; nil discards them. Namespaces and directories left by
// dead processes are removed first (CleanupStale).
func New(logf func(format string, args ...any)) (l *Lab, err error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	if err := CleanupStale(logf); err != nil {
		logf("lab: cleaning stale labs: %v", err)
	}
	var rnd [4]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("creating lab id: %w", err)
	}
	id := fmt.Sprintf("%s%d-%x", nsPrefix, os.Getpid(), rnd[:3])
	dir, err := os.MkdirTemp("", id+"-")
	if err != nil {
		return nil, fmt.Errorf("creating lab %s: %w", id, err)
	}
	l = &Lab{
		id:     id,
		swNS:   id + "-sw",
		dir:    dir,
		start:  time.Now(),
		cut:    map[string]bool{},
		logSeq: map[string]int{},
	}
	// A test's t.Logf must not be called once the test is over.
	l.logf = func(format string, args ...any) {
		if !l.quiet.Load() {
			logf(format, args...)
		}
	}
	defer func() {
		if err != nil {
			l.Close()
			l = nil
		}
	}()
	if err := l.addNS(l.swNS); err != nil {
		return nil, fmt.Errorf("creating lab %s: %w", id, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	// The switch needs no IPv6 of its own: it would only add noise
	// (router solicitations, MLD) to captures.
	if err := l.sysctl(ctx, l.swNS,
		"net.ipv6.conf.all.disable_ipv6=1",
		"net.ipv6.conf.default.disable_ipv6=1",
	); err != nil {
		return nil, fmt.Errorf("creating lab %s: %w", id, err)
	}
	steps := [][]string{
		{"-n", l.swNS, "link", "set", "lo", "up"},
		{"-n", l.swNS, "link", "add", BridgeName, "type", "bridge",
			"stp_state", "0", "forward_delay", "0", "mcast_snooping", "0"},
		{"-n", l.swNS, "link", "set", BridgeName, "up"},
	}
	for _, s := range steps {
		if _, err := runCmd(ctx, "ip", s...); err != nil {
			return nil, fmt.Errorf("creating lab %s: %w", id, err)
		}
	}
	logf("lab %s: created (dir %s)", id, dir)
	return l, nil
}

// ID is the lab's unique id; every namespace name starts with it.
func (l *Lab) ID() string { return l.id }

// Dir is the lab's temporary directory for configs, sockets, logs and
// captures. Close removes it (unless KEEPVIP_LAB_KEEP=1).
func (l *Lab) Dir() string { return l.dir }

// SwitchNS is the name of the namespace holding the bridge.
func (l *Lab) SwitchNS() string { return l.swNS }

// Logf logs through the function given to New (until Close has
// returned).
func (l *Lab) Logf(format string, args ...any) { l.logf(format, args...) }

// Nodes returns the nodes in the order they were added.
func (l *Lab) Nodes() []*Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*Node(nil), l.nodes...)
}

// Node returns the node called name, or nil.
func (l *Lab) Node(name string) *Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, n := range l.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// addNS creates a namespace and records it for Close.
func (l *Lab) addNS(name string) error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return errLabClosed
	}
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	nsAddMu.Lock()
	_, err := runCmd(ctx, "ip", "netns", "add", name)
	nsAddMu.Unlock()
	if err != nil {
		return fmt.Errorf("creating namespace %s: %w", name, err)
	}
	l.mu.Lock()
	if l.closed { // Close ran meanwhile and cannot know about it
		l.mu.Unlock()
		deleteNS(name)
		return errLabClosed
	}
	l.ns = append(l.ns, name)
	l.mu.Unlock()
	return nil
}

// errLabClosed is returned when a lab is used after Close.
var errLabClosed = errors.New("lab is closed")

// addCloser registers f to run at Close, before processes are killed, and
// returns a function that unregisters it. It fails if the lab is closed.
func (l *Lab) addCloser(f func()) (remove func(), err error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil, errLabClosed
	}
	if l.closers == nil {
		l.closers = map[int]func(){}
	}
	id := l.nextID
	l.nextID++
	l.closers[id] = f
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		delete(l.closers, id)
	}, nil
}

// addProc records p so that Close kills it.
func (l *Lab) addProc(p *Proc) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.procs = append(l.procs, p)
}

// logPath returns a fresh log file path in Dir for base.
func (l *Lab) logPath(base string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.logSeq[base]++
	if n := l.logSeq[base]; n > 1 {
		base = fmt.Sprintf("%s-%d", base, n)
	}
	return filepath.Join(l.dir, base+".log")
}

func (l *Lab) sysctl(ctx context.Context, ns string, settings ...string) error {
	args := append([]string{"netns", "exec", ns, "sysctl", "-q", "-w"}, settings...)
	if _, err := runCmd(ctx, "ip", args...); err != nil {
		return fmt.Errorf("sysctl in %s: %w", ns, err)
	}
	return nil
}

// AddNode creates a node: a namespace with loopback up and an interface
// eth0 whose other end is the port "p-<name>" on br0. eth0 gets the
// deterministic MAC 02:00:00:00:HH:LL (HH:LL = the node's 1-based index
// in the lab), an EUI-64 IPv6 link-local address, and v4 and v6 if they
// are valid (pass netip.Prefix{} to leave one out). IPv6 duplicate address
// detection is off in the node, so its addresses are usable at once.
// name must be 1-13 characters of [A-Za-z0-9_-].
func (l *Lab) AddNode(name string, v4, v6 netip.Prefix) (n *Node, err error) {
	if !nodeNameRE.MatchString(name) {
		return nil, fmt.Errorf("adding node %q: name must match %s", name, nodeNameRE)
	}
	if v4.IsValid() && !v4.Addr().Is4() {
		return nil, fmt.Errorf("adding node %s: %v is not an IPv4 prefix", name, v4)
	}
	if v6.IsValid() && (!v6.Addr().Is6() || v6.Addr().Is4In6()) {
		return nil, fmt.Errorf("adding node %s: %v is not an IPv6 prefix", name, v6)
	}
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, fmt.Errorf("adding node %s: lab is closed", name)
	}
	for _, o := range l.nodes {
		if o.Name == name {
			l.mu.Unlock()
			return nil, fmt.Errorf("adding node %s: name already used", name)
		}
	}
	idx := len(l.nodes) + 1
	n = &Node{
		Name:   name,
		NS:     l.id + "-n-" + name,
		IfName: NodeIfName,
		MAC:    net.HardwareAddr{0x02, 0, 0, 0, byte(idx >> 8), byte(idx)},
		IPv4:   v4,
		IPv6:   v6,
		Port:   "p-" + name,
		lab:    l,
	}
	n.LinkLocal = eui64LinkLocal(n.MAC)
	// Reserve the name while we build the node.
	l.nodes = append(l.nodes, n)
	l.mu.Unlock()

	defer func() {
		if err != nil {
			l.removeNode(n)
			err = fmt.Errorf("adding node %s: %w", name, err)
		}
	}()
	if err := l.addNS(n.NS); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	// Before eth0 exists, so that it inherits "default".
	if err := l.sysctl(ctx, n.NS,
		"net.ipv6.conf.all.accept_dad=0",
		"net.ipv6.conf.default.accept_dad=0",
	); err != nil {
		return nil, err
	}
	steps := [][]string{
		{"-n", n.NS, "link", "set", "lo", "up"},
		{"-n", l.swNS, "link", "add", n.Port, "type", "veth", "peer", "name", n.IfName, "netns", n.NS},
		{"-n", l.swNS, "link", "set", n.Port, "master", BridgeName},
		{"-n", l.swNS, "link", "set", n.Port, "up"},
		{"-n", n.NS, "link", "set", n.IfName, "address", n.MAC.String()},
		{"-n", n.NS, "link", "set", n.IfName, "addrgenmode", "eui64"},
	}
	if v4.IsValid() {
		steps = append(steps, []string{"-n", n.NS, "addr", "add", v4.String(), "dev", n.IfName})
	}
	if v6.IsValid() {
		steps = append(steps, []string{"-n", n.NS, "addr", "add", v6.String(), "dev", n.IfName, "nodad"})
	}
	steps = append(steps, []string{"-n", n.NS, "link", "set", n.IfName, "up"})
	for _, s := range steps {
		if _, err := runCmd(ctx, "ip", s...); err != nil {
			return nil, err
		}
	}
	// The link-local address appears when eth0 gets carrier; wait for it
	// so that callers can use it at once.
	if err := n.waitAddr(ctx, n.LinkLocal); err != nil {
		return nil, err
	}
	l.logf("lab %s: node %s ns=%s mac=%s v4=%v v6=%v ll=%v", l.id, name, n.NS, n.MAC, v4, v6, n.LinkLocal)
	return n, nil
}

// removeNode undoes a failed AddNode.
func (l *Lab) removeNode(n *Node) {
	l.mu.Lock()
	for i, o := range l.nodes {
		if o == n {
			l.nodes = append(l.nodes[:i], l.nodes[i+1:]...)
			break
		}
	}
	found := false
	for i, ns := range l.ns {
		if ns == n.NS {
			l.ns = append(l.ns[:i], l.ns[i+1:]...)
			found = true
			break
		}
	}
	l.mu.Unlock()
	if found {
		if err := deleteNS(n.NS); err != nil {
			l.logf("lab %s: %v", l.id, err)
		}
	}
}

// eui64LinkLocal is the fe80::/64 address the kernel derives from mac
// with addrgenmode eui64.
func eui64LinkLocal(mac net.HardwareAddr) netip.Addr {
	var b [16]byte
	b[0], b[1] = 0xfe, 0x80
	b[8] = mac[0] ^ 0x02
	b[9], b[10] = mac[1], mac[2]
	b[11], b[12] = 0xff, 0xfe
	b[13], b[14], b[15] = mac[3], mac[4], mac[5]
	return netip.AddrFrom16(b)
}

// CutLink partitions n from the switch without any carrier change: its
// bridge port is detached from br0 (`ip link set p-<name> nomaster` in
// the switch namespace), so no frame (unicast, multicast or broadcast)
// passes in either direction while n's eth0 stays UP with LOWER_UP. The
// cut survives LinkDown/LinkUp. HealLink undoes it.
func (l *Lab) CutLink(n *Node) error {
	l.mu.Lock()
	l.cut[n.Name] = true
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if _, err := runCmd(ctx, "ip", "-n", l.swNS, "link", "set", n.Port, "nomaster"); err != nil {
		return fmt.Errorf("cutting link of %s: %w", n.Name, err)
	}
	l.logf("lab %s: cut link of %s", l.id, n.Name)
	return nil
}

// HealLink reattaches n's port to br0 after CutLink. The port forwards at
// once (STP is off).
func (l *Lab) HealLink(n *Node) error {
	l.mu.Lock()
	delete(l.cut, n.Name)
	l.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if _, err := runCmd(ctx, "ip", "-n", l.swNS, "link", "set", n.Port, "master", BridgeName); err != nil {
		return fmt.Errorf("healing link of %s: %w", n.Name, err)
	}
	l.logf("lab %s: healed link of %s", l.id, n.Name)
	return nil
}

// LinkDown sets n's switch port administratively down, so n's eth0 loses
// carrier (NO-CARRIER, operstate DOWN, no LOWER_UP) while staying UP.
func (l *Lab) LinkDown(n *Node) error {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if _, err := runCmd(ctx, "ip", "-n", l.swNS, "link", "set", n.Port, "down"); err != nil {
		return fmt.Errorf("taking link of %s down: %w", n.Name, err)
	}
	l.logf("lab %s: link of %s down", l.id, n.Name)
	return nil
}

// LinkUp sets n's switch port up again, so n's eth0 regains carrier.
func (l *Lab) LinkUp(n *Node) error {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if _, err := runCmd(ctx, "ip", "-n", l.swNS, "link", "set", n.Port, "up"); err != nil {
		return fmt.Errorf("bringing link of %s up: %w", n.Name, err)
	}
	l.logf("lab %s: link of %s up", l.id, n.Name)
	return nil
}

// Close stops every prober, watcher and capture, SIGKILLs every process
// the lab started (by PID, and their process groups) and waits for them,
// kills any other process still inside the lab's namespaces, deletes the
// namespaces and removes Dir. It is safe to call more than once and from
// several goroutines; later calls return nil.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	closers := l.closers
	procs := l.procs
	nss := l.ns
	l.closers, l.procs, l.ns = nil, nil, nil
	l.mu.Unlock()

	var errs []error
	ids := make([]int, 0, len(closers))
	for id := range closers {
		ids = append(ids, id)
	}
	sort.Sort(sort.Reverse(sort.IntSlice(ids)))
	for _, id := range ids {
		closers[id]()
	}
	for i := len(procs) - 1; i >= 0; i-- {
		if err := procs[i].Kill(); err != nil {
			errs = append(errs, err)
		}
	}
	// Nodes first, the switch last.
	for i := len(nss) - 1; i >= 0; i-- {
		if err := deleteNS(nss[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if os.Getenv(EnvKeep) == "1" {
		// The marker keeps other labs' CleanupStale off it.
		_ = os.WriteFile(filepath.Join(l.dir, keepMarker), nil, 0o644)
		l.logf("lab %s: keeping %s (%s=1)", l.id, l.dir, EnvKeep)
	} else if err := removeDir(l.dir); err != nil {
		errs = append(errs, err)
	}
	l.logf("lab %s: closed after %v", l.id, time.Since(l.start).Round(time.Millisecond))
	l.quiet.Store(true)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("closing lab %s: %w", l.id, err)
	}
	return nil
}

// nsPIDs lists the processes inside namespace ns.
func nsPIDs(ns string) ([]int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := runCmd(ctx, "ip", "netns", "pids", ns)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 0 && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// deleteNS SIGKILLs every process left inside ns (by PID), waits a little
// for them to go, and deletes ns.
func deleteNS(ns string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		pids, err := nsPIDs(ns)
		if err != nil || len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("deleting namespace %s: processes %v survive SIGKILL", ns, pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if _, err := runCmd(ctx, "ip", "netns", "delete", ns); err != nil {
		if _, statErr := os.Stat(filepath.Join("/run/netns", ns)); errors.Is(statErr, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("deleting namespace %s: %w", ns, err)
	}
	return nil
}

var staleRE = regexp.MustCompile(`^` + regexp.QuoteMeta(nsPrefix) + `(\d+)-[0-9a-f]+-`)

// stalePID reports whether name belongs to a lab of a process that no
// longer exists.
func stalePID(name string) bool {
	m := staleRE.FindStringSubmatch(name)
	if m == nil {
		return false
	}
	pid, err := strconv.Atoi(m[1])
	if err != nil || pid <= 0 || pid == os.Getpid() {
		return false
	}
	err = syscall.Kill(pid, 0)
	return errors.Is(err, syscall.ESRCH)
}

// CleanupStale deletes the namespaces and temporary directories of labs
// whose process has died without closing them (for example a test binary
// killed by its timeout), after SIGKILLing any process still inside those
// namespaces. Labs of live processes are left alone. New calls it.
func CleanupStale(logf func(format string, args ...any)) error {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	var errs []error
	entries, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	// Nodes before switches: "-n-" sorts before "-sw".
	for _, e := range entries {
		if stalePID(e.Name()) {
			logf("lab: removing stale namespace %s", e.Name())
			if err := deleteNS(e.Name()); err != nil {
				errs = append(errs, err)
			}
		}
	}
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), nsPrefix+"*"))
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, keepMarker)); err == nil {
			continue // kept on purpose (KEEPVIP_LAB_KEEP=1)
		}
		if stalePID(filepath.Base(d)) {
			logf("lab: removing stale directory %s", d)
			if err := removeDir(d); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// removeDir removes a lab directory after unmounting what is mounted
// below it (deepest first, lazily): the frameworks built on labs mount
// there (test/framework/kubenodes pins mount namespaces), and a test
// killed before its cleanup leaves those mounts.
func removeDir(dir string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var mounts []string
	for _, l := range strings.Split(string(b), "\n") {
		// Field 5 is the mount point, with spaces and the like octal-escaped.
		if f := strings.Fields(l); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			mounts = append(mounts, f[4])
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(mounts)))
	var errs []error
	for _, m := range mounts {
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil && !errors.Is(err, syscall.EINVAL) && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", m, err))
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		errs = append(errs, fmt.Errorf("removing lab dir: %w", err))
	}
	return errors.Join(errs...)
}
