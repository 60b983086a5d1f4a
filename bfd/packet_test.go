package bfd

import (
	"bytes"
	"encoding/hex"
	"errors"
	"reflect"
	"testing"
	"time"
)

// An Up packet as RFC 5880 §4.1 lays it out, written byte by byte: version
// 1, diag 0, state Up (3), no flags, detect multiplier 3, length 24, my
// discriminator 1, your discriminator 2, desired min TX 300 ms, required
// min RX 300 ms, required min echo RX 50 ms.
const upVector = "20" + "c0" + "03" + "18" +
	"00000001" + "00000002" + "000493e0" + "000493e0" + "0000c350"

func TestParseKnownVector(t *testing.T) {
	b, _ := hex.DecodeString(upVector)
	p, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	want := Packet{State: StateUp, DetectMult: 3, MyDiscriminator: 1, YourDiscriminator: 2,
		DesiredMinTx: 300 * time.Millisecond, RequiredMinRx: 300 * time.Millisecond, RequiredMinEchoRx: 50 * time.Millisecond}
	if !reflect.DeepEqual(p, want) {
		t.Fatalf("Parse = %+v\nwant    %+v", p, want)
	}
	out, err := want.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, b) {
		t.Errorf("Marshal = %x\nwant      %x", out, b)
	}
}

func TestRoundTrip(t *testing.T) {
	for _, p := range []Packet{
		{State: StateDown, Diag: DiagControlDetectExpired, DetectMult: 3, MyDiscriminator: 0xdeadbeef, DesiredMinTx: time.Second, RequiredMinRx: time.Second},
		{State: StateInit, DetectMult: 5, MyDiscriminator: 7, YourDiscriminator: 9, Poll: true, DesiredMinTx: 100 * time.Millisecond, RequiredMinRx: 100 * time.Millisecond},
		{State: StateUp, Final: true, ControlPlaneIndependent: true, Demand: true, DetectMult: 255, MyDiscriminator: 1, YourDiscriminator: 1<<32 - 1,
			DesiredMinTx: (1<<32 - 1) * time.Microsecond, RequiredMinRx: time.Microsecond},
		{State: StateAdminDown, Diag: DiagAdminDown, DetectMult: 1, MyDiscriminator: 3},
		{State: StateUp, DetectMult: 3, MyDiscriminator: 1, YourDiscriminator: 2, Auth: &Auth{Type: AuthSimplePassword, KeyID: 4, Password: []byte("s")}},
		{State: StateUp, DetectMult: 3, MyDiscriminator: 1, YourDiscriminator: 2, Auth: &Auth{Type: AuthSimplePassword, KeyID: 4, Password: []byte("0123456789abcdef")}},
		{State: StateUp, DetectMult: 3, MyDiscriminator: 1, YourDiscriminator: 2, Auth: &Auth{Type: AuthKeyedMD5, KeyID: 1, Sequence: 42, Digest: bytes.Repeat([]byte{0xab}, 16)}},
		{State: StateUp, DetectMult: 3, MyDiscriminator: 1, YourDiscriminator: 2, Auth: &Auth{Type: AuthMeticulousKeyedSHA1, KeyID: 2, Sequence: 1<<32 - 1, Digest: bytes.Repeat([]byte{0xcd}, 20)}},
	} {
		b, err := p.Marshal()
		if err != nil {
			t.Fatalf("Marshal(%+v): %v", p, err)
		}
		got, err := Parse(b)
		if err != nil {
			t.Fatalf("Parse(Marshal(%+v)) = %v (%x)", p, err, b)
		}
		if !reflect.DeepEqual(got, p) {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, p)
		}
	}
}

