package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"reflect"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepvip/keepvip/bfd"
	"github.com/keepvip/keepvip/config"
	"github.com/keepvip/keepvip/internal/announce"
	"github.com/keepvip/keepvip/internal/clock"
	"github.com/keepvip/keepvip/routes"
	"github.com/keepvip/keepvip/routes/bgp"
	"github.com/keepvip/keepvip/routes/kernel"
	"github.com/keepvip/keepvip/vrrp"
)

// RoutingStatus is what keepvip announces to routers.
type RoutingStatus struct {
	// Exporter is "bgp" or "kernel table N".
	Exporter string `json:"exporter"`
	// Peers are the BGP sessions.
	Peers []bgp.PeerStatus `json:"peers,omitempty"`
	// BFD are the BFD sessions of the peers that have one.
	BFD []bfd.SessionStatus `json:"bfd,omitempty"`
	// Announced are the routes given to the exporter last.
	Announced []string `json:"announced"`
	Error     string   `json:"error,omitempty"`
}

// routing owns the route exporter and the controller that makes routes
// follow VRRP states. The controller lives as long as the daemon, so that
// it knows every instance's state whenever routing is configured.
type routing struct {
	log *slog.Logger
	reg prometheus.Registerer
	clk clock.Clock
	ctl *announce.Controller

	cancel context.CancelFunc
	wg     sync.WaitGroup // the controller and the timers goroutines

	// ready is signalled (without blocking) when every BGP session is up
	// or the hold on preemption ends: the daemon looks again at whether
	// instances may preempt.
	ready chan struct{}

	// retry is signalled when starting the exporter failed: the daemon
	// applies the routing again.
	retry chan struct{}

	// holdTimer ends the hold on preemption; retryTimer signals retry.
	// apply arms them; the timers goroutine receives from them.
	holdTimer, retryTimer clock.Timer

	// upMu guards the sessions that are up and the hold, apart from mu:
	// GoBGP's callback must never wait for an apply in progress.
	upMu  sync.Mutex
	gen   int // of the speaker: callbacks of an older one are ignored
	up    map[netip.Addr]bool
	peers int // configured; preemption waits for all of them
	// holdSince is when the hold on preemption for the BGP speaker
	// holdFor began: the first attempt to start it. Retries after a
	// failed start, and a start that succeeds late, keep it; only
	// another speaker (ASN, router ID, listening) starts a new hold.
	// Zero: no BGP speaker attempted yet.
	holdSince time.Time
	holdFor   bgp.Options

	mu      sync.Mutex // apply (the daemon's goroutine) against status
	spec    *config.Exporter
	speaker *bgp.Speaker
	table   *kernel.Table
	// bfd runs the BFD sessions of the speaker's peers, while any has
	// one; a failed session resets its BGP peer. bfdErr is the last
	// error it gave, logged once.
	bfd    *bfd.Server
	bfdErr string

	// resetting are the peers whose BGP reset after a BFD failure is
	// under way: one at a time per peer.
	resetMu   sync.Mutex
	resetting map[netip.Addr]bool
}

func newRouting(log *slog.Logger, reg prometheus.Registerer) *routing {
	return newRoutingClock(log, reg, clock.Real{})
}

// newRoutingClock is newRouting on clk: the hold on preemption and the
// retries of an exporter that could not start run on it.
func newRoutingClock(log *slog.Logger, reg prometheus.Registerer, clk clock.Clock) *routing {
	lat := prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "keepvip_route_change_seconds",
		Help:    "From a VRRP transition or a configuration change to the routes given to the exporter.",
		Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25},
	})
	reg.MustRegister(lat)
	r := &routing{log: log, reg: reg, clk: clk, ready: make(chan struct{}, 1), retry: make(chan struct{}, 1), up: map[netip.Addr]bool{}}
	r.holdTimer, r.retryTimer = clk.NewTimer(time.Hour), clk.NewTimer(time.Hour)
	r.holdTimer.Stop()
	r.retryTimer.Stop()
	r.ctl = announce.New(nil, log, func(d time.Duration) { lat.Observe(d.Seconds()) })
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	r.wg.Add(2)
	go func() { defer r.wg.Done(); r.ctl.Run(ctx) }()
	go func() { defer r.wg.Done(); r.timers(ctx) }()
	return r
}

// timers turns the firing of holdTimer and retryTimer into signals on
// ready and retry, until ctx is done.
func (r *routing) timers(ctx context.Context) {
	defer func() {
		r.holdTimer.Stop()
		r.retryTimer.Stop()
		if c, ok := r.holdTimer.(io.Closer); ok {
			c.Close()
		}
		if c, ok := r.retryTimer.(io.Closer); ok {
			c.Close()
		}
	}()
	for {
		select {
		case <-r.holdTimer.C():
			// A new hold may have begun since this one ended: the
			// daemon asks holdPreemption, which knows.
			r.signalReady()
		case <-r.retryTimer.C():
			select {
			case r.retry <- struct{}{}:
			default:
			}
		case <-ctx.Done():
			return
		}
	}
}

