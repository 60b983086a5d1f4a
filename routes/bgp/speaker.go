// Package bgp announces routes to BGP peers with GoBGP embedded as a
// library (RFC 4271; IPv4 and IPv6 unicast, RFC 4760). A Speaker is one
// BGP instance: one ASN and router ID, the peers it is given (SetPeers) and
// the routes it is given (Sync), both as full desired sets; it changes only
// what differs.
//
// Every route is originated here (ORIGIN IGP) with its next hop (this
// node's address on the session when the route has none), MED,
// communities, local preference (sent to iBGP peers only, as BGP does)
// and AS-path prepending (eBGP peers only: an iBGP peer would see its own
// AS in the path and drop the route, so prepending with an iBGP peer is
// refused by Validate).
//
// It knows nothing of VRRP or Kubernetes.
package bgp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	api "github.com/osrg/gobgp/v4/api"
	"github.com/osrg/gobgp/v4/pkg/apiutil"
	"github.com/osrg/gobgp/v4/pkg/packet/bgp"
	"github.com/osrg/gobgp/v4/pkg/server"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepvip/keepvip/routes"
)

// Options configure a Speaker.
type Options struct {
	// ASN is the local AS number (1-4294967294; 4-byte ASNs are sent as
	// RFC 6793 says).
	ASN uint32
	// RouterID is the BGP identifier: an IPv4 address, usually the
	// node's.
	RouterID netip.Addr
	// ListenPort accepts sessions from peers on this TCP port (passive
	// peers need it); 0: no listening, sessions are opened from here.
	ListenPort uint16
	// ListenAddresses restricts listening; empty: every address.
	ListenAddresses []netip.Addr
	Logger          *slog.Logger
	// Registerer takes the metrics; nil for none.
	Registerer prometheus.Registerer
	// OnPeerState, if set, is told when a session comes up or goes down,
	// from GoBGP's goroutine: it must not block.
	OnPeerState func(peer netip.Addr, established bool)
}

// Peer is a BGP neighbour.
type Peer struct {
	Address netip.Addr
	ASN     uint32
	// Port is the peer's TCP port; 0: 179.
	Port uint16
	// Password enables TCP-MD5 (RFC 2385) with this key.
	Password string
	// HoldTime and KeepaliveInterval: 0 for BGP's 90 s and a third of
	// the hold time.
	HoldTime, KeepaliveInterval time.Duration
	// Multihop allows an eBGP peer this many hops away (TTL); 0: directly
	// connected.
	Multihop uint8
	// Passive waits for the peer to connect (needs Options.ListenPort).
	Passive bool
	// GracefulRestart (RFC 4724) with this restart time; 0: off.
	GracefulRestart time.Duration
	// LocalAddress is the session's source address; invalid: the
	// kernel's choice.
	LocalAddress netip.Addr
}

// MaxASN is the largest AS number (4294967295 is reserved, RFC 7300).
const MaxASN = 4294967294

func (o Options) validate() []error {
	var errs []error
	if o.ASN == 0 || o.ASN > MaxASN {
		errs = append(errs, fmt.Errorf("asn: %d is outside 1-%d", o.ASN, uint64(MaxASN)))
	}
	if !o.RouterID.Is4() || o.RouterID.IsUnspecified() {
		errs = append(errs, fmt.Errorf("routerID: %v is not an IPv4 address (BGP identifiers are IPv4)", o.RouterID))
	}
	for i, a := range o.ListenAddresses {
		if !a.IsValid() || a.Zone() != "" {
			errs = append(errs, fmt.Errorf("listenAddresses[%d]: %v is not an IP address without a zone", i, a))
		}
	}
	return errs
}

