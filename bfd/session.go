package bfd

import (
	"fmt"
	"time"
)

// SessionConfig is what the local system asks of a session (RFC 5880
// §6.8.1).
type SessionConfig struct {
	// DesiredMinTx is bfd.DesiredMinTxInterval while the session is Up;
	// it is at least slowTx while it is not (§6.8.3).
	DesiredMinTx time.Duration
	// RequiredMinRx is bfd.RequiredMinRxInterval: the fastest this
	// system takes packets.
	RequiredMinRx time.Duration
	// DetectMult is bfd.DetectMult: the peer declares the session down
	// after this many of this system's intervals without a packet.
	DetectMult uint8
}

// Check reports a configuration a session cannot run.
func (c SessionConfig) Check() error {
	switch {
	case c.DetectMult == 0:
		return fmt.Errorf("detect multiplier 0: want 1 to 255")
	case c.DesiredMinTx <= 0 || c.DesiredMinTx%time.Microsecond != 0 || c.DesiredMinTx > maxInterval:
		return fmt.Errorf("desired min TX %v: want whole microseconds, 1 µs to %v", c.DesiredMinTx, maxInterval)
	case c.RequiredMinRx <= 0 || c.RequiredMinRx%time.Microsecond != 0 || c.RequiredMinRx > maxInterval:
		return fmt.Errorf("required min RX %v: want whole microseconds, 1 µs to %v", c.RequiredMinRx, maxInterval)
	}
	return nil
}

const (
	// maxInterval is the largest interval the wire carries.
	maxInterval = (1<<32 - 1) * time.Microsecond
	// slowTx is the least interval while the session is not Up
	// (RFC 5880 §6.8.3).
	slowTx = time.Second
)

// Session is the state machine of one asynchronous BFD session (RFC 5880
// §6.2, §6.8), without I/O: its owner feeds it received packets and the
// time, and sends what it returns. One goroutine owns a Session.
type Session struct {
	cfg SessionConfig
	// jitter returns a fraction in [0, 1): how much of the jitter range
	// of §6.8.7 an interval loses. Injected for tests.
	jitter func() float64

	state       State
	localDiscr  uint32
	remoteDiscr uint32
	diag        Diag
	remoteState State
	// What the peer last said (§6.8.1): its intervals and multiplier.
	remoteMinRx      time.Duration
	remoteDesiredTx  time.Duration
	remoteDetectMult uint8
	// advertised are the intervals this system's packets carry: slow
	// while the session is not Up, the configured ones once a poll
	// sequence has changed to them (§6.8.3).
	advertisedTx, advertisedRx time.Duration
	// pending: a poll sequence is running to make the configured
	// intervals the advertised ones (§6.5).
	pending bool
	// sendFinal: the peer polled; the next packet carries Final.
	sendFinal bool
	// peerNewSession: the packet being received comes from a new
	// session of the peer (another discriminator than the one known).
	peerNewSession bool

	heard    time.Time // last valid packet; zero: none since Down
	nextTx   time.Time
	onChange func(from, to State, diag Diag, at time.Time)
	stats    SessionStats
}

// SessionStats are a session's counters, for status and metrics.
type SessionStats struct {
	Sent, Received, Discarded uint64
	// Flaps counts transitions out of Up.
	Flaps uint64
}

// NewSession returns a session in state Down with local discriminator
// discr (non-zero, unique on this system: §6.8.1), starting at now.
// onChange, if set, is told of every state change.
func NewSession(cfg SessionConfig, discr uint32, jitter func() float64, now time.Time, onChange func(from, to State, diag Diag, at time.Time)) (*Session, error) {
	if err := cfg.Check(); err != nil {
		return nil, err
	}
	if discr == 0 {
		return nil, fmt.Errorf("local discriminator 0")
	}
	s := &Session{cfg: cfg, jitter: jitter, state: StateDown, localDiscr: discr, remoteState: StateDown,
		remoteMinRx: time.Microsecond, onChange: onChange}
	s.advertisedTx, s.advertisedRx = max(cfg.DesiredMinTx, slowTx), cfg.RequiredMinRx
	s.nextTx = now
	return s, nil
}

// State returns the session state and the diagnostic of its last
// change.
func (s *Session) State() (State, Diag) { return s.state, s.diag }

// Stats returns the counters.
func (s *Session) Stats() SessionStats { return s.stats }

// txInterval is the interval between this system's packets (§6.8.2,
// §6.8.7 before jitter): the larger of what it advertises and what the
// peer requires.
func (s *Session) txInterval() time.Duration {
	return max(s.advertisedTx, s.remoteMinRx)
}

// DetectionTime is how long the session waits for a packet before it
// declares the peer down (§6.8.4, asynchronous mode): the peer's
// multiplier × the larger of this system's required RX and the peer's
// desired TX.
func (s *Session) DetectionTime() time.Duration {
	return time.Duration(s.remoteDetectMult) * max(s.advertisedRx, s.remoteDesiredTx)
}

