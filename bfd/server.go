package bfd

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepvip/keepvip/internal/clock"
)

// Peer is one session a Server runs, to Remote.
type Peer struct {
	Remote netip.Addr
	// Local is the source address of the session's packets; invalid:
	// the one routing picks for Remote. The peer finds a new session by
	// the addresses, so give the address the peer expects (a BGP
	// session's local address).
	Local netip.Addr
	// Multihop makes it an RFC 5883 session (UDP port 4784, no TTL
	// check); otherwise it is single-hop (RFC 5881: port 3784, packets
	// with a TTL or hop limit other than 255 are dropped).
	Multihop bool
	SessionConfig
}

func (p Peer) validate() error {
	switch {
	case !p.Remote.IsValid() || p.Remote.Zone() != "" || p.Remote.IsUnspecified() || p.Remote.IsMulticast():
		return fmt.Errorf("remote %v: not a unicast address without a zone", p.Remote)
	case p.Local.IsValid() && (p.Local.Zone() != "" || p.Local.Is4() != p.Remote.Is4() || p.Local.IsMulticast()):
		return fmt.Errorf("local %v: not a unicast address of the remote's family without a zone", p.Local)
	}
	return p.SessionConfig.Check()
}

// Options configure a Server.
type Options struct {
	// Clock is the time of the sessions; nil: the wall clock.
	Clock  clock.Clock
	Logger *slog.Logger
	// Registerer takes the metrics; nil for none.
	Registerer prometheus.Registerer
	// ListenAddresses are the addresses packets are received on; empty:
	// every address (0.0.0.0 and ::).
	ListenAddresses []netip.Addr
	// OnChange, if set, is told of every session state change, from the
	// session's goroutine: it must not block.
	OnChange func(remote netip.Addr, c Change)
	// Jitter returns a fraction in [0, 1) for the jitter of each
	// interval (RFC 5880 §6.8.7); nil: random.
	Jitter func() float64
}

// Change is a session's change of state.
type Change struct {
	From, To State
	// Diag is why (this system's diagnostic).
	Diag Diag
	// PeerAdminDown: the peer took the session down on purpose (RFC 5880
	// §6.8.16), which is no failure of the path.
	PeerAdminDown bool
	// PeerNewSession: the peer said Down from a session of its own other
	// than the one that was Up: it took its side down and made it anew
	// (BIRD does so whenever its BGP session restarts), which is no
	// failure of the path either.
	PeerNewSession bool
}

// Failed reports whether the change is the loss of the path that BFD
// clients act on (RFC 5882 §3.2): an Up session going down for anything
// but the peer's administrative decision, a new session of the peer, or
// this system's own decision.
func (c Change) Failed() bool {
	return c.From == StateUp && c.To == StateDown && !c.PeerAdminDown && !c.PeerNewSession
}

// Server runs BFD sessions: a receiving socket per port and address
// family (shared by the sessions, which it finds by discriminator or by
// address), and per session a goroutine that owns its Session and a
// sending socket with a source port of its own.
type Server struct {
	o   Options
	log *slog.Logger
	m   *metrics

	mu        sync.RWMutex
	closed    bool
	sessions  map[netip.Addr]*sess
	byDiscr   map[uint32]*sess
	failed    map[netip.Addr]failedPeer
	listeners map[listenKey]*listener
	readers   sync.WaitGroup

	dropLogMu      sync.Mutex
	dropLog        map[string]time.Time // reason and source: last logged
	dropWindow     time.Time
	dropLogged     int
	dropSuppressed int
}

type listenKey struct {
	addr netip.Addr
	port uint16
}

type failedPeer struct {
	peer Peer
	err  error
}

// sess is one running session; its goroutine owns the Session.
type sess struct {
	// peer's addresses and hop mode never change (a change starts a new
	// session); its SessionConfig is the one it started with.
	peer  Peer
	discr uint32
	// config is what it was last given (under Server.mu).
	config SessionConfig
	tx     *sender
	rx     chan rxPacket
	cfg    chan SessionConfig
	stop   chan struct{}
	done   chan struct{}
	st     atomic.Pointer[SessionStatus]
}

type rxPacket struct {
	p  Packet
	at time.Time
}

// rxBacklog is how many packets wait for a session's goroutine before
// more are dropped.
const rxBacklog = 16

// A stopped session sends adminDownPackets AdminDown packets,
// adminDownGap apart.
const (
	adminDownPackets = 3
	adminDownGap     = 20 * time.Millisecond
)

