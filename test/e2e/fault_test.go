package e2e

// The fault suite (issue #10): what an operator and an attacker did to
// keepvip, kept as tests. Each TestFault* runs briefly in `make test`
// and longer in `make bench-fault` (KEEPVIP_FAULT_LONG=1), which prints
// its figures as BENCH lines. The rest of the suite lives beside the
// defects it keeps fixed: a paused backup (TestStalledBackupKeepvip, next
// to keepalived), crash and restart with foreign addresses
// (TestAddressesForeignSurviveCrashAndStop), a local user squatting the
// lock (TestAddressesLockSquatter) and reading or blocking keepvip
// (TestFaultUnprivileged).

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"

	"github.com/keepvip/keepvip/test/framework/lab"
	"github.com/keepvip/keepvip/vrrp"
)

// faultLong tells whether the suite runs its long form (make bench-fault).
func faultLong() bool { return os.Getenv("KEEPVIP_FAULT_LONG") == "1" }

// faultPick returns short in make test and long in make bench-fault.
func faultPick[T any](short, long T) T {
	if faultLong() {
		return long
	}
	return short
}

// faultBench reports a figure: a BENCH line on standard output in the long
// form (make bench-fault collects them), a log line always.
func faultBench(t *testing.T, name string, value float64, unit string) {
	t.Helper()
	t.Logf("figure: %s %.4g %s", name, value, unit)
	if faultLong() {
		fmt.Printf("BENCH %s %.4g %s\n", name, value, unit)
	}
}

// faultProc is what /proc says of a process: CPU time, resident memory,
// open files.
type faultProc struct {
	cpu time.Duration
	rss int64 // bytes
	fds int
}

func faultRead(pid int) (faultProc, error) {
	var p faultProc
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return p, err
	}
	// The fields after the command, which may hold spaces, in ")".
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return p, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return p, fmt.Errorf("/proc/%d/stat: utime %q stime %q", pid, f[11], f[12])
	}
	p.cpu = time.Duration(utime+stime) * time.Second / 100 // USER_HZ
	st, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return p, err
	}
	defer st.Close()
	sc := bufio.NewScanner(st)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				return p, fmt.Errorf("/proc/%d/status: VmRSS %q", pid, v)
			}
			p.rss = kb << 10
		}
	}
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return p, err
	}
	p.fds = len(ents)
	return p, nil
}

// faultSampler samples a process's /proc figures until stopped, keeping
// the peak resident memory.
type faultSampler struct {
	stop chan struct{}
	done chan struct{}
	peak int64
	err  error
}

func faultSample(pid int, every time.Duration) *faultSampler {
	s := &faultSampler{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		tk := time.NewTicker(every)
		defer tk.Stop()
		for {
			p, err := faultRead(pid)
			if err != nil {
				s.err = err
				return
			}
			s.peak = max(s.peak, p.rss)
			select {
			case <-s.stop:
				return
			case <-tk.C:
			}
		}
	}()
	return s
}

func (s *faultSampler) end() (int64, error) {
	close(s.stop)
	<-s.done
	return s.peak, s.err
}

// faultLogLines counts a daemon's log lines: all, and those above DEBUG.
func faultLogLines(k *lab.Keepvip) (all, info int) {
	for _, l := range strings.Split(k.Log(), "\n") {
		if l == "" {
			continue
		}
		all++
		if !strings.Contains(l, "level=DEBUG") {
			info++
		}
	}
	return all, info
}

// ---------------------------------------------------------------------------
// A flood of malformed and forged adverts

// The flood's instances: VRID 51 multicast, VRID 52 unicast, each in both
// families, a (150) master and b (120) backup.
var (
	fuVIP4 = netip.MustParsePrefix("192.0.2.102/32")
	fuVIP6 = netip.MustParsePrefix("2001:db8::102/128")
)

const fuVRID = 52

func (c *clCluster) floodConfig(n string) string {
	u4 := clInst{name: "u4", prio: clPrio[n], vips: []netip.Prefix{fuVIP4}}
	u6 := clInst{name: "u6", prio: clPrio[n], vips: []netip.Prefix{fuVIP6}}
	for _, p := range []string{"a", "b"} {
		if p != n {
			u4.peers = append(u4.peers, c.v4(p))
			u6.peers = append(u6.peers, c.nodes[p].IPv6.Addr())
		}
	}
	u6.extra = []string{"sourceAddress: " + c.nodes[n].IPv6.Addr().String()}
	cfg := clConfig(clV4(clPrio[n]), clV6(clPrio[n]), u4, u6)
	// clConfig gives every instance clVRID.
	cfg = strings.Replace(cfg, "name: u4\n  interface: eth0\n  vrid: 51", fmt.Sprintf("name: u4\n  interface: eth0\n  vrid: %d", fuVRID), 1)
	return strings.Replace(cfg, "name: u6\n  interface: eth0\n  vrid: 51", fmt.Sprintf("name: u6\n  interface: eth0\n  vrid: %d", fuVRID), 1)
}

