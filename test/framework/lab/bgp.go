package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// FRR is FRR's bgpd running in a node, queried with vtysh on a socket of
// its own: alone (StartFRR, -Z: routes are learnt into its BGP table, not
// installed in the kernel), or with zebra and bfdd (StartFRRWithZebra).
type FRR struct {
	node *Node
	proc *Proc
	dir  string
	// helpers are zebra and bfdd, with StartFRRWithZebra.
	helpers []*Proc
}

// FRRBinary is where Debian's frr package puts bgpd.
const FRRBinary = "/usr/lib/frr/bgpd"

// frrBinary is bgpd on PATH (the test VM copies it there), else
// FRRBinary.
func frrBinary() string {
	if p, err := exec.LookPath("bgpd"); err == nil {
		return p
	}
	return FRRBinary
}

// StartFRR runs bgpd in n with conf (FRR's configuration language) and
// waits until vtysh answers.
func (n *Node) StartFRR(conf string) (*FRR, error) {
	dir := filepath.Join(n.lab.dir, "frr-"+n.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("FRR in %s: %w", n.Name, err)
	}
	path := filepath.Join(dir, "bgpd.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("FRR in %s: %w", n.Name, err)
	}
	// -S: stay root, so that it needs no frr-owned directories; -N: its
	// own path space, so that nothing clashes with another bgpd.
	p, err := n.Start("bgpd", frrBinary(), "-Z", "-S", "-N", n.lab.id+"-"+n.Name, "-f", path,
		"-i", filepath.Join(dir, "bgpd.pid"), "--vty_socket", dir, "--log", "stdout")
	if err != nil {
		return nil, err
	}
	f := &FRR{node: n, proc: p, dir: dir}
	if err := f.waitVTY(); err != nil {
		p.Kill()
		return nil, fmt.Errorf("FRR in %s: %w", n.Name, err)
	}
	return f, nil
}

// waitVTY waits until bgpd answers vtysh.
func (f *FRR) waitVTY() error {
	return waitWhile(f.proc, 10*time.Second, 50*time.Millisecond, "vtysh answering", func() error {
		_, err := f.VTY(context.Background(), "show bgp summary")
		return err
	})
}

// waitWhile waits, as long as p runs, until try succeeds; it fails when
// p exits or after timeout, with try's last error and p's log.
func waitWhile(p *Proc, timeout, every time.Duration, what string, try func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := try()
		if err == nil {
			return nil
		}
		select {
		case <-p.Exited():
			return fmt.Errorf("%s exited before %s: %v\n%s", p.Name, what, p.Wait(), p.Log())
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %s after %s: %v\n%s", what, timeout, err, p.Log())
		}
		time.Sleep(every)
	}
}

// StartFRRWithZebra runs FRR as a router does: zebra (which installs the
// routes bgpd learns in n's routing table), bfdd when withBFD (bgpd's
// `neighbor … bfd` sessions), and bgpd with conf, and waits until bgpd's
// vtysh answers. zebra and bfdd drop to Debian's frr user, so their
// directory is opened to it; bgpd stays root (-S).
func (n *Node) StartFRRWithZebra(conf string, withBFD bool) (*FRR, error) {
	dir := filepath.Join(n.lab.dir, "frr-"+n.Name)
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return nil, fmt.Errorf("FRR in %s: %w", n.Name, err)
	}
	// The frr user must reach the directory: the lab's is 0700.
	for _, d := range []string{n.lab.dir, dir} {
		mode := os.FileMode(0o711)
		if d == dir {
			mode = 0o777
		}
		if err := os.Chmod(d, mode); err != nil {
			return nil, fmt.Errorf("FRR in %s: %w", n.Name, err)
		}
	}
	// Milliseconds in the logs, to time bfdd's state changes.
	const logConf = "log timestamp precision 3\n"
	// bfdd logs its sessions' state changes with debug bfd peer.
	files := map[string]string{"zebra.conf": logConf, "bfdd.conf": logConf + "debug bfd peer\n", "bgpd.conf": conf}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
			return nil, fmt.Errorf("FRR in %s: %w", n.Name, err)
		}
	}
	zserv := filepath.Join(dir, "zserv.api")
	common := func(daemon string) []string {
		return []string{"-N", n.lab.id + "-" + n.Name, "-f", filepath.Join(dir, daemon+".conf"), "-i", filepath.Join(dir, daemon+".pid"),
			"-z", zserv, "--vty_socket", dir, "--log", "stdout"}
	}
	f := &FRR{node: n, dir: dir}
	zebra, err := n.Start("zebra", append([]string{filepath.Join(filepath.Dir(FRRBinary), "zebra")}, common("zebra")...)...)
	if err != nil {
		return nil, err
	}
	f.helpers = append(f.helpers, zebra)
	if err := waitFile(zserv, zebra, 10*time.Second); err != nil {
		f.killAll()
		return nil, fmt.Errorf("FRR in %s: zebra: %w", n.Name, err)
	}
	if withBFD {
		args := append([]string{filepath.Join(filepath.Dir(FRRBinary), "bfdd")}, common("bfdd")...)
		bfdd, err := n.Start("bfdd", append(args, "--bfdctl", filepath.Join(dir, "bfdd.sock"))...)
		if err != nil {
			f.killAll()
			return nil, err
		}
		f.helpers = append(f.helpers, bfdd)
		if err := waitFile(filepath.Join(dir, "bfdd.vty"), bfdd, 10*time.Second); err != nil {
			f.killAll()
			return nil, fmt.Errorf("FRR in %s: bfdd: %w", n.Name, err)
		}
	}
	p, err := n.Start("bgpd", append([]string{frrBinary(), "-S"}, common("bgpd")...)...)
	if err != nil {
		f.killAll()
		return nil, err
	}
	f.proc = p
	if err := f.waitVTY(); err != nil {
		f.killAll()
		return nil, fmt.Errorf("FRR in %s: %w", n.Name, err)
	}
	return f, nil
}