// NewServer returns a server with no sessions.
func NewServer(o Options) (*Server, error) {
	for i, a := range o.ListenAddresses {
		if !a.IsValid() || a.Zone() != "" || a.IsMulticast() {
			return nil, fmt.Errorf("BFD listen address %d: %v is not a unicast address without a zone", i, a)
		}
	}
	if o.Clock == nil {
		o.Clock = clock.Real{}
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Jitter == nil {
		o.Jitter = rand.Float64
	}
	return &Server{o: o, log: o.Logger, m: newMetrics(o.Registerer),
		sessions: map[netip.Addr]*sess{}, byDiscr: map[uint32]*sess{}, failed: map[netip.Addr]failedPeer{},
		listeners: map[listenKey]*listener{}, dropLog: map[string]time.Time{}}, nil
}

var errClosed = errors.New("BFD server closed")

// SetPeers makes the sessions exactly peers: new ones start (Down, then
// Up once the peer answers), removed ones tell the peer they are
// administratively down and stop, changed intervals apply by a poll
// without taking the session down, and a changed address or hop mode
// starts the session anew. Invalid peers, and peers whose sockets cannot
// be opened, are reported and not run; the others are.
func (s *Server) SetPeers(peers []Peer) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	var errs []error
	want := map[netip.Addr]Peer{}
	for i, p := range peers {
		if err := p.validate(); err != nil {
			errs = append(errs, fmt.Errorf("BFD peer %d (%v): %w", i, p.Remote, err))
			continue
		}
		p.Remote, p.Local = p.Remote.Unmap(), p.Local.Unmap()
		if _, dup := want[p.Remote]; dup {
			errs = append(errs, fmt.Errorf("BFD peer %s: listed twice", p.Remote))
			continue
		}
		want[p.Remote] = p
	}
	clear(s.failed)
	for a, c := range s.sessions {
		p, ok := want[a]
		if ok && p.Local == c.peer.Local && p.Multihop == c.peer.Multihop {
			continue
		}
		s.stopLocked(c)
	}
	for a, p := range want {
		if c, ok := s.sessions[a]; ok {
			if p.SessionConfig != c.config {
				select { // only the latest configuration matters
				case <-c.cfg:
				default:
				}
				c.cfg <- p.SessionConfig
				c.config = p.SessionConfig
			}
			continue
		}
		if err := s.startLocked(p); err != nil {
			s.failed[a] = failedPeer{p, err}
			errs = append(errs, fmt.Errorf("BFD session with %s: %w", a, err))
		}
	}
	s.closeIdleListenersLocked()
	return errors.Join(errs...)
}

// startLocked opens what the session needs and starts its goroutine.
func (s *Server) startLocked(p Peer) error {
	if err := s.listenLocked(p); err != nil {
		return err
	}
	tx, err := dial(p)
	if err != nil {
		return err
	}
	var discr uint32
	for discr == 0 || s.byDiscr[discr] != nil {
		discr = rand.Uint32()
	}
	c := &sess{peer: p, discr: discr, config: p.SessionConfig, tx: tx, rx: make(chan rxPacket, rxBacklog), cfg: make(chan SessionConfig, 1),
		stop: make(chan struct{}), done: make(chan struct{})}
	peer := p.Remote.String()
	var since time.Time
	var se *Session
	onChange := func(from, to State, diag Diag, at time.Time) {
		since = at
		s.m.up.WithLabelValues(peer).Set(b2f(to == StateUp))
		s.m.transitions.WithLabelValues(peer, stateString(to)).Inc()
		switch {
		case to == StateUp:
			s.log.Info("BFD session up", "peer", peer, "from", from.String())
		case from == StateUp && se.remoteState == StateAdminDown:
			s.log.Info("BFD session down: the peer took it down", "peer", peer, "to", to.String())
		case from == StateUp && se.peerNewSession:
			s.log.Info("BFD session down: the peer started a new session", "peer", peer, "to", to.String())
		case from == StateUp:
			s.log.Warn("BFD session down", "peer", peer, "to", to.String(), "diag", diag.String())
		default:
			s.log.Debug("BFD session state", "peer", peer, "from", from.String(), "to", to.String(), "diag", diag.String())
		}
		if s.o.OnChange != nil {
			s.o.OnChange(p.Remote, Change{From: from, To: to, Diag: diag,
				PeerAdminDown: se.remoteState == StateAdminDown, PeerNewSession: se.peerNewSession})
		}
	}
	now := s.o.Clock.Now()
	se, err = NewSession(p.SessionConfig, discr, s.o.Jitter, now, onChange)
	if err != nil {
		tx.close()
		return err
	}
	since = now
	s.m.up.WithLabelValues(peer).Set(0)
	publish := func(lastErr string) {
		st := se.Status()
		c.st.Store(&SessionStatus{Remote: peer, Local: addrString(p.Local), Multihop: p.Multihop,
			State: stateString(st.State), RemoteState: stateString(st.RemoteState), Diag: diagString(st.Diag), Since: since,
			LocalDiscr: st.LocalDiscr, RemoteDiscr: st.RemoteDiscr,
			DesiredMinTx: Duration(st.Config.DesiredMinTx), RequiredMinRx: Duration(st.Config.RequiredMinRx), DetectMult: st.Config.DetectMult,
			TxInterval: Duration(st.TxInterval), DetectionTime: Duration(st.DetectionTime),
			RemoteMinRx: Duration(st.RemoteMinRx), RemoteDetectMult: st.RemoteDetectMult,
			Flaps: st.Flaps, Sent: st.Sent, Received: st.Received, Discarded: st.Discarded, LastError: lastErr})
		s.m.detection.WithLabelValues(peer).Set(st.DetectionTime.Seconds())
		s.m.txInterval.WithLabelValues(peer).Set(st.TxInterval.Seconds())
	}
	publish("")
	s.sessions[p.Remote], s.byDiscr[discr] = c, c
	go s.run(c, se, publish)
	s.log.Info("BFD session added", "peer", peer, "local", addrString(p.Local), "multihop", p.Multihop,
		"minTx", p.DesiredMinTx, "minRx", p.RequiredMinRx, "multiplier", p.DetectMult)
	return nil
}