// fuFrame is one frame of the flood and what it is.
type fuFrame struct {
	b    []byte
	kind string
	// to is the node it is sent to ("" for the multicast group: both);
	// attributable frames name a configured VRID in byte 1 and must be
	// counted as a drop by each node that receives them.
	to           string
	attributable bool
}

var (
	fuMAC4 = net.HardwareAddr{0x01, 0x00, 0x5e, 0x00, 0x00, 0x12}
	fuMAC6 = net.HardwareAddr{0x33, 0x33, 0x00, 0x00, 0x00, 0x12}
)

// fuEth builds an Ethernet frame carrying an IPv4 or IPv6 packet of
// protocol 112 with the given TTL or hop limit.
func fuEth(src, dst net.HardwareAddr, from, to netip.Addr, ttl uint8, payload []byte) []byte {
	f := make([]byte, 0, 14+40+len(payload))
	f = append(f, dst...)
	f = append(f, src...)
	if from.Is4() {
		f = binary.BigEndian.AppendUint16(f, 0x0800)
		h := make([]byte, 20)
		h[0], h[1] = 0x45, 0xc0
		binary.BigEndian.PutUint16(h[2:], uint16(20+len(payload)))
		h[8], h[9] = ttl, vrrp.IPProtocol
		copy(h[12:], from.AsSlice())
		copy(h[16:], to.AsSlice())
		var s uint32
		for i := 0; i < 20; i += 2 {
			s += uint32(binary.BigEndian.Uint16(h[i:]))
		}
		for s>>16 != 0 {
			s = s&0xffff + s>>16
		}
		binary.BigEndian.PutUint16(h[10:], ^uint16(s))
		f = append(f, h...)
	} else {
		f = binary.BigEndian.AppendUint16(f, 0x86dd)
		h := make([]byte, 40)
		h[0], h[1] = 0x6c, 0x00 // version 6, traffic class 0xc0
		binary.BigEndian.PutUint16(h[4:], uint16(len(payload)))
		h[6], h[7] = vrrp.IPProtocol, ttl
		copy(h[8:], from.AsSlice())
		copy(h[24:], to.AsSlice())
		f = append(f, h...)
	}
	return append(f, payload...)
}

// floodFrames builds the flood: for each family, to the multicast group
// and unicast to each of a and b, every kind of bad advert a fuzzer or a
// forger sends, from many spoofed source addresses. None may be taken in
// as an advert that moves a master; all that name a VRID are counted.
func (c *clCluster) floodFrames(t *testing.T, rng *rand.Rand, sources int) []fuFrame {
	t.Helper()
	cl := c.client.MAC
	var out []fuFrame
	mk := func(version, vrid, prio uint8, interval time.Duration, src, dst netip.Addr, vips ...netip.Prefix) []byte {
		adv := vrrp.Advertisement{Version: version, VRID: vrid, Priority: prio, Interval: interval}
		for _, v := range vips {
			adv.Addrs = append(adv.Addrs, v.Addr())
		}
		b, err := adv.Marshal(src, dst, vrrp.ChecksumPseudoHeader)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// The spoofed sources: strangers of each family.
	src4 := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}) }
	srcLL := func(i int) netip.Addr {
		return netip.AddrFrom16([16]byte{0: 0xfe, 1: 0x80, 11: 0xff, 12: 0xfe, 14: byte(i >> 8), 15: byte(i)})
	}
	src6 := func(i int) netip.Addr {
		return netip.AddrFrom16([16]byte{0: 0x20, 1: 0x01, 2: 0x0d, 3: 0xb8, 5: 0xff, 14: byte(i >> 8), 15: byte(i)})
	}
	type dest struct {
		to       string
		mac      net.HardwareAddr
		dst      netip.Addr
		vrid     uint8 // the VRID of the instance there
		vips     []netip.Prefix
		src      func(int) netip.Addr
		v6, uni  bool
		otherVIP netip.Prefix
	}
	var dests []dest
	dests = append(dests,
		dest{mac: fuMAC4, dst: vrrp.GroupIPv4, vrid: clVRID, vips: []netip.Prefix{clVIP4}, src: src4, otherVIP: netip.MustParsePrefix("192.0.2.199/32")},
		dest{mac: fuMAC6, dst: vrrp.GroupIPv6, vrid: clVRID, vips: []netip.Prefix{clVIP6LL, clVIP6}, src: srcLL, v6: true, otherVIP: netip.MustParsePrefix("2001:db8::199/128")})
	for _, n := range []string{"a", "b"} {
		dests = append(dests,
			dest{to: n, mac: c.nodes[n].MAC, dst: c.v4(n), vrid: fuVRID, vips: []netip.Prefix{fuVIP4}, src: src4, uni: true},
			dest{to: n, mac: c.nodes[n].MAC, dst: c.nodes[n].IPv6.Addr(), vrid: fuVRID, vips: []netip.Prefix{fuVIP6}, src: src6, v6: true, uni: true})
	}
	for _, d := range dests {
		for i := range sources {
			src := d.src(i)
			add := func(kind string, ttl uint8, p []byte, attributable bool) {
				out = append(out, fuFrame{b: fuEth(cl, d.mac, src, d.dst, ttl, p), kind: kind, to: d.to, attributable: attributable})
			}
			good := func() []byte { return mk(3, d.vrid, 254, clAdv, src, d.dst, d.vips...) }
			// Noise: random bytes, VRID byte not ours.
			noise := make([]byte, rng.IntN(64))
			for j := range noise {
				noise[j] = byte(rng.Uint32())
			}
			if len(noise) > 1 {
				noise[1] = 0xee
			}
			add("noise", 255, noise, false)
			// A random body under a version 3 advert header for the VRID.
			body := make([]byte, 8+rng.IntN(40))
			for j := range body {
				body[j] = byte(rng.Uint32())
			}
			body[0], body[1] = 3<<4|1, d.vrid
			add("random", 255, body, true)
			bad := good()
			bad[6] ^= 0x5a
			add("checksum", 255, bad, true)
			tr := good()
			tr[3]++ // one more address announced than present
			add("truncated", 255, tr, true)
			if d.v6 {
				// Version 2 does not exist over IPv6.
				v2 := good()
				v2[0] = 2<<4 | 1
				add("version", 255, v2, true)
			} else {
				add("version-mismatch", 255, mk(2, d.vrid, 254, time.Second, src, d.dst, d.vips...), true)
			}
			// A well-formed advert a forger sends: to the multicast group
			// with TTL 64 (not from the link), or unicast from a stranger.
			if d.uni {
				add("not-peer", 255, good(), true)
				// A unicast advert to the multicast instance's VRID.
				add("unexpected-unicast", 255, mk(3, clVRID, 254, clAdv, src, d.dst, d.vips...), true)
			} else {
				add("ttl", 64, good(), true)
				// And, well-formed from the link, a lower priority with
				// another address list (issue #10's log flood).
				// Not a drop: an advert to discard.
				add("lower", 255, mk(3, d.vrid, 1, clAdv, src, d.dst, d.otherVIP), false)
			}
		}
	}
	return out
}