// waitFile waits until path exists, while p runs.
func waitFile(path string, p *Proc, timeout time.Duration) error {
	return waitWhile(p, timeout, 20*time.Millisecond, path, func() error {
		_, err := os.Stat(path)
		return err
	})
}

// Daemon returns the process of one of f's daemons (bgpd, zebra, bfdd),
// or nil.
func (f *FRR) Daemon(name string) *Proc {
	for _, p := range append(f.helpers, f.proc) {
		if p != nil && p.Name == name {
			return p
		}
	}
	return nil
}

// killAll kills every FRR daemon of f.
func (f *FRR) killAll() {
	for _, p := range append(f.helpers, f.proc) {
		if p != nil {
			p.Kill()
		}
	}
}

// BFDVTY runs one vtysh command against this FRR's bfdd.
func (f *FRR) BFDVTY(ctx context.Context, cmd string) (string, error) {
	out, err := exec.CommandContext(ctx, "vtysh", "--vty_socket", f.dir, "-d", "bfdd", "-c", cmd).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("vtysh -d bfdd -c %q in %s: %w: %s", cmd, f.node.Name, err, out)
	}
	return string(out), nil
}

// VTY runs one vtysh command against this bgpd.
func (f *FRR) VTY(ctx context.Context, cmd string) (string, error) {
	c := exec.CommandContext(ctx, "vtysh", "--vty_socket", f.dir, "-d", "bgpd", "-c", cmd)
	out, err := c.Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		return string(out), fmt.Errorf("vtysh -c %q in %s: %w: %s%s", cmd, f.node.Name, err, out, stderr)
	}
	return string(out), nil
}

// FRRPath is one path of a prefix in FRR's BGP table, from its JSON.
type FRRPath struct {
	Valid     bool   `json:"valid"`
	Best      bool   `json:"bestpath"`
	Path      string `json:"path"` // the AS path, e.g. "65001 65001"
	Med       *int   `json:"metric"`
	LocalPref *int   `json:"locPrf"`
	Community *struct {
		String string `json:"string"`
	} `json:"community"`
	PeerID   string `json:"peerId"`
	Nexthops []struct {
		IP string `json:"ip"`
	} `json:"nexthops"`
}

// Routes returns FRR's BGP table of a family ("ipv4" or "ipv6"), by
// prefix.
func (f *FRR) Routes(ctx context.Context, family string) (map[string][]FRRPath, error) {
	out, err := f.VTY(ctx, "show bgp "+family+" unicast json")
	if err != nil {
		return nil, err
	}
	var t struct {
		Routes map[string][]FRRPath `json:"routes"`
	}
	if err := json.Unmarshal([]byte(out), &t); err != nil {
		return nil, fmt.Errorf("reading FRR's table: %w: %s", err, out)
	}
	return t.Routes, nil
}

