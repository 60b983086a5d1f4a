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

// FRR is FRR's bgpd running in a node, without zebra (-Z: routes are
// learnt into its BGP table, not installed in the kernel), queried with
// vtysh on a socket of its own.
type FRR struct {
	node *Node
	proc *Proc
	dir  string
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
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := f.VTY(context.Background(), "show bgp summary")
		if err == nil {
			return f, nil
		}
		select {
		case <-p.Exited():
			return nil, fmt.Errorf("FRR in %s exited: %v\n%s", n.Name, p.Wait(), p.Log())
		default:
		}
		if time.Now().After(deadline) {
			p.Kill()
			return nil, fmt.Errorf("FRR in %s: vtysh does not answer: %v\n%s", n.Name, err, p.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
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
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := b.Cmd(context.Background(), "show status")
		if err == nil {
			return b, nil
		}
		select {
		case <-p.Exited():
			return nil, fmt.Errorf("BIRD in %s exited: %v\n%s", n.Name, p.Wait(), p.Log())
		default:
		}
		if time.Now().After(deadline) {
			p.Kill()
			return nil, fmt.Errorf("BIRD in %s: birdc does not answer: %v\n%s", n.Name, err, p.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
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