// Validate returns every problem with the options and peers together,
// each naming the field.
func Validate(o Options, peers []Peer, rs []routes.Route) []error {
	errs := o.validate()
	seen := map[netip.Addr]int{}
	ibgp := false
	for i, p := range peers {
		bad := func(field, format string, args ...any) {
			errs = append(errs, fmt.Errorf("peers[%d].%s: %s", i, field, fmt.Sprintf(format, args...)))
		}
		switch {
		case !p.Address.IsValid():
			bad("address", "not an IP address")
		case p.Address.Zone() != "" || p.Address.IsUnspecified() || p.Address.IsMulticast():
			bad("address", "%s is not a unicast address without a zone", p.Address)
		default:
			if j, dup := seen[p.Address]; dup {
				bad("address", "%s is also peers[%d]", p.Address, j)
			}
			seen[p.Address] = i
		}
		if p.ASN == 0 || p.ASN > MaxASN {
			bad("asn", "%d is outside 1-%d", p.ASN, uint64(MaxASN))
		}
		if p.ASN == o.ASN {
			ibgp = true
		}
		if len(p.Password) > 80 {
			bad("password", "longer than the 80 bytes TCP-MD5 keys can have")
		}
		if p.HoldTime != 0 && (p.HoldTime < 3*time.Second || p.HoldTime > 65535*time.Second) {
			bad("holdTime", "%s is outside 3s-65535s (or 0 for the default 90s)", p.HoldTime)
		}
		if p.HoldTime%time.Second != 0 || p.KeepaliveInterval%time.Second != 0 {
			bad("holdTime", "BGP timers are whole seconds")
		}
		if p.KeepaliveInterval != 0 && p.HoldTime != 0 && p.KeepaliveInterval >= p.HoldTime {
			bad("keepaliveInterval", "%s is not below the hold time %s", p.KeepaliveInterval, p.HoldTime)
		}
		if p.Multihop > 0 && p.ASN == o.ASN {
			bad("multihop", "only for eBGP peers (iBGP sessions are not TTL-limited)")
		}
		if p.Passive && o.ListenPort == 0 {
			bad("passive", "a passive peer needs listenPort: nothing would accept its connection")
		}
		if p.GracefulRestart < 0 || p.GracefulRestart > 4095*time.Second {
			bad("gracefulRestart", "%s is outside 0-4095s", p.GracefulRestart)
		}
		if p.LocalAddress.IsValid() && p.LocalAddress.Is4() != p.Address.Is4() {
			bad("localAddress", "%s is not of the peer's family", p.LocalAddress)
		}
	}
	if ibgp {
		for _, r := range rs {
			if r.Prepend > 0 {
				errs = append(errs, fmt.Errorf("route %s: prepending with an iBGP peer: the peer would find its own AS in the path and drop the route; use localPref", r))
				break
			}
		}
	}
	return errs
}

// Speaker is one embedded BGP instance.
type Speaker struct {
	o   Options
	log *slog.Logger
	s   *server.BgpServer
	m   *metrics

	stopWatch context.CancelFunc
	watchDone chan struct{}

	mu        sync.Mutex
	closed    bool
	peers     map[netip.Addr]Peer
	state     map[netip.Addr]*PeerStatus
	announced map[netip.Prefix]routes.Route
}

// PeerStatus is a peer as the speaker sees it.
type PeerStatus struct {
	Address string `json:"address"`
	ASN     uint32 `json:"asn"`
	// State is the BGP FSM state: idle, connect, active, opensent,
	// openconfirm or established.
	State string    `json:"state"`
	Since time.Time `json:"since,omitzero"`
	// LastError is why the session went down last, if it did.
	LastError string `json:"lastError,omitempty"`
	// Advertised is how many prefixes were sent to the peer.
	Advertised uint64 `json:"advertised"`
	Received   uint64 `json:"received"`
}