// stopLocked stops a session: its last packet tells the peer it is
// administratively down (RFC 5880 §6.8.16), so that the peer does not
// take it for a failure.
func (s *Server) stopLocked(c *sess) {
	close(c.stop)
	<-c.done
	c.tx.close()
	delete(s.sessions, c.peer.Remote)
	delete(s.byDiscr, c.discr)
	s.m.forget(c.peer.Remote.String())
	s.log.Info("BFD session removed", "peer", c.peer.Remote.String())
}

// run is the session's goroutine: it feeds the Session received packets,
// configuration changes and the time, and sends what it returns.
func (s *Server) run(c *sess, se *Session, publish func(string)) {
	defer close(c.done)
	clk := s.o.Clock
	timer := clk.NewTimer(se.Next().Sub(clk.Now()))
	defer timer.Stop()
	var lastErr string
	send := func(p *Packet) {
		if p == nil {
			return
		}
		b, err := p.Marshal()
		if err == nil {
			err = c.tx.send(b)
		}
		if err != nil {
			s.m.sendErrors.WithLabelValues(c.peer.Remote.String()).Inc()
			if msg := err.Error(); msg != lastErr {
				s.log.Warn("BFD: sending failed", "peer", c.peer.Remote.String(), "err", err)
				lastErr = msg
			}
			return
		}
		lastErr = ""
		s.m.sent.WithLabelValues(c.peer.Remote.String()).Inc()
	}
	receive := func(r rxPacket) {
		before := se.Stats()
		send(se.Receive(r.at, r.p))
		if se.Stats().Discarded > before.Discarded {
			s.m.dropped.WithLabelValues("session").Inc()
		} else {
			s.m.received.WithLabelValues(c.peer.Remote.String()).Inc()
		}
	}
	for {
		select {
		case <-c.stop:
			// §6.8.16: AdminDown is sent until the peer has surely heard
			// it; one lost packet would otherwise look like a failure to
			// the peer. A few packets, close together: this runs while
			// the server is reconfigured or closed.
			se.AdminDown(clk.Now())
			for i := range adminDownPackets {
				if i > 0 {
					time.Sleep(adminDownGap)
				}
				send(se.Packet())
			}
			return
		case r := <-c.rx:
			receive(r)
		case cfg := <-c.cfg:
			if err := se.Reconfigure(cfg, clk.Now()); err != nil {
				s.log.Error("BFD: reconfiguring the session", "peer", c.peer.Remote.String(), "err", err)
			}
		case <-timer.C():
			// Packets that came before the deadline are taken first: a
			// goroutine that was not scheduled for a while must not
			// declare the peer down while its packets wait here.
			for drained := false; !drained; {
				select {
				case r := <-c.rx:
					receive(r)
				default:
					drained = true
				}
			}
			send(se.Timer(clk.Now()))
		}
		publish(lastErr)
		timer.Reset(se.Next().Sub(clk.Now()))
	}
}

