package bfd

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"
)

const ms = time.Millisecond

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

// link runs two sessions against each other on a simulated wire: every
// packet goes through Marshal and Parse, takes latency, and is lost when
// lose says so. Time advances from event to event.
type link struct {
	t       *testing.T
	now     time.Time
	a, b    *Session
	latency time.Duration
	lose    func(from string, at time.Time) bool
	flight  []inFlight
	changes []change
	// check runs after every event.
	check func()
}

type inFlight struct {
	at   time.Time
	to   string
	wire []byte
}

type change struct {
	who      string
	from, to State
	diag     Diag
	at       time.Time
	failed   bool // Change.Failed, where the server reports it
}

func newLink(t *testing.T, ca, cb SessionConfig, jitter func() float64) *link {
	l := &link{t: t, now: t0, latency: 100 * time.Microsecond}
	var err error
	if l.a, err = NewSession(ca, 0xa, jitter, t0, l.recorder("a")); err != nil {
		t.Fatal(err)
	}
	if l.b, err = NewSession(cb, 0xb, jitter, t0, l.recorder("b")); err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *link) recorder(who string) func(from, to State, diag Diag, at time.Time) {
	return func(from, to State, diag Diag, at time.Time) {
		l.changes = append(l.changes, change{who: who, from: from, to: to, diag: diag, at: at})
	}
}

func (l *link) session(who string) *Session {
	if who == "a" {
		return l.a
	}
	return l.b
}

func (l *link) put(from string, p *Packet) {
	if p == nil {
		return
	}
	b, err := p.Marshal()
	if err != nil {
		l.t.Fatalf("%s sent a packet it cannot marshal: %+v: %v", from, p, err)
	}
	if l.lose != nil && l.lose(from, l.now) {
		return
	}
	to := "b"
	if from == "b" {
		to = "a"
	}
	l.flight = append(l.flight, inFlight{l.now.Add(l.latency), to, b})
}

// run processes events until now+d.
func (l *link) run(d time.Duration) {
	end := l.now.Add(d)
	for steps := 0; steps < 1e6; steps++ {
		next, kind, idx := end, "", -1
		for i, f := range l.flight {
			if !f.at.After(next) && (kind == "" || f.at.Before(next)) {
				next, kind, idx = f.at, "packet", i
			}
		}
		for _, who := range []string{"a", "b"} {
			if at := l.session(who).Next(); at.Before(next) || at.Equal(next) && kind == "" {
				next, kind = at, who
			}
		}
		if kind == "" || next.After(end) {
			l.now = end
			return
		}
		l.now = next
		switch kind {
		case "packet":
			f := l.flight[idx]
			l.flight = append(l.flight[:idx], l.flight[idx+1:]...)
			p, err := Parse(f.wire)
			if err != nil {
				l.t.Fatalf("a packet on the wire fails Parse: %v", err)
			}
			l.put(f.to, l.session(f.to).Receive(l.now, p))
		default:
			l.put(kind, l.session(kind).Timer(l.now))
		}
		if l.check != nil {
			l.check()
		}
	}
	l.t.Fatal("the simulation does not settle")
}

func fast(mult uint8) SessionConfig {
	return SessionConfig{DesiredMinTx: 100 * ms, RequiredMinRx: 100 * ms, DetectMult: mult}
}

func noJitter() float64 { return 0 }

// Two sessions come Up (Down, Init, Up: §6.8.6) while sending at the slow
// 1 s of a session not Up, then switch to their configured 100 ms by poll
// sequences, and keep it.
func TestSessionComesUpAndSpeedsUp(t *testing.T) {
	l := newLink(t, fast(3), fast(3), noJitter)
	l.run(3 * time.Second)
	for _, s := range []*Session{l.a, l.b} {
		if st, _ := s.State(); st != StateUp {
			t.Fatalf("state %s after 3 s; want Up (changes %+v)", st, l.changes)
		}
		if s.advertisedTx != 100*ms || s.pending {
			t.Errorf("advertised TX %v, polling %v; want 100ms, done", s.advertisedTx, s.pending)
		}
		if got := s.DetectionTime(); got != 300*ms {
			t.Errorf("detection time %v; want 3 × 100ms", got)
		}
	}
	sent := l.a.Stats().Sent
	l.run(time.Second)
	if n := l.a.Stats().Sent - sent; n < 9 || n > 11 {
		t.Errorf("a sent %d packets in 1 s at 100 ms; want about 10", n)
	}
	if len(l.changes) != 4 {
		t.Errorf("changes %+v; want Down→Init→Up on each side", l.changes)
	}
}