// floodSend sends frames round robin at rate frames per second for d
// from the client's eth0, and returns how many of each it sent.
func floodSend(t *testing.T, n *lab.Node, frames []fuFrame, rate int, d time.Duration) ([]int, error) {
	t.Helper()
	var conn *packet.Conn
	if err := n.Do(func() error {
		ifi, err := net.InterfaceByName(n.IfName)
		if err != nil {
			return err
		}
		conn, err = packet.Listen(ifi, packet.Raw, 0, nil)
		return err
	}); err != nil {
		return nil, fmt.Errorf("opening a packet socket in %s: %w", n.Name, err)
	}
	defer conn.Close()
	sent := make([]int, len(frames))
	const tick = 10 * time.Millisecond
	perTick := max(1, rate*int(tick)/int(time.Second))
	start := time.Now()
	next := 0
	for ticks := 0; time.Since(start) < d; ticks++ {
		for range perTick {
			f := frames[next]
			dst := net.HardwareAddr(f.b[:6])
			if _, err := conn.WriteTo(f.b, &packet.Addr{HardwareAddr: dst}); err != nil {
				if err == unix.ENOBUFS {
					continue // the qdisc is full: sent fewer
				}
				return sent, fmt.Errorf("sending a %s frame: %w", f.kind, err)
			}
			sent[next]++
			next = (next + 1) % len(frames)
		}
		// Pace against the start, so that a late tick catches up.
		if wait := time.Until(start.Add(time.Duration(ticks+1) * tick)); wait > 0 {
			time.Sleep(wait)
		}
	}
	return sent, nil
}

