package lab

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// DefaultCaptureFilter captures what VRRP failover tests look at: ARP,
// ICMPv6 (neighbour discovery, echo) and VRRP over IPv4 and IPv6. Note
// that "ip proto 112" alone matches IPv4 only.
const DefaultCaptureFilter = "arp or icmp6 or ip proto 112 or ip6 proto 112"

const captureStartTimeout = 30 * time.Second

// Capture is a tshark packet capture on a node's eth0, written to a pcap
// file in the lab's Dir.
type Capture struct {
	node *Node
	path string
	proc *Proc

	once    sync.Once
	stopErr error
}

// StartCapture starts tshark inside n's namespace on eth0 with the BPF
// capture filter (DefaultCaptureFilter if empty) and returns once tshark
// reports "Capturing on", i.e. once packets are being captured. tshark is
// installed with apt-get if missing (see EnsureTools).
func (n *Node) StartCapture(filter string) (*Capture, error) {
	if filter == "" {
		filter = DefaultCaptureFilter
	}
	if err := EnsureTools(n.lab.logf, "tshark"); err != nil {
		return nil, fmt.Errorf("starting capture in %s: %w", n.Name, err)
	}
	path := strings.TrimSuffix(n.lab.logPath(n.Name+"-capture"), ".log") + ".pcap"
	c := &Capture{node: n, path: path}
	var err error
	c.proc, err = n.Start("tshark", "tshark", "-n", "-q", "-i", n.IfName, "-f", filter, "-w", path)
	if err != nil {
		return nil, fmt.Errorf("starting capture in %s: %w", n.Name, err)
	}
	deadline := time.After(captureStartTimeout)
	for !strings.Contains(c.proc.Log(), "Capturing on") {
		select {
		case <-c.proc.Exited():
			return nil, fmt.Errorf("starting capture in %s: tshark exited (%v): %s", n.Name, c.proc.Wait(), c.proc.Log())
		case <-deadline:
			c.proc.Kill()
			return nil, fmt.Errorf("starting capture in %s: no \"Capturing on\" after %v: %s", n.Name, captureStartTimeout, c.proc.Log())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return c, nil
}

// Path is the pcap file.
func (c *Capture) Path() string { return c.path }

// Stop stops tshark (SIGINT, so it finishes the file; SIGKILL after 10 s)
// and waits for it. It is idempotent.
func (c *Capture) Stop() error {
	c.once.Do(func() {
		if err := c.proc.Signal(syscall.SIGINT); err == nil {
			select {
			case <-c.proc.Exited():
			case <-time.After(10 * time.Second):
				c.proc.Kill()
				c.stopErr = fmt.Errorf("stopping capture in %s: tshark ignored SIGINT", c.node.Name)
			}
		}
		<-c.proc.Exited()
	})
	return c.stopErr
}

// Fields stops the capture if it is running, then reads the pcap with
// `tshark -r FILE -Y displayFilter -T fields -e FIELD...` and returns one
// row per matching packet with one column per field. A field occurring
// several times in a packet is joined with ",". An empty displayFilter
// matches every packet.
//
// Field names that work with Debian 12's tshark 4.0: frame.time_epoch,
// eth.src, eth.dst, arp.opcode, arp.src.hw_mac, arp.src.proto_ipv4,
// arp.dst.hw_mac, arp.dst.proto_ipv4, ip.src, ipv6.src, ipv6.dst,
// icmpv6.type, icmpv6.nd.na.target_address, icmpv6.nd.na.flag.o (1/0),
// icmpv6.nd.na.flag.s, icmpv6.nd.na.flag.r, icmpv6.opt.linkaddr,
// vrrp.version, vrrp.virt_rtr_id, vrrp.prio, vrrp.addr_count,
// vrrp.ip_addr, vrrp.ipv6_addr, vrrp.adver_int (v2), vrrp.short_adver_int
// (v3, centiseconds), vrrp.checksum.status (1 = good).
func (c *Capture) Fields(displayFilter string, fields ...string) ([][]string, error) {
	if err := c.Stop(); err != nil {
		return nil, err
	}
	if len(fields) == 0 {
		return nil, fmt.Errorf("reading capture %s: no fields", filepath.Base(c.path))
	}
	args := []string{"-n", "-r", c.path, "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,"}
	if displayFilter != "" {
		args = append(args, "-Y", displayFilter)
	}
	for _, f := range fields {
		args = append(args, "-e", f)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	out, err := runStdout(ctx, "tshark", args...)
	if err != nil {
		return nil, fmt.Errorf("reading capture %s: %w", filepath.Base(c.path), err)
	}
	var rows [][]string
	if len(out) == 0 {
		return nil, nil
	}
	for _, line := range strings.Split(strings.TrimSuffix(string(out), "\n"), "\n") {
		row := strings.Split(line, "\t")
		for len(row) < len(fields) {
			row = append(row, "")
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// Count returns the number of captured packets matching displayFilter.
func (c *Capture) Count(displayFilter string) (int, error) {
	rows, err := c.Fields(displayFilter, "frame.number")
	return len(rows), err
}