// transition is the VRRP manager's OnTransition.
func (r *routing) transition(instance string, t vrrp.Transition) { r.ctl.Transition(instance, t) }

// apply makes the exporter that of spec (nil: none). A change
// of the speaker's own identity (ASN, router ID, listening) or of the
// exporter starts a new one; peers are updated in place. An exporter that
// cannot start is tried again (see retry) without starting a new hold on
// preemption.
func (r *routing) apply(ctx context.Context, spec *config.Exporter) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if spec == nil || r.spec == nil || spec.Kind != r.spec.Kind || !reflect.DeepEqual(spec.BGP, r.spec.BGP) || spec.Kernel != r.spec.Kernel {
		r.closeExporter()
	}
	r.holdFrom(spec)
	if spec == nil {
		return nil
	}
	if r.spec == nil {
		switch spec.Kind {
		case "bgp":
			o := spec.BGP
			r.upMu.Lock()
			r.gen++
			gen := r.gen
			r.upMu.Unlock()
			o.Logger, o.Registerer = r.log, r.reg
			o.OnPeerState = func(p netip.Addr, up bool) { r.peerState(gen, p, up) }
			sp, err := bgp.New(ctx, o)
			if err != nil {
				r.retryLater()
				return err
			}
			r.speaker = sp
			r.ctl.SetExporter(sp)
		case "kernel":
			o := spec.Kernel
			o.Logger = r.log
			t, err := kernel.New(o)
			if err != nil {
				r.retryLater()
				return err
			}
			r.table = t
			r.ctl.SetExporter(t)
		}
		cp := *spec // spec belongs to the configuration in force
		r.spec = &cp
	}
	var err error
	if r.speaker != nil {
		r.upMu.Lock()
		wasUp := r.allUpLocked()
		r.peers = len(spec.Peers)
		nowUp := r.allUpLocked()
		r.upMu.Unlock()
		if nowUp && !wasUp {
			r.signalReady() // a peer that was missing was removed
		}
		err = r.speaker.SetPeers(ctx, spec.Peers)
		r.spec.Peers = spec.Peers
		if berr := r.applyBFD(spec.BFD); berr != nil {
			// A port another BFD daemon holds may be freed: try again.
			// The sessions' status says what is wrong; the routes do
			// not wait for BFD.
			r.retryLater()
			if msg := berr.Error(); msg != r.bfdErr {
				r.log.Error("BFD sessions", "err", berr)
				r.bfdErr = msg
			}
		} else {
			r.bfdErr = ""
		}
		r.spec.BFD = spec.BFD
	}
	return err
}

// applyBFD makes the BFD sessions those of peers, starting the server
// with the first and closing it with the last (its sockets are the
// node's BFD ports). Call with mu, with the speaker running.
func (r *routing) applyBFD(peers []bfd.Peer) error {
	if len(peers) == 0 {
		r.closeBFD()
		return nil
	}
	if r.bfd == nil {
		sp := r.speaker
		srv, err := bfd.NewServer(bfd.Options{Clock: r.clk, Logger: r.log, Registerer: r.reg,
			OnChange: func(peer netip.Addr, c bfd.Change) {
				if c.Failed() {
					r.bfdFailed(sp, peer, c)
				}
			}})
		if err != nil {
			return err
		}
		r.bfd = srv
	}
	return r.bfd.SetPeers(peers)
}