// TestFaultFlood floods the segment with malformed and forged adverts of
// both families, to the multicast group and unicast to master and backup,
// from many spoofed sources: no transition anywhere, the master keeps
// advertising on time, every attributable packet is counted as a drop,
// and CPU, memory and log stay bounded.
func TestFaultFlood(t *testing.T) {
	c := newClCluster(t)
	for _, n := range []string{"a", "b"} {
		c.start(n, c.floodConfig(n))
	}
	insts := []string{"v4", "v6", "u4", "u6"}
	for _, in := range insts {
		c.waitState("a", in, vrrp.StateMaster)
		c.waitState("b", in, vrrp.StateBackup)
	}
	c.wantVIPs("a", clVIP4, clVIP6LL, clVIP6, fuVIP4, fuVIP6)
	time.Sleep(3 * clAdv)

	var (
		rate    = faultPick(4000, 10000)
		dur     = faultPick(4*time.Second, 20*time.Second)
		sources = 200
	)
	frames := c.floodFrames(t, rand.New(rand.NewPCG(10, 9568)), sources)
	w := c.watch()
	defer w.Close()

	type node struct {
		before   map[string]vrrp.Status
		proc     faultProc
		log, inf int
		sampler  *faultSampler
	}
	nodes := map[string]*node{}
	for _, n := range []string{"a", "b"} {
		nd := &node{before: map[string]vrrp.Status{}}
		for _, in := range insts {
			nd.before[in] = c.mustInst(n, in)
		}
		p, err := faultRead(c.kv[n].Proc().PID())
		if err != nil {
			t.Fatal(err)
		}
		nd.proc = p
		nd.log, nd.inf = faultLogLines(c.kv[n])
		nd.sampler = faultSample(c.kv[n].Proc().PID(), 50*time.Millisecond)
		nodes[n] = nd
	}
	start := time.Now()
	sent, err := floodSend(t, c.client, frames, rate, dur)
	if err != nil {
		t.Fatal(err)
	}
	floodEnd := time.Now()
	// What is queued is taken in within an interval or two.
	time.Sleep(5 * clAdv)
	elapsed := floodEnd.Sub(start)

	total, attributable := 0, map[string]int{}
	kinds := map[string]int{}
	for i, f := range frames {
		total += sent[i]
		kinds[f.kind] += sent[i]
		if f.attributable {
			for _, n := range []string{"a", "b"} {
				if f.to == "" || f.to == n {
					attributable[n] += sent[i]
				}
			}
		}
	}
	t.Logf("sent %d frames in %v (%.0f/s) from %d sources per destination: %v", total, elapsed.Round(time.Millisecond), float64(total)/elapsed.Seconds(), sources, kinds)
	faultBench(t, "fault_flood_rate", float64(total)/elapsed.Seconds(), "frames/s")

	for _, n := range []string{"a", "b"} {
		nd := nodes[n]
		peak, err := nd.sampler.end()
		if err != nil {
			t.Fatal(err)
		}
		now, err := faultRead(c.kv[n].Proc().PID())
		if err != nil {
			t.Fatal(err)
		}
		logAll, logInfo := faultLogLines(c.kv[n])
		var drops uint64
		for _, in := range insts {
			s := c.mustInst(n, in)
			was := nd.before[in]
			if s.State != was.State || len(s.Transitions) != len(was.Transitions) || s.Master != was.Master {
				t.Errorf("%s/%s: the flood changed the state: %s -> %s, transitions since it began %s",
					n, in, clBrief(was), clBrief(s), clTrString(clSince(s, start)))
			}
			for r, v := range s.Drops {
				drops += v - was.Drops[r]
			}
		}
		cpu := now.cpu - nd.proc.cpu
		growth := float64(peak-nd.proc.rss) / (1 << 20)
		counted := float64(drops) / float64(attributable[n])
		t.Logf("%s: drops counted %d of %d attributable frames sent to it; CPU %v; RSS %.1f -> peak %.1f MiB; fds %d -> %d; log lines +%d (+%d above DEBUG)",
			n, drops, attributable[n], cpu, float64(nd.proc.rss)/(1<<20), float64(peak)/(1<<20), nd.proc.fds, now.fds, logAll-nd.log, logInfo-nd.inf)
		faultBench(t, "fault_flood_cpu_"+n, cpu.Seconds()/elapsed.Seconds(), "cpu-s/s")
		faultBench(t, "fault_flood_cpu_per_frame_"+n, float64(cpu.Microseconds())/float64(total), "us")
		faultBench(t, "fault_flood_rss_growth_"+n, growth, "MiB")
		faultBench(t, "fault_flood_log_lines_"+n, float64(logInfo-nd.inf), "lines")
		faultBench(t, "fault_flood_drops_counted_"+n, 100*counted, "%")
		// Bounds. The log: one budget of 50 lines per 10 s for what
		// packets cause, and its summaries.
		if max := 60 * (int(elapsed/(10*time.Second)) + 2); logInfo-nd.inf > max {
			t.Errorf("%s wrote %d log lines above DEBUG during the flood, want at most %d", n, logInfo-nd.inf, max)
		}
		if max := 10 * (logInfo - nd.inf + 60*(int(elapsed/(10*time.Second))+2)); logAll-nd.log > max {
			t.Errorf("%s wrote %d log lines with DEBUG during the flood, want at most %d", n, logAll-nd.log, max)
		}
		if growth > 32 {
			t.Errorf("%s's resident memory grew by %.1f MiB during the flood, want at most 32", n, growth)
		}
		if now.fds > nd.proc.fds+4 {
			t.Errorf("%s's open files went from %d to %d", n, nd.proc.fds, now.fds)
		}
		// Every frame that names a configured VRID is counted, as long
		// as the kernel delivered it: allow the socket buffer a loss.
		if counted < 0.9 {
			t.Errorf("%s counted %d drops for %d attributable frames sent to it (%.0f%%)", n, drops, attributable[n], 100*counted)
		}
	}
	// The master advertised on time throughout: the longest gap between
	// its adverts as the client saw them.
	var gap time.Duration
	var last time.Time
	for _, ad := range w.Adverts() {
		if ad.Src != c.v4("a") || ad.VRID != clVRID || ad.Time.Before(start) || ad.Time.After(floodEnd) {
			continue
		}
		if !last.IsZero() {
			gap = max(gap, ad.Time.Sub(last))
		}
		last = ad.Time
	}
	faultBench(t, "fault_flood_master_advert_max_gap", float64(gap)/1e6, "ms")
	if gap == 0 || gap >= clMDI(120) {
		t.Errorf("a's longest silence during the flood was %v (0: none seen), want below b's Master_Down_Interval %v", gap, clMDI(120))
	}
	c.wantVIPs("a", clVIP4, clVIP6LL, clVIP6, fuVIP4, fuVIP6)
}

