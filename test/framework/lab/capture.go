package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultCaptureFilter captures what VRRP failover tests look at: ARP,
// ICMPv6 (neighbour discovery, echo) and VRRP over IPv4 and IPv6. Note
// that "ip proto 112" alone matches IPv4 only.
const DefaultCaptureFilter = "arp or icmp6 or ip proto 112 or ip6 proto 112"

const (
	captureStartTimeout = 30 * time.Second
	// captureSyncTimeout bounds how long Stop waits for dumpcap to write
	// out what it has captured. dumpcap hands a block of its ring over
	// after at most 250 ms and flushes the file at most every 500 ms, so
	// this is ten times what an idle machine needs.
	captureSyncTimeout = 10 * time.Second
	// markerEtherType marks the frames Stop sends to find out when the
	// capture has caught up: IEEE 802's Local Experimental EtherType 1.
	markerEtherType = 0x88b5
	// markerFilter is the BPF capture filter that admits markers; every
	// capture filter is extended with it.
	markerFilter = "ether proto 0x88b5"
	// markerDisplay matches markers in a display filter; Fields leaves
	// them out.
	markerDisplay = "eth.type == 0x88b5"
)

// markerDst is where markers are sent: the IEEE 802.1 "nearest bridge"
// group, which a bridge never forwards, so that a marker stays in the
// capture of the node that sent it.
var markerDst = net.HardwareAddr{0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e}

// Capture is a tshark packet capture on a node's eth0, written to a pcap
// file in the lab's Dir.
//
// Both ends of a capture are synchronised with dumpcap, which does the
// capturing for tshark, rather than trusted to tshark's messages:
//   - tshark prints "Capturing on" before it has even started dumpcap
//     (strace: the line is written, then dumpcap is exec'd, and only
//     ~50 ms later, or up to 0.6 s on a loaded 2-core machine, does dumpcap
//     attach its socket filter), so packets sent in between are not
//     captured. dumpcap writes the file header after its socket is open
//     and filtered: StartCapture waits for that header.
//   - dumpcap reads its TPACKET_V3 ring a block at a time, and the kernel
//     hands a block over when it is full or after dumpcap's 250 ms read
//     timeout; on SIGINT dumpcap closes the ring without reading the block
//     it has not been handed, and the file is flushed only every 500 ms.
//     So a capture stopped right after the traffic loses its last
//     ~250 ms (measured: 242 ms idle), and more when dumpcap is starved
//     of CPU. Stop first sends a marker frame out of the interface and
//     waits until the file holds it: everything captured before the
//     marker is on disk then.
type Capture struct {
	node   *Node
	path   string
	proc   *Proc
	marker int // AF_PACKET socket in node's namespace for the markers
	ifidx  int

	once    sync.Once
	stopErr error
}

// StartCapture starts tshark inside n's namespace on eth0 with the BPF
// capture filter (DefaultCaptureFilter if empty) and returns once dumpcap
// is capturing: packets sent from then on are in the capture. tshark is
// installed with apt-get if missing (see EnsureTools).
func (n *Node) StartCapture(filter string) (*Capture, error) {
	if filter == "" {
		filter = DefaultCaptureFilter
	}
	if err := EnsureTools(n.lab.logf, "tshark"); err != nil {
		return nil, fmt.Errorf("starting capture in %s: %w", n.Name, err)
	}
	path := strings.TrimSuffix(n.lab.logPath(n.Name+"-capture"), ".log") + ".pcap"
	c := &Capture{node: n, path: path, marker: -1}
	if err := n.Do(func() error {
		idx, err := ifIndex(n.IfName)
		if err != nil {
			return err
		}
		c.ifidx = idx
		// Protocol 0: the socket sends and receives nothing.
		c.marker, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		return err
	}); err != nil {
		return nil, fmt.Errorf("starting capture in %s: opening a packet socket for markers: %w", n.Name, err)
	}
	var err error
	c.proc, err = n.Start("tshark", "tshark", "-n", "-q", "-i", n.IfName, "-f", "("+filter+") or "+markerFilter, "-w", path)
	if err != nil {
		unix.Close(c.marker)
		return nil, fmt.Errorf("starting capture in %s: %w", n.Name, err)
	}
	deadline := time.After(captureStartTimeout)
	for {
		if fi, err := os.Stat(path); err == nil && fi.Size() > 0 {
			break
		}
		select {
		case <-c.proc.Exited():
			unix.Close(c.marker)
			return nil, fmt.Errorf("starting capture in %s: tshark exited (%v): %s", n.Name, c.proc.Wait(), c.proc.Log())
		case <-deadline:
			c.proc.Kill()
			unix.Close(c.marker)
			return nil, fmt.Errorf("starting capture in %s: dumpcap wrote no file header in %v: %s", n.Name, captureStartTimeout, c.proc.Log())
		case <-time.After(5 * time.Millisecond):
		}
	}
	return c, nil
}

