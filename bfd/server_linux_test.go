package bfd

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"golang.org/x/net/ipv4"

	"github.com/keepvip/keepvip/test/framework/netnstest"
)

// changes records a server's session changes for a test.
type changes struct {
	mu  sync.Mutex
	log []change
	c   chan struct{}
}

func newChanges() *changes { return &changes{c: make(chan struct{}, 100)} }

func (c *changes) on(remote netip.Addr, ch Change) {
	c.mu.Lock()
	c.log = append(c.log, change{who: remote.String(), from: ch.From, to: ch.To, diag: ch.Diag, at: time.Now(), failed: ch.Failed()})
	c.mu.Unlock()
	select {
	case c.c <- struct{}{}:
	default:
	}
}

// wait returns the first change to `to` after index from, within d.
func (c *changes) wait(t *testing.T, from int, to State, d time.Duration) (change, int) {
	t.Helper()
	deadline := time.After(d)
	for {
		c.mu.Lock()
		for i := from; i < len(c.log); i++ {
			if c.log[i].to == to {
				ch := c.log[i]
				c.mu.Unlock()
				return ch, i + 1
			}
		}
		log := append([]change(nil), c.log...)
		c.mu.Unlock()
		select {
		case <-c.c:
		case <-deadline:
			t.Fatalf("no change to %s within %v; changes %+v", to, d, log)
		}
	}
}

func (c *changes) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.log)
}