// The peer's packets stop (its link cut, its process killed): the session
// goes Down with "control detection time expired" exactly one detection
// time (3 × 100 ms) after the last packet it heard.
func TestSessionDetectsAPeerGone(t *testing.T) {
	l := newLink(t, fast(3), fast(3), noJitter)
	l.run(3 * time.Second)
	var cut time.Time
	l.lose = func(from string, at time.Time) bool {
		if from == "b" && cut.IsZero() {
			cut = at
		}
		return from == "b"
	}
	heard := l.a.heard
	l.run(time.Second)
	var down *change
	for i, c := range l.changes {
		if c.who == "a" && c.to == StateDown {
			down = &l.changes[i]
		}
	}
	if down == nil || down.diag != DiagControlDetectExpired {
		t.Fatalf("a's changes %+v; want Down, control detection time expired", l.changes)
	}
	if got := down.at.Sub(heard); got != 300*ms {
		t.Errorf("a went Down %v after the last packet it heard; want the detection time, 300ms", got)
	}
}

// A peer taken administratively down tells the session, which goes Down
// with "neighbor signaled session down" at once; enabled again, both come
// back Up.
func TestSessionAdminDown(t *testing.T) {
	l := newLink(t, fast(3), fast(3), noJitter)
	l.run(3 * time.Second)
	l.b.AdminDown(l.now)
	l.put("b", l.b.Timer(l.b.nextTx)) // its next packet says so
	l.run(200 * ms)
	if st, diag := l.a.State(); st != StateDown || diag != DiagNeighborDown {
		t.Fatalf("a: %s (%s); want Down, neighbor signaled session down", st, diag)
	}
	l.run(5 * time.Second)
	if st, _ := l.a.State(); st != StateDown {
		t.Fatalf("a %s while b is AdminDown; want Down", st)
	}
	l.b.Enable(l.now)
	l.run(4 * time.Second)
	if sa, _ := l.a.State(); sa != StateUp {
		t.Errorf("a %s after b was enabled; want Up", sa)
	}
	if sb, _ := l.b.State(); sb != StateUp {
		t.Errorf("b %s after it was enabled; want Up", sb)
	}
}

// A Poll is answered at once with Final (§6.5), and packets not for this
// session, or with authentication it does not use, are discarded.
func TestSessionAnswersPollAndDiscards(t *testing.T) {
	s, err := NewSession(fast(3), 7, noJitter, t0, nil)
	if err != nil {
		t.Fatal(err)
	}
	out := s.Receive(t0, Packet{State: StateDown, DetectMult: 3, MyDiscriminator: 9, Poll: true, DesiredMinTx: time.Second, RequiredMinRx: time.Second})
	if out == nil || !out.Final || out.Poll || out.YourDiscriminator != 9 || out.State != StateInit {
		t.Fatalf("answer to a Poll: %+v; want Final, Init, your discriminator 9", out)
	}
	for _, p := range []Packet{
		{State: StateUp, DetectMult: 3, MyDiscriminator: 9, YourDiscriminator: 8},
		{State: StateUp, DetectMult: 3, MyDiscriminator: 9, YourDiscriminator: 7, Auth: &Auth{Type: AuthSimplePassword, Password: []byte("x")}},
	} {
		if out := s.Receive(t0, p); out != nil {
			t.Errorf("answered a packet it must discard: %+v", out)
		}
	}
	if st := s.Stats(); st.Discarded != 2 || st.Received != 1 {
		t.Errorf("stats %+v; want 1 received, 2 discarded", st)
	}
	if st, _ := s.State(); st != StateInit {
		t.Errorf("state %s; discarded packets changed it", st)
	}
}

