package vrrp

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keepvip/keepvip/internal/clock"
)

// These tests run the instance goroutine itself (run) on a fake clock and
// stop it, as SIGSTOP, a GC pause or a starved CPU would, while the
// master's adverts keep arriving: the fake clock moves on and the timers
// expire meanwhile, so that when the goroutine runs again an expired timer
// and the queued adverts are both ready.

// stallSocket stands for the VRRP socket and its reader: adverts sent to
// the instance wait in the "kernel" queue until handOver, which delivers
// them as the reader does and then releases the instance's backlog waits.
type stallSocket struct {
	mu      sync.Mutex
	queue   []received
	waiters []chan struct{}
	stuck   bool               // the reader never hands over (backlog stays pending)
	asked   chan struct{}      // a value each time backlog finds something queued
	sent    []Advertisement    // what the instance sent
	sentAt  []time.Time        // when, on the fake clock
	clock   *clock.Fake        // for sentAt
	dsts    map[netip.Addr]int // adverts per destination
}

func newStallSocket(clk *clock.Fake) *stallSocket {
	return &stallSocket{asked: make(chan struct{}, 1), clock: clk, dsts: map[netip.Addr]int{}}
}

func (s *stallSocket) WritePacket(b []byte, src, dst netip.Addr) error {
	adv, err := ParseAdvertisement(b, FamilyOf(src))
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sent = append(s.sent, adv)
	s.sentAt = append(s.sentAt, s.clock.Now())
	s.dsts[dst]++
	return nil
}

func (s *stallSocket) backlog() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) == 0 && !s.stuck {
		return nil
	}
	ch := make(chan struct{})
	s.waiters = append(s.waiters, ch)
	select {
	case s.asked <- struct{}{}:
	default:
	}
	return ch
}

// enqueue puts an advert in the kernel's queue.
func (s *stallSocket) enqueue(r received) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.queue = append(s.queue, r)
}

// handOver is the reader running again: it delivers what is queued, then
// is idle.
func (s *stallSocket) handOver(in *Instance) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, r := range s.queue {
		if !in.deliver(r) {
			panic("instance queue full")
		}
	}
	s.queue = nil
	for _, w := range s.waiters {
		close(w)
	}
	s.waiters = nil
}

func (s *stallSocket) adverts() []Advertisement {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.sent)
}

// stallRouter is an instance running its own goroutine on a fake clock.
type stallRouter struct {
	t      *testing.T
	in     *Instance
	clock  *clock.Fake
	sock   *stallSocket
	ann    *fakeAnnouncer
	cancel context.CancelFunc
}

const (
	stallInterval = 100 * ms
	stallMaster   = "192.0.2.2"
)

func startStallRouter(t *testing.T, mod func(*Config)) *stallRouter {
	t.Helper()
	clk := clock.NewFake(simStart)
	cfg := DefaultConfig()
	cfg.Name, cfg.Interface, cfg.VRID = "stall", "eth0", 51
	cfg.Interval = stallInterval
	cfg.VIPs = []netip.Prefix{netip.MustParsePrefix("192.0.2.100/24")}
	if mod != nil {
		mod(&cfg)
	}
	if errs := cfg.Validate(); len(errs) > 0 {
		t.Fatalf("invalid config: %v", errs)
	}
	r := &stallRouter{t: t, clock: clk, sock: newStallSocket(clk), ann: &fakeAnnouncer{clock: clk}}
	io := instanceIO{
		tx: r.sock, backlog: r.sock, addrs: &fakeAddrs{on: map[netip.Prefix]bool{}}, announce: r.ann, ifindex: 2,
		source: func(*Config) (netip.Addr, error) { return netip.MustParseAddr("192.0.2.1"), nil },
	}
	r.in = newInstance(cfg, io, clk, discard(), NewMetrics(nil), map[string]bool{"eth0": true})
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go r.in.run(ctx)
	r.status() // started: the clock may move
	t.Cleanup(func() {
		cancel()
		// A master hands off first: its hold runs on the fake clock.
		for range 1000 {
			select {
			case <-r.in.done:
				return
			case <-time.After(time.Millisecond):
				clk.Advance(10 * ms)
			}
		}
		t.Error("instance goroutine did not stop")
	})
	return r
}

// advert is the master's advert as the socket reader hands it over.
func (r *stallRouter) advert(prio uint8, src string) received {
	r.t.Helper()
	adv := Advertisement{Version: 3, VRID: 51, Priority: prio, Interval: stallInterval, Addrs: r.in.cfg.vipAddrs()}
	sa, da := netip.MustParseAddr(src), GroupIPv4
	b, err := adv.Marshal(sa, da, ChecksumPseudoHeader)
	if err != nil {
		r.t.Fatal(err)
	}
	p := Packet{Payload: b, Src: sa, Dst: da, TTL: 255}
	adv, reason, err := decode(p, IPv4)
	if reason != "" {
		r.t.Fatalf("decode: %s: %v", reason, err)
	}
	p.Payload = nil
	return received{pkt: p, adv: adv}
}

