package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// VRRP multicast groups.
var (
	vrrpGroup4 = net.IPv4(224, 0, 0, 18)
	vrrpGroup6 = net.ParseIP("ff02::12")
)

// Advert is a VRRP advertisement seen by an AdvertWatcher.
type Advert struct {
	// Time is when the watcher read the packet (time.Now, monotonic).
	Time time.Time
	// Src and Dst are the IP source and destination.
	Src, Dst netip.Addr
	// TTL is the IPv4 TTL or IPv6 hop limit.
	TTL int
	// Version is 2 or 3; Type is 1 for an advertisement.
	Version, Type int
	// VRID and Priority are the advert's virtual router id and priority.
	VRID, Priority int
	// Interval is the advertisement interval (v3: centiseconds; v2:
	// seconds).
	Interval time.Duration
	// Addrs are the virtual addresses listed.
	Addrs []netip.Addr
	// Raw is the VRRP packet (without IP header).
	Raw []byte
}

// String formats the advert for logs.
func (a Advert) String() string {
	return fmt.Sprintf("%s VRRPv%d %v->%v vrid=%d prio=%d int=%v addrs=%v ttl=%d",
		a.Time.Format("15:04:05.000000"), a.Version, a.Src, a.Dst, a.VRID, a.Priority, a.Interval, a.Addrs, a.TTL)
}

// ParseAdvert decodes a VRRP packet (without IP header); v6 tells the
// address family of the virtual addresses.
func ParseAdvert(b []byte, v6 bool) (Advert, error) {
	if len(b) < 8 {
		return Advert{}, fmt.Errorf("VRRP packet too short: %d bytes", len(b))
	}
	a := Advert{
		Version:  int(b[0] >> 4),
		Type:     int(b[0] & 0x0f),
		VRID:     int(b[1]),
		Priority: int(b[2]),
		Raw:      append([]byte(nil), b...),
	}
	count := int(b[3])
	switch a.Version {
	case 3:
		a.Interval = time.Duration(int(b[4]&0x0f)<<8|int(b[5])) * 10 * time.Millisecond
	case 2:
		a.Interval = time.Duration(b[5]) * time.Second
	default:
		return a, fmt.Errorf("VRRP version %d", a.Version)
	}
	size := 4
	if v6 {
		size = 16
	}
	if len(b) < 8+count*size {
		return a, fmt.Errorf("VRRP packet of %d bytes too short for %d addresses", len(b), count)
	}
	for i := 0; i < count; i++ {
		ad, _ := netip.AddrFromSlice(b[8+i*size : 8+(i+1)*size])
		a.Addrs = append(a.Addrs, ad)
	}
	return a, nil
}

// AdvertWatcher records every VRRP advertisement (IP protocol 112, IPv4
// and IPv6) that reaches a node: it listens on raw sockets in the node's
// namespace and joins 224.0.0.18 and ff02::12 on eth0. Adverts a node
// sends itself are not looped back to it, so watch from a node that does
// not take part (e.g. the client) to see every router's adverts.
// Unicast adverts are only seen by the node they are sent to.
type AdvertWatcher struct {
	node  *Node
	c4    *ipv4.RawConn
	c6    *ipv6.PacketConn
	wg    sync.WaitGroup
	once  sync.Once
	unreg func()

	mu      sync.Mutex
	adverts []Advert
	errs    int
	changed chan struct{}
}

// StartAdvertWatcher starts recording the VRRP adverts that reach n until
// Close or the lab's Close.
func StartAdvertWatcher(n *Node) (*AdvertWatcher, error) {
	w := &AdvertWatcher{node: n, changed: make(chan struct{})}
	err := n.Do(func() error {
		idx, err := ifIndex(n.IfName)
		if err != nil {
			return err
		}
		ifi := &net.Interface{Index: idx, Name: n.IfName}
		c, err := net.ListenPacket("ip4:112", "0.0.0.0")
		if err != nil {
			return fmt.Errorf("ip4:112: %w", err)
		}
		w.c4, err = ipv4.NewRawConn(c)
		if err != nil {
			c.Close()
			return fmt.Errorf("ip4:112: %w", err)
		}
		if err := w.c4.JoinGroup(ifi, &net.IPAddr{IP: vrrpGroup4}); err != nil {
			return fmt.Errorf("joining %v: %w", vrrpGroup4, err)
		}
		if err := w.c4.SetControlMessage(ipv4.FlagDst|ipv4.FlagInterface, true); err != nil {
			return err
		}
		c6, err := net.ListenPacket("ip6:112", "::")
		if err != nil {
			return fmt.Errorf("ip6:112: %w", err)
		}
		w.c6 = ipv6.NewPacketConn(c6)
		if err := w.c6.JoinGroup(ifi, &net.IPAddr{IP: vrrpGroup6}); err != nil {
			return fmt.Errorf("joining %v: %w", vrrpGroup6, err)
		}
		return w.c6.SetControlMessage(ipv6.FlagDst|ipv6.FlagHopLimit|ipv6.FlagInterface, true)
	})
	if err != nil {
		w.closeConns()
		return nil, fmt.Errorf("starting advert watcher in %s: %w", n.Name, err)
	}
	if w.unreg, err = n.lab.addCloser(func() { w.Close() }); err != nil {
		w.closeConns()
		return nil, fmt.Errorf("starting advert watcher in %s: %w", n.Name, err)
	}
	w.wg.Add(2)
	go w.read4()
	go w.read6()
	return w, nil
}