// ---------------------------------------------------------------------------
// A paused master

// TestFaultPausedMaster pauses the master (SIGSTOP: a GC pause, a starved
// CPU, a VM steal), briefly and for longer than the backup waits.
// Briefly: the backup must not take over while the master's adverts kept
// coming within its Master_Down_Interval. Longer: the backup takes over;
// when the master runs again it finds the backup's adverts queued, takes
// the VIP back (preemption) and moves the client to itself with a
// gratuitous ARP at once: one master at the end, the client's outage
// after the resume bounded.
func TestFaultPausedMaster(t *testing.T) {
	c := newClCluster(t)
	for _, n := range []string{"a", "b"} {
		c.start(n, clConfig(clV4(clPrio[n]), clV6(clPrio[n])))
	}
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitBackupOf("b", "v4", c.v4("a"), 150)
	c.waitBackupOf("b", "v6", c.ll("a"), 150)
	w := c.watch()
	defer w.Close()
	p := c.probe(clVIP4.Addr())
	defer p.Stop()
	pid := c.kv["a"].Proc().PID()
	paused := false
	t.Cleanup(func() {
		if paused {
			_ = unix.Kill(-pid, unix.SIGCONT)
		}
	})
	pause := func(d time.Duration) (stop, resume time.Time) {
		t.Helper()
		// A random phase against the adverts.
		time.Sleep(time.Duration(rand.Int64N(int64(clAdv))))
		stop = time.Now()
		if err := unix.Kill(-pid, unix.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		paused = true
		time.Sleep(d)
		if err := unix.Kill(-pid, unix.SIGCONT); err != nil {
			t.Fatal(err)
		}
		paused = false
		return stop, time.Now()
	}
	// gapBefore is the longest silence of a's adverts (as the client saw
	// them) that ended before t, since from.
	gapBefore := func(from, to time.Time) time.Duration {
		var gap time.Duration
		last := from
		for _, ad := range w.Adverts() {
			if ad.Src != c.v4("a") || ad.VRID != clVRID || ad.Time.Before(from) {
				continue
			}
			if ad.Time.After(to) {
				break
			}
			gap = max(gap, ad.Time.Sub(last))
			last = ad.Time
		}
		return max(gap, to.Sub(last))
	}

	short, long := faultPick(5, 20), faultPick(3, 10)
	// Brief pauses: shorter than b's Master_Down_Interval less one
	// interval, so that a's adverts come on time unless the machine
	// delays a's resumption.
	brief := clMDI(120) - 2*clAdv
	spurious := 0
	for range short {
		stop, _ := pause(brief)
		time.Sleep(5 * clAdv)
		s := c.mustInst("b", "v4")
		for _, tr := range clSince(s, stop) {
			if tr.To != vrrp.StateMaster {
				continue
			}
			// Was a silent for b's whole Master_Down_Interval before it?
			if g := gapBefore(stop.Add(-clAdv), tr.At); g >= clMDI(120) {
				t.Logf("b took over after a was silent %v (the machine delayed a's resumption): protocol behaviour", g)
			} else {
				spurious++
				t.Errorf("b took over %v after a %v pause although a's longest silence was %v (< %v)", tr.At.Sub(stop), brief, g, clMDI(120))
			}
		}
		c.waitBackupOf("b", "v4", c.v4("a"), 150)
	}
	faultBench(t, "fault_paused_master_brief_spurious_takeovers", float64(spurious), "count")

	// Long pauses: b takes over, a takes back at once when it runs again.
	var outages, overlaps []float64
	for range long {
		stop, resume := pause(3 * clMDI(120))
		bs := c.waitState("b", "v4", vrrp.StateBackup)
		// b took over during the pause, and stepped back after it.
		trs := clSince(bs, stop)
		var up, down time.Time
		for _, tr := range trs {
			switch tr.To {
			case vrrp.StateMaster:
				up = tr.At
			case vrrp.StateBackup:
				down = tr.At
			}
		}
		if up.IsZero() || down.IsZero() || !up.Before(resume) {
			t.Fatalf("b's transitions around a pause of a (stopped %v, resumed %v): %s; want MASTER during the pause, BACKUP after",
				stop.Format("15:04:05.000"), resume.Format("15:04:05.000"), clTrString(trs))
		}
		overlaps = append(overlaps, float64(down.Sub(resume))/1e6)
		if as := c.mustInst("a", "v4"); len(clSince(as, stop)) != 0 {
			t.Errorf("a changed state around its pause: %s", clTrString(clSince(as, stop)))
		}
		// The client reaches the VIP again, through a: b answers until
		// it lets the VIP go, a from when the client heard its
		// gratuitous ARP. The longest run of lost probes after the
		// resumption is the client's outage.
		ctx, cancel := context.WithTimeout(context.Background(), clWait)
		if _, err := p.WaitReplyAfter(ctx, down.Add(50*time.Millisecond)); err != nil {
			t.Fatalf("the client does not reach the VIP after a resumed: %v", err)
		}
		cancel()
		var outage time.Duration
		if g, ok := p.LongestGap(resume, time.Time{}); ok {
			if g.Open {
				t.Fatalf("the client lost the VIP at %v after a resumed and has not got it back", g.FirstLost.Sent.Format("15:04:05.000"))
			}
			outage = g.Duration
		}
		outages = append(outages, float64(outage)/1e6)
		c.wantReachedVia(clVIP4.Addr(), "a")
		c.wantVIPs("a", clVIP4, clVIP6LL, clVIP6)
	}
	slices.Sort(outages)
	slices.Sort(overlaps)
	faultBench(t, "fault_paused_master_resume_outage_median", outages[len(outages)/2], "ms")
	faultBench(t, "fault_paused_master_resume_outage_max", outages[len(outages)-1], "ms")
	faultBench(t, "fault_paused_master_two_masters_median", overlaps[len(overlaps)/2], "ms")
	t.Logf("after a resumed: client outage %v ms, b still master for %v ms", outages, overlaps)
	// The client moves with the first advert and gratuitous ARP a sends
	// when it runs again: well within one interval, were it not for the
	// machine; an outage that lasts until the client's ARP entry expires
	// (seconds) is what this catches.
	if worst := outages[len(outages)-1]; worst > 1000 {
		t.Errorf("the client lost the VIP for %.0f ms after a resumed, want under 1 s", worst)
	}
}

// ---------------------------------------------------------------------------
// Crash and restart of the master among foreign addresses

// TestFaultCrashRestart kills the master again and again (SIGKILL: it
// leaves its VIPs behind) and starts it again, with an operator's
// addresses in the VIPs' subnets of both families, added before keepvip
// took the VIPs and after: the backup takes over within its
// Master_Down_Interval, the restarted master resumes with the VIPs it left
// (it has the higher priority: b yields), and the operator's addresses stay
// throughout.
func TestFaultCrashRestart(t *testing.T) {
	c := newClCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*clWait)
	defer cancel()
	before := []netip.Prefix{netip.MustParsePrefix("198.51.100.50/24"), netip.MustParsePrefix("2001:db8:10::50/64")}
	after := adForeign
	foreign := append(slices.Clone(before), after...)
	for _, f := range before {
		if _, err := c.nodes["a"].Exec(ctx, "ip", "addr", "add", f.String(), "dev", "eth0", "nodad"); err != nil {
			t.Fatal(err)
		}
	}
	// The client reaches the VIPs' subnet on the link.
	if _, err := c.client.Exec(ctx, "ip", "route", "add", "198.51.100.0/24", "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
	mon := c.adMonitor("a")
	c.start("b", adConfig(120))
	c.start("a", adConfig(150))
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitState("a", "v6", vrrp.StateMaster)
	c.waitVIPsOn("a", append(adVIPs4, adVIPs6...)...)
	for _, f := range after {
		if _, err := c.nodes["a"].Exec(ctx, "ip", "addr", "add", f.String(), "dev", "eth0", "nodad"); err != nil {
			t.Fatal(err)
		}
	}
	p := c.probe(adVIPs4[0].Addr())
	defer p.Stop()
	from := mon.sync()

	rounds := faultPick(3, 10)
	var outages, restarts []float64
	for i := range rounds {
		if err := c.kv["a"].Kill(); err != nil {
			t.Fatal(err)
		}
		killed := time.Now()
		// The crashed master's VIPs are still on its interface and its
		// kernel answers for them: the client moves when b's
		// gratuitous ARP reaches it.
		bs := c.waitState("b", "v4", vrrp.StateMaster)
		if took := c.mustLast(bs, "b", vrrp.StateMaster).At.Sub(killed); took > clMDI(120)+clAdv+clSlack {
			t.Errorf("round %d: b took over %v after a was killed, want within %v + %v", i, took, clMDI(120)+clAdv, clSlack)
		}
		mon.wantKept(from, fmt.Sprintf("round %d, after the crash", i), foreign...)

		started := time.Now()
		c.start("a", adConfig(150))
		as := c.waitState("a", "v4", vrrp.StateMaster)
		c.waitState("a", "v6", vrrp.StateMaster)
		restarts = append(restarts, float64(c.mustLast(as, "a", vrrp.StateMaster).At.Sub(started))/1e6)
		c.waitVIPsOn("a", append(adVIPs4, adVIPs6...)...)
		c.waitBackupOf("b", "v4", c.v4("a"), 150)
		for _, v := range append(adVIPs4, adVIPs6...) {
			if c.hasAddr("b", v.Addr()) {
				t.Errorf("round %d: b still holds %s after a took the VIPs back", i, v)
			}
		}
		mon.wantKept(from, fmt.Sprintf("round %d, after the restart", i), foreign...)
		c.wantReachedVia(adVIPs4[0].Addr(), "a")
		// The client's longest outage in the round, from the kill to a
		// master again: a's kernel answers for the VIPs it left until
		// b's gratuitous ARP moves the client, and the restarted a
		// resumes with them and moves the client back with its own.
		wctx, wcancel := context.WithTimeout(ctx, clWait)
		if _, err := p.WaitReplyAfter(wctx, time.Now()); err != nil {
			t.Fatalf("round %d: the client does not reach the VIP through a: %v", i, err)
		}
		wcancel()
		if g, ok := p.LongestGap(killed, time.Time{}); ok {
			outages = append(outages, float64(g.Duration)/1e6)
		} else {
			outages = append(outages, 0)
		}
	}
	slices.Sort(outages)
	slices.Sort(restarts)
	faultBench(t, "fault_crash_round_client_outage_median", outages[len(outages)/2], "ms")
	faultBench(t, "fault_crash_round_client_outage_max", outages[len(outages)-1], "ms")
	faultBench(t, "fault_crash_restart_to_master_median", restarts[len(restarts)/2], "ms")
	faultBench(t, "fault_crash_foreign_addresses_lost", float64(mon.lost(from, foreign...)), "count")
	t.Logf("client outage per crash %v ms; restart to MASTER %v ms", outages, restarts)
}

// ---------------------------------------------------------------------------
// Repeated bad reloads

// faultBadFiles are configurations a reload must refuse, each for its own
// reason, with what the error must say.
func faultBadFiles(rng *rand.Rand) []struct{ name, body, want string } {
	garbage := make([]byte, 4096)
	for i := range garbage {
		garbage[i] = byte(rng.Uint32())
	}
	good := clConfig(clV4(150), clV6(150))
	return []struct{ name, body, want string }{
		{"empty", "", "the file is empty"},
		{"comments only", "# nothing yet\n", "truncated, or not written yet"},
		{"YAML syntax", "instances:\n- name: v4\n  vrid: [51\n", "yaml"},
		{"unknown field", good + "  bogus: 1\n", "bogus"},
		{"priority out of range", clConfig(clV4(900), clV6(150)), "priority"},
		{"VRID 0", strings.Replace(good, "vrid: 51", "vrid: 0", 1), "vrid"},
		{"not an address", strings.Replace(good, "192.0.2.100/24", "300.1.1.1/24", 1), "vips[0]"},
		{"mixed families", strings.Replace(good, "vips: [192.0.2.100/24]", "vips: [192.0.2.100/24, 2001:db8::9/64]", 1), "vips"},
		{"same VRID twice", clConfig(clV4(150), clV4(140)), "vrid"},
		{"negative interval", strings.Replace(good, "advertInterval: 100ms", "advertInterval: -1s", 1), "advertInterval"},
		{"binary garbage", string(garbage), "configuration"},
		{"an unknown allowance", good + "  allow: [bogus]\n", "allow"},
		{"truncated mid-field", good[:strings.Index(good, "priority:")+5], "configuration"},
		{"over 16 MiB", strings.Repeat("#", 17<<20), "larger than 16 MiB"},
	}
}

// TestFaultBadReloads reloads the master with a bad file again and again,
// every kind in turn, and now and then a good one that changes its
// priority: every bad file is refused with a reason that names it, the
// last good configuration stays in force (state, VIPs, adverts), good
// reloads still apply, and memory, open files and log stay bounded.
func TestFaultBadReloads(t *testing.T) {
	c := newClCluster(t)
	const metrics = "127.0.0.1:9742"
	c.start("b", clConfig(clV4(120), clV6(120)))
	c.start("a", clConfig(clV4(150), clV6(150)), "--metrics-addr", metrics)
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitBackupOf("b", "v4", c.v4("a"), 150)
	c.waitBackupOf("b", "v6", c.ll("a"), 150)
	ka := c.kv["a"]
	bad := faultBadFiles(rand.New(rand.NewPCG(7, 9568)))
	reloads := func(result string) int {
		t.Helper()
		m, err := clMetrics(c.nodes["a"], metrics)
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(m, "\n") {
			if strings.HasPrefix(l, `keepvip_config_reloads_total{result="`+result+`"}`) {
				f := strings.Fields(l)
				n, err := strconv.ParseFloat(f[len(f)-1], 64)
				if err != nil {
					t.Fatalf("metrics line %q: %v", l, err)
				}
				return int(n)
			}
		}
		return 0
	}
	wasA, wasB := c.mustInst("a", "v4"), c.mustInst("b", "v4")
	p0, err := faultRead(ka.Proc().PID())
	if err != nil {
		t.Fatal(err)
	}
	log0, info0 := faultLogLines(ka)
	sampler := faultSample(ka.Proc().PID(), 50*time.Millisecond)
	n := faultPick(3, 30) * len(bad)
	errsSeen, goods := 0, 0
	prio := 150
	var took []float64
	start := time.Now()
	for i := range n {
		if i%10 == 9 {
			// A good file: a's priority between 141 and 150, above b's.
			prio = 141 + (prio-140)%10
			before := reloads("ok")
			if err := ka.Reload(clConfig(clV4(prio), clV6(prio))); err != nil {
				t.Fatal(err)
			}
			c.waitFor(clWait, fmt.Sprintf("good reload %d applied", i), func(context.Context) (bool, string) {
				s := c.mustInst("a", "v4")
				return reloads("ok") > before && s.Priority == uint8(prio), fmt.Sprintf("priority %d", s.Priority)
			})
			goods++
			continue
		}
		f := bad[i%len(bad)]
		before := reloads("error")
		sent := time.Now()
		if err := ka.Reload(f.body); err != nil {
			t.Fatal(err)
		}
		c.waitFor(clWait, fmt.Sprintf("bad reload %d (%s) refused", i, f.name), func(context.Context) (bool, string) {
			return reloads("error") > before, "not yet"
		})
		took = append(took, float64(time.Since(sent))/1e6)
		ctx, cancel := context.WithTimeout(context.Background(), clWait)
		s, err := c.status(ctx, ka)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		errsSeen++
		if msg := strings.ToLower(strings.Join(s.ConfigErrors, "\n")); !strings.Contains(msg, strings.ToLower(f.want)) {
			t.Errorf("bad reload %d (%s): configErrors %q do not say %q", i, f.name, s.ConfigErrors, f.want)
		}
		if len(s.Instances) != 2 || s.Instances[0].State != vrrp.StateMaster || s.Instances[0].Priority != uint8(prio) {
			t.Fatalf("bad reload %d (%s) changed what runs: %+v", i, f.name, s.Instances)
		}
	}
	elapsed := time.Since(start)
	peak, err := sampler.end()
	if err != nil {
		t.Fatal(err)
	}
	p1, err := faultRead(ka.Proc().PID())
	if err != nil {
		t.Fatal(err)
	}
	log1, info1 := faultLogLines(ka)
	c.wantVIPs("a", clVIP4, clVIP6LL, clVIP6)
	for name, was := range map[string]vrrp.Status{"a": wasA, "b": wasB} {
		if s := c.mustInst(name, "v4"); len(s.Transitions) != len(was.Transitions) || s.State != was.State {
			t.Errorf("%s changed state during the reloads: %s", name, clTrString(clSince(s, start)))
		}
	}
	slices.Sort(took)
	growth := float64(peak-p0.rss) / (1 << 20)
	t.Logf("%d bad reloads and %d good ones in %v; RSS %.1f -> peak %.1f MiB; fds %d -> %d; log +%d lines (+%d above DEBUG)",
		errsSeen, goods, elapsed.Round(time.Millisecond), float64(p0.rss)/(1<<20), float64(peak)/(1<<20), p0.fds, p1.fds, log1-log0, info1-info0)
	faultBench(t, "fault_bad_reloads", float64(errsSeen), "count")
	faultBench(t, "fault_bad_reload_refused_median", took[len(took)/2], "ms")
	faultBench(t, "fault_bad_reload_rss_growth", growth, "MiB")
	faultBench(t, "fault_bad_reload_log_lines_per_reload", float64(info1-info0)/float64(errsSeen+goods), "lines")
	// A 17 MiB file is read up to 16 MiB + 1 and dropped; memory goes
	// back to the runtime.
	if growth > 64 {
		t.Errorf("a's resident memory grew by %.1f MiB over the reloads, want at most 64", growth)
	}
	if p1.fds > p0.fds+2 {
		t.Errorf("a's open files went from %d to %d over the reloads", p0.fds, p1.fds)
	}
	if per := float64(info1-info0) / float64(errsSeen+goods); per > 8 {
		t.Errorf("a wrote %.1f log lines above DEBUG per reload, want a few", per)
	}
}

// lost counts the foreign addresses removed since offset from or missing.
func (m *adMonitor) lost(from int, foreign ...netip.Prefix) int {
	m.sync()
	n := 0
	for _, f := range foreign {
		if len(m.events(from, "Deleted", f)) > 0 || !m.c.hasAddr(m.n.Name, f.Addr()) {
			n++
		}
	}
	return n
}
