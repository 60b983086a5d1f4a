// Package bfd is Bidirectional Forwarding Detection (RFC 5880) in
// asynchronous mode, for single-hop (RFC 5881) and multihop (RFC 5883)
// sessions: it tells within detect multiplier × interval that the path to
// a neighbour is gone, far sooner than a routing protocol's hold time, so
// that keepvip can bring a BGP peer down at once. It knows nothing of
// Kubernetes or BGP: it reads and writes control packets, and runs
// sessions on an injected clock.
//
// This file is the control packet's codec (RFC 5880 §4.1, §4.2) with the
// reception checks that need no session (§6.8.6); Parse never trusts a
// length it has not checked and is fuzzed.
package bfd

import (
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// UDP ports (RFC 5881 §4, RFC 5883 §5).
const (
	PortSingleHop = 3784
	PortMultihop  = 4784
	// SourcePortMin and SourcePortMax bound the source port of control
	// packets (RFC 5881 §4).
	SourcePortMin = 49152
	SourcePortMax = 65535
)

// Version is the protocol version of RFC 5880.
const Version = 1

// State is a session state (RFC 5880 §4.1).
type State uint8

const (
	StateAdminDown State = 0
	StateDown      State = 1
	StateInit      State = 2
	StateUp        State = 3
)

func (s State) String() string {
	switch s {
	case StateAdminDown:
		return "AdminDown"
	case StateDown:
		return "Down"
	case StateInit:
		return "Init"
	case StateUp:
		return "Up"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Diag is the diagnostic code: why the session last left Up (RFC 5880
// §4.1).
type Diag uint8

const (
	DiagNone                 Diag = 0
	DiagControlDetectExpired Diag = 1
	DiagEchoFailed           Diag = 2
	DiagNeighborDown         Diag = 3
	DiagForwardingReset      Diag = 4
	DiagPathDown             Diag = 5
	DiagConcatenatedPathDown Diag = 6
	DiagAdminDown            Diag = 7
	DiagReverseConcatenated  Diag = 8
)

var diagNames = [...]string{
	"none", "control detection time expired", "echo function failed",
	"neighbor signaled session down", "forwarding plane reset", "path down",
	"concatenated path down", "administratively down", "reverse concatenated path down",
}

func (d Diag) String() string {
	if int(d) < len(diagNames) {
		return diagNames[d]
	}
	return fmt.Sprintf("diag %d", uint8(d))
}

// AuthType is the authentication type of the optional section (RFC 5880
// §4.2).
type AuthType uint8

const (
	AuthNone                AuthType = 0
	AuthSimplePassword      AuthType = 1
	AuthKeyedMD5            AuthType = 2
	AuthMeticulousKeyedMD5  AuthType = 3
	AuthKeyedSHA1           AuthType = 4
	AuthMeticulousKeyedSHA1 AuthType = 5
)

// Sizes of RFC 5880 §4.1-§4.4.
const (
	headerLen                   = 24 // the mandatory section
	authHeaderLen               = 2  // auth type, auth len
	maxSimplePassword           = 16
	minPasswordAuthLen          = authHeaderLen + 1 + 1 // and key ID, one byte of password
	md5AuthLen, sha1AuthLen     = 24, 28
	md5DigestLen, sha1DigestLen = 16, 20
)

// Auth is the authentication section of a packet, as it is on the wire.
// Its verification (keys, sequence numbers) belongs to the session.
type Auth struct {
	Type  AuthType
	KeyID uint8
	// Password is the simple password (type 1).
	Password []byte
	// Sequence and Digest are the keyed MD5 and SHA1 fields (types 2-5);
	// Digest is the 16- or 20-byte hash field as received.
	Sequence uint32
	Digest   []byte
}

// Packet is a BFD control packet (RFC 5880 §4.1).
type Packet struct {
	Diag  Diag
	State State
	// Poll, Final, ControlPlaneIndependent and Demand are the P, F, C
	// and D bits; the A bit is Auth != nil, and M (multipoint) must be 0.
	Poll, Final, ControlPlaneIndependent, Demand bool
	DetectMult                                   uint8
	MyDiscriminator, YourDiscriminator           uint32
	// The intervals, in microseconds on the wire (RFC 5880 §4.1).
	DesiredMinTx, RequiredMinRx, RequiredMinEchoRx time.Duration
	Auth                                           *Auth
}

// Reasons a packet is discarded without a session's help (RFC 5880 §6.8.6);
// Parse's errors wrap one of them, for counting.
var (
	ErrShort         = errors.New("shorter than a BFD control packet")
	ErrVersion       = errors.New("not BFD version 1")
	ErrLength        = errors.New("bad length")
	ErrDetectMult    = errors.New("detect multiplier 0")
	ErrMultipoint    = errors.New("multipoint bit set")
	ErrMyDiscr       = errors.New("my discriminator 0")
	ErrYourDiscr     = errors.New("your discriminator 0 in a state other than Down or AdminDown")
	ErrAuthSection   = errors.New("bad authentication section")
	ErrAuthType      = errors.New("unknown authentication type")
	errIntervalRange = errors.New("interval out of range")
)

// Parse decodes a control packet (the UDP payload) and applies the checks
// of RFC 5880 §6.8.6 that need no session: version 1, a length within the
// payload and at least 24 (26 with the A bit), detect multiplier not 0,
// no multipoint, my discriminator not 0, your discriminator not 0 unless
// the state is Down or AdminDown, and a well-formed authentication
// section. Bytes after Length are ignored (§6.8.6: the packet is Length
// long).
func Parse(b []byte) (Packet, error) {
	var p Packet
	if len(b) < headerLen {
		return p, fmt.Errorf("%w: %d bytes", ErrShort, len(b))
	}
	if v := b[0] >> 5; v != Version {
		return p, fmt.Errorf("%w: version %d", ErrVersion, v)
	}
	p.Diag = Diag(b[0] & 0x1f)
	p.State = State(b[1] >> 6)
	p.Poll = b[1]&0x20 != 0
	p.Final = b[1]&0x10 != 0
	p.ControlPlaneIndependent = b[1]&0x08 != 0
	authBit := b[1]&0x04 != 0
	p.Demand = b[1]&0x02 != 0
	multipoint := b[1]&0x01 != 0
	p.DetectMult = b[2]
	length := int(b[3])
	minLen := headerLen
	if authBit {
		minLen = headerLen + authHeaderLen
	}
	switch {
	case length < minLen:
		return p, fmt.Errorf("%w: %d, at least %d", ErrLength, length, minLen)
	case length > len(b):
		return p, fmt.Errorf("%w: %d, but %d bytes came", ErrLength, length, len(b))
	case !authBit && length != headerLen:
		// Without authentication the packet is the 24-byte header.
		return p, fmt.Errorf("%w: %d without authentication, want %d", ErrLength, length, headerLen)
	}
	if p.DetectMult == 0 {
		return p, ErrDetectMult
	}
	if multipoint {
		return p, ErrMultipoint
	}
	p.MyDiscriminator = binary.BigEndian.Uint32(b[4:])
	p.YourDiscriminator = binary.BigEndian.Uint32(b[8:])
	if p.MyDiscriminator == 0 {
		return p, ErrMyDiscr
	}
	if p.YourDiscriminator == 0 && p.State != StateDown && p.State != StateAdminDown {
		return p, fmt.Errorf("%w (%s)", ErrYourDiscr, p.State)
	}
	p.DesiredMinTx = time.Duration(binary.BigEndian.Uint32(b[12:])) * time.Microsecond
	p.RequiredMinRx = time.Duration(binary.BigEndian.Uint32(b[16:])) * time.Microsecond
	p.RequiredMinEchoRx = time.Duration(binary.BigEndian.Uint32(b[20:])) * time.Microsecond
	if authBit {
		a, err := parseAuth(b[headerLen:length])
		if err != nil {
			return p, err
		}
		p.Auth = a
	}
	return p, nil
}

// parseAuth reads the authentication section, which fills the rest of the
// packet (Length less the header).
func parseAuth(b []byte) (*Auth, error) {
	t, authLen := AuthType(b[0]), int(b[1])
	if authLen != len(b) {
		return nil, fmt.Errorf("%w: auth len %d, %d bytes follow the header", ErrAuthSection, authLen, len(b))
	}
	a := &Auth{Type: t}
	switch t {
	case AuthSimplePassword:
		// Type, length, key ID, then 1 to 16 bytes of password.
		if authLen < minPasswordAuthLen || authLen > authHeaderLen+1+maxSimplePassword {
			return nil, fmt.Errorf("%w: simple password auth len %d, want 4 to 19", ErrAuthSection, authLen)
		}
		a.KeyID = b[2]
		a.Password = append([]byte(nil), b[3:]...)
	case AuthKeyedMD5, AuthMeticulousKeyedMD5, AuthKeyedSHA1, AuthMeticulousKeyedSHA1:
		want, digest := md5AuthLen, md5DigestLen
		if t == AuthKeyedSHA1 || t == AuthMeticulousKeyedSHA1 {
			want, digest = sha1AuthLen, sha1DigestLen
		}
		if authLen != want {
			return nil, fmt.Errorf("%w: auth type %d len %d, want %d", ErrAuthSection, t, authLen, want)
		}
		// Type, length, key ID, reserved (0 on sending, ignored on
		// receipt), sequence number, digest.
		a.KeyID = b[2]
		a.Sequence = binary.BigEndian.Uint32(b[4:])
		a.Digest = append([]byte(nil), b[8:8+digest]...)
	default:
		return nil, fmt.Errorf("%w: %d", ErrAuthType, t)
	}
	return a, nil
}

// Marshal encodes p. It refuses what Parse would discard, so that keepvip
// never sends a packet its peer must drop.
func (p *Packet) Marshal() ([]byte, error) {
	if p.DetectMult == 0 {
		return nil, ErrDetectMult
	}
	if p.MyDiscriminator == 0 {
		return nil, ErrMyDiscr
	}
	if p.YourDiscriminator == 0 && p.State != StateDown && p.State != StateAdminDown {
		return nil, fmt.Errorf("%w (%s)", ErrYourDiscr, p.State)
	}
	if p.State > StateUp || p.Diag > 31 {
		return nil, fmt.Errorf("state %d or diag %d out of range", p.State, p.Diag)
	}
	var auth []byte
	if p.Auth != nil {
		var err error
		if auth, err = p.Auth.marshal(); err != nil {
			return nil, err
		}
	}
	b := make([]byte, headerLen, headerLen+len(auth))
	b[0] = Version<<5 | uint8(p.Diag)
	b[1] = uint8(p.State) << 6
	for _, f := range []struct {
		on  bool
		bit uint8
	}{{p.Poll, 0x20}, {p.Final, 0x10}, {p.ControlPlaneIndependent, 0x08}, {p.Auth != nil, 0x04}, {p.Demand, 0x02}} {
		if f.on {
			b[1] |= f.bit
		}
	}
	b[2] = p.DetectMult
	b[3] = uint8(headerLen + len(auth))
	binary.BigEndian.PutUint32(b[4:], p.MyDiscriminator)
	binary.BigEndian.PutUint32(b[8:], p.YourDiscriminator)
	for i, d := range []time.Duration{p.DesiredMinTx, p.RequiredMinRx, p.RequiredMinEchoRx} {
		us, err := micros(d)
		if err != nil {
			return nil, err
		}
		binary.BigEndian.PutUint32(b[12+4*i:], us)
	}
	return append(b, auth...), nil
}

// micros is d in whole microseconds, as the wire carries it.
func micros(d time.Duration) (uint32, error) {
	us := d / time.Microsecond
	if d < 0 || us > 1<<32-1 {
		return 0, fmt.Errorf("%w: %v", errIntervalRange, d)
	}
	return uint32(us), nil
}

func (a *Auth) marshal() ([]byte, error) {
	switch a.Type {
	case AuthSimplePassword:
		if len(a.Password) < 1 || len(a.Password) > maxSimplePassword {
			return nil, fmt.Errorf("%w: simple password of %d bytes, want 1 to 16", ErrAuthSection, len(a.Password))
		}
		b := []byte{byte(a.Type), byte(authHeaderLen + 1 + len(a.Password)), a.KeyID}
		return append(b, a.Password...), nil
	case AuthKeyedMD5, AuthMeticulousKeyedMD5, AuthKeyedSHA1, AuthMeticulousKeyedSHA1:
		n, digest := md5AuthLen, md5DigestLen
		if a.Type == AuthKeyedSHA1 || a.Type == AuthMeticulousKeyedSHA1 {
			n, digest = sha1AuthLen, sha1DigestLen
		}
		if len(a.Digest) != digest {
			return nil, fmt.Errorf("%w: auth type %d with a %d-byte digest, want %d", ErrAuthSection, a.Type, len(a.Digest), digest)
		}
		b := make([]byte, n)
		b[0], b[1], b[2] = byte(a.Type), byte(n), a.KeyID
		binary.BigEndian.PutUint32(b[4:], a.Sequence)
		copy(b[8:], a.Digest)
		return b, nil
	}
	return nil, fmt.Errorf("%w: %d", ErrAuthType, a.Type)
}