// Next returns when the session next needs Timer: its next packet, or
// the end of the detection time.
func (s *Session) Next() time.Time {
	next := s.nextTx
	if d := s.detectDeadline(); !d.IsZero() && d.Before(next) {
		next = d
	}
	return next
}

func (s *Session) detectDeadline() time.Time {
	if s.heard.IsZero() || s.state == StateDown || s.state == StateAdminDown {
		return time.Time{}
	}
	return s.heard.Add(s.DetectionTime())
}

// Timer runs what is due at now and returns the packet to send, if one
// is due.
func (s *Session) Timer(now time.Time) *Packet {
	if d := s.detectDeadline(); !d.IsZero() && !now.Before(d) {
		// §6.8.4: no packet within the detection time.
		s.remoteDiscr = 0
		s.heard = time.Time{}
		s.setState(now, StateDown, DiagControlDetectExpired)
	}
	if now.Before(s.nextTx) {
		return nil
	}
	if s.remoteMinRx == 0 {
		// §6.8.3: the peer wants no periodic packets now.
		s.nextTx = now.Add(s.advertisedTx)
		return nil
	}
	return s.send(now)
}

// send builds the next periodic packet and schedules the one after it
// (§6.8.7): the interval less 0-25 % jitter (10-25 % with a multiplier of
// 1, so that a single lost packet does not end the session).
func (s *Session) send(now time.Time) *Packet {
	p := s.packet()
	lo, span := 0.75, 0.25
	if s.cfg.DetectMult == 1 {
		lo, span = 0.75, 0.15
	}
	f := lo + span*(1-s.jitter())
	s.nextTx = now.Add(time.Duration(float64(s.txInterval()) * f))
	s.stats.Sent++
	return p
}

// packet is this system's control packet now (§6.8.7).
func (s *Session) packet() *Packet {
	p := &Packet{
		Diag: s.diag, State: s.state, DetectMult: s.cfg.DetectMult,
		MyDiscriminator: s.localDiscr, YourDiscriminator: s.remoteDiscr,
		DesiredMinTx: s.advertisedTx, RequiredMinRx: s.advertisedRx,
		Poll: s.pending && !s.sendFinal, Final: s.sendFinal,
	}
	if s.pending && !s.sendFinal {
		// Polling: the new intervals go out with the P bit.
		p.DesiredMinTx, p.RequiredMinRx = s.cfg.DesiredMinTx, s.cfg.RequiredMinRx
	}
	s.sendFinal = false
	return p
}

// Receive takes a packet that passed Parse and belongs to this session
// (its Your Discriminator is this session's, or is 0 and the owner chose
// the session by address), at now. It returns a packet to send at once:
// the Final answering a Poll, or nil.
func (s *Session) Receive(now time.Time, p Packet) *Packet {
	switch {
	case p.YourDiscriminator != 0 && p.YourDiscriminator != s.localDiscr:
		s.stats.Discarded++
		return nil
	case p.Auth != nil:
		// No authentication is configured: §6.8.6 discards a packet
		// with the A bit.
		s.stats.Discarded++
		return nil
	}
	s.stats.Received++
	// A peer that speaks with another discriminator has started a new
	// session: its side was taken down and made again (BIRD does so
	// for each BGP session), which is not a loss of the path.
	s.peerNewSession = s.remoteDiscr != 0 && p.MyDiscriminator != s.remoteDiscr
	defer func() { s.peerNewSession = false }() // it tells of this packet only
	s.remoteDiscr = p.MyDiscriminator
	s.remoteState = p.State
	if p.RequiredMinRx < s.remoteMinRx {
		// The peer takes packets faster now (its poll, or the end of
		// its slow start): the packet scheduled at the old interval
		// would come after its new, shorter detection time once it
		// ends the poll.
		if next := now.Add(max(s.advertisedTx, p.RequiredMinRx)); next.Before(s.nextTx) {
			s.nextTx = next
		}
	}
	s.remoteMinRx = p.RequiredMinRx
	s.remoteDesiredTx = p.DesiredMinTx
	s.remoteDetectMult = p.DetectMult
	if p.Final && s.pending {
		// The poll sequence ends: the intervals it carried are in force.
		s.pending = false
		s.advertisedTx, s.advertisedRx = s.cfg.DesiredMinTx, s.cfg.RequiredMinRx
	}
	if s.state == StateAdminDown {
		return nil
	}
	s.heard = now
	if p.State == StateAdminDown {
		if s.state != StateDown {
			s.setState(now, StateDown, DiagNeighborDown)
		}
	} else {
		switch s.state {
		case StateDown:
			switch p.State {
			case StateDown:
				s.setState(now, StateInit, DiagNone)
			case StateInit:
				s.setState(now, StateUp, DiagNone)
			}
		case StateInit:
			if p.State == StateInit || p.State == StateUp {
				s.setState(now, StateUp, DiagNone)
			}
		case StateUp:
			if p.State == StateDown {
				s.setState(now, StateDown, DiagNeighborDown)
			}
		}
	}
	if p.Poll {
		// §6.5: answer at once with Final, not waiting for the interval.
		s.sendFinal = true
		out := s.packet()
		s.stats.Sent++
		return out
	}
	return nil
}