// New starts a speaker with no peers and no routes.
func New(ctx context.Context, o Options) (*Speaker, error) {
	if errs := o.validate(); len(errs) > 0 {
		return nil, fmt.Errorf("BGP: %w", errors.Join(errs...))
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	// GoBGP logs peer state changes at Info; keepvip logs those itself.
	lvl := &slog.LevelVar{}
	lvl.Set(slog.LevelWarn)
	s := server.NewBgpServer(server.LoggerOption(o.Logger.With("from", "gobgp"), lvl))
	go s.Serve()
	g := &api.Global{Asn: o.ASN, RouterId: o.RouterID.String(), ListenPort: -1}
	if o.ListenPort != 0 {
		g.ListenPort = int32(o.ListenPort)
		for _, a := range o.ListenAddresses {
			g.ListenAddresses = append(g.ListenAddresses, a.String())
		}
	}
	if err := s.StartBgp(ctx, &api.StartBgpRequest{Global: g}); err != nil {
		s.Stop()
		return nil, fmt.Errorf("starting BGP (AS %d, router ID %s): %w", o.ASN, o.RouterID, err)
	}
	sp := &Speaker{o: o, log: o.Logger, s: s, m: newMetrics(o.Registerer),
		peers: map[netip.Addr]Peer{}, state: map[netip.Addr]*PeerStatus{}, announced: map[netip.Prefix]routes.Route{}}
	wctx, cancel := context.WithCancel(context.Background())
	sp.stopWatch, sp.watchDone = cancel, make(chan struct{})
	err := s.WatchEvent(wctx, server.WatchEventMessageCallbacks{OnPeerUpdate: sp.onPeer}, server.WatchPeer())
	if err != nil {
		cancel()
		s.Stop()
		sp.m.unregister()
		return nil, fmt.Errorf("watching BGP peers: %w", err)
	}
	go func() { <-wctx.Done(); close(sp.watchDone) }()
	return sp, nil
}

// onPeer records a peer's state change. GoBGP calls it from its own
// goroutine: it must not block.
func (sp *Speaker) onPeer(ev *apiutil.WatchEventMessage_PeerEvent, _ time.Time) {
	if ev.Type != apiutil.PEER_EVENT_STATE {
		return
	}
	st := ev.Peer.State
	addr := st.NeighborAddress.Unmap()
	state := fsmName(st.SessionState)
	sp.mu.Lock()
	ps, ok := sp.state[addr]
	if !ok || sp.closed {
		sp.mu.Unlock()
		return
	}
	prev := ps.State
	ps.State, ps.Since = state, time.Now()
	// The idle hold timer expiring is only the retry that follows a
	// failure: the failure is the error worth showing.
	if state != "established" && st.DisconnectReason != api.PeerState_DISCONNECT_REASON_UNSPECIFIED &&
		st.DisconnectReason != api.PeerState_DISCONNECT_REASON_IDLE_TIMER_EXPIRED {
		ps.LastError = disconnectReason(st)
	}
	asn, lastErr := ps.ASN, ps.LastError
	if prev != state {
		// Under the lock, so that a peer SetPeers removes has no metric
		// made again for it.
		sp.m.established.WithLabelValues(addr.String()).Set(b2f(state == "established"))
		if state == "established" || prev == "established" {
			sp.m.transitions.WithLabelValues(addr.String(), state).Inc()
		}
	}
	sp.mu.Unlock()
	if prev == state || (state != "established" && prev != "established") {
		return
	}
	if sp.o.OnPeerState != nil {
		sp.o.OnPeerState(addr, state == "established")
	}
	if state == "established" {
		sp.log.Info("BGP session established", "peer", addr.String(), "asn", asn)
	} else {
		sp.log.Warn("BGP session down", "peer", addr.String(), "asn", asn, "state", state, "reason", lastErr)
	}
}

func disconnectReason(st apiutil.PeerState) string {
	msg := strings.ToLower(strings.ReplaceAll(strings.TrimPrefix(st.DisconnectReason.String(), "DISCONNECT_REASON_"), "_", " "))
	if st.DisconnectMessage != "" {
		msg += ": " + st.DisconnectMessage
	}
	return msg
}

func fsmName(s bgp.FSMState) string {
	switch s {
	case bgp.BGP_FSM_IDLE:
		return "idle"
	case bgp.BGP_FSM_CONNECT:
		return "connect"
	case bgp.BGP_FSM_ACTIVE:
		return "active"
	case bgp.BGP_FSM_OPENSENT:
		return "opensent"
	case bgp.BGP_FSM_OPENCONFIRM:
		return "openconfirm"
	case bgp.BGP_FSM_ESTABLISHED:
		return "established"
	}
	return fmt.Sprintf("state %d", s)
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

var errClosed = errors.New("BGP speaker closed")

// SetPeers makes the peers exactly peers: new ones are added, removed ones
// closed (their routes withdrawn by the session's end), changed ones
// updated (GoBGP resets the session when anything but the timers
// changed). Invalid peers are reported and left as they are.
func (sp *Speaker) SetPeers(ctx context.Context, peers []Peer) error {
	var downs []netip.Addr
	err := sp.setPeers(ctx, peers, &downs)
	// Told after unlocking: the callback may take its own locks.
	if sp.o.OnPeerState != nil {
		for _, a := range downs {
			sp.o.OnPeerState(a, false)
		}
	}
	return err
}

func (sp *Speaker) setPeers(ctx context.Context, peers []Peer, downs *[]netip.Addr) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.closed {
		return errClosed
	}
	var errs []error
	want := map[netip.Addr]Peer{}
	for i, p := range peers {
		if ve := Validate(sp.o, []Peer{p}, nil); len(ve) > 0 {
			errs = append(errs, fmt.Errorf("BGP peer %d (%v): %w", i, p.Address, errors.Join(ve...)))
			if old, ok := sp.peers[p.Address]; ok {
				want[p.Address] = old // what works stays
			}
			continue
		}
		if _, dup := want[p.Address]; dup {
			errs = append(errs, fmt.Errorf("BGP peer %s: listed twice", p.Address))
			continue
		}
		want[p.Address] = p
	}
	for a := range sp.peers {
		if _, ok := want[a]; ok {
			continue
		}
		if err := sp.s.DeletePeer(ctx, &api.DeletePeerRequest{Address: a.String()}); err != nil {
			errs = append(errs, fmt.Errorf("removing BGP peer %s: %w", a, err))
			continue
		}
		if ps := sp.state[a]; ps != nil && ps.State == "established" {
			*downs = append(*downs, a)
		}
		delete(sp.peers, a)
		delete(sp.state, a)
		sp.m.established.DeleteLabelValues(a.String())
		sp.m.transitions.DeletePartialMatch(prometheus.Labels{"peer": a.String()})
		sp.log.Info("BGP peer removed", "peer", a.String())
	}
	for a, p := range want {
		old, exists := sp.peers[a]
		if exists && old == p {
			continue
		}
		var err error
		if exists {
			_, err = sp.s.UpdatePeer(ctx, &api.UpdatePeerRequest{Peer: sp.apiPeer(p)})
		} else {
			// Known before GoBGP can report on it.
			sp.state[a] = &PeerStatus{Address: a.String(), ASN: p.ASN, State: "idle", Since: time.Now()}
			err = sp.s.AddPeer(ctx, &api.AddPeerRequest{Peer: sp.apiPeer(p)})
		}
		if err != nil {
			if !exists {
				delete(sp.state, a)
			}
			errs = append(errs, fmt.Errorf("configuring BGP peer %s (AS %d): %w", a, p.ASN, err))
			continue
		}
		sp.peers[a] = p
		sp.state[a].ASN = p.ASN
		if !exists {
			sp.m.established.WithLabelValues(a.String()).Set(0)
			sp.log.Info("BGP peer added", "peer", a.String(), "asn", p.ASN)
		}
	}
	return errors.Join(errs...)
}

func (sp *Speaker) apiPeer(p Peer) *api.Peer {
	fam := func(afi api.Family_Afi) *api.AfiSafi {
		return &api.AfiSafi{
			Config:            &api.AfiSafiConfig{Family: &api.Family{Afi: afi, Safi: api.Family_SAFI_UNICAST}, Enabled: true},
			MpGracefulRestart: &api.MpGracefulRestart{Config: &api.MpGracefulRestartConfig{Enabled: p.GracefulRestart > 0}},
		}
	}
	ap := &api.Peer{
		Conf: &api.PeerConf{NeighborAddress: p.Address.String(), PeerAsn: p.ASN, AuthPassword: p.Password},
		Timers: &api.Timers{Config: &api.TimersConfig{
			HoldTime: uint64(p.HoldTime / time.Second), KeepaliveInterval: uint64(p.KeepaliveInterval / time.Second),
			// Retry a session that failed after 5 s, not BGP's 120 s:
			// a router that restarts should hear the VIPs at once.
			ConnectRetry: 5,
			// After a reset (ResetPeer, a changed peer) try again
			// within a second, not GoBGP's 30 s.
			IdleHoldTimeAfterReset: 1,
		}},
		Transport: &api.Transport{RemotePort: uint32(p.Port), PassiveMode: p.Passive},
		// An IPv4 session carries both families (IPv6 routes have their
		// own next hop, nextHop6); an IPv6 session only IPv6: an IPv4
		// route over it would get an IPv6 next hop, which a peer without
		// RFC 8950 extended next hops refuses.
		AfiSafis: []*api.AfiSafi{fam(api.Family_AFI_IP6)},
	}
	if p.Address.Is4() {
		ap.AfiSafis = append([]*api.AfiSafi{fam(api.Family_AFI_IP)}, ap.AfiSafis...)
	}
	if p.LocalAddress.IsValid() {
		ap.Transport.LocalAddress = p.LocalAddress.String()
	}
	if p.Multihop > 0 {
		ap.EbgpMultihop = &api.EbgpMultihop{Enabled: true, MultihopTtl: uint32(p.Multihop)}
	}
	if p.GracefulRestart > 0 {
		ap.GracefulRestart = &api.GracefulRestart{Enabled: true, RestartTime: uint32(p.GracefulRestart / time.Second)}
	}
	return ap
}

// Sync announces exactly rs: new and changed routes are announced (a
// changed one replaces the old in one UPDATE), the others withdrawn.
// Invalid routes are reported and left out; a route whose announcement
// fails keeps what the peers had.
func (sp *Speaker) Sync(ctx context.Context, rs []routes.Route) error {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	if sp.closed {
		return errClosed
	}
	want, errs := routes.ByPrefix(rs)
	for p, r := range want {
		if r.Prefix.Addr().Is6() && !r.NextHop.IsValid() {
			// GoBGP would put this node's IPv4 session address in an
			// IPv6 next hop, which routers reject.
			errs = append(errs, fmt.Errorf("route %s: an IPv6 route needs a next hop (this node's IPv6 address)", r))
			if old, ok := sp.announced[p]; ok {
				want[p] = old
			} else {
				delete(want, p)
			}
		}
	}
	add, del := routes.Diff(sp.announced, want)
	if len(add) > 0 {
		paths := make([]*apiutil.Path, 0, len(add))
		tried := make([]routes.Route, 0, len(add))
		for _, r := range add {
			path, err := sp.path(r)
			if err != nil {
				errs = append(errs, fmt.Errorf("route %s: %w", r, err))
				continue
			}
			paths, tried = append(paths, path), append(tried, r)
		}
		resps, err := sp.s.AddPath(apiutil.AddPathRequest{Paths: paths})
		switch {
		case err != nil:
			// GoBGP adds what it can and reports the last failure: what
			// is announced now is what its table has.
			errs = append(errs, fmt.Errorf("announcing %d route(s): %w", len(paths), err))
			in := sp.inGlobalRIB()
			for _, r := range tried {
				if in[r.Prefix] {
					sp.announced[r.Prefix] = r
				}
			}
		default:
			for i, r := range tried {
				if i < len(resps) && resps[i].Error != nil {
					errs = append(errs, fmt.Errorf("announcing %s: %w", r, resps[i].Error))
					continue
				}
				sp.announced[r.Prefix] = r
			}
		}
	}
	if len(del) > 0 {
		paths := make([]*apiutil.Path, 0, len(del))
		for _, p := range del {
			nlri, err := bgp.NewIPAddrPrefix(p)
			if err != nil {
				errs = append(errs, fmt.Errorf("withdrawing %s: %w", p, err))
				continue
			}
			paths = append(paths, &apiutil.Path{Family: family(p), Nlri: nlri, Withdrawal: true})
		}
		if err := sp.s.DeletePath(apiutil.DeletePathRequest{Paths: paths}); err != nil {
			errs = append(errs, fmt.Errorf("withdrawing %d route(s): %w", len(paths), err))
		} else {
			for _, p := range del {
				delete(sp.announced, p)
			}
		}
	}
	sp.m.announced.Set(float64(len(sp.announced)))
	if len(add)+len(del) > 0 {
		sp.m.updates.Add(float64(len(add) + len(del)))
	}
	return errors.Join(errs...)
}

// inGlobalRIB returns the prefixes of the speaker's own table.
func (sp *Speaker) inGlobalRIB() map[netip.Prefix]bool {
	out := map[netip.Prefix]bool{}
	for _, f := range []bgp.Family{bgp.RF_IPv4_UC, bgp.RF_IPv6_UC} {
		_ = sp.s.ListPath(apiutil.ListPathRequest{TableType: api.TableType_TABLE_TYPE_GLOBAL, Family: f},
			func(nlri bgp.NLRI, _ []*apiutil.Path) {
				if p, err := netip.ParsePrefix(nlri.String()); err == nil {
					out[p] = true
				}
			})
	}
	return out
}

func family(p netip.Prefix) bgp.Family {
	if p.Addr().Is4() {
		return bgp.RF_IPv4_UC
	}
	return bgp.RF_IPv6_UC
}

// path builds the BGP path of a route.
func (sp *Speaker) path(r routes.Route) (*apiutil.Path, error) {
	nlri, err := bgp.NewIPAddrPrefix(r.Prefix)
	if err != nil {
		return nil, err
	}
	attrs := []bgp.PathAttributeInterface{bgp.NewPathAttributeOrigin(bgp.BGP_ORIGIN_ATTR_TYPE_IGP)}
	if r.HasMED {
		attrs = append(attrs, bgp.NewPathAttributeMultiExitDisc(r.MED))
	}
	if r.HasLocalPref {
		attrs = append(attrs, bgp.NewPathAttributeLocalPref(r.LocalPref))
	}
	if len(r.Communities) > 0 {
		cs := make([]uint32, len(r.Communities))
		for i, c := range r.Communities {
			cs[i] = uint32(c)
		}
		attrs = append(attrs, bgp.NewPathAttributeCommunities(cs))
	}
	if r.Prepend > 0 {
		// eBGP adds the local ASN once more on the way out.
		attrs = append(attrs, bgp.NewPathAttributeAsPath([]bgp.AsPathParamInterface{
			bgp.NewAs4PathParam(bgp.BGP_ASPATH_ATTR_TYPE_SEQ, slices.Repeat([]uint32{sp.o.ASN}, r.Prepend)),
		}))
	}
	if r.Prefix.Addr().Is4() {
		nh := netip.IPv4Unspecified() // this node's address on each session
		if r.NextHop.IsValid() {
			nh = r.NextHop
		}
		a, err := bgp.NewPathAttributeNextHop(nh)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, a)
	} else {
		a, err := bgp.NewPathAttributeMpReachNLRI(bgp.RF_IPv6_UC, []bgp.PathNLRI{{NLRI: nlri}}, r.NextHop)
		if err != nil {
			return nil, err
		}
		attrs = append(attrs, a)
	}
	return &apiutil.Path{Family: family(r.Prefix), Nlri: nlri, Attrs: attrs}, nil
}