// A peer that wants no periodic packets (required min RX 0) gets none.
func TestSessionRespectsARequiredMinRxOfZero(t *testing.T) {
	s, err := NewSession(fast(3), 7, noJitter, t0, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Receive(t0, Packet{State: StateDown, DetectMult: 3, MyDiscriminator: 9, DesiredMinTx: time.Second})
	for now := t0; now.Before(t0.Add(10 * time.Second)); now = s.Next() {
		if p := s.Timer(now); p != nil {
			t.Fatalf("sent %+v to a peer that asked for none", p)
		}
	}
}

// Over generated runs — loss bursts on either side, jitter, latency up to
// 5 ms, multipliers 1 to 5 — after every event:
//   - a session is Up only if it heard its peer within its detection time;
//   - it leaves Up only for a reason of §6.8.4/§6.8.6.
//
// And after the losses end, both sessions are Up again within 4 s.
func TestSessionProperties(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 7))
		mult := uint8(1 + rng.IntN(5))
		cfg := SessionConfig{DesiredMinTx: time.Duration(10+rng.IntN(200)) * ms, RequiredMinRx: time.Duration(10+rng.IntN(200)) * ms, DetectMult: mult}
		l := newLink(t, cfg, fast(uint8(1+rng.IntN(5))), rng.Float64)
		l.latency = time.Duration(rng.IntN(5000)) * time.Microsecond
		lossUntil := t0.Add(time.Duration(3000+rng.IntN(5000)) * ms)
		lossRate := rng.Float64() * 0.8
		l.lose = func(string, time.Time) bool { return l.now.Before(lossUntil) && rng.Float64() < lossRate }
		name := fmt.Sprintf("seed %d (mult %d, cfg %+v, loss %.2f until %v)", seed, mult, cfg, lossRate, lossUntil.Sub(t0))
		l.check = func() {
			for _, s := range []*Session{l.a, l.b} {
				st, _ := s.State()
				if st == StateUp && (s.heard.IsZero() || l.now.Sub(s.heard) > s.DetectionTime()) {
					t.Fatalf("%s: Up at %v without hearing its peer within %v (last %v)", name, l.now.Sub(t0), s.DetectionTime(), s.heard.Sub(t0))
				}
			}
		}
		l.run(lossUntil.Sub(t0))
		l.lose = nil
		l.run(4 * time.Second)
		for _, s := range []*Session{l.a, l.b} {
			if st, _ := s.State(); st != StateUp {
				t.Fatalf("%s: %s 4 s after the losses ended; want Up (changes %+v)", name, st, l.changes)
			}
		}
		for _, c := range l.changes {
			if c.from == StateUp && c.diag != DiagControlDetectExpired && c.diag != DiagNeighborDown {
				t.Fatalf("%s: left Up for %s: %+v", name, c.diag, c)
			}
		}
	}
}

// Periodic packets are 75-100 % of the interval apart, 75-90 % with a
// multiplier of 1 (§6.8.7), spread over the range.
func TestSessionJitter(t *testing.T) {
	for _, c := range []struct {
		mult   uint8
		lo, hi time.Duration
	}{{3, 75 * ms, 100 * ms}, {1, 75 * ms, 90 * ms}} {
		rng := rand.New(rand.NewPCG(1, 2))
		s, err := NewSession(fast(c.mult), 7, rng.Float64, t0, nil)
		if err != nil {
			t.Fatal(err)
		}
		// Up at 100 ms both ways, the poll done.
		s.Receive(t0, Packet{State: StateInit, DetectMult: 3, MyDiscriminator: 9, DesiredMinTx: 100 * ms, RequiredMinRx: 100 * ms})
		s.Receive(t0, Packet{State: StateUp, DetectMult: 3, MyDiscriminator: 9, YourDiscriminator: 7, Final: true, DesiredMinTx: 100 * ms, RequiredMinRx: 100 * ms})
		now, last := t0, time.Time{}
		lo, hi := time.Hour, time.Duration(0)
		for range 2000 {
			now = s.nextTx
			if s.Timer(now) == nil {
				t.Fatal("no packet at its time")
			}
			// Keep hearing the peer, so that the session stays Up.
			s.Receive(now, Packet{State: StateUp, DetectMult: 3, MyDiscriminator: 9, YourDiscriminator: 7, DesiredMinTx: 100 * ms, RequiredMinRx: 100 * ms})
			if !last.IsZero() {
				lo, hi = min(lo, now.Sub(last)), max(hi, now.Sub(last))
			}
			last = now
		}
		if lo < c.lo || hi > c.hi || lo > c.lo+2*ms || hi < c.hi-2*ms {
			t.Errorf("multiplier %d: packets %v to %v apart; want spread over %v to %v", c.mult, lo, hi, c.lo, c.hi)
		}
	}
}