// Every discard rule of RFC 5880 §6.8.6 that needs no session, each on a
// packet that is good but for that.
func TestParseDiscards(t *testing.T) {
	good, _ := hex.DecodeString(upVector)
	withAuth := func(section ...byte) []byte {
		b := append(append([]byte(nil), good...), section...)
		b[1] |= 0x04
		b[3] = byte(len(b))
		return b
	}
	md5 := func(authLen byte) []byte {
		s := make([]byte, 24)
		s[0], s[1] = byte(AuthKeyedMD5), authLen
		return s
	}
	for _, c := range []struct {
		name string
		mod  func([]byte) []byte
		want error
	}{
		{"empty", func([]byte) []byte { return nil }, ErrShort},
		{"23 bytes", func(b []byte) []byte { return b[:23] }, ErrShort},
		{"version 0", func(b []byte) []byte { b[0] &^= 0xe0; return b }, ErrVersion},
		{"version 2", func(b []byte) []byte { b[0] = 2<<5 | b[0]&0x1f; return b }, ErrVersion},
		{"length 23", func(b []byte) []byte { b[3] = 23; return b }, ErrLength},
		{"length past the payload", func(b []byte) []byte { b[3] = 25; return b }, ErrLength},
		{"length 26 without the A bit", func(b []byte) []byte { b = append(b, 0, 0); b[3] = 26; return b }, ErrLength},
		{"A bit, length 24", func(b []byte) []byte { b[1] |= 0x04; return b }, ErrLength},
		{"detect multiplier 0", func(b []byte) []byte { b[2] = 0; return b }, ErrDetectMult},
		{"multipoint", func(b []byte) []byte { b[1] |= 0x01; return b }, ErrMultipoint},
		{"my discriminator 0", func(b []byte) []byte { copy(b[4:8], []byte{0, 0, 0, 0}); return b }, ErrMyDiscr},
		{"your discriminator 0 in Up", func(b []byte) []byte { copy(b[8:12], []byte{0, 0, 0, 0}); return b }, ErrYourDiscr},
		{"your discriminator 0 in Init", func(b []byte) []byte { copy(b[8:12], []byte{0, 0, 0, 0}); b[1] = 2 << 6; return b }, ErrYourDiscr},
		{"auth len past the packet", func([]byte) []byte { return withAuth(byte(AuthSimplePassword), 5, 1, 'a') }, ErrAuthSection},
		{"simple password empty", func([]byte) []byte { return withAuth(byte(AuthSimplePassword), 3, 1) }, ErrAuthSection},
		{"simple password of 17", func([]byte) []byte {
			return withAuth(append([]byte{byte(AuthSimplePassword), 20, 1}, bytes.Repeat([]byte{'a'}, 17)...)...)
		}, ErrAuthSection},
		{"keyed MD5 of SHA1's length", func([]byte) []byte { s := md5(28); return withAuth(append(s, 0, 0, 0, 0)...) }, ErrAuthSection},
		{"keyed MD5 cut short", func([]byte) []byte { return withAuth(md5(24)[:20]...) }, ErrAuthSection},
		{"unknown auth type", func([]byte) []byte { return withAuth(9, 3, 0) }, ErrAuthType},
		{"auth type 0", func([]byte) []byte { return withAuth(0, 3, 0) }, ErrAuthType},
	} {
		b := c.mod(append([]byte(nil), good...))
		if _, err := Parse(b); !errors.Is(err, c.want) {
			t.Errorf("%s: Parse(%x) = %v; want %v", c.name, b, err, c.want)
		}
	}
	// Accepted: your discriminator 0 while Down or AdminDown (the peer
	// does not know ours yet), and bytes after Length.
	for _, st := range []State{StateDown, StateAdminDown} {
		b := append([]byte(nil), good...)
		copy(b[8:12], []byte{0, 0, 0, 0})
		b[1] = byte(st) << 6
		if _, err := Parse(append(b, 0xff, 0xff)); err != nil {
			t.Errorf("your discriminator 0 in %s: %v", st, err)
		}
	}
	// The reserved byte of a keyed section is ignored on receipt.
	s := md5(24)
	s[3] = 0x7f
	if p, err := Parse(withAuth(s...)); err != nil || p.Auth == nil || p.Auth.Type != AuthKeyedMD5 {
		t.Errorf("keyed MD5 with a non-zero reserved byte: %+v, %v", p, err)
	}
}

// Marshal refuses what its peer would discard, and what the wire cannot
// carry.
func TestMarshalRefuses(t *testing.T) {
	ok := Packet{State: StateUp, DetectMult: 3, MyDiscriminator: 1, YourDiscriminator: 2}
	for _, c := range []struct {
		name string
		mod  func(*Packet)
	}{
		{"detect multiplier 0", func(p *Packet) { p.DetectMult = 0 }},
		{"my discriminator 0", func(p *Packet) { p.MyDiscriminator = 0 }},
		{"your discriminator 0 in Up", func(p *Packet) { p.YourDiscriminator = 0 }},
		{"state 4", func(p *Packet) { p.State = 4 }},
		{"diag 32", func(p *Packet) { p.Diag = 32 }},
		{"negative interval", func(p *Packet) { p.DesiredMinTx = -time.Microsecond }},
		{"interval past 32 bits of microseconds", func(p *Packet) { p.RequiredMinRx = 1 << 32 * time.Microsecond }},
		{"empty password", func(p *Packet) { p.Auth = &Auth{Type: AuthSimplePassword} }},
		{"password of 17", func(p *Packet) { p.Auth = &Auth{Type: AuthSimplePassword, Password: bytes.Repeat([]byte{'a'}, 17)} }},
		{"SHA1 with an MD5 digest", func(p *Packet) { p.Auth = &Auth{Type: AuthKeyedSHA1, Digest: make([]byte, 16)} }},
		{"auth type 0", func(p *Packet) { p.Auth = &Auth{} }},
	} {
		p := ok
		c.mod(&p)
		if b, err := p.Marshal(); err == nil {
			t.Errorf("%s: Marshal = %x; want an error", c.name, b)
		}
	}
}

// Parse takes any bytes without panicking; what it accepts, Marshal
// writes back to a packet that parses to the same.
func FuzzParse(f *testing.F) {
	good, _ := hex.DecodeString(upVector)
	f.Add(good)
	for _, p := range []Packet{
		{State: StateDown, DetectMult: 3, MyDiscriminator: 1},
		{State: StateUp, DetectMult: 3, MyDiscriminator: 1, YourDiscriminator: 2, Auth: &Auth{Type: AuthSimplePassword, KeyID: 1, Password: []byte("pw")}},
		{State: StateUp, DetectMult: 3, MyDiscriminator: 1, YourDiscriminator: 2, Auth: &Auth{Type: AuthKeyedSHA1, Digest: make([]byte, 20)}},
	} {
		b, err := p.Marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		p, err := Parse(b)
		if err != nil {
			return
		}
		out, err := p.Marshal()
		if err != nil {
			t.Fatalf("Marshal of a parsed packet %+v: %v", p, err)
		}
		q, err := Parse(out)
		if err != nil || !reflect.DeepEqual(p, q) {
			t.Fatalf("round trip of %x: %+v, %v; want %+v", b, q, err, p)
		}
	})
}