// ResetPeer ends an established session with peer at once (a
// NOTIFICATION, Cease, administrative reset, carrying why) and lets it
// start again a second later: what a failed BFD session asks for (RFC
// 5882 §4.3), instead of waiting for the hold time. A session that is not
// established is left alone and ResetPeer reports false: GoBGP keeps a
// reset asked of such a session and sends it as soon as the session is
// next established, which would end that one for nothing (and, with a
// router that makes a new BFD session for each BGP session, over and over).
func (sp *Speaker) ResetPeer(ctx context.Context, peer netip.Addr, why string) (bool, error) {
	sp.mu.Lock()
	_, known := sp.peers[peer]
	closed := sp.closed
	sp.mu.Unlock()
	switch {
	case closed:
		return false, errClosed
	case !known:
		return false, fmt.Errorf("resetting BGP peer %s: not a peer", peer)
	}
	// GoBGP's own view, not the last event from it: the session may have
	// ended a moment ago. (Between this and the reset it may still end;
	// that window is GoBGP's to close.)
	established := false
	err := sp.s.ListPeer(ctx, &api.ListPeerRequest{Address: peer.String()}, func(p *api.Peer) {
		established = p.State != nil && p.State.SessionState == api.PeerState_SESSION_STATE_ESTABLISHED
	})
	if err != nil {
		return false, fmt.Errorf("resetting BGP peer %s: reading its state: %w", peer, err)
	}
	if !established {
		return false, nil
	}
	if err := sp.s.ResetPeer(ctx, &api.ResetPeerRequest{Address: peer.String(), Communication: why}); err != nil {
		return false, fmt.Errorf("resetting BGP peer %s: %w", peer, err)
	}
	sp.log.Warn("BGP session reset", "peer", peer.String(), "why", why)
	return true, nil
}

