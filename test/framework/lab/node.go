package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"golang.org/x/sys/unix"
)

// Node is a network namespace attached to the lab's bridge.
type Node struct {
	// Name is the node's name within the lab.
	Name string
	// NS is the network namespace's name (for `ip netns exec`).
	NS string
	// IfName is the node's interface to the switch ("eth0").
	IfName string
	// MAC is eth0's address, 02:00:00:00:HH:LL.
	MAC net.HardwareAddr
	// IPv4 and IPv6 are the addresses given to AddNode (zero if none).
	IPv4 netip.Prefix
	IPv6 netip.Prefix
	// LinkLocal is eth0's EUI-64 IPv6 link-local address (no zone).
	LinkLocal netip.Addr
	// Port is the node's port on br0 in the switch namespace ("p-<name>").
	Port string

	lab *Lab
}

// Lab returns the lab n belongs to.
func (n *Node) Lab() *Lab { return n.lab }

// String returns the node's name.
func (n *Node) String() string { return n.Name }

// LinkLocalZoned is LinkLocal with eth0 as its zone. Note that the net
// package resolves zone names in the namespace of whichever thread sends,
// so use numeric zones (see IfIndex) with sockets of your own; the
// Prober and Ping do that for you.
func (n *Node) LinkLocalZoned() netip.Addr { return n.LinkLocal.WithZone(n.IfName) }

// Exec runs args inside n's namespace (`ip netns exec NS args...`) and
// returns the combined output. The error includes the output.
func (n *Node) Exec(ctx context.Context, args ...string) ([]byte, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("exec in %s: no command", n.Name)
	}
	out, err := runCmd(ctx, "ip", append([]string{"netns", "exec", n.NS}, args...)...)
	if err != nil {
		return out, fmt.Errorf("exec in %s: %w", n.Name, err)
	}
	return out, nil
}

// Start starts a long-running process inside n's namespace. Its stdout and
// stderr go to a log file in the lab's Dir (see Proc.Log). `ip netns exec`
// execs the command, so Proc.PID is the command's own PID. The process
// leads a new process group and gets SIGKILL if this program dies; Close
// kills it.
func (n *Node) Start(name string, args ...string) (*Proc, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("starting %s in %s: no command", name, n.Name)
	}
	l := n.lab
	l.mu.Lock()
	closed := l.closed
	l.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("starting %s in %s: lab is closed", name, n.Name)
	}
	logPath := l.logPath(n.Name + "-" + filepath.Base(name))
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("starting %s in %s: %w", name, n.Name, err)
	}
	defer f.Close() // the child has its own copy
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.NS}, args...)...)
	cmd.Stdout = f
	cmd.Stderr = f
	if err := startCmd(cmd); err != nil {
		return nil, fmt.Errorf("starting %s in %s: %w", name, n.Name, err)
	}
	p := newProc(name, n, cmd, logPath)
	l.addProc(p)
	l.logf("lab %s: %s: started %s (pid %d): %s", l.id, n.Name, name, p.PID(), cmdString(args[0], args[1:]))
	// If the lab was closed meanwhile, Close may have missed p.
	l.mu.Lock()
	closed = l.closed
	l.mu.Unlock()
	if closed {
		p.Kill()
		return nil, fmt.Errorf("starting %s in %s: lab is closed", name, n.Name)
	}
	return p, nil
}

// Do runs fn on a fresh OS thread that has entered n's network namespace
// and returns fn's error. Sockets that fn opens belong to n's namespace
// and may be used from any goroutine afterwards. fn must not start
// goroutines that expect to be in the namespace. The thread is never
// returned to the Go scheduler: it exits when fn returns, so the
// namespace cannot leak into other goroutines.
func (n *Node) Do(fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // no Unlock: the thread exits with this goroutine
		err := func() (err error) {
			defer func() {
				if r := recover(); r != nil {
					err = fmt.Errorf("panic in %s: %v", n.Name, r)
				}
			}()
			fd, err := unix.Open(filepath.Join("/run/netns", n.NS), unix.O_RDONLY|unix.O_CLOEXEC, 0)
			if err != nil {
				return fmt.Errorf("opening namespace %s: %w", n.NS, err)
			}
			err = unix.Setns(fd, unix.CLONE_NEWNET)
			unix.Close(fd)
			if err != nil {
				return fmt.Errorf("entering namespace %s: %w", n.NS, err)
			}
			return fn()
		}()
		errc <- err
	}()
	return <-errc
}

