//go:build vmtest

package ipvs

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keepvip/keepvip/test/framework/lab"
	"github.com/keepvip/keepvip/vrrp"
)

// Connection sync end to end: two directors, d1 (priority 200) and d2
// (100), hold a NAT VIP, a DR VIP and the NAT real servers' gateway
// (10.0.0.1) in one VRRP instance, in front of three NAT and three DR
// echo servers. A client keeps connsPerMode TCP connections open through
// each VIP, each sending a line every streamEvery and reading its echo.
// The master fails; a connection survives if it keeps transferring within
// a second of the backup's takeover. Three phases in one run: with
// connection sync and the master killed (its link cut, its keepvip
// SIGKILLed: a dead node), with sync and a planned handoff (SIGTERM), and
// for reference without sync and the master killed.

const (
	connsPerMode = 200
	streamEvery  = 200 * time.Millisecond
)

func connSyncConfig(prio int, withSync bool) string {
	c := fmt.Sprintf(`instances:
  - name: vi
    interface: eth0
    vrid: 1
    priority: %d
    advertInterval: 100ms
    vips: [192.0.2.100/24, 192.0.2.101/24, 10.0.0.1/24]
virtualServers:
  - name: nat
    vip: 192.0.2.100
    port: 80
    scheduler: rr
    healthCheck: {type: none}
    realServers:
      - {address: 10.0.0.11, port: 8080}
      - {address: 10.0.0.12, port: 8080}
      - {address: 10.0.0.13, port: 8080}
  - name: dr
    vip: 192.0.2.101
    port: 80
    scheduler: rr
    forwarding: dr
    healthCheck: {type: none}
    realServers:
      - {address: 192.0.2.21}
      - {address: 192.0.2.22}
      - {address: 192.0.2.23}
kernel:
  ipvs: required
`, prio)
	if withSync {
		c += "connectionSync: {}\n"
	}
	return c
}

// echoServer answers every line with the same line, until the test ends.
func echoServer(t *testing.T, n *lab.Node, addr string) {
	t.Helper()
	var l net.Listener
	if err := n.Do(func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		t.Fatalf("echo server in %s: %v", n.Name, err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				io.Copy(c, c)
			}()
		}
	}()
}

// stream is one client connection that sends a line every streamEvery
// and reads its echo; it records when echoes came.
type stream struct {
	mu     sync.Mutex
	echoes []time.Time
	err    error
	conn   net.Conn
}

func (s *stream) run(stop <-chan struct{}) {
	r := bufio.NewReader(s.conn)
	tick := time.NewTicker(streamEvery)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-stop:
			s.conn.Close()
			return
		case <-tick.C:
		}
		line := fmt.Sprintf("line %d %s\n", i, strings.Repeat("x", 40))
		s.conn.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(s.conn, line); err != nil {
			s.fail(err)
			return
		}
		got, err := r.ReadString('\n')
		if err != nil {
			s.fail(err)
			return
		}
		if got != line {
			s.fail(fmt.Errorf("echo %q, want %q", got, line))
			return
		}
		s.mu.Lock()
		s.echoes = append(s.echoes, time.Now())
		s.mu.Unlock()
	}
}

func (s *stream) fail(err error) {
	s.mu.Lock()
	if s.err == nil {
		s.err = err
	}
	s.mu.Unlock()
}

// transferredAfter reports whether an echo came in [from, to].
func (s *stream) transferredAfter(from, to time.Time) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.echoes {
		if !e.Before(from) && !e.After(to) {
			return true
		}
	}
	return false
}

type syncLab struct {
	t      *testing.T
	l      *lab.Lab
	d      [2]*lab.Node
	k      [2]*lab.Keepvip
	client *lab.Node
}

func (s *syncLab) start(i int, withSync bool) {
	s.t.Helper()
	k, err := s.d[i].StartKeepvip(connSyncConfig([]int{200, 100}[i], withSync))
	if err != nil {
		s.t.Fatal(err)
	}
	s.k[i] = k
}

// master waits until director i is master with the other a backup.
func (s *syncLab) master(i int) {
	s.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.k[i].WaitState(ctx, "vi", vrrp.StateMaster); err != nil {
		s.t.Fatal(err)
	}
	if o := s.k[1-i]; o != nil && o.Proc() != nil {
		select {
		case <-o.Proc().Exited():
		default:
			if err := o.WaitState(ctx, "vi", vrrp.StateBackup); err != nil {
				s.t.Fatal(err)
			}
		}
	}
}

