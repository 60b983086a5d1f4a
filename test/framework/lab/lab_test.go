package lab_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/keepvip/keepvip/test/framework/lab"
)

var (
	pfxA   = netip.MustParsePrefix("192.0.2.1/24")
	pfxB   = netip.MustParsePrefix("192.0.2.2/24")
	pfxC   = netip.MustParsePrefix("192.0.2.10/24")
	pfx6A  = netip.MustParsePrefix("2001:db8::1/64")
	pfx6B  = netip.MustParsePrefix("2001:db8::2/64")
	pfx6C  = netip.MustParsePrefix("2001:db8::10/64")
	vip4   = netip.MustParsePrefix("192.0.2.100/24")
	vip6   = netip.MustParsePrefix("2001:db8::100/64")
	advInt = 100 * time.Millisecond
)

// newLab returns a lab closed when the test ends.
func newLab(t *testing.T, commands ...string) *lab.Lab {
	t.Helper()
	l := lab.ForTest(t, commands...)
	return l
}

// threeNodes adds a, b and client.
func threeNodes(t *testing.T, l *lab.Lab) (a, b, c *lab.Node) {
	t.Helper()
	var err error
	if a, err = l.AddNode("a", pfxA, pfx6A); err != nil {
		t.Fatal(err)
	}
	if b, err = l.AddNode("b", pfxB, pfx6B); err != nil {
		t.Fatal(err)
	}
	if c, err = l.AddNode("client", pfxC, pfx6C); err != nil {
		t.Fatal(err)
	}
	return a, b, c
}

