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
	// pending: a poll sequence is running to make pollCfg's intervals
	// the advertised ones; pollCfg is what its packets carry (a change
	// while it runs waits for its end: a Final answers the values the
	// peer saw, not newer ones).
	// intervals the advertised ones (§6.5).
	pending bool
	pollCfg SessionConfig
	// sendFinal: the peer polled; the next packet carries Final.
	sendFinal bool
	// peerNewSession: the state change being told follows a Down or
	// AdminDown the peer said from outside the session (Your
	// Discriminator 0) within a detection time: the peer took its side
	// down (BIRD makes a new session for each BGP session), and that is
	// not a loss of the path. peerDownAt is when the last such packet came.
	peerNewSession bool
	peerDownAt     time.Time
	// lastRx is when the last packet of the session came, to forget the
	// peer's discriminator after a detection time without one in Down
	// (§6.8.1).
	lastRx time.Time

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
		s.peerNewSession = !s.peerDownAt.IsZero() && now.Sub(s.peerDownAt) <= s.DetectionTime()
		s.remoteDiscr = 0
		s.heard = time.Time{}
		s.setState(now, StateDown, DiagControlDetectExpired)
		s.peerNewSession = false
	}
	if s.state == StateDown && s.remoteDiscr != 0 && !s.lastRx.IsZero() && now.Sub(s.lastRx) > max(s.DetectionTime(), slowTx) {
		// §6.8.1: bfd.RemoteDiscr is zeroed a detection time after the
		// last packet; a peer that restarted has another.
		s.remoteDiscr = 0
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
	if s.pending {
		// Polling: every packet carries the new intervals (§6.8.3: they
		// are the state variables; only their use waits for the Final),
		// a Final this system answers with included: with the old ones
		// the peer would go back to them after the poll.
		p.DesiredMinTx, p.RequiredMinRx = s.pollCfg.DesiredMinTx, s.pollCfg.RequiredMinRx
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
	case p.YourDiscriminator == 0 && (s.state == StateInit || s.state == StateUp):
		// Once the peer has our discriminator its packets carry it
		// (§6.3): one without it comes from outside the session, and
		// would otherwise let anyone on the link who sends from the
		// peer's address take the session down. What it says is
		// remembered: a peer that made its side anew (BIRD, for each
		// BGP session) says Down this way, and the session then ends
		// by detection time without that being a failure.
		if p.State == StateDown || p.State == StateAdminDown {
			s.peerDownAt = now
		}
		s.stats.Discarded++
		return nil
	}
	s.stats.Received++
	s.lastRx = now
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
		s.advertisedTx, s.advertisedRx = s.pollCfg.DesiredMinTx, s.pollCfg.RequiredMinRx
		if s.state == StateUp {
			s.poll(now) // the configuration changed meanwhile
		}
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
		s.poll(now)
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

// Packet returns this system's control packet now, out of schedule (an
// AdminDown repeated as the session stops).
func (s *Session) Packet() *Packet {
	s.stats.Sent++
	return s.packet()
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
	s.poll(now)
	return nil
}

// poll starts a poll sequence to the configured intervals if they are not
// the advertised ones and none is running (one that is will start the
// next when it ends). It goes out now, not a slow interval later. A
// faster transmission applies at once (only a slower one must wait for
// the poll's end, §6.8.3): the peer's detection time follows the interval
// the poll announces, and packets at the slow one would end the session
// there.
func (s *Session) poll(now time.Time) {
	if s.pending || (s.cfg.DesiredMinTx == s.advertisedTx && s.cfg.RequiredMinRx == s.advertisedRx) {
		return
	}
	s.pending, s.pollCfg, s.nextTx = true, s.cfg, now
	s.advertisedTx = min(s.advertisedTx, s.cfg.DesiredMinTx)
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