// syncRoles waits until director i runs the master sync daemon and the
// other the backup one.
func (s *syncLab) syncRoles(i int) {
	s.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var got []string
		for j, want := range map[int]string{i: "master", 1 - i: "backup"} {
			st, err := s.k[j].Status(context.Background())
			switch {
			case err != nil:
				got = append(got, err.Error())
			case st.ConnectionSync == nil:
				got = append(got, fmt.Sprintf("director%d: no connection sync", j+1))
			case st.ConnectionSync.Role != want || st.ConnectionSync.Error != "":
				got = append(got, fmt.Sprintf("director%d: %+v", j+1, *st.ConnectionSync))
			}
		}
		if len(got) == 0 {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("sync daemons not in their roles (director%d master): %v", i+1, got)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// connect opens n connections from src to vip:80.
func (s *syncLab) connect(src netip.Addr, vip string, n int, stop <-chan struct{}) []*stream {
	s.t.Helper()
	out := make([]*stream, 0, n)
	for range n {
		var c net.Conn
		err := s.client.Do(func() error {
			d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: src.AsSlice()}}
			var err error
			c, err = d.Dial("tcp", vip+":80")
			return err
		})
		if err != nil {
			s.t.Fatalf("connecting from %s to %s: %v\n%s", src, vip, err, diagnose(s.l))
		}
		st := &stream{conn: c}
		go st.run(stop)
		out = append(out, st)
	}
	return out
}

// synced counts the connections from src in director i's table that a
// master's sync daemon sent, established.
func (s *syncLab) synced(i int, src netip.Addr) int {
	out, err := s.d[i].Exec(context.Background(), "cat", "/proc/net/ip_vs_conn_sync")
	if err != nil {
		s.t.Fatal(err)
	}
	a := src.As4()
	hex := fmt.Sprintf("%02X%02X%02X%02X", a[0], a[1], a[2], a[3])
	n := 0
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) >= 9 && f[1] == hex && f[7] == "ESTABLISHED" && f[8] == "SYNC" {
			n++
		}
	}
	return n
}

// takeoverAt is when director i last became master.
func (s *syncLab) takeoverAt(i int) time.Time {
	s.t.Helper()
	in, err := s.k[i].Instance(context.Background(), "vi")
	if err != nil {
		s.t.Fatal(err)
	}
	for j := len(in.Transitions) - 1; j >= 0; j-- {
		if in.Transitions[j].To == vrrp.StateMaster {
			return in.Transitions[j].At
		}
	}
	s.t.Fatal("no transition to MASTER")
	return time.Time{}
}

// firstAfter returns the first echo at or after from, if one came.
func (s *stream) firstAfter(from time.Time) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, e := range s.echoes {
		if !e.Before(from) {
			return e, true
		}
	}
	return time.Time{}, false
}

// survivors counts the streams of each mode that transferred within a
// second of at, after waiting for that second to pass, and returns how
// long after at each survivor's first echo came.
func survivors(streams map[string][]*stream, at time.Time) (map[string]int, []time.Duration) {
	time.Sleep(time.Until(at.Add(time.Second + streamEvery)))
	out := map[string]int{}
	var firsts []time.Duration
	for mode, ss := range streams {
		for _, s := range ss {
			if e, ok := s.firstAfter(at); ok && !e.After(at.Add(time.Second)) {
				out[mode]++
				firsts = append(firsts, e.Sub(at))
			}
		}
	}
	slices.Sort(firsts)
	return out, firsts
}