// FRRDetail is one path of a prefix as `show bgp ... PREFIX json` gives
// it, with the attributes the table listing leaves out.
type FRRDetail struct {
	ASPath struct {
		String string `json:"string"`
	} `json:"aspath"`
	Med       *int `json:"metric"`
	LocalPref *int `json:"locPrf"`
	Community *struct {
		String string `json:"string"`
	} `json:"community"`
	Nexthops []struct {
		IP string `json:"ip"`
	} `json:"nexthops"`
	Peer struct {
		PeerID string `json:"peerId"`
	} `json:"peer"`
	BestPath *struct {
		Overall bool `json:"overall"`
	} `json:"bestpath"`
}

// Best reports whether this is FRR's best path.
func (d FRRDetail) Best() bool { return d.BestPath != nil && d.BestPath.Overall }

// Route returns the paths FRR has for one prefix of a family ("ipv4" or
// "ipv6"); none if it has no such route.
func (f *FRR) Route(ctx context.Context, family, prefix string) ([]FRRDetail, error) {
	out, err := f.VTY(ctx, "show bgp "+family+" unicast "+prefix+" json")
	if err != nil {
		return nil, err
	}
	var d struct {
		Paths []FRRDetail `json:"paths"`
	}
	if err := json.Unmarshal([]byte(out), &d); err != nil {
		return nil, fmt.Errorf("reading FRR's route %s: %w: %s", prefix, err, out)
	}
	return d.Paths, nil
}

// Neighbor returns the state of a neighbour ("Established", "Active",
// ...) and the last error FRR reports for it.
func (f *FRR) Neighbor(ctx context.Context, addr string) (state, lastError string, err error) {
	out, err := f.VTY(ctx, "show bgp neighbors "+addr+" json")
	if err != nil {
		return "", "", err
	}
	var m map[string]struct {
		State         string `json:"bgpState"`
		LastReset     string `json:"lastResetDueTo"`
		LastNotifCode string `json:"lastNotificationReason"`
	}
	if err := json.Unmarshal([]byte(out), &m); err != nil {
		return "", "", fmt.Errorf("reading FRR's neighbour %s: %w: %s", addr, err, out)
	}
	nb, ok := m[addr]
	if !ok {
		return "", "", fmt.Errorf("FRR has no neighbour %s: %s", addr, out)
	}
	return nb.State, strings.TrimSpace(nb.LastReset + " " + nb.LastNotifCode), nil
}

// Proc is bgpd's process.
func (f *FRR) Proc() *Proc { return f.proc }

// VTYSocket is the directory of bgpd's vty socket (vtysh --vty_socket).
func (f *FRR) VTYSocket() string { return f.dir }

// BIRD is BIRD 2 running in a node, queried with birdc on its socket.
type BIRD struct {
	node *Node
	proc *Proc
	sock string
}

// StartBIRD runs bird in the foreground in n with conf and waits until
// birdc answers.
func (n *Node) StartBIRD(conf string) (*BIRD, error) {
	dir := filepath.Join(n.lab.dir, "bird-"+n.Name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("BIRD in %s: %w", n.Name, err)
	}
	path := filepath.Join(dir, "bird.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("BIRD in %s: %w", n.Name, err)
	}
	b := &BIRD{node: n, sock: filepath.Join(dir, "bird.ctl")}
	p, err := n.Start("bird", "bird", "-f", "-c", path, "-s", b.sock, "-P", filepath.Join(dir, "bird.pid"))
	if err != nil {
		return nil, err
	}
	b.proc = p
	if err := waitWhile(p, 10*time.Second, 50*time.Millisecond, "birdc answering", func() error {
		_, err := b.Cmd(context.Background(), "show status")
		return err
	}); err != nil {
		p.Kill()
		return nil, fmt.Errorf("BIRD in %s: %w", n.Name, err)
	}
	return b, nil
}

// Cmd runs one birdc command.
func (b *BIRD) Cmd(ctx context.Context, cmd string) (string, error) {
	args := append([]string{"-s", b.sock}, strings.Fields(cmd)...)
	out, err := exec.CommandContext(ctx, "birdc", args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("birdc %s in %s: %w: %s", cmd, b.node.Name, err, out)
	}
	return string(out), nil
}

// Proc is bird's process.
func (b *BIRD) Proc() *Proc { return b.proc }