// setState changes the session state; leaving Down for Up starts a poll
// sequence to the configured intervals, and going down returns to the
// slow ones (§6.8.3).
func (s *Session) setState(now time.Time, to State, diag Diag) {
	from := s.state
	if from == to {
		return
	}
	s.state = to
	if to != StateUp || diag != DiagNone {
		s.diag = diag
	}
	switch {
	case to == StateUp:
		if s.cfg.DesiredMinTx != s.advertisedTx || s.cfg.RequiredMinRx != s.advertisedRx {
			// The poll goes out now, not a slow interval later. A faster
			// transmission applies at once (only a slower one must wait
			// for the poll's end, §6.8.3): the peer's detection time
			// follows the interval the poll announces, and packets at the
			// slow one would end the session there.
			s.pending, s.nextTx = true, now
			s.advertisedTx = min(s.advertisedTx, s.cfg.DesiredMinTx)
		}
	case from == StateUp:
		s.stats.Flaps++
		s.pending = false
		s.advertisedTx, s.advertisedRx = max(s.cfg.DesiredMinTx, slowTx), s.cfg.RequiredMinRx
	}
	if to == StateDown {
		s.heard = time.Time{}
	}
	if s.onChange != nil {
		s.onChange(from, to, diag, now)
	}
}

// AdminDown takes the session administratively down (§6.8.16): the peer
// is told by the next packet, due at once, which still carries its
// discriminator so that it finds its session by it; this system ignores
// what it hears until Enable.
func (s *Session) AdminDown(now time.Time) {
	s.setState(now, StateAdminDown, DiagAdminDown)
	s.heard, s.nextTx = time.Time{}, now
}

// Enable brings an administratively down session back to Down.
func (s *Session) Enable(now time.Time) {
	if s.state == StateAdminDown {
		// The peer may have restarted meanwhile with another
		// discriminator: learn it again.
		s.remoteDiscr = 0
		s.setState(now, StateDown, DiagAdminDown)
	}
}

// Reconfigure changes what the local system asks of the session at now
// (§6.8.3). While the session is Up a poll sequence announces the new
// intervals: a faster transmission applies at once, a slower one and a
// longer detection time only once the peer has answered the poll; while
// it is not Up the session keeps the slow transmission and takes the new
// intervals when it comes up. The multiplier applies from the next packet.
func (s *Session) Reconfigure(cfg SessionConfig, now time.Time) error {
	if err := cfg.Check(); err != nil {
		return err
	}
	if cfg == s.cfg {
		return nil
	}
	s.cfg = cfg
	if s.state != StateUp {
		s.advertisedTx, s.advertisedRx = max(cfg.DesiredMinTx, slowTx), cfg.RequiredMinRx
		return nil
	}
	if cfg.DesiredMinTx != s.advertisedTx || cfg.RequiredMinRx != s.advertisedRx {
		s.pending, s.nextTx = true, now
		if cfg.DesiredMinTx < s.advertisedTx {
			s.advertisedTx = cfg.DesiredMinTx
		}
	}
	return nil
}

// Status is a session's state for status output and metrics.
type Status struct {
	State, RemoteState State
	// Diag is this system's diagnostic: why the session last went down.
	Diag                    Diag
	LocalDiscr, RemoteDiscr uint32
	// TxInterval is the interval between this system's packets now
	// (before jitter); DetectionTime how long it waits for the peer's
	// (0 while no packet has come).
	TxInterval, DetectionTime time.Duration
	// RemoteMinRx, RemoteDesiredTx and RemoteDetectMult are what the
	// peer last said.
	RemoteMinRx, RemoteDesiredTx time.Duration
	RemoteDetectMult             uint8
	// Config is what the local system asks (Reconfigure's, once given).
	Config SessionConfig
	SessionStats
}

// Status returns the session's state.
func (s *Session) Status() Status {
	st := Status{State: s.state, RemoteState: s.remoteState, Diag: s.diag,
		LocalDiscr: s.localDiscr, RemoteDiscr: s.remoteDiscr, TxInterval: s.txInterval(),
		RemoteMinRx: s.remoteMinRx, RemoteDesiredTx: s.remoteDesiredTx, RemoteDetectMult: s.remoteDetectMult,
		Config: s.cfg, SessionStats: s.stats}
	if s.remoteDetectMult > 0 {
		st.DetectionTime = s.DetectionTime()
	} else {
		st.RemoteMinRx = 0 // nothing heard yet
	}
	return st
}