func (w *AdvertWatcher) closeConns() {
	if w.c4 != nil {
		w.c4.Close()
	}
	if w.c6 != nil {
		w.c6.Close()
	}
}

// Close stops watching. The adverts seen stay available.
func (w *AdvertWatcher) Close() error {
	w.once.Do(func() {
		w.closeConns()
		w.unreg()
	})
	w.wg.Wait()
	return nil
}

func (w *AdvertWatcher) add(a Advert, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.errs++
		return
	}
	w.adverts = append(w.adverts, a)
	close(w.changed)
	w.changed = make(chan struct{})
}

func (w *AdvertWatcher) read4() {
	defer w.wg.Done()
	buf := make([]byte, 1500)
	for {
		h, payload, _, err := w.c4.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		at := time.Now()
		a, perr := ParseAdvert(payload, false)
		a.Time = at
		a.Src, _ = netip.AddrFromSlice(h.Src.To4())
		a.Dst, _ = netip.AddrFromSlice(h.Dst.To4())
		a.TTL = h.TTL
		w.add(a, perr)
	}
}

func (w *AdvertWatcher) read6() {
	defer w.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, cm, src, err := w.c6.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		at := time.Now()
		a, perr := ParseAdvert(buf[:n], true)
		a.Time = at
		if ipa, ok := src.(*net.IPAddr); ok {
			a.Src, _ = netip.AddrFromSlice(ipa.IP.To16())
		}
		if cm != nil {
			a.Dst, _ = netip.AddrFromSlice(cm.Dst.To16())
			a.TTL = cm.HopLimit
		}
		w.add(a, perr)
	}
}

// Adverts returns every advert seen so far, oldest first.
func (w *AdvertWatcher) Adverts() []Advert {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]Advert(nil), w.adverts...)
}

// Malformed counts packets that did not parse as VRRP.
func (w *AdvertWatcher) Malformed() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.errs
}

// WaitAdvert waits for the first advert read after the call for which
// pred (nil: any) is true.
func (w *AdvertWatcher) WaitAdvert(ctx context.Context, pred func(Advert) bool) (Advert, error) {
	w.mu.Lock()
	from := len(w.adverts)
	w.mu.Unlock()
	return w.waitFrom(ctx, from, pred)
}

// WaitAdvertSince is WaitAdvert that also considers adverts already seen
// at or after since.
func (w *AdvertWatcher) WaitAdvertSince(ctx context.Context, since time.Time, pred func(Advert) bool) (Advert, error) {
	w.mu.Lock()
	from := len(w.adverts)
	for from > 0 && !w.adverts[from-1].Time.Before(since) {
		from--
	}
	w.mu.Unlock()
	return w.waitFrom(ctx, from, pred)
}

func (w *AdvertWatcher) waitFrom(ctx context.Context, i int, pred func(Advert) bool) (Advert, error) {
	for {
		w.mu.Lock()
		for ; i < len(w.adverts); i++ {
			if pred == nil || pred(w.adverts[i]) {
				a := w.adverts[i]
				w.mu.Unlock()
				return a, nil
			}
		}
		ch := w.changed
		seen := len(w.adverts)
		w.mu.Unlock()
		select {
		case <-ctx.Done():
			return Advert{}, fmt.Errorf("waiting for a VRRP advert in %s (%d seen): %w", w.node.Name, seen, ctx.Err())
		case <-ch:
		}
	}
}