// Intervals changed on a session that is Up go through a poll sequence
// (§6.8.3): faster or slower, on either side, the session never leaves
// Up, and the new detection time is in force once the poll is answered.
func TestSessionReconfigureWhileUp(t *testing.T) {
	l := newLink(t, fast(3), fast(3), noJitter)
	l.run(3 * time.Second)
	l.check = func() {
		for _, c := range l.changes {
			if c.from == StateUp {
				t.Fatalf("left Up while reconfiguring, at %v: %+v", c.at.Sub(t0), c)
			}
		}
	}
	steps := []struct {
		who    string
		cfg    SessionConfig
		detect time.Duration // a's detection time after the step: b's multiplier × the slower of a's RX and b's TX
	}{
		{"a", SessionConfig{DesiredMinTx: 300 * ms, RequiredMinRx: 300 * ms, DetectMult: 3}, 900 * ms},
		{"b", SessionConfig{DesiredMinTx: 20 * ms, RequiredMinRx: 20 * ms, DetectMult: 5}, 5 * 300 * ms},
		{"a", SessionConfig{DesiredMinTx: 20 * ms, RequiredMinRx: 20 * ms, DetectMult: 3}, 5 * 20 * ms},
		{"b", fast(3), 3 * 100 * ms},
	}
	for _, st := range steps {
		if err := l.session(st.who).Reconfigure(st.cfg, l.now); err != nil {
			t.Fatal(err)
		}
		l.run(3 * time.Second)
		if s := l.session(st.who); s.pending || s.advertisedTx != st.cfg.DesiredMinTx || s.advertisedRx != st.cfg.RequiredMinRx {
			t.Errorf("after %s took %+v: advertised %v/%v, polling %v", st.who, st.cfg, s.advertisedTx, s.advertisedRx, s.pending)
		}
		if got := l.a.Status().DetectionTime; got != st.detect {
			t.Errorf("after %s took %+v: a's detection time %v; want %v", st.who, st.cfg, got, st.detect)
		}
	}
	if err := l.a.Reconfigure(SessionConfig{}, l.now); err == nil {
		t.Error("Reconfigure took a configuration with multiplier 0")
	}
	// Not Up: the new intervals wait, the slow one stays.
	s, err := NewSession(fast(3), 7, noJitter, t0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Reconfigure(SessionConfig{DesiredMinTx: 50 * ms, RequiredMinRx: 50 * ms, DetectMult: 3}, t0); err != nil {
		t.Fatal(err)
	}
	if s.advertisedTx != time.Second || s.advertisedRx != 50*ms || s.pending {
		t.Errorf("Down session reconfigured: advertised %v/%v, polling %v; want 1s/50ms, no poll", s.advertisedTx, s.advertisedRx, s.pending)
	}
}

// Over generated sequences of interval and multiplier changes on either
// side, at random moments, with jitter and latency but no loss: the
// session never leaves Up, and each side ends up advertising what it was
// last given.
func TestSessionReconfigureProperty(t *testing.T) {
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 11))
		l := newLink(t, fast(3), fast(3), rng.Float64)
		// Up to 20 ms each way, and changes that follow each other
		// within a round trip, so that a Final can answer a poll of
		// older values.
		l.latency = time.Duration(rng.IntN(20000)) * time.Microsecond
		l.run(3 * time.Second)
		var log []string
		l.check = func() {
			for _, c := range l.changes {
				if c.from == StateUp {
					t.Fatalf("seed %d: %s left Up at %v (%s) after %v", seed, c.who, c.at.Sub(t0), c.diag, log)
				}
			}
		}
		for range 20 {
			who := []string{"a", "b"}[rng.IntN(2)]
			cfg := SessionConfig{DesiredMinTx: time.Duration(10+rng.IntN(500)) * ms,
				RequiredMinRx: time.Duration(10+rng.IntN(500)) * ms, DetectMult: uint8(2 + rng.IntN(4))}
			if err := l.session(who).Reconfigure(cfg, l.now); err != nil {
				t.Fatal(err)
			}
			log = append(log, fmt.Sprintf("%v %s %+v", l.now.Sub(t0), who, cfg))
			if rng.IntN(3) == 0 {
				l.run(time.Duration(rng.IntN(5000)) * time.Microsecond)
			} else {
				l.run(time.Duration(rng.IntN(2000)) * ms)
			}
		}
		l.run(5 * time.Second)
		for _, who := range []string{"a", "b"} {
			s := l.session(who)
			if s.pending || s.advertisedTx != s.cfg.DesiredMinTx || s.advertisedRx != s.cfg.RequiredMinRx {
				t.Errorf("seed %d: %s advertises %v/%v (polling %v); want %+v", seed, who, s.advertisedTx, s.advertisedRx, s.pending, s.cfg)
			}
		}
	}
}

