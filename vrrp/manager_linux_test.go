package vrrp

import (
	"bytes"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/mdlayher/packet"

	"github.com/keepvip/keepvip/test/framework/netnstest"
)

// These tests run the Manager against the real kernel in a fresh network
// namespace: a veth pair va <-> vb, keepvip on va, the test as the peer on vb.

func vethPair(t *testing.T) (va, vb *net.Interface) {
	t.Helper()
	netnstest.Sh(t, `
		ip link set lo up
		ip link add va address 02:00:00:00:00:0a type veth peer name vb address 02:00:00:00:00:0b
		sysctl -qw net.ipv4.conf.all.accept_local=1 net.ipv4.conf.all.rp_filter=0
		sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
		sysctl -qw net.ipv4.conf.default.accept_local=1 net.ipv4.conf.default.rp_filter=0
		ip addr add 192.0.2.1/24 dev va
		ip addr add 192.0.2.2/24 dev vb
		ip addr add 2001:db8::1/64 dev va nodad
		ip addr add 2001:db8::2/64 dev vb nodad
		ip link set va up
		ip link set vb up`)
	var err error
	if va, err = net.InterfaceByName("va"); err != nil {
		t.Fatal(err)
	}
	if vb, err = net.InterfaceByName("vb"); err != nil {
		t.Fatal(err)
	}
	// Wait for the IPv6 link-locals to be usable.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := sourceAddr(va.Index, IPv6, nil, nil); err == nil {
			if _, err := sourceAddr(vb.Index, IPv6, nil, nil); err == nil {
				return va, vb
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no usable IPv6 link-local address on the veth pair")
	return nil, nil
}

// peer reads and writes adverts on vb.
type peer struct {
	t    *testing.T
	conn *rawConn
	ch   chan Packet
}

func newPeer(t *testing.T, ifi *net.Interface, fam Family) *peer {
	c, err := listenRaw(ifi, fam)
	if err != nil {
		t.Fatal(err)
	}
	p := &peer{t: t, conn: c, ch: make(chan Packet, 1024)}
	go func() {
		for {
			buf := make([]byte, 2048)
			pkt, err := c.ReadPacket(buf)
			if err != nil {
				close(p.ch)
				return
			}
			p.ch <- pkt
		}
	}()
	t.Cleanup(func() { c.Close() })
	return p
}

// next returns the next advert that satisfies ok.
func (p *peer) next(ok func(Packet, Advertisement) bool) (Packet, Advertisement) {
	p.t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case pkt, open := <-p.ch:
			if !open {
				p.t.Fatal("peer socket closed")
			}
			adv, reason, err := decode(pkt, FamilyOf(pkt.Src))
			if reason != "" {
				p.t.Fatalf("keepvip sent an advert that fails the receive checks (%s): %v", reason, err)
			}
			if ok(pkt, adv) {
				return pkt, adv
			}
		case <-timeout:
			p.t.Fatal("no matching advert within 5s")
		}
	}
}

func (p *peer) send(adv Advertisement, src, dst netip.Addr) {
	p.t.Helper()
	b, err := adv.Marshal(src, dst, ChecksumPseudoHeader)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := p.conn.WritePacket(b, src, dst); err != nil {
		p.t.Fatal(err)
	}
}

