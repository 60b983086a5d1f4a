package vrrp

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keepvip/keepvip/internal/clock"
)

// The simulation runs instances on one fake clock and a fake LAN, without
// goroutines: the event loop picks the earliest of all timers and in-flight
// packets, advances the clock to it and calls the instance's handler, exactly
// as run does with real time.

var simStart = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

type sim struct {
	t       *testing.T
	clock   *clock.Fake
	routers []*simRouter
	flight  []flight
	latency time.Duration
	// cut[i] isolates router i from everyone (its link stays up).
	cut map[int]bool
	// capture records every packet put on the wire.
	capture []wirePacket
	// lose, if set, is asked for each copy of a packet on its way to
	// router to; true loses that copy.
	lose func(w wirePacket, to int) bool
	// beforeStart, if set, is called on each router added, before its
	// instance starts.
	beforeStart func(r *simRouter)
}

type flight struct {
	at  time.Time
	to  int
	pkt Packet
}

type wirePacket struct {
	at       time.Time
	from     int
	src, dst netip.Addr
	adv      Advertisement
}

type simRouter struct {
	in    *Instance
	addr  netip.Addr
	vips  *fakeAddrs
	ann   *fakeAnnouncer
	dead  bool
	index int
	sim   *sim
}

type fakeAddrs struct {
	on  map[netip.Prefix]bool
	log []string
	err error
}

func (f *fakeAddrs) AddVIP(_ int, p netip.Prefix) error {
	if f.err != nil {
		return f.err
	}
	f.on[p] = true
	f.log = append(f.log, "add "+p.String())
	return nil
}

func (f *fakeAddrs) DeleteVIP(_ int, p netip.Prefix) error {
	delete(f.on, p)
	f.log = append(f.log, "del "+p.String())
	return nil
}

type fakeAnnouncer struct {
	clock *clock.Fake
	times []time.Time
	sent  int
}

func (f *fakeAnnouncer) Announce(addrs []netip.Addr) (int, error) {
	f.times = append(f.times, f.clock.Now())
	f.sent += len(addrs)
	return len(addrs), nil
}

// tx is a router's port on the fake LAN.
type tx struct{ r *simRouter }

func (t tx) WritePacket(b []byte, src, dst netip.Addr) error {
	s := t.r.sim
	adv, err := ParseAdvertisement(b, FamilyOf(src))
	if err != nil {
		s.t.Fatalf("router %d sent an unparseable advert %x: %v", t.r.index, b, err)
	}
	s.capture = append(s.capture, wirePacket{at: s.clock.Now(), from: t.r.index, src: src, dst: dst, adv: adv})
	if s.cut[t.r.index] {
		return nil
	}
	w := s.capture[len(s.capture)-1]
	for _, o := range s.routers {
		if o == t.r || s.cut[o.index] || (!dst.IsMulticast() && dst != o.addr) {
			continue
		}
		if s.lose != nil && s.lose(w, o.index) {
			continue
		}
		s.flight = append(s.flight, flight{
			at: s.clock.Now().Add(s.latency), to: o.index,
			pkt: Packet{Payload: slices.Clone(b), Src: src, Dst: dst, TTL: 255},
		})
	}
	return nil
}

func newSim(t *testing.T) *sim {
	return &sim{t: t, clock: clock.NewFake(simStart), latency: 100 * time.Microsecond, cut: map[int]bool{}}
}

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// countingHandler counts the records logged at Debug and above, by
// message. Safe for concurrent use.
type countingHandler struct {
	mu    *sync.Mutex
	byMsg map[string]int
	attrs []slog.Attr
}

func newCountingHandler() *countingHandler {
	return &countingHandler{mu: &sync.Mutex{}, byMsg: map[string]int{}}
}

func (h *countingHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h *countingHandler) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.byMsg[r.Message]++
	return nil
}

func (h *countingHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.attrs = append(slices.Clone(h.attrs), as...)
	return &c
}

func (h *countingHandler) WithGroup(string) slog.Handler { return h }

// total returns the number of records and the counts by message.
func (h *countingHandler) total() (int, map[string]int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	n := 0
	for _, c := range h.byMsg {
		n += c
	}
	return n, maps.Clone(h.byMsg)
}

// add creates a router from cfg at address addr; it starts at once.
func (s *sim) add(addr string, mod func(*Config)) *simRouter {
	return s.addRouter(addr, mod, false)
}

// addRestarted adds a router whose VIPs an earlier run left in place: it
// was master when its keepvip died (Manager.Start finds them, Sync hands
// them over).
func (s *sim) addRestarted(addr string, mod func(*Config)) *simRouter {
	return s.addRouter(addr, mod, true)
}

func (s *sim) addRouter(addr string, mod func(*Config), restarted bool) *simRouter {
	return s.addRouterWith(addr, mod, restarted, nil)
}