func (r *stallRouter) status() Status {
	r.t.Helper()
	s, ok := r.in.Status()
	if !ok {
		r.t.Fatal("instance stopped")
	}
	return s
}

// waitFor polls the instance (on its goroutine) until cond holds.
func (r *stallRouter) waitFor(what string, cond func(Status) bool) Status {
	r.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s := r.status()
		if cond(s) {
			return s
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("timed out waiting for %s; status: state %v, received %d, transitions %+v, errors %v",
				what, s.State, s.AdvertsReceived, s.Transitions, s.Errors)
		}
		time.Sleep(time.Millisecond)
	}
}

// follow makes the instance a backup of a master advertising at
// stallInterval: n adverts, each handed over at once.
func (r *stallRouter) follow(n int) {
	r.t.Helper()
	base := r.status().AdvertsReceived
	for i := range n {
		r.clock.Advance(stallInterval)
		r.in.deliver(r.advert(200, stallMaster))
		r.waitFor("the advert to be taken", func(s Status) bool { return s.AdvertsReceived == base+uint64(i)+1 })
	}
	if s := r.status(); s.State != StateBackup || s.Master != netip.MustParseAddr(stallMaster) {
		r.t.Fatalf("state %v following %v; want BACKUP following %s", s.State, s.Master, stallMaster)
	}
}

// stall blocks the instance goroutine and returns a function that lets it
// run again.
func (r *stallRouter) stall() (resume func()) {
	r.t.Helper()
	stopped, release := make(chan struct{}), make(chan struct{})
	go r.in.do(func() {
		close(stopped)
		<-release
	})
	<-stopped
	return func() { close(release) }
}

func stallMasterTransitions(s Status) []Transition {
	var out []Transition
	for _, tr := range s.Transitions {
		if tr.To == StateMaster {
			out = append(out, tr)
		}
	}
	return out
}

// TestStalledBackupTakesQueuedAdvertsFirst stops a backup for 0.5 s and
// 1 s while its master goes on advertising every 100 ms
// (Master_Down_Interval 360.9 ms): when it runs again, its
// Master_Down_Timer has expired and the master's adverts wait for it,
// either already handed over by the socket reader or still in the socket
// with the reader stalled too. It must take them in and stay backup.
func TestStalledBackupTakesQueuedAdvertsFirst(t *testing.T) {
	for _, pause := range []time.Duration{500 * ms, time.Second} {
		t.Run("in the socket, reader stalled/"+pause.String(), func(t *testing.T) {
			r := startStallRouter(t, nil)
			r.follow(3)
			resume := r.stall()
			n := int(pause / stallInterval)
			for range n {
				r.clock.Advance(stallInterval)
				r.sock.enqueue(r.advert(200, stallMaster))
			}
			resume()
			// The reader runs again once the instance has either
			// asked whether it is behind, or acted without asking.
			deadline := time.After(10 * time.Second)
		wait:
			for {
				select {
				case <-r.sock.asked:
					break wait
				case <-deadline:
					t.Fatal("instance neither asked for the backlog nor took over")
				case <-time.After(time.Millisecond):
					if r.status().State == StateMaster {
						break wait
					}
				}
			}
			r.sock.handOver(r.in)
			s := r.waitFor("the queued adverts to be taken", func(s Status) bool { return s.AdvertsReceived == uint64(3+n) })
			if m := stallMasterTransitions(s); len(m) > 0 {
				t.Errorf("a backup paused for %v took over from a live master whose %d adverts were queued: %+v", pause, n, m)
			}
			if got := r.sock.adverts(); len(got) > 0 {
				t.Errorf("the paused backup sent %d adverts: %+v", len(got), got)
			}
			var announced int
			r.in.do(func() { announced = r.ann.sent })
			if announced > 0 {
				t.Errorf("the paused backup sent %d GARPs", announced)
			}
			// The master really stops now: the backup takes over
			// Master_Down_Interval after its last advert.
			r.clock.Advance(mdi(100, stallInterval))
			s = r.waitFor("the takeover", func(s Status) bool { return s.State == StateMaster })
			if m := stallMasterTransitions(s); len(m) != 1 || !strings.HasPrefix(m[0].Reason, "no advert for") {
				t.Errorf("takeovers %+v; want one after Master_Down_Interval", m)
			}
		})
		t.Run("handed over, waiting for the instance/"+pause.String(), func(t *testing.T) {
			// The instance goroutine picks among ready events at
			// random; every order must give the same answer.
			for round := range 20 {
				r := startStallRouter(t, nil)
				r.follow(3)
				resume := r.stall()
				n := int(pause / stallInterval)
				for range n {
					r.clock.Advance(stallInterval)
					r.in.deliver(r.advert(200, stallMaster))
				}
				resume()
				s := r.waitFor("the queued adverts to be taken", func(s Status) bool { return s.AdvertsReceived == uint64(3+n) })
				if m := stallMasterTransitions(s); len(m) > 0 {
					t.Fatalf("round %d: a backup paused for %v took over from a live master whose %d adverts were queued: %+v", round, pause, n, m)
				}
			}
		})
	}
}