func waitState(t *testing.T, m *Manager, name string, want State) Status {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, s := range m.Status() {
			if s.Name == name && s.State == want {
				return s
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("instance %s did not reach %v: %+v", name, want, m.Status())
	return Status{}
}

func hasAddr(t *testing.T, ifindex int, a netip.Addr) (ifAddr, bool) {
	t.Helper()
	addrs, err := listAddrs(nil, FamilyOf(a))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range addrs {
		if e.ifindex == ifindex && e.prefix.Addr() == a {
			return e, true
		}
	}
	return ifAddr{}, false
}

func testConfig(name, ifname string, vrid uint8, vips ...string) Config {
	c := DefaultConfig()
	c.Name, c.Interface, c.VRID = name, ifname, vrid
	c.Interval = 100 * time.Millisecond
	c.GARP.Delay = 0
	for _, v := range vips {
		c.VIPs = append(c.VIPs, netip.MustParsePrefix(v))
	}
	return c
}

func TestManagerIPv4(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	va, vb := vethPair(t)
	p := newPeer(t, vb, IPv4)
	arp, err := packet.Listen(vb, packet.Raw, 0x0806, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer arp.Close()

	// An address that keepvip did not add must survive everything.
	netnstest.Sh(t, "ip addr add 192.0.2.101/24 dev va")
	m := NewManager(Options{Logger: discard()})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig("vi4", "va", 51, "192.0.2.100/24", "192.0.2.101/24")
	if err := m.Sync([]Config{cfg}); err != nil {
		t.Fatal(err)
	}
	st := waitState(t, m, "vi4", StateMaster)
	if st.Source != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("source = %v; want the primary address 192.0.2.1", st.Source)
	}
	// The advert on the wire: TTL 255, to the group, checksum with the
	// pseudo-header as keepalived needs.
	pkt, adv := p.next(func(_ Packet, a Advertisement) bool { return a.VRID == 51 })
	if pkt.TTL != 255 || pkt.Dst != GroupIPv4 || pkt.Src != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("advert carried %v -> %v TTL %d; want 192.0.2.1 -> 224.0.0.18 TTL 255", pkt.Src, pkt.Dst, pkt.TTL)
	}
	if adv.Priority != 100 || adv.Interval != 100*time.Millisecond || len(adv.Addrs) != 2 {
		t.Errorf("advert = %+v", adv)
	}
	// The VIP keepvip added carries its mark; the one it found does not.
	if e, ok := hasAddr(t, va.Index, netip.MustParseAddr("192.0.2.100")); !ok || e.proto != AddrProto {
		t.Errorf("VIP 192.0.2.100 present=%v proto=%#x; want present with proto %#x", ok, e.proto, AddrProto)
	}
	// The gratuitous ARPs: requests from va's MAC for each VIP.
	seen := map[netip.Addr]int{}
	arp.SetReadDeadline(time.Now().Add(2 * time.Second))
	for len(seen) < 2 || seen[netip.MustParseAddr("192.0.2.100")] < 5 {
		buf := make([]byte, 128)
		n, _, err := arp.ReadFrom(buf)
		if err != nil {
			t.Fatalf("GARPs seen %v before: %v", seen, err)
		}
		f := buf[:n]
		if !bytes.Equal(f[6:12], va.HardwareAddr) || f[21] != 1 {
			continue
		}
		spa, _ := netip.AddrFromSlice(f[28:32])
		tpa, _ := netip.AddrFromSlice(f[38:42])
		if spa != tpa || !bytes.Equal(f[32:38], broadcastMAC) {
			t.Errorf("ARP from keepvip is not gratuitous: %x", f)
		}
		seen[spa]++
	}

	// A higher priority from the peer: keepvip yields and removes only its
	// own VIP.
	peerAddr := netip.MustParseAddr("192.0.2.2")
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			p.send(Advertisement{Version: 3, VRID: 51, Priority: 200, Interval: 100 * time.Millisecond, Addrs: adv.Addrs}, peerAddr, GroupIPv4)
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
	}()
	st = waitState(t, m, "vi4", StateBackup)
	if st.Master != peerAddr {
		t.Errorf("master = %v; want %v", st.Master, peerAddr)
	}
	if _, ok := hasAddr(t, va.Index, netip.MustParseAddr("192.0.2.100")); ok {
		t.Error("VIP still on the interface as backup")
	}
	if _, ok := hasAddr(t, va.Index, netip.MustParseAddr("192.0.2.101")); !ok {
		t.Error("the address keepvip did not add was removed")
	}
	close(stop)
	<-done
	// The peer goes silent: keepvip takes over again, then stops with
	// priority 0 and removes its VIP.
	waitState(t, m, "vi4", StateMaster)
	if err := m.Stop(); err != nil {
		t.Fatal(err)
	}
	p.next(func(_ Packet, a Advertisement) bool { return a.Priority == 0 })
	if _, ok := hasAddr(t, va.Index, netip.MustParseAddr("192.0.2.100")); ok {
		t.Error("VIP left on the interface after Stop")
	}
	if _, ok := hasAddr(t, va.Index, netip.MustParseAddr("192.0.2.101")); !ok {
		t.Error("the address keepvip did not add was removed on Stop")
	}
}