func ctxTimeout(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func mustPing(t *testing.T, from *lab.Node, to netip.Addr) {
	t.Helper()
	rtt, err := from.Ping(ctxTimeout(t, 5*time.Second), to)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ping %s -> %v: %v", from.Name, to, rtt)
}

func mustNotPing(t *testing.T, from *lab.Node, to netip.Addr) {
	t.Helper()
	if _, err := from.Ping(ctxTimeout(t, 400*time.Millisecond), to); err == nil {
		t.Fatalf("%s reached %v, want it blocked", from.Name, to)
	}
}

func TestPing(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a, b, c := threeNodes(t, l)
	for _, n := range []*lab.Node{a, b, c} {
		if !strings.HasPrefix(n.NS, l.ID()) {
			t.Errorf("%s: namespace %s lacks lab id %s", n.Name, n.NS, l.ID())
		}
	}
	if got, want := b.MAC.String(), "02:00:00:00:00:02"; got != want {
		t.Errorf("b.MAC = %s, want %s", got, want)
	}
	if got, want := b.LinkLocal.String(), "fe80::ff:fe00:2"; got != want {
		t.Errorf("b.LinkLocal = %s, want %s", got, want)
	}
	for _, from := range []*lab.Node{a, b, c} {
		for _, to := range []*lab.Node{a, b, c} {
			if from == to {
				continue
			}
			mustPing(t, from, to.IPv4.Addr())
			mustPing(t, from, to.IPv6.Addr())
			mustPing(t, from, to.LinkLocalZoned())
		}
	}
	out, err := a.Exec(ctxTimeout(t, 5*time.Second), "ip", "-br", "addr", "show", "dev", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if s := string(out); !strings.Contains(s, "192.0.2.1/24") || !strings.Contains(s, "2001:db8::1/64") {
		t.Errorf("addresses of a: %s", s)
	}
	if _, err := a.Exec(ctxTimeout(t, 5*time.Second), "false"); err == nil {
		t.Error("Exec(false) succeeded")
	}
}

func TestAddNodeErrors(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	if _, err := l.AddNode("a", pfxA, netip.Prefix{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a", "", "way-too-long-name", "bad name"} {
		if _, err := l.AddNode(name, netip.Prefix{}, netip.Prefix{}); err == nil {
			t.Errorf("AddNode(%q) succeeded", name)
		}
	}
	if _, err := l.AddNode("v6in4", pfx6A, netip.Prefix{}); err == nil {
		t.Error("AddNode with an IPv6 prefix as v4 succeeded")
	}
	if got := len(l.Nodes()); got != 1 {
		t.Errorf("%d nodes after failed AddNodes, want 1", got)
	}
}

// sender sends VRRP-looking packets to 224.0.0.18 from n.
type sender struct {
	p *ipv4.PacketConn
}

func newSender(t *testing.T, n *lab.Node) *sender {
	t.Helper()
	s := &sender{}
	idx, err := n.IfIndex()
	if err != nil {
		t.Fatal(err)
	}
	ifi := &net.Interface{Index: idx, Name: n.IfName}
	err = n.Do(func() error {
		c, err := net.ListenPacket("ip4:112", "0.0.0.0")
		if err != nil {
			return err
		}
		s.p = ipv4.NewPacketConn(c)
		if err := s.p.SetMulticastInterface(ifi); err != nil {
			return err
		}
		return s.p.SetMulticastTTL(255)
	})
	if err != nil {
		t.Fatalf("sender in %s: %v", n.Name, err)
	}
	t.Cleanup(func() { s.p.Close() })
	return s
}

func (s *sender) send(t *testing.T, vrid int) {
	t.Helper()
	pkt := []byte{0x31, byte(vrid), 100, 1, 0, 100, 0, 0, 192, 0, 2, 200}
	if _, err := s.p.WriteTo(pkt, nil, &net.IPAddr{IP: net.IPv4(224, 0, 0, 18)}); err != nil {
		t.Fatal(err)
	}
}

func vridIs(v int) func(lab.Advert) bool {
	return func(a lab.Advert) bool { return a.VRID == v }
}

// expectAdvert checks whether w sees an advert for vrid (sent by send)
// within a short time.
func expectAdvert(t *testing.T, w *lab.AdvertWatcher, vrid int, want bool, send func()) {
	t.Helper()
	ctx := ctxTimeout(t, 400*time.Millisecond)
	errc := make(chan error, 1)
	go func() {
		_, err := w.WaitAdvert(ctx, vridIs(vrid))
		errc <- err
	}()
	time.Sleep(20 * time.Millisecond) // let WaitAdvert start
	send()
	err := <-errc
	if want && err != nil {
		t.Fatalf("multicast vrid %d not received: %v", vrid, err)
	}
	if !want && err == nil {
		t.Fatalf("multicast vrid %d received, want it blocked", vrid)
	}
}

func checkCarrier(t *testing.T, n *lab.Node, want bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		k, err := n.Link(ctxTimeout(t, 5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		ok := k.Has("UP") && k.Carrier() == want && !k.Has("NO-CARRIER") == want &&
			(k.OperState == "UP") == want
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s eth0: flags %v operstate %s, want carrier=%v", n.Name, k.Flags, k.OperState, want)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestCutLink(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a, b, _ := threeNodes(t, l)
	wa, err := lab.StartAdvertWatcher(a)
	if err != nil {
		t.Fatal(err)
	}
	wb, err := lab.StartAdvertWatcher(b)
	if err != nil {
		t.Fatal(err)
	}
	sa, sb := newSender(t, a), newSender(t, b)

	mustPing(t, a, b.IPv4.Addr())
	mustPing(t, b, a.IPv6.Addr())
	expectAdvert(t, wb, 1, true, func() { sa.send(t, 1) })
	expectAdvert(t, wa, 2, true, func() { sb.send(t, 2) })

	if err := l.CutLink(b); err != nil {
		t.Fatal(err)
	}
	checkCarrier(t, b, true)
	mustNotPing(t, a, b.IPv4.Addr())
	mustNotPing(t, b, a.IPv4.Addr())
	mustNotPing(t, a, b.IPv6.Addr())
	mustNotPing(t, b, a.LinkLocalZoned())
	expectAdvert(t, wb, 3, false, func() { sa.send(t, 3) })
	expectAdvert(t, wa, 4, false, func() { sb.send(t, 4) })

	// A carrier flap does not heal the cut.
	if err := l.LinkDown(b); err != nil {
		t.Fatal(err)
	}
	if err := l.LinkUp(b); err != nil {
		t.Fatal(err)
	}
	checkCarrier(t, b, true)
	mustNotPing(t, a, b.IPv4.Addr())

	if err := l.HealLink(b); err != nil {
		t.Fatal(err)
	}
	mustPing(t, a, b.IPv4.Addr())
	mustPing(t, b, a.IPv6.Addr())
	expectAdvert(t, wb, 5, true, func() { sa.send(t, 5) })
	expectAdvert(t, wa, 6, true, func() { sb.send(t, 6) })
}

func TestLinkDown(t *testing.T) {
	t.Parallel()
	l := newLab(t)
	a, b, _ := threeNodes(t, l)
	checkCarrier(t, b, true)
	if err := l.LinkDown(b); err != nil {
		t.Fatal(err)
	}
	checkCarrier(t, b, false)
	k, err := b.Link(ctxTimeout(t, 5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("b eth0 after LinkDown: flags %v operstate %s", k.Flags, k.OperState)
	mustNotPing(t, a, b.IPv4.Addr())
	if err := l.LinkUp(b); err != nil {
		t.Fatal(err)
	}
	checkCarrier(t, b, true)
	mustPing(t, a, b.IPv4.Addr())
}

func TestProcCleanup(t *testing.T) {
	t.Parallel()
	lab.Require(t)
	l, err := lab.New(t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	a, err := l.AddNode("a", pfxA, netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}

	// A process that ignores SIGTERM is killed by Stop, child included.
	stubborn, err := a.Start("stubborn", "sh", "-c", `trap "" TERM; sleep 1000 & echo child $!; wait`)
	if err != nil {
		t.Fatal(err)
	}
	child := waitChildPID(t, stubborn)
	if err := stubborn.Stop(200 * time.Millisecond); !errors.Is(err, lab.ErrKilled) {
		t.Errorf("Stop = %v, want ErrKilled", err)
	}
	waitGone(t, child)

	// A process that exits leaves nothing in its group behind.
	quitter, err := a.Start("quitter", "sh", "-c", `sleep 1000 & echo child $!`)
	if err != nil {
		t.Fatal(err)
	}
	if err := quitter.Wait(); err != nil {
		t.Errorf("quitter: %v", err)
	}
	waitGone(t, waitChildPID(t, quitter))

	// The process's PID is the command's own (ip netns exec execs).
	sleeper, err := a.Start("sleeper", "sleep", "1000")
	if err != nil {
		t.Fatal(err)
	}
	// Until ip has set up the namespace and exec'd, the PID runs "ip".
	for deadline := time.Now().Add(5 * time.Second); ; {
		comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", sleeper.PID()))
		if strings.TrimSpace(string(comm)) == "sleep" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("PID %d is %q, want sleep", sleeper.PID(), comm)
		}
		time.Sleep(5 * time.Millisecond)
	}
	select {
	case <-sleeper.Exited():
		t.Fatal("sleeper exited early")
	default:
	}
	// A process the lab did not start itself, inside a namespace.
	stray, err := a.Exec(ctxTimeout(t, 5*time.Second), "sh", "-c", "setsid sleep 1000 >/dev/null 2>&1 & echo $!")
	if err != nil {
		t.Fatal(err)
	}
	strayPID, _ := strconv.Atoi(strings.TrimSpace(string(stray)))

	dir := l.Dir()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	<-sleeper.Exited()
	waitGone(t, sleeper.PID())
	if strayPID > 0 {
		waitGone(t, strayPID)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("lab dir %s still there: %v", dir, err)
	}
	checkNoNamespaces(t, l.ID())
	if _, err := l.AddNode("late", netip.Prefix{}, netip.Prefix{}); err == nil {
		t.Error("AddNode after Close succeeded")
	}
	if _, err := a.Start("late", "true"); err == nil {
		t.Error("Start after Close succeeded")
	}
}

func waitChildPID(t *testing.T, p *lab.Proc) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range strings.Split(p.Log(), "\n") {
			if f := strings.Fields(line); len(f) == 2 && f[0] == "child" {
				pid, err := strconv.Atoi(f[1])
				if err == nil {
					return pid
				}
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s printed no child pid: %q", p.Name, p.Log())
	return 0
}

// waitGone waits until pid no longer exists (or is a zombie).
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return
		}
		if f := strings.Fields(string(b)); len(f) > 2 && f[2] == "Z" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("pid %d still alive: %s", pid, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func checkNoNamespaces(t *testing.T, id string) {
	t.Helper()
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), id) {
			t.Errorf("namespace %s left behind", e.Name())
		}
	}
}

const helperEnv = "KEEPVIP_LAB_TEST_HELPER"

// TestMain runs crashHelper instead of the tests when TestCrashCleanup
// starts this binary as its subprocess.
func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		if err := crashHelper(); err != nil {
			fmt.Fprintln(os.Stderr, "crash helper:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// crashHelper builds a lab, starts a process in it, reports, and waits to
// be SIGKILLed by TestCrashCleanup.
func crashHelper() error {
	l, err := lab.New(nil)
	if err != nil {
		return err
	}
	a, err := l.AddNode("a", pfxA, netip.Prefix{})
	if err != nil {
		return err
	}
	p, err := a.Start("sleep", "sleep", "1000")
	if err != nil {
		return err
	}
	// Let a goroutine that entered the namespace end its thread, as
	// probers do: the child must survive it.
	if err := a.Do(func() error { return nil }); err != nil {
		return err
	}
	fmt.Printf("READY %s %d %s\n", l.ID(), p.PID(), l.Dir())
	time.Sleep(time.Minute)
	return nil
}

// TestCrashCleanup checks what happens when a program using a lab dies
// without Close: its processes die at once, and the next New (via
// CleanupStale) removes its namespaces and directory.
func TestCrashCleanup(t *testing.T) {
	t.Parallel()
	lab.Require(t)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var id, dir string
	var pid int
	timeout := time.After(30 * time.Second)
	for id == "" {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatal("helper exited without READY")
			}
			if f := strings.Fields(line); len(f) == 4 && f[0] == "READY" {
				id, dir = f[1], f[3]
				pid, _ = strconv.Atoi(f[2])
			}
		case <-timeout:
			t.Fatal("helper not ready after 30s")
		}
	}
	// The child is alive although a namespace thread has exited.
	time.Sleep(100 * time.Millisecond)
	if err := syscall.Kill(pid, 0); err != nil {
		t.Fatalf("child %d of the helper died early: %v", pid, err)
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	go func() {
		for range lines {
		}
	}()
	waitGone(t, pid)
	if _, err := os.Stat(filepath.Join("/run/netns", id+"-sw")); err != nil {
		t.Fatalf("expected the dead helper's namespace to remain until cleanup: %v", err)
	}
	if err := lab.CleanupStale(t.Logf); err != nil {
		t.Fatal(err)
	}
	checkNoNamespaces(t, id)
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("dead helper's dir %s still there: %v", dir, err)
	}
}

// keepalivedPair starts keepalived on a (priority 150) and b (100) with
// an IPv4 and an IPv6 instance, and waits for a to be master.
func keepalivedPair(t *testing.T, a, b *lab.Node) (ka, kb *lab.Keepalived) {
	t.Helper()
	insts := func(prio int) []lab.KeepalivedInstance {
		return []lab.KeepalivedInstance{
			{Name: "VI4", VRID: 51, Priority: prio, AdvertInterval: advInt, VIPs: []netip.Prefix{vip4}},
			{Name: "VI6", VRID: 52, Priority: prio, AdvertInterval: advInt, VIPs: []netip.Prefix{vip6}},
		}
	}
	var err error
	if ka, err = a.StartKeepalived(insts(150)); err != nil {
		t.Fatal(err)
	}
	if kb, err = b.StartKeepalived(insts(100)); err != nil {
		t.Fatal(err)
	}
	ctx := ctxTimeout(t, 15*time.Second)
	for _, inst := range []string{"VI4", "VI6"} {
		if err := ka.WaitState(ctx, inst, "MASTER"); err != nil {
			t.Fatal(err)
		}
		if err := kb.WaitState(ctx, inst, "BACKUP"); err != nil {
			t.Fatal(err)
		}
	}
	return ka, kb
}

func TestKeepalivedFailover(t *testing.T) {
	t.Parallel()
	l := newLab(t, "keepalived", "tshark")
	a, b, client := threeNodes(t, l)
	capture, err := client.StartCapture("")
	if err != nil {
		t.Fatal(err)
	}
	watcher, err := lab.StartAdvertWatcher(client)
	if err != nil {
		t.Fatal(err)
	}
	ka, kb := keepalivedPair(t, a, b)
	if got := kb.State("VI4"); got != "BACKUP" {
		t.Errorf("b VI4 state %q", got)
	}
	for _, h := range ka.History() {
		t.Logf("a FIFO: %s kind=%s name=%s state=%s prio=%d", h.Line, h.Kind, h.Name, h.State, h.Priority)
	}

	ctx := ctxTimeout(t, 30*time.Second)
	p4, err := lab.StartProber(ctx, client, vip4.Addr(), 0)
	if err != nil {
		t.Fatal(err)
	}
	p6, err := lab.StartProber(ctx, client, vip6.Addr(), 0)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, p := range []*lab.Prober{p4, p6} {
		if _, err := p.WaitReplyAfter(ctx, now); err != nil {
			t.Fatal(err)
		}
	}

	// Crash the master right after one of its adverts: cut it off (so
	// the VIPs it keeps stop answering) and SIGKILL keepalived.
	last, err := watcher.WaitAdvert(ctx, func(ad lab.Advert) bool {
		return ad.Src == a.IPv4.Addr() && ad.VRID == 51
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("last advert of a: %v", last)
	if last.Priority != 150 || last.Version != 3 || last.Interval != advInt || last.TTL != 255 ||
		!slices.Equal(last.Addrs, []netip.Addr{vip4.Addr()}) {
		t.Errorf("unexpected advert from a: %v", last)
	}
	if err := l.CutLink(a); err != nil {
		t.Fatal(err)
	}
	// The path is broken from here on; probes sent while CutLink ran
	// may still have been answered by a.
	crash := time.Now()
	if err := ka.Kill(); err != nil {
		t.Fatal(err)
	}
	if ok, err := a.HasAddr(ctx, vip4.Addr()); err != nil || !ok {
		t.Errorf("a lost its VIP on SIGKILL (has=%v, err=%v); expected it to stay", ok, err)
	}
	for _, inst := range []string{"VI4", "VI6"} {
		if err := kb.WaitState(ctx, inst, "MASTER"); err != nil {
			t.Fatal(err)
		}
	}
	first, err := watcher.WaitAdvertSince(ctx, crash, func(ad lab.Advert) bool {
		return ad.Src == b.IPv4.Addr() && ad.VRID == 51
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("first advert of b %v after the crash: %v", first.Time.Sub(crash), first)
	if first.Priority != 100 {
		t.Errorf("b advertised priority %d", first.Priority)
	}
	masterDown := 3*advInt + advInt*(256-100)/256
	for _, p := range []*lab.Prober{p4, p6} {
		if _, err := p.WaitReplyAfter(ctx, crash); err != nil {
			t.Fatal(err)
		}
		info, err := p.OutageDetail(crash)
		if err != nil {
			t.Fatal(err)
		}
		out, _ := p.Outage(crash)
		gap, _ := p.LongestGap(crash, time.Time{})
		t.Logf("%v: outage %v (reply after %v, %d lost); longest gap %v (%d lost); stats %+v",
			p.Target(), out, info.ToReply, info.Lost, gap.Duration, gap.Lost, p.Stats())
		// b cannot take over before its master-down timer expires; the
		// upper bound is generous for loaded machines.
		if out < masterDown-2*advInt || out > 3*time.Second {
			t.Errorf("%v: outage %v, want about %v", p.Target(), out, masterDown)
		}
		// The longest gap since the crash is the outage itself: the same
		// lost probes, ended by the same answered one. (It is shorter
		// by the time from the crash to the first probe sent after it,
		// which a loaded machine stretches beyond 5 ms.)
		if gap.Open || gap.Recovered.Seq != info.Recovered.Seq || gap.Lost != info.Lost {
			t.Errorf("%v: longest gap %+v does not match outage %v (%+v)", p.Target(), gap, out, info)
		}
		if info.Lost == 0 || info.ToReply < out {
			t.Errorf("%v: inconsistent outage detail %+v", p.Target(), info)
		}
	}
	// Give keepalived's GARP/NA burst time to reach the capture.
	time.Sleep(200 * time.Millisecond)
	p4.Stop()
	p6.Stop()

	garps, err := capture.Fields("arp.opcode == 1 && arp.src.proto_ipv4 == "+vip4.Addr().String()+
		" && arp.dst.proto_ipv4 == "+vip4.Addr().String(),
		"arp.src.hw_mac", "arp.dst.hw_mac", "arp.dst.proto_ipv4", "eth.src")
	if err != nil {
		t.Fatal(err)
	}
	byMAC := map[string]int{}
	for _, g := range garps {
		byMAC[g[0]]++
		if g[2] != vip4.Addr().String() {
			t.Errorf("GARP target %q, want the VIP", g[2])
		}
	}
	t.Logf("GARPs per sender MAC: %v", byMAC)
	if byMAC[a.MAC.String()] == 0 || byMAC[b.MAC.String()] == 0 {
		t.Errorf("want GARPs from a (%s) and b (%s), got %v", a.MAC, b.MAC, byMAC)
	}
	nas, err := capture.Fields("icmpv6.type == 136 && icmpv6.nd.na.target_address == "+vip6.Addr().String(),
		"icmpv6.nd.na.flag.o", "icmpv6.opt.linkaddr")
	if err != nil {
		t.Fatal(err)
	}
	unsolicitedFromB := 0
	for _, na := range nas {
		if na[0] == "1" && na[1] == b.MAC.String() {
			unsolicitedFromB++
		}
	}
	if unsolicitedFromB == 0 {
		t.Errorf("no NA with override flag and b's MAC for %v: %v", vip6.Addr(), nas)
	}
	adverts, err := capture.Fields("vrrp", "vrrp.version", "vrrp.virt_rtr_id", "vrrp.prio", "vrrp.checksum.status", "vrrp.short_adver_int")
	if err != nil {
		t.Fatal(err)
	}
	prios := map[string]int{}
	for _, ad := range adverts {
		prios[ad[1]+"/"+ad[2]]++
		if ad[0] != "3" || ad[3] != "1" || ad[4] != "10" {
			t.Errorf("advert fields %v, want version 3, good checksum, interval 10cs", ad)
		}
	}
	t.Logf("captured adverts by vrid/prio: %v", prios)
	if prios["51/150"] == 0 || prios["51/100"] == 0 || prios["52/150"] == 0 || prios["52/100"] == 0 {
		t.Errorf("missing adverts: %v", prios)
	}
}

func TestKeepalivedGracefulStop(t *testing.T) {
	t.Parallel()
	l := newLab(t, "keepalived")
	a, b, _ := threeNodes(t, l)
	ka, kb := keepalivedPair(t, a, b)
	ctx := ctxTimeout(t, 20*time.Second)
	if err := ka.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	for _, inst := range []string{"VI4", "VI6"} {
		if err := ka.WaitState(ctx, inst, "STOP"); err != nil {
			t.Fatal(err)
		}
		if err := kb.WaitState(ctx, inst, "MASTER"); err != nil {
			t.Fatal(err)
		}
	}
	if ok, err := a.HasAddr(ctx, vip4.Addr()); err != nil || ok {
		t.Errorf("a still has the VIP after a graceful stop (has=%v, err=%v)", ok, err)
	}
	if ok, err := b.HasAddr(ctx, vip6.Addr()); err != nil || !ok {
		t.Errorf("b lacks the IPv6 VIP (has=%v, err=%v)", ok, err)
	}
	// Preemption: a comes back with the higher priority and takes over.
	ka2, err := a.StartKeepalived([]lab.KeepalivedInstance{
		{Name: "VI4", VRID: 51, Priority: 150, AdvertInterval: advInt, VIPs: []netip.Prefix{vip4}},
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := ka2.WaitState(ctx, "VI4", "MASTER"); err != nil {
		t.Fatal(err)
	}
	if err := kb.WaitState(ctx, "VI4", "BACKUP"); err != nil {
		t.Fatal(err)
	}
}

func TestKeepalivedBadConfig(t *testing.T) {
	t.Parallel()
	l := newLab(t, "keepalived")
	a, err := l.AddNode("a", pfxA, netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = a.StartKeepalived([]lab.KeepalivedInstance{
		{Name: "VI4", Interface: "nosuch0", VRID: 51, Priority: 100, VIPs: []netip.Prefix{vip4}},
	})
	if err == nil || !strings.Contains(err.Error(), "nosuch0") {
		t.Errorf("StartKeepalived with a missing interface: %v", err)
	}
}