// A packet without our discriminator cannot take an Up session down
// (§6.3: anyone on the link could send it from the peer's address); a
// peer that made its side anew (another discriminator, Your
// Discriminator 0, Down) lets the session end by detection time, and the
// session says so while it tells of that change; a later loss of the path
// is a plain detection failure again.
func TestSessionPeerNewSession(t *testing.T) {
	var newSession []bool
	var s *Session
	s, err := NewSession(fast(3), 7, noJitter, t0, func(from, to State, diag Diag, at time.Time) {
		newSession = append(newSession, s.peerNewSession)
	})
	if err != nil {
		t.Fatal(err)
	}
	up := func(at time.Time) {
		s.Receive(at, Packet{State: StateUp, DetectMult: 3, MyDiscriminator: 9, YourDiscriminator: 7, DesiredMinTx: 100 * ms, RequiredMinRx: 100 * ms})
	}
	s.Receive(t0, Packet{State: StateInit, DetectMult: 3, MyDiscriminator: 9, YourDiscriminator: 7, DesiredMinTx: 100 * ms, RequiredMinRx: 100 * ms})
	// A forged Down from the peer's address, while the peer goes on.
	for i := range 10 {
		at := t0.Add(time.Duration(i*50) * ms)
		up(at)
		s.Receive(at.Add(ms), Packet{State: StateDown, DetectMult: 3, MyDiscriminator: 1234, DesiredMinTx: time.Second, RequiredMinRx: 100 * ms})
		s.Timer(at.Add(2 * ms))
	}
	if st, _ := s.State(); st != StateUp {
		t.Fatalf("a forged Down without our discriminator took the session to %s", st)
	}
	// The peer makes its side anew: its old session is gone, the new one
	// says Down without our discriminator.
	last := t0.Add(500 * ms)
	up(last)
	s.Receive(last.Add(10*ms), Packet{State: StateDown, DetectMult: 3, MyDiscriminator: 10, DesiredMinTx: time.Second, RequiredMinRx: 100 * ms})
	for now := last.Add(10 * ms); now.Before(last.Add(time.Second)); now = s.Next() {
		s.Timer(now)
	}
	if st, diag := s.State(); st != StateDown || diag != DiagControlDetectExpired {
		t.Fatalf("after the peer's old session went quiet: %s %s", st, diag)
	}
	// The new session comes up; then the path is lost.
	s.Receive(last.Add(1100*ms), Packet{State: StateDown, DetectMult: 3, MyDiscriminator: 10, DesiredMinTx: time.Second, RequiredMinRx: 100 * ms})
	s.Receive(last.Add(1200*ms), Packet{State: StateUp, DetectMult: 3, MyDiscriminator: 10, YourDiscriminator: 7, DesiredMinTx: 100 * ms, RequiredMinRx: 100 * ms})
	for now := last.Add(1200 * ms); now.Before(last.Add(5 * time.Second)); now = s.Next() {
		s.Timer(now)
	}
	if want := []bool{false, true, false, false, false}; fmt.Sprint(newSession) != fmt.Sprint(want) {
		t.Errorf("new session of the peer at each change (Up, Down by the peer's new session, Init, Up, Down by detection): %v; want %v", newSession, want)
	}
}