func TestConnectionSyncFailover(t *testing.T) {
	l := lab.ForTest(t)
	add := func(name, v4 string) *lab.Node { return addNode(t, l, name, v4) }
	s := &syncLab{t: t, l: l}
	for i := range 2 {
		s.d[i] = add(fmt.Sprintf("director%d", i+1), fmt.Sprintf("192.0.2.1%d/24", i))
		sh(t, s.d[i], fmt.Sprintf("ip addr add 10.0.0.%d/24 dev eth0 && sysctl -qw net.ipv4.ip_forward=1", i+2))
	}
	s.client = add("client", "192.0.2.50/24")
	for _, a := range []string{"192.0.2.51", "192.0.2.52"} {
		sh(t, s.client, "ip addr add "+a+"/24 dev eth0")
	}
	for i := 1; i <= 3; i++ {
		n := add(fmt.Sprintf("b%d", i), fmt.Sprintf("10.0.0.1%d/24", i))
		sh(t, n, "ip route add 192.0.2.0/24 via 10.0.0.1")
		echoServer(t, n, ":8080")
		r := add(fmt.Sprintf("d%d", i), fmt.Sprintf("192.0.2.2%d/24", i))
		sh(t, r, "ip addr add 192.0.2.101/32 dev lo && sysctl -qw net.ipv4.conf.eth0.arp_ignore=1 net.ipv4.conf.eth0.arp_announce=2 net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2")
		echoServer(t, r, ":80")
	}
	t.Cleanup(func() {
		if t.Failed() {
			for i, k := range s.k {
				if k != nil {
					t.Logf("director%d:\n%s", i+1, tail(k.Log(), 60))
				}
			}
		}
	})

	// phase runs one failure and returns the survivors per mode.
	phase := func(name string, src netip.Addr, withSync bool, fail func()) map[string]int {
		t.Helper()
		stop := make(chan struct{})
		defer close(stop)
		streams := map[string][]*stream{
			"nat": s.connect(src, "192.0.2.100", connsPerMode, stop),
			"dr":  s.connect(src, "192.0.2.101", connsPerMode, stop),
		}
		if withSync {
			deadline := time.Now().Add(30 * time.Second)
			for s.synced(1, src) < 2*connsPerMode {
				if time.Now().After(deadline) {
					t.Fatalf("%s: director2 has %d of %d connections synced", name, s.synced(1, src), 2*connsPerMode)
				}
				time.Sleep(200 * time.Millisecond)
			}
		} else {
			time.Sleep(2 * time.Second)
			if n := s.synced(1, src); n != 0 {
				t.Fatalf("%s: director2 has %d connections synced without connection sync", name, n)
			}
		}
		for mode, ss := range streams {
			for _, st := range ss {
				if !st.transferredAfter(time.Now().Add(-time.Second), time.Now()) {
					t.Fatalf("%s: a %s connection does not transfer before the failure: %v", name, mode, st.err)
				}
			}
		}
		fail()
		at := s.takeoverAt(1)
		got, firsts := survivors(streams, at)
		t.Logf("figure: %s: %d of %d NAT and %d of %d DR connections transferred within 1 s of the takeover", name, got["nat"], connsPerMode, got["dr"], connsPerMode)
		if len(firsts) > 0 {
			t.Logf("figure: %s: first echo after the takeover: median %v, max %v (a line every %v; a line lost with the master waits for TCP's retransmission)",
				name, firsts[len(firsts)/2].Round(time.Millisecond), firsts[len(firsts)-1].Round(time.Millisecond), streamEvery)
		}
		key := strings.NewReplacer(", ", "_", " ", "_", "(", "", ")", "").Replace(name)
		fmt.Printf("BENCH connsync_%s_surviving %d connections\n", key, got["nat"]+got["dr"])
		if len(firsts) > 0 {
			fmt.Printf("BENCH connsync_%s_first_echo_after_takeover_median %.0f ms\n", key, ms(firsts[len(firsts)/2]))
		}
		return got
	}
	waitMaster := func(i int) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.k[i].WaitState(ctx, "vi", vrrp.StateMaster); err != nil {
			t.Fatal(err)
		}
	}
	kill := func() {
		if err := l.CutLink(s.d[0]); err != nil {
			t.Fatal(err)
		}
		if err := s.k[0].Kill(); err != nil {
			t.Fatal(err)
		}
		waitMaster(1)
	}

	fmt.Printf("BENCH connsync_connections_per_phase %d connections\n", 2*connsPerMode)

	// 1. Sync on; the master dies.
	s.start(0, true)
	s.master(0)
	s.start(1, true)
	s.master(0)
	s.syncRoles(0)
	killed := phase("sync, master killed", netip.MustParseAddr("192.0.2.50"), true, kill)

	// 2. Sync on; the master hands off (SIGTERM). d1 comes back first and
	// preempts.
	if err := l.HealLink(s.d[0]); err != nil {
		t.Fatal(err)
	}
	s.start(0, true)
	s.master(0)
	s.syncRoles(0)
	handoff := phase("sync, planned handoff", netip.MustParseAddr("192.0.2.51"), true, func() {
		if err := s.k[0].Stop(10 * time.Second); err != nil {
			t.Fatal(err)
		}
		waitMaster(1)
	})

	// 3. Reference: no sync; the master dies.
	s.start(0, false)
	s.master(0)
	if err := s.k[1].Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	s.start(1, false)
	s.master(0)
	ref := phase("no sync (reference), master killed", netip.MustParseAddr("192.0.2.52"), false, kill)

	for _, r := range []struct {
		name string
		got  map[string]int
	}{{"sync, master killed", killed}, {"sync, planned handoff", handoff}} {
		if r.got["nat"] != connsPerMode || r.got["dr"] != connsPerMode {
			t.Errorf("%s: %d NAT and %d DR of %d each survived; want all", r.name, r.got["nat"], r.got["dr"], connsPerMode)
		}
	}
	if ref["nat"]+ref["dr"] > 0 {
		t.Errorf("without sync %d NAT and %d DR connections survived; the reference is meant to lose them (did the test fail the master?)", ref["nat"], ref["dr"])
	}
}