// Two servers on two loopback addresses of one namespace run a session
// over real sockets: it comes up and takes the fast intervals; garbage,
// a packet with TTL 64 and one from a stranger are dropped and counted
// without touching it; intervals changed while Up keep it Up; a peer
// whose packets stop is declared down after the detection time; a peer
// that goes away says so (AdminDown) and is not taken for a failure.
func TestServerSessions(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	netnstest.Require(t, "nft")
	netnstest.Sh(t, "ip link set lo up")
	a4, b4 := netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("127.0.0.2")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	regA := prometheus.NewRegistry()
	chA, chB := newChanges(), newChanges()
	sa, err := NewServer(Options{Logger: log, Registerer: regA, ListenAddresses: []netip.Addr{a4}, OnChange: chA.on})
	if err != nil {
		t.Fatal(err)
	}
	defer sa.Close()
	sb, err := NewServer(Options{Logger: log, Registerer: prometheus.NewRegistry(), ListenAddresses: []netip.Addr{b4}, OnChange: chB.on})
	if err != nil {
		t.Fatal(err)
	}
	defer sb.Close()
	cfg := SessionConfig{DesiredMinTx: 20 * ms, RequiredMinRx: 20 * ms, DetectMult: 3}
	if err := sa.SetPeers([]Peer{{Remote: b4, Local: a4, SessionConfig: cfg}}); err != nil {
		t.Fatal(err)
	}
	if err := sb.SetPeers([]Peer{{Remote: a4, Local: b4, SessionConfig: cfg}}); err != nil {
		t.Fatal(err)
	}
	_, na := chA.wait(t, 0, StateUp, 5*time.Second)
	_, nb := chB.wait(t, 0, StateUp, 5*time.Second)
	// The poll to 20 ms ends within a round trip.
	time.Sleep(200 * ms)
	st := sa.Sessions()
	if len(st) != 1 || st[0].State != "up" || st[0].TxInterval != Duration(20*ms) || st[0].DetectionTime != Duration(60*ms) || st[0].RemoteDiscr == 0 {
		t.Fatalf("a's session once up: %+v", st)
	}

	// Strangers. With TTL 64 (what a socket sends by default: from
	// farther than a neighbour) anything is dropped for its TTL. With
	// TTL 255: garbage; a packet for a discriminator of no session; one
	// for a's session from another address than b's; and a Down without
	// a discriminator from b's own address (anyone on the link can send
	// one), which must not take the session down.
	pkt := func(p Packet) []byte {
		b, err := p.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := pkt(Packet{State: StateUp, DetectMult: 3, MyDiscriminator: 99, YourDiscriminator: st[0].LocalDiscr, DesiredMinTx: 20 * ms, RequiredMinRx: 20 * ms})
	unknown := pkt(Packet{State: StateUp, DetectMult: 3, MyDiscriminator: 99, YourDiscriminator: st[0].LocalDiscr + 1, DesiredMinTx: 20 * ms, RequiredMinRx: 20 * ms})
	forgedDown := pkt(Packet{State: StateDown, DetectMult: 3, MyDiscriminator: 99, DesiredMinTx: time.Second, RequiredMinRx: 20 * ms})
	send := func(from netip.Addr, ttl int, b []byte) {
		t.Helper()
		c, err := net.DialUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(from, 0)), net.UDPAddrFromAddrPort(netip.AddrPortFrom(a4, PortSingleHop)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := ipv4.NewConn(c).SetTTL(ttl); err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write(b); err != nil {
			t.Fatal(err)
		}
	}
	stranger := netip.MustParseAddr("127.0.0.3")
	for _, b := range [][]byte{[]byte("not bfd at all"), good} {
		send(stranger, 64, b)
	}
	send(stranger, 255, []byte("not bfd at all"))
	send(stranger, 255, unknown)
	send(stranger, 255, good)
	for range 5 {
		send(b4, 255, forgedDown)
	}
	time.Sleep(100 * ms)
	for reason, want := range map[string]float64{"ttl": 2, "malformed": 1, "unknown": 1, "address": 1, "session": 5} {
		if got := testutil.ToFloat64(sa.m.dropped.WithLabelValues(reason)); got != want {
			t.Errorf("dropped for %s: %v; want %v", reason, got, want)
		}
	}
	if n := chA.count(); n != na {
		t.Fatalf("strangers changed a's session: %+v", chA.log[na:])
	}

	// Slower and back, while Up: no change of state.
	slow := SessionConfig{DesiredMinTx: 200 * ms, RequiredMinRx: 200 * ms, DetectMult: 5}
	if err := sa.SetPeers([]Peer{{Remote: b4, Local: a4, SessionConfig: slow}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if st := sb.Sessions(); st[0].DetectionTime != Duration(time.Second) {
		t.Errorf("b's detection time after a asked for 200 ms × 5: %v; want 1s", st[0].DetectionTime)
	}
	if err := sa.SetPeers([]Peer{{Remote: b4, Local: a4, SessionConfig: cfg}}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * ms)
	if chA.count() != na || chB.count() != nb {
		t.Fatalf("reconfiguring took the session down: a %+v b %+v", chA.log[na:], chB.log[nb:])
	}
	if st := sb.Sessions(); st[0].DetectionTime != Duration(60*ms) {
		t.Errorf("b's detection time back at 20 ms × 3: %v; want 60ms", st[0].DetectionTime)
	}

	// b's packets stop reaching a: a declares it down after 3 × 20 ms.
	netnstest.Sh(t, "nft add table inet bfdtest && nft add chain inet bfdtest in '{ type filter hook input priority 0; }' && "+
		"nft add rule inet bfdtest in ip saddr 127.0.0.2 udp dport 3784 drop")
	cut := time.Now()
	down, na := chA.wait(t, na, StateDown, 5*time.Second)
	if down.diag != DiagControlDetectExpired || !down.failed {
		t.Errorf("a went down with %s (a failure: %v); want control detection time expired, a failure", down.diag, down.failed)
	}
	t.Logf("figure: packets dropped → session down after %v (detection time 60ms; the last packet came up to 20 ms before the drop)", down.at.Sub(cut).Round(time.Millisecond))
	if d := down.at.Sub(cut); d > time.Second {
		t.Errorf("a went down %v after b's packets stopped; want about the detection time, 60ms", d)
	}
	netnstest.Sh(t, "nft delete table inet bfdtest")
	_, na = chA.wait(t, na, StateUp, 5*time.Second)

	// b removes its peer: a hears AdminDown and goes down with
	// "neighbor signaled session down", not a detection failure.
	if err := sb.SetPeers(nil); err != nil {
		t.Fatal(err)
	}
	down, _ = chA.wait(t, na, StateDown, 2*time.Second)
	if down.diag != DiagNeighborDown || down.failed {
		t.Errorf("a went down with %s (a failure: %v) when b removed the session; want neighbor signaled session down, no failure", down.diag, down.failed)
	}
	if st := settled(sa, func(s SessionStatus) bool { return s.Flaps == 2 }); st.Flaps != 2 || st.RemoteState != "admindown" {
		t.Errorf("a's session: %+v; want 2 flaps, the peer AdminDown", st)
	}
	if got := testutil.ToFloat64(sa.m.transitions.WithLabelValues("127.0.0.2", "up")); got != 2 {
		t.Errorf("transitions to up: %v; want 2", got)
	}
	if n, err := testutil.GatherAndCount(regA, "keepvip_bfd_session_up"); err != nil || n != 1 {
		t.Errorf("keepvip_bfd_session_up series: %d %v", n, err)
	}
	if err := sa.SetPeers(nil); err != nil {
		t.Fatal(err)
	}
	if n, _ := testutil.GatherAndCount(regA, "keepvip_bfd_session_up"); n != 0 {
		t.Errorf("a removed peer's series stay: %d", n)
	}
}

// A peer whose receiving socket cannot be opened (another BFD daemon has
// the port) is reported, by name and reason, in SetPeers' error and in
// Sessions, and the others run.
func TestServerPortTaken(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	netnstest.Sh(t, "ip link set lo up && ip addr add ::2/128 dev lo") // a route to the IPv6 peer
	squat, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: PortSingleHop})
	if err != nil {
		t.Fatal(err)
	}
	defer squat.Close()
	s, err := NewServer(Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), ListenAddresses: []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("::1")}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	cfg := SessionConfig{DesiredMinTx: 300 * ms, RequiredMinRx: 300 * ms, DetectMult: 3}
	err = s.SetPeers([]Peer{{Remote: netip.MustParseAddr("127.0.0.2"), SessionConfig: cfg}, {Remote: netip.MustParseAddr("::2"), SessionConfig: cfg}})
	if err == nil || !strings.Contains(err.Error(), "BFD session with 127.0.0.2: receiving on 127.0.0.1:3784") || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("SetPeers with the port taken: %v", err)
	}
	st := s.Sessions()
	if len(st) != 2 || st[0].Remote != "127.0.0.2" || !strings.Contains(st[0].LastError, "address already in use") || st[1].Remote != "::2" || st[1].LastError != "" {
		t.Fatalf("sessions: %+v", st)
	}
	squat.Close()
	if err := s.SetPeers([]Peer{{Remote: netip.MustParseAddr("127.0.0.2"), SessionConfig: cfg}, {Remote: netip.MustParseAddr("::2"), SessionConfig: cfg}}); err != nil {
		t.Fatalf("SetPeers once the port is free: %v", err)
	}
	if st := s.Sessions(); st[0].LastError != "" {
		t.Errorf("after the port was freed: %+v", st[0])
	}
}