// listenLocked opens the receiving sockets a peer needs, if they are not
// open yet.
func (s *Server) listenLocked(p Peer) error {
	port := uint16(PortSingleHop)
	if p.Multihop {
		port = PortMultihop
	}
	var addrs []netip.Addr
	for _, a := range s.o.ListenAddresses {
		if a.Is4() == p.Remote.Is4() {
			addrs = append(addrs, a.Unmap())
		}
	}
	if len(s.o.ListenAddresses) == 0 {
		addrs = []netip.Addr{netip.IPv4Unspecified()}
		if p.Remote.Is6() {
			addrs[0] = netip.IPv6Unspecified()
		}
	}
	if len(addrs) == 0 {
		return fmt.Errorf("no listen address of the peer's family (%v)", s.o.ListenAddresses)
	}
	for _, a := range addrs {
		k := listenKey{a, port}
		if s.listeners[k] != nil {
			continue
		}
		l, err := listen(a, port)
		if err != nil {
			return fmt.Errorf("receiving on %s: %w", netip.AddrPortFrom(a, port), err)
		}
		s.listeners[k] = l
		s.readers.Add(1)
		go s.read(l, port == PortMultihop)
	}
	return nil
}

// closeIdleListenersLocked closes the receiving sockets no session
// needs.
func (s *Server) closeIdleListenersLocked() {
	for k, l := range s.listeners {
		used := false
		for _, c := range s.sessions {
			if c.peer.Remote.Is4() == k.addr.Is4() && c.peer.Multihop == (k.port == PortMultihop) {
				used = true
				break
			}
		}
		if !used {
			l.close()
			delete(s.listeners, k)
		}
	}
}