// TestStalledBackupWaitsForTheReaderAtMostAWhile: a socket reader that
// never catches up delays a takeover by at most Master_Adver_Interval, and
// says so.
func TestStalledBackupWaitsForTheReaderAtMostAWhile(t *testing.T) {
	r := startStallRouter(t, nil)
	r.follow(3)
	r.sock.mu.Lock()
	r.sock.stuck = true
	r.sock.mu.Unlock()
	resume := r.stall()
	r.clock.Advance(time.Second)
	resume()
	select {
	case <-r.sock.asked:
	case <-time.After(10 * time.Second):
		t.Fatal("the instance did not ask whether its socket reader had caught up")
	}
	if s := r.status(); s.State != StateBackup {
		t.Fatalf("state %v while waiting for the socket reader; want BACKUP", s.State)
	}
	r.clock.Advance(stallInterval - time.Microsecond)
	if s := r.status(); s.State != StateBackup {
		t.Fatalf("state %v before the wait for the reader is over; want BACKUP", s.State)
	}
	r.clock.Advance(time.Microsecond)
	s := r.waitFor("the takeover", func(s Status) bool { return s.State == StateMaster })
	if !slices.ContainsFunc(s.Errors, func(e string) bool { return strings.Contains(e, "backlog: the socket reader did not hand over") }) {
		t.Errorf("errors %q; want the reader's delay reported", s.Errors)
	}
}

// TestStalledMasterAdvertisesAtOnce: a master's Adver_Timer does not wait
// for the socket reader: after a stall it advertises as soon as it runs.
func TestStalledMasterAdvertisesAtOnce(t *testing.T) {
	r := startStallRouter(t, nil)
	r.clock.Advance(mdi(100, stallInterval))
	r.waitFor("mastership", func(s Status) bool { return s.State == StateMaster })
	before := len(r.sock.adverts())
	resume := r.stall()
	r.clock.Advance(time.Second)
	r.sock.enqueue(r.advert(50, "192.0.2.3")) // something for the reader to be behind on
	resume()
	deadline := time.Now().Add(10 * time.Second)
	for len(r.sock.adverts()) == before {
		if time.Now().After(deadline) {
			t.Fatal("the master did not advertise after its stall")
		}
		time.Sleep(time.Millisecond)
	}
	if got := r.sock.adverts()[before]; got.Priority != 100 {
		t.Errorf("first advert after the stall %+v; want priority 100", got)
	}
	if s := r.status(); s.State != StateMaster {
		t.Errorf("state %v; want MASTER", s.State)
	}
}

// TestStalledStoppingMasterSeesTheNewMaster: a stopping master that was
// stalled through its priority 0 repeat, or through its whole handoff
// hold, takes in the new master's queued advert before it acts on either.
func TestStalledStoppingMasterSeesTheNewMaster(t *testing.T) {
	// The hold is 2 × 100 ms and the repeat is due after 100 ms; the new
	// master (priority 100, like this one) answers after Skew_Time.
	for _, tt := range []struct {
		name  string
		pause time.Duration
	}{
		{"through the repeat", 120 * ms},
		{"through the hold", 400 * ms},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := startStallRouter(t, nil)
			r.clock.Advance(mdi(100, stallInterval))
			r.waitFor("mastership", func(s Status) bool { return s.State == StateMaster })
			resume := r.stall()
			r.cancel() // shutdown is taken when the goroutine runs again
			resume()
			zeros := func() int {
				n := 0
				for _, a := range r.sock.adverts() {
					if a.Priority == PriorityStop {
						n++
					}
				}
				return n
			}
			r.waitFor("the priority 0", func(Status) bool { return zeros() == 1 })
			resume = r.stall()
			r.clock.Advance(60 * ms)
			r.sock.enqueue(r.advert(100, "192.0.2.3"))
			r.clock.Advance(tt.pause - 60*ms)
			resume()
			// The reader runs again once the instance has asked
			// whether it is behind, or has acted without asking.
			deadline := time.After(10 * time.Second)
		wait:
			for {
				select {
				case <-r.sock.asked:
					break wait
				case <-r.in.done:
					break wait
				case <-deadline:
					t.Fatal("the stopping master neither asked for the backlog nor acted")
				case <-time.After(time.Millisecond):
					if zeros() > 1 {
						break wait
					}
				}
			}
			r.sock.handOver(r.in)
			for {
				select {
				case <-r.in.done:
				case <-time.After(time.Millisecond):
					r.clock.Advance(10 * ms)
					continue
				}
				break
			}
			// The instance goroutine has ended: its state can be read.
			tr := r.in.stats.transitions[len(r.in.stats.transitions)-1]
			if tr.To != StateInit || tr.Reason != "shutdown: handed off to 192.0.2.3" {
				t.Errorf("last transition %+v; want INIT, handed off to 192.0.2.3", tr)
			}
			if n := zeros(); n != 1 {
				t.Errorf("%d priority 0 adverts; want 1 (the new master's advert was waiting when the repeat was due)", n)
			}
		})
	}
}