// Announced returns the routes announced now, sorted.
func (sp *Speaker) Announced() []routes.Route {
	sp.mu.Lock()
	defer sp.mu.Unlock()
	out, _ := routes.Diff(nil, sp.announced)
	return out
}

// Peers returns the peers' state, with the prefixes exchanged, sorted by
// address.
func (sp *Speaker) Peers(ctx context.Context) []PeerStatus {
	sp.mu.Lock()
	if sp.closed {
		sp.mu.Unlock()
		return nil
	}
	out := make([]PeerStatus, 0, len(sp.state))
	idx := map[string]int{}
	for _, ps := range sp.state {
		idx[ps.Address] = len(out)
		out = append(out, *ps)
	}
	sp.mu.Unlock()
	_ = sp.s.ListPeer(ctx, &api.ListPeerRequest{EnableAdvertised: true}, func(p *api.Peer) {
		if p.State == nil {
			return
		}
		i, ok := idx[p.State.NeighborAddress]
		if !ok {
			return
		}
		for _, af := range p.AfiSafis {
			if af.State != nil {
				out[i].Advertised += af.State.Advertised
				out[i].Received += af.State.Received
			}
		}
	})
	slices.SortFunc(out, func(a, b PeerStatus) int {
		return netip.MustParseAddr(a.Address).Compare(netip.MustParseAddr(b.Address))
	})
	return out
}

// Close ends every session (the peers withdraw the routes) and stops the
// speaker.
func (sp *Speaker) Close() error {
	sp.mu.Lock()
	if sp.closed {
		sp.mu.Unlock()
		return nil
	}
	sp.closed = true
	sp.mu.Unlock()
	sp.stopWatch()
	<-sp.watchDone
	sp.s.Stop()
	sp.m.unregister()
	return nil
}