// IfIndex returns the index of eth0 inside n's namespace.
func (n *Node) IfIndex() (int, error) {
	var idx int
	err := n.Do(func() error {
		var err error
		idx, err = ifIndex(n.IfName)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("index of %s in %s: %w", n.IfName, n.Name, err)
	}
	return idx, nil
}

// ifIndex returns the index of interface name in the calling thread's
// network namespace. Unlike net.InterfaceByName it does not feed the net
// package's process-wide cache of zone names, which would then resolve
// "eth0" to the index of some other namespace's eth0.
func ifIndex(name string) (int, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		return 0, err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFINDEX, ifr); err != nil {
		return 0, fmt.Errorf("SIOCGIFINDEX %s: %w", name, err)
	}
	return int(ifr.Uint32()), nil
}

// Link is the state of an interface as `ip -j link` reports it.
type Link struct {
	Flags     []string `json:"flags"`
	OperState string   `json:"operstate"`
	Master    string   `json:"master"`
}

// Has reports whether flag (e.g. "LOWER_UP", "NO-CARRIER", "UP") is set.
func (k Link) Has(flag string) bool { return slices.Contains(k.Flags, flag) }

// Carrier reports whether the link has carrier (LOWER_UP).
func (k Link) Carrier() bool { return k.Has("LOWER_UP") }

// Link returns the state of n's eth0.
func (n *Node) Link(ctx context.Context) (Link, error) {
	return linkState(ctx, n.NS, n.IfName)
}

// PortLink returns the state of n's port in the switch namespace.
func (n *Node) PortLink(ctx context.Context) (Link, error) {
	return linkState(ctx, n.lab.swNS, n.Port)
}

func linkState(ctx context.Context, ns, ifname string) (Link, error) {
	out, err := runStdout(ctx, "ip", "-n", ns, "-j", "link", "show", "dev", ifname)
	if err != nil {
		return Link{}, fmt.Errorf("reading link %s in %s: %w", ifname, ns, err)
	}
	var ls []Link
	if err := json.Unmarshal(out, &ls); err != nil || len(ls) != 1 {
		return Link{}, fmt.Errorf("reading link %s in %s: bad output %q: %v", ifname, ns, out, err)
	}
	return ls[0], nil
}

// Addrs returns the addresses on n's eth0.
func (n *Node) Addrs(ctx context.Context) ([]netip.Prefix, error) {
	out, err := runStdout(ctx, "ip", "-n", n.NS, "-j", "addr", "show", "dev", n.IfName)
	if err != nil {
		return nil, fmt.Errorf("reading addresses of %s: %w", n.Name, err)
	}
	var ls []struct {
		AddrInfo []struct {
			Local     string `json:"local"`
			PrefixLen int    `json:"prefixlen"`
		} `json:"addr_info"`
	}
	if err := json.Unmarshal(out, &ls); err != nil {
		return nil, fmt.Errorf("reading addresses of %s: %w", n.Name, err)
	}
	var ps []netip.Prefix
	for _, l := range ls {
		for _, a := range l.AddrInfo {
			if ad, err := netip.ParseAddr(a.Local); err == nil {
				ps = append(ps, netip.PrefixFrom(ad, a.PrefixLen))
			}
		}
	}
	return ps, nil
}

// HasAddr reports whether a is configured on n's eth0.
func (n *Node) HasAddr(ctx context.Context, a netip.Addr) (bool, error) {
	ps, err := n.Addrs(ctx)
	if err != nil {
		return false, err
	}
	for _, p := range ps {
		if p.Addr() == a.WithZone("") {
			return true, nil
		}
	}
	return false, nil
}

func (n *Node) waitAddr(ctx context.Context, a netip.Addr) error {
	for {
		ok, err := n.HasAddr(ctx, a)
		if err != nil {
			return err
		}
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %v on %s: %w", a, n.Name, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Ping sends ICMP echo requests from n to target every 50 ms until one is
// answered or ctx is done, and returns the round-trip time of the answered
// one. Use a zoned address (LinkLocalZoned) for link-local targets.
func (n *Node) Ping(ctx context.Context, target netip.Addr) (time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	p, err := StartProber(ctx, n, target, 50*time.Millisecond)
	if err != nil {
		return 0, err
	}
	defer p.Stop()
	for {
		for _, pr := range p.Probes() {
			if pr.Replied() {
				return pr.RTT(), nil
			}
		}
		select {
		case <-ctx.Done():
			st := p.Stats()
			return 0, fmt.Errorf("ping %v from %s: %d sent, no reply: %w", target, n.Name, st.Sent, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