func (s *sim) addRouterWith(addr string, mod func(*Config), restarted bool, filter filterer) *simRouter {
	cfg := DefaultConfig()
	cfg.Name = fmt.Sprintf("r%d", len(s.routers))
	cfg.Interface = "eth0"
	cfg.VRID = 51
	cfg.VIPs = []netip.Prefix{netip.MustParsePrefix("192.0.2.100/24")}
	if mod != nil {
		mod(&cfg)
	}
	if errs := cfg.Validate(); len(errs) > 0 {
		s.t.Fatalf("invalid sim config: %v", errs)
	}
	r := &simRouter{
		addr:  netip.MustParseAddr(addr),
		vips:  &fakeAddrs{on: map[netip.Prefix]bool{}},
		ann:   &fakeAnnouncer{clock: s.clock},
		index: len(s.routers),
		sim:   s,
	}
	io := instanceIO{
		tx: tx{r}, addrs: r.vips, announce: r.ann, ifindex: 2, filter: filter,
		source: func(*Config) (netip.Addr, error) { return r.addr, nil },
	}
	r.in = newInstance(cfg, io, s.clock, discard(), NewMetrics(nil), map[string]bool{"eth0": true})
	if restarted {
		for _, p := range cfg.VIPs {
			r.vips.on[p] = true
		}
		r.in.inherited = slices.Clone(cfg.VIPs)
	}
	s.routers = append(s.routers, r)
	if s.beforeStart != nil {
		s.beforeStart(r)
	}
	r.in.start(s.clock.Now())
	return r
}

// runFor processes every event up to now+d.
func (s *sim) runFor(d time.Duration) {
	s.t.Helper()
	end := s.clock.Now().Add(d)
	for steps := 0; ; steps++ {
		if steps > 1e6 {
			s.t.Fatal("simulation does not settle")
		}
		next, kind, idx := end, "", -1
		for i, f := range s.flight {
			if f.at.Before(next) || f.at.Equal(next) && kind == "" {
				next, kind, idx = f.at, "packet", i
			}
		}
		for i, r := range s.routers {
			if r.dead || r.in.stopped {
				continue
			}
			if at, ok := r.in.nextDeadline(); ok && (at.Before(next) || at.Equal(next) && kind == "") {
				next, kind, idx = at, "timer", i
			}
		}
		if kind == "" {
			s.clock.Advance(end.Sub(s.clock.Now()))
			return
		}
		s.clock.Advance(next.Sub(s.clock.Now()))
		switch kind {
		case "packet":
			f := s.flight[idx]
			s.flight = slices.Delete(s.flight, idx, idx+1)
			r := s.routers[f.to]
			if r.dead || r.in.stopped {
				continue
			}
			s.deliver(r, f.pkt)
		case "timer":
			s.routers[idx].in.handleTimers(s.clock.Now())
		}
	}
}

// deliver runs a packet through the same checks as the socket reader.
func (s *sim) deliver(r *simRouter, p Packet) {
	adv, reason, _ := decode(p, r.in.cfg.Family())
	if reason != "" {
		r.in.countDrop(reason)
		return
	}
	if adv.VRID != r.in.cfg.VRID {
		r.in.countDrop(DropUnknown)
		return
	}
	r.in.handlePacket(s.clock.Now(), p, adv)
}

// inject delivers a hand-made advert to r now.
func (s *sim) inject(r *simRouter, src, dst string, adv Advertisement) {
	s.t.Helper()
	if len(adv.Addrs) == 0 {
		adv.Addrs = r.in.cfg.vipAddrs()
	}
	if adv.Version == 0 {
		adv.Version = 3
	}
	if adv.VRID == 0 {
		adv.VRID = r.in.cfg.VRID
	}
	if adv.Interval == 0 {
		adv.Interval = time.Second
	}
	sa, da := netip.MustParseAddr(src), netip.MustParseAddr(dst)
	b, err := adv.Marshal(sa, da, ChecksumPseudoHeader)
	if err != nil {
		s.t.Fatal(err)
	}
	s.deliver(r, Packet{Payload: b, Src: sa, Dst: da, TTL: 255})
}

func (s *sim) masters() []int {
	var out []int
	for i, r := range s.routers {
		if !r.dead && r.in.state == StateMaster {
			out = append(out, i)
		}
	}
	return out
}

// kill stops r without a word, like SIGKILL: nothing more is sent and its
// VIPs stay where they were.
func (s *sim) kill(r *simRouter) { r.dead = true }

// sent returns the adverts router i put on the wire after t.
func (s *sim) sent(i int, after time.Time) []wirePacket {
	var out []wirePacket
	for _, w := range s.capture {
		if w.from == i && !w.at.Before(after) {
			out = append(out, w)
		}
	}
	return out
}

func (r *simRouter) lastTransition() Transition {
	return r.in.stats.transitions[len(r.in.stats.transitions)-1]
}