// Sessions come up over IPv6 and multihop (UDP 4784) too.
func TestServerFamiliesAndHops(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	netnstest.Sh(t, "ip link set lo up && ip addr add ::2/128 dev lo")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := SessionConfig{DesiredMinTx: 50 * ms, RequiredMinRx: 50 * ms, DetectMult: 3}
	for _, c := range []struct {
		name     string
		a, b     string
		multihop bool
	}{{"ipv6", "::1", "::2", false}, {"ipv4 multihop", "127.0.0.1", "127.0.0.2", true}, {"ipv6 multihop", "::1", "::2", true}} {
		a, b := netip.MustParseAddr(c.a), netip.MustParseAddr(c.b)
		chA := newChanges()
		sa, err := NewServer(Options{Logger: log, ListenAddresses: []netip.Addr{a}, OnChange: chA.on})
		if err != nil {
			t.Fatal(err)
		}
		sb, err := NewServer(Options{Logger: log, ListenAddresses: []netip.Addr{b}})
		if err != nil {
			t.Fatal(err)
		}
		if err := sa.SetPeers([]Peer{{Remote: b, Local: a, Multihop: c.multihop, SessionConfig: cfg}}); err != nil {
			t.Fatal(err)
		}
		if err := sb.SetPeers([]Peer{{Remote: a, Local: b, Multihop: c.multihop, SessionConfig: cfg}}); err != nil {
			t.Fatal(err)
		}
		chA.wait(t, 0, StateUp, 5*time.Second)
		if st := settled(sa, func(s SessionStatus) bool { return s.State == "up" }); st.Multihop != c.multihop || st.State != "up" {
			t.Errorf("%s: %+v", c.name, st)
		}
		sa.Close()
		sb.Close()
	}
}

// A flood of bad packets from many sources is counted whole and logged in
// a few lines, with one that says how many more there were.
func TestServerDropLogIsBounded(t *testing.T) {
	var buf strings.Builder
	var mu sync.Mutex
	s, err := NewServer(Options{Logger: slog.New(slog.NewTextHandler(lockedWriter{&mu, &buf}, nil)), Registerer: prometheus.NewRegistry()})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for i := range 3000 {
		s.drop("malformed", netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}), errors.New("garbage"))
	}
	if got := testutil.ToFloat64(s.m.dropped.WithLabelValues("malformed")); got != 3000 {
		t.Errorf("counted %v drops; want 3000", got)
	}
	mu.Lock()
	lines := strings.Count(buf.String(), "BFD packet dropped")
	mu.Unlock()
	if lines != dropLogBurst {
		t.Errorf("%d log lines for 3000 drops; want %d", lines, dropLogBurst)
	}
	// The next window starts with the count of what went unlogged.
	s.dropLogMu.Lock()
	s.dropWindow = s.dropWindow.Add(-dropLogEvery)
	s.dropLogMu.Unlock()
	s.drop("malformed", netip.MustParseAddr("10.9.9.9"), errors.New("garbage"))
	mu.Lock()
	defer mu.Unlock()
	if !strings.Contains(buf.String(), "BFD packets dropped without a log line") || !strings.Contains(buf.String(), "count=2980") {
		t.Errorf("no summary of the unlogged drops:\n%s", buf.String()[max(0, buf.Len()-500):])
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// settled returns the server's one session once ok holds, or after a
// second: OnChange is told of a change before the session's status is
// published.
func settled(s *Server, ok func(SessionStatus) bool) SessionStatus {
	var st []SessionStatus
	for deadline := time.Now().Add(time.Second); ; time.Sleep(10 * time.Millisecond) {
		st = s.Sessions()
		if ok(st[0]) || time.Now().After(deadline) {
			return st[0]
		}
	}
}