// bfdFailed resets the BGP session with peer, whose BFD session failed:
// the session ends now, not at the end of its hold time (RFC 5882 §4.3).
// It is the BFD server's callback, which must not block: the reset runs
// on a goroutine of its own, which stop waits for.
func (r *routing) bfdFailed(sp *bgp.Speaker, peer netip.Addr, c bfd.Change) {
	why := "BFD session down: " + c.Diag.String()
	r.resetMu.Lock()
	if r.resetting == nil {
		r.resetting = map[netip.Addr]bool{}
	}
	busy := r.resetting[peer]
	r.resetting[peer] = true
	r.resetMu.Unlock()
	if busy {
		return // the reset under way ends this session too
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer func() {
			r.resetMu.Lock()
			delete(r.resetting, peer)
			r.resetMu.Unlock()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		switch did, err := sp.ResetPeer(ctx, peer, why); {
		case err != nil:
			r.log.Error("resetting the BGP session after its BFD session failed", "peer", peer.String(), "err", err)
		case !did:
			r.log.Info("BFD session failed with a BGP session that is not established: nothing to reset", "peer", peer.String())
		}
	}()
}

// closeBFD stops the BFD sessions, telling each peer they are
// administratively down (which is no failure to it). Call with mu.
func (r *routing) closeBFD() {
	if r.bfd == nil {
		return
	}
	if err := r.bfd.Close(); err != nil {
		r.log.Error("closing the BFD sessions", "err", err)
	}
	r.bfd = nil
}

// holdFrom begins the hold on preemption when spec is a BGP speaker that
// has none yet: the first time it is attempted, not each time a failed
// start is tried again, or preemption would be held back for as long as
// the speaker cannot start. Without BGP there is no hold.
func (r *routing) holdFrom(spec *config.Exporter) {
	r.upMu.Lock()
	defer r.upMu.Unlock()
	if spec == nil || spec.Kind != "bgp" {
		r.holdSince, r.holdFor = time.Time{}, bgp.Options{}
		r.holdTimer.Stop()
		return
	}
	if !r.holdSince.IsZero() && reflect.DeepEqual(spec.BGP, r.holdFor) {
		return // the same speaker: its hold goes on
	}
	r.holdSince, r.holdFor = r.clk.Now(), spec.BGP
	// Preemption is let go after preemptHoldMax, sessions up or not.
	r.holdTimer.Reset(preemptHoldMax)
}

// retryEvery is how soon a routing that could not start is tried again.
const retryEvery = 5 * time.Second

func (r *routing) retryLater() { r.retryTimer.Reset(retryEvery) }

// peerState is the OnPeerState of the speaker of generation gen.
func (r *routing) peerState(gen int, peer netip.Addr, established bool) {
	r.upMu.Lock()
	if gen != r.gen {
		r.upMu.Unlock()
		return // a speaker closed since
	}
	was := r.allUpLocked()
	if established {
		r.up[peer] = true
	} else {
		delete(r.up, peer)
	}
	now := r.allUpLocked()
	r.upMu.Unlock()
	if now && !was {
		r.signalReady()
	}
}

func (r *routing) signalReady() {
	select {
	case r.ready <- struct{}{}:
	default:
	}
}

// allUpLocked: every configured peer has its session up. Call with upMu.
func (r *routing) allUpLocked() bool { return len(r.up) >= r.peers }

// preemptHoldMax bounds how long a node waits for all its BGP sessions
// before it preempts anyway: a router that is down must not pin it.
const preemptHoldMax = 30 * time.Second

// holdPreemption reports whether instances must not preempt now: BGP is
// configured and a session is not up yet (for at most preemptHoldMax
// after the first attempt to start the speaker, whether it started then,
// later or never), so a node that took the VIPs over could not announce
// them to every router, while the master it displaced withdraws them. It
// still becomes master when there is none.
func (r *routing) holdPreemption(e *config.Exporter) bool {
	if e == nil || e.Kind != "bgp" {
		return false
	}
	r.upMu.Lock()
	defer r.upMu.Unlock()
	if r.holdSince.IsZero() {
		return true // the speaker is not attempted yet (the daemon runs VRRP first)
	}
	return len(r.up) < len(e.Peers) && r.clk.Now().Sub(r.holdSince) < preemptHoldMax
}

// closeExporter stops the exporter: the BGP sessions end (the routers drop
// the routes) or the routing table's routes are removed.
func (r *routing) closeExporter() {
	if r.spec == nil {
		return
	}
	r.ctl.SetExporter(nil)
	r.closeBFD() // no reset of a speaker closing
	var exp routes.Exporter = r.table
	if r.speaker != nil {
		exp = r.speaker
	}
	if err := exp.Close(); err != nil {
		r.log.Error("closing the route exporter", "err", err)
	}
	r.spec, r.speaker, r.table = nil, nil, nil
	r.upMu.Lock()
	r.gen++
	clear(r.up)
	r.upMu.Unlock()
}

// stop withdraws everything and stops the controller.
func (r *routing) stop() {
	r.mu.Lock()
	r.closeExporter()
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
}

func (r *routing) status(ctx context.Context) *RoutingStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.spec == nil {
		return nil
	}
	s := &RoutingStatus{Exporter: r.spec.Kind}
	if r.table != nil {
		s.Exporter = fmt.Sprintf("kernel table %d", r.spec.Kernel.Table)
	}
	if r.speaker != nil {
		s.Peers = r.speaker.Peers(ctx)
	}
	if r.bfd != nil {
		s.BFD = r.bfd.Sessions()
	}
	synced, err := r.ctl.Status()
	for _, rt := range synced {
		s.Announced = append(s.Announced, rt.String())
	}
	if err != nil {
		s.Error = err.Error()
	}
	return s
}
