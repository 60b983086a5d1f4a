package vrrp

import (
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/keepvip/keepvip/test/framework/netnstest"
)

// TestRawConnBacklog checks, on real sockets, what an instance whose timer
// expired asks its socket: whether adverts that reached the host before
// that moment are still queued or in the reader's hands.
func TestRawConnBacklog(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	va, vb := vethPair(t)
	for _, tt := range []struct {
		fam      Family
		src, dst netip.Addr
	}{
		{IPv4, netip.MustParseAddr("192.0.2.1"), GroupIPv4},
		{IPv6, netip.Addr{}, GroupIPv6},
	} {
		t.Run(tt.fam.String(), func(t *testing.T) {
			src := tt.src
			if !src.IsValid() {
				var err error
				if src, err = sourceAddr(va.Index, IPv6, nil, nil); err != nil {
					t.Fatal(err)
				}
			}
			tx, err := listenRaw(va, tt.fam)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Close()
			rx, err := listenRaw(vb, tt.fam)
			if err != nil {
				t.Fatal(err)
			}
			defer rx.Close()
			if rx.backlog() != nil {
				t.Fatal("backlog of a fresh socket is pending")
			}
			vip := netip.MustParseAddr("192.0.2.100")
			if tt.fam == IPv6 {
				vip = netip.MustParseAddr("fe80::64")
			}
			send := func(prio uint8) {
				t.Helper()
				adv := Advertisement{Version: 3, VRID: 51, Priority: prio, Interval: 100 * ms, Addrs: []netip.Addr{vip}}
				b, err := adv.Marshal(src, tt.dst, ChecksumPseudoHeader)
				if err != nil {
					t.Fatal(err)
				}
				if err := tx.WritePacket(b, src, tt.dst); err != nil {
					t.Fatal(err)
				}
			}
			// The kernel turns receive timestamps on a moment after
			// the first socket asks (from a work queue); until then
			// packets come unstamped.
			warm := time.Now().Add(5 * time.Second)
			for {
				send(1)
				time.Sleep(time.Millisecond)
				before := time.Now()
				p, err := rx.ReadPacket(make([]byte, 1500))
				if err != nil {
					t.Fatal(err)
				}
				if !p.At.IsZero() && p.At.Before(before) {
					break
				}
				if time.Now().After(warm) {
					t.Fatal("no receive timestamps")
				}
			}
			// Five adverts wait in the socket: no one reads it.
			sent := time.Now()
			for i := range 5 {
				send(uint8(101 + i))
			}
			var done <-chan struct{}
			deadline := time.Now().Add(5 * time.Second)
			for done = rx.backlog(); done == nil; done = rx.backlog() {
				if time.Now().After(deadline) {
					t.Fatal("backlog not pending with adverts in the socket")
				}
				time.Sleep(time.Millisecond)
			}
			time.Sleep(10 * ms) // queued for a while, as in a stall
			// Two more come after the question.
			send(200)
			send(201)

			// The reader runs: it hands packets over one by one.
			reading := time.Now()
			var mu sync.Mutex
			var handed []Packet
			readDone := make(chan struct{})
			go func() {
				defer close(readDone)
				for {
					buf := make([]byte, 1500)
					p, err := rx.ReadPacket(buf)
					if err != nil {
						return
					}
					mu.Lock()
					handed = append(handed, p)
					mu.Unlock()
				}
			}()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("backlog wait not released once the reader ran")
			}
			mu.Lock()
			n := len(handed)
			got := append([]Packet(nil), handed...)
			mu.Unlock()
			if n < 5 {
				t.Fatalf("backlog released after %d packets were handed over; want the 5 queued before it was asked", n)
			}
			for i, p := range got[:5] {
				adv, reason, err := decode(p, tt.fam)
				if reason != "" {
					t.Fatalf("packet %d fails the receive checks (%s): %v", i, reason, err)
				}
				if adv.Priority != uint8(101+i) || p.Src != src || p.Dst != tt.dst || p.TTL != 255 {
					t.Errorf("packet %d: priority %d from %v to %v TTL %d; want %d from %v to %v TTL 255", i, adv.Priority, p.Src, p.Dst, p.TTL, 101+i, src, tt.dst)
				}
				// The kernel's receive time, not when it was read.
				if p.At.IsZero() || p.At.Before(sent.Add(-time.Millisecond)) || !p.At.Before(reading) {
					t.Errorf("packet %d received at %v; want after it was sent (%v) and before the reader ran (%v)", i, p.At, sent, reading)
				}
			}
			// Once the reader has handed everything over and waits,
			// nothing is pending.
			deadline = time.Now().Add(5 * time.Second)
			for rx.backlog() != nil {
				if time.Now().After(deadline) {
					t.Fatal("backlog still pending with an idle reader")
				}
				time.Sleep(time.Millisecond)
			}
			mu.Lock()
			if len(handed) != 7 {
				t.Errorf("%d packets handed over; want 7", len(handed))
			}
			mu.Unlock()

			// A wait ends when the socket is closed.
			send(1)
			deadline = time.Now().Add(5 * time.Second)
			rx2, err := listenRaw(vb, tt.fam)
			if err != nil {
				t.Fatal(err)
			}
			send(2)
			for done = rx2.backlog(); done == nil; done = rx2.backlog() {
				if time.Now().After(deadline) {
					t.Fatal("backlog not pending with an advert in the socket")
				}
				time.Sleep(time.Millisecond)
			}
			rx2.Close()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				t.Fatal("backlog wait not released by Close")
			}
			rx.Close()
			<-readDone
		})
	}
}