// Path is the pcap file. Besides what the filter admits it holds the
// marker frames of Stop (EtherType 0x88b5, sent to 01:80:c2:00:00:0e).
func (c *Capture) Path() string { return c.path }

// Stop stops tshark and waits for it, once the capture holds everything
// that reached the interface before Stop was called (see Capture). It
// reports an error if that could not be made sure of, or if dumpcap
// dropped packets. It is idempotent.
func (c *Capture) Stop() error {
	c.once.Do(func() {
		began := time.Now()
		syncErr := c.sync()
		took := time.Since(began)
		if err := c.proc.Signal(syscall.SIGINT); err == nil {
			select {
			case <-c.proc.Exited():
			case <-time.After(10 * time.Second):
				c.proc.Kill()
				c.stopErr = fmt.Errorf("stopping capture in %s: tshark ignored SIGINT", c.node.Name)
			}
		}
		<-c.proc.Exited()
		unix.Close(c.marker)
		if syncErr != nil {
			c.stopErr = errors.Join(c.stopErr, fmt.Errorf("stopping capture in %s: %w", c.node.Name, syncErr))
		}
		if m := droppedRE.FindString(c.proc.Log()); m != "" {
			c.stopErr = errors.Join(c.stopErr, fmt.Errorf("stopping capture in %s: dumpcap reports %q", c.node.Name, m))
		}
		c.node.lab.logf("lab %s: %s: capture stopped, caught up in %v", c.node.lab.id, c.node.Name, took.Round(time.Millisecond))
	})
	return c.stopErr
}

// droppedRE finds tshark's closing report of packets dropped by the kernel
// or by dumpcap ("3 packets dropped from eth0").
var droppedRE = regexp.MustCompile(`[1-9][0-9]* packets? dropped[^\n]*`)

// sync sends a marker frame carrying a random nonce out of the interface
// and waits until dumpcap has written it to the file.
func (c *Capture) sync() error {
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return err
	}
	frame := make([]byte, 0, 64)
	frame = append(frame, markerDst...)
	frame = append(frame, c.node.MAC...)
	frame = binary.BigEndian.AppendUint16(frame, markerEtherType)
	frame = append(frame, "keepvip-lab capture marker "...)
	frame = append(frame, nonce[:]...)
	to := &unix.SockaddrLinklayer{Ifindex: c.ifidx, Protocol: htons(markerEtherType), Halen: 6}
	copy(to.Addr[:], markerDst)
	f, err := os.Open(c.path)
	if err != nil {
		return err
	}
	defer f.Close()
	deadline := time.Now().Add(captureSyncTimeout)
	var buf []byte
	var off int64
	for nextSend := time.Now(); ; {
		if !time.Now().Before(nextSend) {
			// Sent again now and then in case one is lost (the
			// ring full, say): any copy will do.
			if err := unix.Sendto(c.marker, frame, 0, to); err != nil {
				return fmt.Errorf("sending a capture marker: %w", err)
			}
			nextSend = time.Now().Add(time.Second)
		}
		chunk, err := io.ReadAll(io.NewSectionReader(f, off, 1<<40))
		if err != nil {
			return err
		}
		off += int64(len(chunk))
		// Keep enough of the previous read to find a nonce split
		// between two reads.
		buf = append(buf[max(0, len(buf)-len(nonce)):], chunk...)
		if bytes.Contains(buf, nonce[:]) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("dumpcap did not write a marker sent %v ago: packets before it may be missing", captureSyncTimeout)
		}
		select {
		case <-c.proc.Exited():
			return fmt.Errorf("tshark exited before the capture caught up: %s", c.proc.Log())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Fields stops the capture if it is running (see Stop), then reads the
// pcap with `tshark -r FILE -Y displayFilter -T fields -e FIELD...` and
// returns one row per matching packet with one column per field. A field
// occurring several times in a packet is joined with ",". An empty
// displayFilter matches every packet. Stop's marker frames are left out.
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
	// The markers Stop sent are not part of what was captured.
	df := "!(" + markerDisplay + ")"
	if displayFilter != "" {
		df = "(" + displayFilter + ") && " + df
	}
	args := []string{"-n", "-r", c.path, "-T", "fields", "-E", "separator=/t", "-E", "occurrence=a", "-E", "aggregator=,", "-Y", df}
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