func TestManagerIPv6AndBadPackets(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	va, vb := vethPair(t)
	p := newPeer(t, vb, IPv6)
	nd, err := packet.Listen(vb, packet.Raw, 0x86dd, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer nd.Close()
	m := NewManager(Options{Logger: discard()})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	cfg := testConfig("vi6", "va", 52, "fe80::52/64", "2001:db8::100/64")
	if err := m.Sync([]Config{cfg}); err != nil {
		t.Fatal(err)
	}
	st := waitState(t, m, "vi6", StateMaster)
	if !st.Source.IsLinkLocalUnicast() {
		t.Errorf("IPv6 source %v is not link-local", st.Source)
	}
	pkt, _ := p.next(func(_ Packet, a Advertisement) bool { return a.VRID == 52 })
	if pkt.TTL != 255 || pkt.Dst != GroupIPv6 {
		t.Errorf("advert to %v hop limit %d; want ff02::12 and 255", pkt.Dst, pkt.TTL)
	}
	// The VIP is usable at once: no duplicate address detection.
	e, ok := hasAddr(t, va.Index, netip.MustParseAddr("2001:db8::100"))
	if !ok || e.flags&0x40 != 0 { // IFA_F_TENTATIVE
		t.Errorf("IPv6 VIP present=%v flags=%#x; want present and not tentative", ok, e.flags)
	}
	// An unsolicited NA for each VIP, from the VIP, with Override set.
	nd.SetReadDeadline(time.Now().Add(2 * time.Second))
	targets := map[netip.Addr]bool{}
	for len(targets) < 2 {
		buf := make([]byte, 256)
		n, _, err := nd.ReadFrom(buf)
		if err != nil {
			t.Fatalf("NAs seen for %v before: %v", targets, err)
		}
		f := buf[:n]
		if n < 86 || f[20] != 58 || f[54] != 136 {
			continue
		}
		src, _ := netip.AddrFromSlice(f[22:38])
		target, _ := netip.AddrFromSlice(f[62:78])
		if src != target || f[21] != 255 || f[58]&0x20 == 0 || !bytes.Equal(f[80:86], va.HardwareAddr) {
			t.Errorf("NA is not as keepalived sends it: %x", f)
		}
		targets[target] = true
	}

	// Garbage of every kind is counted, never fatal.
	bad := [][]byte{
		{},
		{0x31},
		{0x31, 52, 100, 9, 0, 100, 0, 0},
		slices.Repeat([]byte{0xff}, 64),
	}
	from, err := sourceAddr(vb.Index, IPv6, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bad {
		if err := p.conn.WritePacket(b, from, GroupIPv6); err != nil {
			t.Fatalf("sending garbage %x: %v", b, err)
		}
	}
	// A valid advert with a wrong checksum, and one with hop limit 64.
	good, _ := (&Advertisement{Version: 3, VRID: 52, Priority: 250, Interval: time.Second, Addrs: cfg.vipAddrs()}).Marshal(from, GroupIPv6, ChecksumPseudoHeader)
	corrupt := slices.Clone(good)
	corrupt[7] ^= 1
	if err := p.conn.WritePacket(corrupt, from, GroupIPv6); err != nil {
		t.Fatal(err)
	}
	if err := p.conn.p6.SetMulticastHopLimit(64); err != nil {
		t.Fatal(err)
	}
	if _, err := p.conn.p6.WriteTo(good, nil, &net.IPAddr{IP: GroupIPv6.AsSlice(), Zone: "vb"}); err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{string(DropTruncated): 1, string(DropChecksum): 1, string(DropTTL): 1}
	deadline := time.Now().Add(3 * time.Second)
	for {
		st = waitState(t, m, "vi6", StateMaster)
		ok := true
		for r, n := range want {
			ok = ok && st.Drops[r] >= n
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("drops counted %v; want at least %v", st.Drops, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestManagerPrunesStaleAndChecksReuse(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	va, _ := vethPair(t)
	// A VIP marked by an earlier keepvip that was killed.
	stale := netip.MustParsePrefix("192.0.2.200/32")
	if err := addrRequest(nil, 0x14 /* RTM_NEWADDR */, 0x400|0x200, va.Index, stale); err != nil {
		t.Fatal(err)
	}
	m := NewManager(Options{Logger: discard()})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	// Kept until the configuration says whose it is.
	if _, ok := hasAddr(t, va.Index, stale.Addr()); !ok {
		t.Error("a VIP an earlier keepvip left was removed before the first Sync")
	}
	// Bad instances are reported; good ones still start.
	good := testConfig("good", "va", 60, "192.0.2.60/24")
	dup := testConfig("dup", "va", 60, "192.0.2.61/24")
	missing := testConfig("missing", "nosuch0", 61, "192.0.2.62/24")
	err := m.Sync([]Config{good, dup, missing})
	if err == nil {
		t.Fatal("Sync accepted a duplicate VRID and a missing interface")
	}
	t.Logf("Sync error (expected): %v", err)
	if _, ok := hasAddr(t, va.Index, stale.Addr()); ok {
		t.Error("the stale VIP, no instance's, was not removed by the first Sync")
	}
	waitState(t, m, "good", StateMaster)
	if n := len(m.Status()); n != 1 {
		t.Errorf("%d instances running; want 1", n)
	}
	// Changing the VRID restarts the router; changing the priority does not.
	good.Priority = 120
	if err := m.Sync([]Config{good}); err != nil {
		t.Fatal(err)
	}
	st := waitState(t, m, "good", StateMaster)
	if len(st.Transitions) != 2 || st.Priority != 120 {
		t.Errorf("live priority change restarted the router: %+v", st.Transitions)
	}
	good.VRID = 62
	if err := m.Sync([]Config{good}); err != nil {
		t.Fatal(err)
	}
	st = waitState(t, m, "good", StateBackup)
	if st.VRID != 62 {
		t.Errorf("VRID = %d; want 62", st.VRID)
	}
	if err := m.Sync(nil); err != nil {
		t.Fatal(err)
	}
	if n := len(m.Status()); n != 0 {
		t.Errorf("%d instances after syncing an empty set", n)
	}
}

func TestManagerAcceptModeOff(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	vethPair(t)
	m := NewManager(Options{Logger: discard()})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	ping := func(a string) bool {
		return exec.Command("ping", "-c1", "-W1", a).Run() == nil
	}
	strict := testConfig("strict", "va", 70, "192.0.2.70/24")
	strict.Accept = false
	open := testConfig("open", "va", 71, "192.0.2.71/24")
	if err := m.Sync([]Config{strict, open}); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "strict", StateMaster)
	waitState(t, m, "open", StateMaster)
	if ping("192.0.2.70") {
		t.Error("a non-accept master accepted a packet to its VIP")
	}
	if !ping("192.0.2.71") {
		t.Error("an accept-mode master dropped a packet to its VIP")
	}
	if err := m.Stop(); err != nil {
		t.Fatal(err)
	}
	c, err := nftables.New()
	if err != nil {
		t.Fatal(err)
	}
	if tbl, _ := c.ListTableOfFamily(FilterTable, nftables.TableFamilyINet); tbl != nil {
		t.Errorf("nftables table %s left after Stop", FilterTable)
	}
}

func TestManagerOwnerAndExternalChanges(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	va, vb := vethPair(t)
	m := NewManager(Options{Logger: discard()})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	// Only one Manager per network namespace.
	if err := NewManager(Options{Logger: discard()}).Start(); err == nil {
		t.Fatal("a second Manager started in the same network namespace")
	} else {
		t.Logf("second Manager: %v", err)
	}

	// The owner: its VIP is the interface's own address, and its source.
	owner := testConfig("owner", "va", 80, "192.0.2.1/24")
	owner.Priority = PriorityOwner
	// A router whose VIP someone else removes.
	web := testConfig("web", "va", 81, "192.0.2.81/24")
	// One waiting for an interface that does not exist yet.
	late := testConfig("late", "vc", 82, "192.0.2.82/32")
	err := m.Sync([]Config{owner, web, late})
	if err == nil || !strings.Contains(err.Error(), "starts when it appears") {
		t.Fatalf("Sync with a missing interface = %v", err)
	}
	st := waitState(t, m, "owner", StateMaster)
	if st.Source != netip.MustParseAddr("192.0.2.1") {
		t.Errorf("owner source = %v; want its own address 192.0.2.1", st.Source)
	}
	waitState(t, m, "web", StateMaster)
	netnstest.Sh(t, "ip addr del 192.0.2.81/24 dev va")
	deadline := time.Now().Add(3 * time.Second)
	for {
		if _, ok := hasAddr(t, va.Index, netip.MustParseAddr("192.0.2.81")); ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a VIP removed by hand was not put back")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The interface appears: the waiting instance starts.
	netnstest.Sh(t, "ip link add vc type veth peer name vd && ip addr add 192.0.2.200/24 dev vc && ip link set vc up && ip link set vd up")
	waitState(t, m, "late", StateMaster)
	// Re-created with a new index: the instance restarts on it.
	netnstest.Sh(t, "ip link del vc && ip link add vc type veth peer name vd && ip addr add 192.0.2.201/24 dev vc && ip link set vc up && ip link set vd up")
	vc, err := net.InterfaceByName("vc")
	if err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for {
		var s Status
		for _, x := range m.Status() {
			if x.Name == "late" {
				s = x
			}
		}
		if s.State == StateMaster && s.Source == netip.MustParseAddr("192.0.2.201") {
			if _, ok := hasAddr(t, vc.Index, netip.MustParseAddr("192.0.2.82")); ok {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("instance did not come back on the re-created interface: %+v", m.Status())
		}
		time.Sleep(10 * time.Millisecond)
	}
	// A new MAC is used in announcements from then on.
	arp, err := packet.Listen(vb, packet.Raw, 0x0806, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer arp.Close()
	netnstest.Sh(t, "ip link set va address 02:00:00:00:00:aa")
	time.Sleep(100 * time.Millisecond)
	web.Priority = 120 // a live change: the master re-advertises...
	web.VIPs = append(web.VIPs, netip.MustParsePrefix("192.0.2.83/24"))
	if err := m.Sync([]Config{owner, web, late}); err != nil {
		t.Fatal(err)
	}
	arp.SetReadDeadline(time.Now().Add(2 * time.Second))
	for {
		buf := make([]byte, 128)
		n, _, err := arp.ReadFrom(buf)
		if err != nil {
			t.Fatalf("no GARP after the MAC change: %v", err)
		}
		if n >= 42 && buf[21] == 1 && bytes.Equal(buf[28:32], []byte{192, 0, 2, 83}) {
			if got := net.HardwareAddr(buf[22:28]).String(); got != "02:00:00:00:00:aa" {
				t.Errorf("GARP carries %s; want the new MAC 02:00:00:00:00:aa", got)
			}
			break
		}
	}
}

func TestManagerHandoffDoesNotBlock(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	vethPair(t)
	m := NewManager(Options{Logger: discard()})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	slow := testConfig("slow", "va", 90, "192.0.2.90/24")
	slow.Interval = 2 * time.Second // hold: 2 × 2 s = 4 s
	slow.Priority = PriorityOwner
	other := testConfig("other", "va", 91, "192.0.2.91/24")
	if err := m.Sync([]Config{slow, other}); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "slow", StateMaster)
	waitState(t, m, "other", StateMaster)
	// Removing the master starts an 8 s handoff hold (nobody takes over).
	// Meanwhile status answers at once, and re-adding waits for the slot.
	done := make(chan error, 1)
	go func() {
		if err := m.Sync([]Config{other}); err != nil {
			done <- err
			return
		}
		done <- m.Sync([]Config{slow, other})
	}()
	time.Sleep(200 * time.Millisecond)
	t0 := time.Now()
	st := m.Status()
	if d := time.Since(t0); d > 500*time.Millisecond {
		t.Errorf("Status took %v during a handoff", d)
	}
	if len(st) != 1 || st[0].Name != "other" {
		t.Errorf("status during the handoff = %+v", st)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("re-adding during the handoff: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("re-adding did not finish after the hold")
	}
	if d := time.Since(t0); d < 3*time.Second {
		t.Errorf("re-added after %v: did not wait for the 4 s hold", d)
	}
	waitState(t, m, "slow", StateMaster)
	// Leave quickly: no hold for the final Stop.
	slow.HandoffHold, other.HandoffHold = false, false
	if err := m.Sync([]Config{slow, other}); err != nil {
		t.Fatal(err)
	}
}

// prefixesOf returns the prefixes a has on the interface.
func prefixesOf(t *testing.T, ifindex int, a netip.Addr) []netip.Prefix {
	t.Helper()
	addrs, err := listAddrs(nil, FamilyOf(a))
	if err != nil {
		t.Fatal(err)
	}
	var out []netip.Prefix
	for _, e := range addrs {
		if e.ifindex == ifindex && e.prefix.Addr() == a {
			out = append(out, e.prefix)
		}
	}
	return out
}

// waitPrefixes waits until a has exactly want on the interface.
func waitPrefixes(t *testing.T, ifindex int, a netip.Addr, want []netip.Prefix, within time.Duration, what string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		got := prefixesOf(t, ifindex, a)
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s is on the interface as %v; want %v", what, a, got, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// advertise sends adverts from the peer every interval until the returned
// function is called.
func (p *peer) advertise(adv Advertisement, src, dst netip.Addr, every time.Duration) (stop func()) {
	quit, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		for {
			b, err := adv.Marshal(src, dst, ChecksumPseudoHeader)
			if err == nil {
				err = p.conn.WritePacket(b, src, dst)
			}
			if err != nil {
				p.t.Errorf("peer advert: %v", err)
				return
			}
			select {
			case <-quit:
				return
			case <-time.After(every):
			}
		}
	}()
	return func() { close(quit); <-done }
}

// Issue #9: a master's VIP changes prefix length (10.0.0.10/24 to /32).
// The kernel's notification that the /24 went can arrive after the /32 was
// added; it must not cost keepvip the ownership of the /32, or the /32
// stays on this node as backup while another node is master.
func TestManagerPrefixChangeKeepsOwnership(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	va, vb := vethPair(t)
	p := newPeer(t, vb, IPv4)
	m := NewManager(Options{Logger: discard()})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	vip := netip.MustParseAddr("192.0.2.10")
	wide, narrow := netip.PrefixFrom(vip, 24), netip.PrefixFrom(vip, 32)
	cfg := testConfig("vi", "va", 51, wide.String())
	if err := m.Sync([]Config{cfg}); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "vi", StateMaster)
	waitPrefixes(t, va.Index, vip, []netip.Prefix{wide}, 2*time.Second, "master")
	cfg.VIPs = []netip.Prefix{narrow}
	if err := m.Sync([]Config{cfg}); err != nil {
		t.Fatal(err)
	}
	waitPrefixes(t, va.Index, vip, []netip.Prefix{narrow}, 2*time.Second, "after the live change")
	// The watcher delivers the kernel's removal of the /24 whenever it
	// gets to it; here it comes (again) after the /32 is in place, which
	// is when it did harm.
	m.onAddrGone(va.Index, wide)
	// A higher-priority master appears: this node must let the VIP go.
	stop := p.advertise(Advertisement{Version: 3, VRID: 51, Priority: 200, Interval: 100 * time.Millisecond, Addrs: []netip.Addr{vip}},
		netip.MustParseAddr("192.0.2.2"), GroupIPv4, 100*time.Millisecond)
	defer stop()
	waitState(t, m, "vi", StateBackup)
	waitPrefixes(t, va.Index, vip, nil, 2*time.Second, "as backup (the VIP would be held by two nodes)")
}

// Issue #9: the address watch fails (ENOBUFS: the kernel dropped
// notifications for a slow reader) and is taken again. A VIP removed in
// that gap is noticed by listing the addresses after resubscribing, and
// put back.
func TestManagerRestoresAVIPRemovedWhileTheAddressWatchWasDown(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	va, _ := vethPair(t)
	netnstest.Sh(t, "ip link add vx type veth peer name vy && ip link set vx up")
	h := newCountingHandler()
	m := NewManager(Options{Logger: slog.New(h)})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	vip := netip.MustParsePrefix("192.0.2.81/24")
	if err := m.Sync([]Config{testConfig("web", "va", 81, vip.String())}); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "web", StateMaster)
	waitPrefixes(t, va.Index, vip.Addr(), []netip.Prefix{vip}, 2*time.Second, "master")

	// A slow reader: the watcher blocks on the first removal it passes
	// on, the library's channel fills, then the socket, and the kernel
	// drops what follows, the removal of the VIP among it.
	m.addrs.mu.Lock()
	var batch strings.Builder
	for i := range 10000 {
		fmt.Fprintf(&batch, "address add 198.18.%d.%d/32 dev vx\n", i>>8, i&255)
	}
	for i := range 10000 {
		fmt.Fprintf(&batch, "address del 198.18.%d.%d/32 dev vx\n", i>>8, i&255)
	}
	cmd := exec.Command("ip", "-batch", "-")
	cmd.Stdin = strings.NewReader(batch.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		m.addrs.mu.Unlock()
		t.Fatalf("ip -batch: %v\n%s", err, out)
	}
	netnstest.Sh(t, "ip addr del "+vip.String()+" dev va")
	m.addrs.mu.Unlock()

	deadline := time.Now().Add(5 * time.Second)
	for {
		_, byMsg := h.total()
		if byMsg["address notifications failed"] > 0 && slices.Equal(prefixesOf(t, va.Index, vip.Addr()), []netip.Prefix{vip}) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("VIP %s not restored (on the interface as %v); log: %v", vip, prefixesOf(t, va.Index, vip.Addr()), byMsg)
		}
		time.Sleep(20 * time.Millisecond)
	}
	_, byMsg := h.total()
	t.Logf("log: %v", byMsg)
}

// Issue #9: Stop while a Sync waits for a slot that is being handed off.
// Sync must then change nothing and say so: no socket, no instance, no VIP
// after Stop.
func TestManagerSyncDuringStopIsANoOp(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	va, _ := vethPair(t)
	m := NewManager(Options{Logger: discard()})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	vip := netip.MustParsePrefix("192.0.2.90/24")
	c := testConfig("slot", "va", 90, vip.String())
	c.Priority = PriorityOwner
	c.Interval = time.Second // hold: 2 s, nobody takes over
	if err := m.Sync([]Config{c}); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "slot", StateMaster)
	// The same slot as another router (version 2): Sync stops the
	// first, and waits for its handoff to end before starting the second.
	c2 := c
	c2.Version = 2
	synced := make(chan error, 1)
	go func() { synced <- m.Sync([]Config{c2}) }()
	deadline := time.Now().Add(2 * time.Second)
	for {
		m.mu.Lock()
		waiting := len(m.stopping) == 1
		m.mu.Unlock()
		if waiting {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("Sync did not start the handoff")
		}
		time.Sleep(time.Millisecond)
	}
	stopped := make(chan error, 1)
	go func() { stopped <- m.Stop() }()
	var syncErr error
	select {
	case syncErr = <-synced:
	case <-time.After(10 * time.Second):
		t.Fatal("Sync did not return")
	}
	select {
	case err := <-stopped:
		if err != nil {
			t.Errorf("Stop: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Stop did not return")
	}
	if syncErr == nil {
		t.Error("Sync that Stop overtook returned no error")
	} else {
		t.Logf("Sync: %v", syncErr)
	}
	m.mu.Lock()
	insts, socks := len(m.insts), len(m.sockets)
	m.mu.Unlock()
	if insts != 0 || socks != 0 {
		t.Errorf("after Stop: %d instances, %d sockets; want none", insts, socks)
	}
	// Whatever a late start would do, it would do within its hold.
	time.Sleep(500 * time.Millisecond)
	if got := prefixesOf(t, va.Index, vip.Addr()); len(got) != 0 {
		t.Errorf("VIP on the interface after Stop: %v", got)
	}
	raw, err := os.ReadFile("/proc/net/raw")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(raw), "\n")[1:] {
		// Column 2 is local_address HEX:PORT, the port being the protocol.
		if f := strings.Fields(l); len(f) > 1 && strings.HasSuffix(f[1], ":0070") {
			t.Errorf("a VRRP socket is open after Stop: %s", l)
		}
	}
	// And a Sync after Stop is refused outright.
	if err := m.Sync([]Config{c}); err == nil {
		t.Error("Sync after Stop returned no error")
	}
}

// ipv4Frame builds an Ethernet frame carrying payload from src to the VRRP
// group, TTL 255, with any source address: what a spoofing flood sends.
func ipv4Frame(from net.HardwareAddr, src netip.Addr, payload []byte) []byte {
	f := make([]byte, 14+20+len(payload))
	copy(f[0:6], []byte{0x01, 0x00, 0x5e, 0x00, 0x00, 0x12})
	copy(f[6:12], from)
	f[12], f[13] = 0x08, 0x00
	ip := f[14:34]
	ip[0], ip[1] = 0x45, 0xc0
	ip[2], ip[3] = byte((20+len(payload))>>8), byte(20+len(payload))
	ip[8], ip[9] = 255, 112
	s4, d4 := src.As4(), GroupIPv4.As4()
	copy(ip[12:16], s4[:])
	copy(ip[16:20], d4[:])
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(ip[i])<<8 | uint32(ip[i+1])
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	ip[10], ip[11] = byte(^sum>>8), byte(^sum)
	copy(f[34:], payload)
	return f
}

// Issue #9: a flood of adverts from thousands of spoofed sources, through
// the real receive path (raw socket, socket reader, instance), costs a
// bounded number of log lines, at Debug level too.
func TestManagerLogFloodFromSpoofedSources(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	_, vb := vethPair(t)
	// Spoofed sources have no route back: no reverse-path filter.
	netnstest.Sh(t, "sysctl -qw net.ipv4.conf.va.rp_filter=0 net.ipv4.conf.vb.rp_filter=0")
	h := newCountingHandler()
	m := NewManager(Options{Logger: slog.New(h)})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	cfg := testConfig("vi", "va", 51, "192.0.2.51/24")
	if err := m.Sync([]Config{cfg}); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "vi", StateMaster)
	conn, err := packet.Listen(vb, packet.Raw, 0x0800, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dst := &packet.Addr{HardwareAddr: net.HardwareAddr{0x01, 0x00, 0x5e, 0x00, 0x00, 0x12}}
	time.Sleep(200 * time.Millisecond)
	before, _ := h.total()
	const sources = 4000
	other := []netip.Addr{netip.MustParseAddr("198.51.100.1")}
	for i := range sources {
		src := netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)})
		// Lower priority and another address list: the instance
		// accepts it and finds the list differs. Every other one
		// has a bad checksum: the socket reader drops it.
		adv := Advertisement{Version: 3, VRID: 51, Priority: 50, Interval: 100 * time.Millisecond, Addrs: other}
		b, err := adv.Marshal(src, GroupIPv4, ChecksumPseudoHeader)
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 1 {
			b[7] ^= 0xff
		}
		if _, err := conn.WriteTo(ipv4Frame(vb.HardwareAddr, src, b), dst); err != nil {
			t.Fatal(err)
		}
		if i%200 == 199 {
			// Paced so that the instance's queue keeps up: every
			// advert reaches the code that logs.
			time.Sleep(5 * time.Millisecond)
		}
	}
	var st Status
	deadline := time.Now().Add(5 * time.Second)
	for {
		st = waitState(t, m, "vi", StateMaster)
		if st.Drops[string(DropChecksum)] >= sources/2-10 && st.AdvertsReceived >= sources/2-10 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	after, byMsg := h.total()
	t.Logf("%d adverts from distinct spoofed sources (half with a bad checksum): received %d, drops %v; %d log records: %v",
		sources, st.AdvertsReceived, st.Drops, after-before, byMsg)
	if st.Drops[string(DropChecksum)] < sources/4 || st.AdvertsReceived < sources/4 {
		t.Fatalf("the flood did not reach keepvip: received %d, drops %v", st.AdvertsReceived, st.Drops)
	}
	if n := after - before; n > 60 {
		t.Errorf("%d log records for %d adverts from distinct sources; want at most 60", n, sources)
	}
}

// A VIP an earlier keepvip left (it died as master) is its instance's
// again after a restart: the instance, hearing no other master, resumes as
// master with it in place, and it is never removed; a leftover no
// instance claims goes at the first Sync.
func TestManagerResumesWithLeftoverVIPs(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	va, _ := vethPair(t)
	mine := netip.MustParsePrefix("192.0.2.70/24")
	other := netip.MustParsePrefix("192.0.2.71/32")
	for _, p := range []netip.Prefix{mine, other} {
		if err := addrRequest(nil, 0x14 /* RTM_NEWADDR */, 0x400|0x200, va.Index, p); err != nil {
			t.Fatal(err)
		}
	}
	m := NewManager(Options{Logger: discard()})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	if err := m.Sync([]Config{testConfig("vi", "va", 70, mine.String())}); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "vi", StateMaster)
	st := m.Status()
	if len(st) != 1 || len(st[0].Transitions) != 2 || !strings.Contains(st[0].Transitions[0].Reason, "listening for a master") ||
		!strings.Contains(st[0].Transitions[1].Reason, "resumed") {
		t.Fatalf("status %+v; want vi BACKUP listening, then MASTER resumed", st)
	}
	if _, ok := hasAddr(t, va.Index, mine.Addr()); !ok {
		t.Error("the instance's own leftover VIP was removed")
	}
	if _, ok := hasAddr(t, va.Index, other.Addr()); ok {
		t.Error("a leftover VIP no instance has was kept")
	}
	// It is the instance's now: a stop removes it.
	if err := m.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, ok := hasAddr(t, va.Index, mine.Addr()); ok {
		t.Error("the resumed VIP stayed after Stop")
	}
}

// A Manager that leaves for a successor on the same host (Leave, then a
// Manager with Options.Inherit) keeps the VIP on the interface the whole
// time, and the wire sees what a peer sees of an uninterrupted master: a
// last advert at its priority, never priority 0, and the successor's
// adverts from the moment it starts. promote_secondaries, which the first
// turned on, is turned off by the successor when it stops, as the first
// would have.
func TestManagerLeavesForASuccessor(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	va, vb := vethPair(t)
	vip := netip.MustParsePrefix("192.0.2.70/24")
	mon := startAddrMonitor(t)
	p := newPeer(t, vb, IPv4)
	cfg := testConfig("vi", "va", 70, vip.String())

	first := NewManager(Options{Logger: discard()})
	if err := first.Start(); err != nil {
		t.Fatal(err)
	}
	if err := first.Sync([]Config{cfg}); err != nil {
		t.Fatal(err)
	}
	waitState(t, first, "vi", StateMaster)
	mark := mon.mark()
	for drained := false; !drained; {
		select {
		case <-p.ch:
		default:
			drained = true
		}
	}
	h := first.Leave()
	if want := []HandedOver{{Name: "vi", Interface: "va", VRID: 70, Family: "ipv4"}}; !slices.Equal(h.Masters, want) || !slices.Equal(h.Promote, []int{va.Index}) {
		t.Fatalf("handover %+v; want masters %+v, promote [%d]", h, want, va.Index)
	}
	if _, ok := hasAddr(t, va.Index, vip.Addr()); !ok {
		t.Fatal("the VIP left the interface with Leave")
	}

	second := NewManager(Options{Logger: discard(), Inherit: &h})
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	defer second.Stop()
	if err := second.Sync([]Config{cfg}); err != nil {
		t.Fatal(err)
	}
	st := waitState(t, second, "vi", StateMaster)
	if len(st.Transitions) != 1 || !strings.Contains(st.Transitions[0].Reason, "took over") {
		t.Fatalf("successor's transitions %+v; want one, to MASTER, taken over", st.Transitions)
	}
	// Every advert the peer got from the first's last on: all at
	// priority 100, spaced by the interval (and scheduling), and the
	// successor's first at most one interval after the first's last.
	var prev time.Time
	for i := range 5 {
		pkt, adv := p.next(func(Packet, Advertisement) bool { return true })
		if adv.Priority != cfg.Priority || pkt.Src != netip.MustParseAddr("192.0.2.1") {
			t.Fatalf("advert %d from %v at priority %d; want %d", i, pkt.Src, adv.Priority, cfg.Priority)
		}
		if pkt.At.IsZero() {
			t.Fatal("no receive time on the peer's packets")
		}
		if !prev.IsZero() && pkt.At.Sub(prev) > cfg.Interval+50*time.Millisecond {
			t.Errorf("advert %d came %v after the one before; want within the interval", i, pkt.At.Sub(prev))
		}
		prev = pkt.At
	}
	mon.sync(t, va.Index)
	mon.check(t, mark, "across the handover", nil, []netip.Prefix{vip})

	if err := second.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, ok := hasAddr(t, va.Index, vip.Addr()); ok {
		t.Error("the successor's Stop left the VIP")
	}
	if b, err := os.ReadFile("/proc/sys/net/ipv4/conf/va/promote_secondaries"); err != nil || string(b) != "0\n" {
		t.Errorf("promote_secondaries of va after the successor's Stop = %q (%v); want 0, as found", b, err)
	}
}