// read takes packets from a receiving socket until it is closed and
// hands each to its session.
func (s *Server) read(l *listener, multihop bool) {
	defer s.readers.Done()
	b := make([]byte, 1500)
	for {
		r, err := l.read(b)
		if errors.Is(err, net.ErrClosed) {
			return // SetPeers or Close
		}
		if err != nil {
			// The socket stays: its sessions depend on it.
			s.drop("read", netip.Addr{}, err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		at := s.o.Clock.Now()
		if !multihop && r.ttl != 255 {
			// RFC 5881 §5: a single-hop packet comes from a neighbour
			// that sent it with 255, or from somewhere it must not.
			// Checked first: it costs nothing.
			s.drop("ttl", r.src, fmt.Errorf("TTL %d, want 255", r.ttl))
			continue
		}
		p, err := Parse(b[:r.n])
		if err != nil {
			s.drop("malformed", r.src, err)
			continue
		}
		s.mu.RLock()
		c := s.sessions[r.src]
		if p.YourDiscriminator != 0 {
			c = s.byDiscr[p.YourDiscriminator]
		}
		s.mu.RUnlock()
		switch {
		case c == nil && p.YourDiscriminator == 0 && (p.State == StateDown || p.State == StateAdminDown):
			// A router whose BFD session with this node was removed
			// here says Down for a while: counted, not worth a warning.
			s.m.dropped.WithLabelValues("unknown").Inc()
			s.log.Debug("BFD packet dropped", "from", r.src.String(), "reason", "unknown", "state", p.State.String())
		case c == nil:
			s.drop("unknown", r.src, fmt.Errorf("no session (your discriminator %d)", p.YourDiscriminator))
		case c.peer.Remote != r.src:
			s.drop("address", r.src, fmt.Errorf("the session of discriminator %d is with %s", p.YourDiscriminator, c.peer.Remote))
		case c.peer.Multihop != multihop:
			s.drop("hop", r.src, fmt.Errorf("multihop %v on a session with multihop %v", multihop, c.peer.Multihop))
		default:
			select {
			case c.rx <- rxPacket{p, at}:
			default:
				s.drop("backlog", r.src, errors.New("the session's goroutine is behind"))
			}
		}
	}
}

// Drops are all counted; they are logged at most once per dropLogEvery
// for each reason and source, and at most dropLogBurst lines in all per
// dropLogEvery (a flood from many sources would otherwise log each
// packet), with a line that says how many went unlogged.
const (
	dropLogEvery = time.Minute
	dropLogBurst = 20
	dropLogKeys  = 1024
)

func (s *Server) drop(reason string, src netip.Addr, err error) {
	s.m.dropped.WithLabelValues(reason).Inc()
	key := reason + " " + src.String()
	now := time.Now()
	s.dropLogMu.Lock()
	if now.Sub(s.dropWindow) >= dropLogEvery {
		if s.dropSuppressed > 0 {
			s.log.Warn("BFD packets dropped without a log line (see keepvip_bfd_packets_dropped_total)", "count", s.dropSuppressed, "in", now.Sub(s.dropWindow).Round(time.Second))
		}
		s.dropWindow, s.dropLogged, s.dropSuppressed = now, 0, 0
		for k, at := range s.dropLog {
			if now.Sub(at) >= dropLogEvery {
				delete(s.dropLog, k)
			}
		}
	}
	last, seen := s.dropLog[key]
	logIt := (!seen || now.Sub(last) >= dropLogEvery) && s.dropLogged < dropLogBurst
	if logIt {
		s.dropLogged++
		if len(s.dropLog) < dropLogKeys {
			s.dropLog[key] = now
		}
	} else {
		s.dropSuppressed++
	}
	s.dropLogMu.Unlock()
	if logIt {
		s.log.Warn("BFD packet dropped", "from", src.String(), "reason", reason, "err", err)
	}
}

// SessionStatus is a session as the server sees it.
type SessionStatus struct {
	Remote   string `json:"remote"`
	Local    string `json:"local,omitempty"`
	Multihop bool   `json:"multihop,omitempty"`
	// State is down, init, up or admindown; RemoteState what the peer
	// last said of its own.
	State       string `json:"state"`
	RemoteState string `json:"remoteState"`
	// Diag is why the session last went down.
	Diag  string    `json:"diag,omitempty"`
	Since time.Time `json:"since,omitzero"`

	LocalDiscr  uint32 `json:"localDiscriminator"`
	RemoteDiscr uint32 `json:"remoteDiscriminator"`
	// What this node asks for.
	DesiredMinTx  Duration `json:"desiredMinTx"`
	RequiredMinRx Duration `json:"requiredMinRx"`
	DetectMult    uint8    `json:"detectMultiplier"`
	// What is in force: the interval between this node's packets and
	// how long it waits for the peer's.
	TxInterval    Duration `json:"txInterval"`
	DetectionTime Duration `json:"detectionTime,omitzero"`
	// What the peer asks for.
	RemoteMinRx      Duration `json:"remoteMinRx,omitzero"`
	RemoteDetectMult uint8    `json:"remoteDetectMultiplier,omitempty"`

	Flaps     uint64 `json:"flaps"`
	Sent      uint64 `json:"sent"`
	Received  uint64 `json:"received"`
	Discarded uint64 `json:"discarded"`
	// LastError is why the session does not run or why its last packet
	// could not be sent.
	LastError string `json:"lastError,omitempty"`
}

// Sessions returns the sessions, sorted by peer address, with the peers
// that could not be started.
func (s *Server) Sessions() []SessionStatus {
	s.mu.RLock()
	out := make([]SessionStatus, 0, len(s.sessions)+len(s.failed))
	for _, c := range s.sessions {
		out = append(out, *c.st.Load())
	}
	for a, f := range s.failed {
		out = append(out, SessionStatus{Remote: a.String(), Local: addrString(f.peer.Local), Multihop: f.peer.Multihop,
			State: stateString(StateDown), RemoteState: stateString(StateDown),
			DesiredMinTx: Duration(f.peer.DesiredMinTx), RequiredMinRx: Duration(f.peer.RequiredMinRx), DetectMult: f.peer.DetectMult,
			LastError: f.err.Error()})
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b SessionStatus) int {
		return netip.MustParseAddr(a.Remote).Compare(netip.MustParseAddr(b.Remote))
	})
	return out
}

// Close stops every session, each telling its peer it is
// administratively down, and closes the sockets.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for _, c := range s.sessions {
		close(c.stop)
	}
	for _, c := range s.sessions {
		<-c.done
		c.tx.close()
	}
	clear(s.sessions)
	clear(s.byDiscr)
	for k, l := range s.listeners {
		l.close()
		delete(s.listeners, k)
	}
	s.mu.Unlock()
	s.readers.Wait()
	s.m.unregister()
	return nil
}

// Duration is a time.Duration written as its String in JSON.
type Duration time.Duration

// MarshalText writes the duration as time.Duration.String does.
func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// UnmarshalText parses what MarshalText wrote.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	*d = Duration(v)
	return err
}

func (d Duration) String() string { return time.Duration(d).String() }

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// stateString is a state as status output and metrics show it: down,
// init, up, admindown.
func stateString(s State) string { return strings.ToLower(s.String()) }

func diagString(d Diag) string {
	if d == DiagNone {
		return ""
	}
	return d.String()
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
