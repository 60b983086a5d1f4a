package vrrp

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"net"
	"net/netip"
	"sync"
	"syscall"
	"time"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// tosNetworkControl is the TOS / traffic class keepalived sends with
// (DSCP CS6, "network control").
const tosNetworkControl = 0xc0

// rawConn is a VRRP socket for one family on one interface: a raw IP socket
// for protocol 112 bound to the device, member of the VRRP group, sending
// with TTL/hop limit 255. Checksums are computed and verified in user space
// for both families, so that a bad IPv6 checksum is counted like an IPv4 one
// instead of being dropped silently by IPV6_CHECKSUM.
//
// It also tells its instances whether its reader has caught up (backlog):
// a timer that expires while adverts wait in the socket, or in the reader's
// hands, must not be acted on before they are read (see Instance.onTimer).
// One goroutine calls ReadPacket; the reader is taken to have finished
// with a packet when it calls ReadPacket again.
type rawConn struct {
	fam Family
	ifi *net.Interface
	pc  net.PacketConn
	p4  *ipv4.PacketConn
	p6  *ipv6.PacketConn
	rc  syscall.RawConn
	oob []byte // control messages of ReadPacket; used by the reader only

	// mu orders what the reader takes from the kernel's queue with what
	// backlog sees of it.
	mu       sync.Mutex
	inFlight bool // a packet has been read and the reader is not done with it
	waiters  []backlogWaiter
	closed   bool
}

// backlogWaiter is an instance waiting for the reader to have handed over
// every packet that reached the socket before mark (Unix ns).
type backlogWaiter struct {
	mark int64
	done chan struct{}
}

// maxBacklogWaiters bounds the waiters of a reader that makes no progress;
// the oldest are released first (their instances act on their own bound).
const maxBacklogWaiters = 64

func listenRaw(ifi *net.Interface, fam Family) (*rawConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = unix.BindToDevice(int(fd), ifi.Name); serr != nil {
				serr = fmt.Errorf("binding to device %s: %w", ifi.Name, serr)
				return
			}
			// Receive only the groups joined on this socket, not every
			// group any socket of the host joined.
			if fam == IPv4 {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_MULTICAST_ALL, 0)
			} else {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IPV6, unix.IPV6_MULTICAST_ALL, 0)
			}
			if serr != nil {
				serr = fmt.Errorf("disabling multicast-all: %w", serr)
				return
			}
			// The kernel's receive time of each packet, to tell the
			// packets that were queued when a timer expired from
			// those that came later.
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TIMESTAMPNS, 1); serr != nil {
				serr = fmt.Errorf("enabling receive timestamps: %w", serr)
			}
		})
		if err != nil {
			return err
		}
		return serr
	}}
	c := &rawConn{fam: fam, ifi: ifi}
	var err error
	if fam == IPv4 {
		c.pc, err = lc.ListenPacket(context.Background(), "ip4:112", "0.0.0.0")
	} else {
		c.pc, err = lc.ListenPacket(context.Background(), "ip6:112", "::")
	}
	if err != nil {
		return nil, fmt.Errorf("opening %s VRRP socket on %s: %w", fam, ifi.Name, err)
	}
	if err := c.setup(); err != nil {
		c.pc.Close()
		return nil, fmt.Errorf("setting up %s VRRP socket on %s: %w", fam, ifi.Name, err)
	}
	return c, nil
}

func (c *rawConn) setup() error {
	sc, ok := c.pc.(syscall.Conn)
	if !ok {
		return fmt.Errorf("%T has no file descriptor", c.pc)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	c.rc = rc
	c.oob = make([]byte, 256) // pktinfo, TTL or hop limit, timestamp
	if c.fam == IPv4 {
		p := ipv4.NewPacketConn(c.pc)
		c.p4 = p
		return errors.Join(
			p.JoinGroup(c.ifi, &net.IPAddr{IP: GroupIPv4.AsSlice()}),
			p.SetControlMessage(ipv4.FlagTTL|ipv4.FlagDst|ipv4.FlagInterface, true),
			p.SetMulticastInterface(c.ifi),
			p.SetMulticastTTL(255),
			p.SetTTL(255),
			p.SetMulticastLoopback(false),
			p.SetTOS(tosNetworkControl),
		)
	}
	p := ipv6.NewPacketConn(c.pc)
	c.p6 = p
	return errors.Join(
		p.JoinGroup(c.ifi, &net.IPAddr{IP: GroupIPv6.AsSlice()}),
		p.SetControlMessage(ipv6.FlagHopLimit|ipv6.FlagDst|ipv6.FlagInterface, true),
		p.SetMulticastInterface(c.ifi),
		p.SetMulticastHopLimit(255),
		p.SetHopLimit(255),
		p.SetMulticastLoopback(false),
		p.SetTrafficClass(tosNetworkControl),
	)
}

// ReadPacket blocks for the next VRRP message. Calling it again tells
// backlog that the reader is done with the previous one.
func (c *rawConn) ReadPacket(buf []byte) (Packet, error) {
	c.mu.Lock()
	c.inFlight = false
	c.mu.Unlock()
	var n, oobn int
	var from unix.Sockaddr
	var rerr error
	var stamp int64
	err := c.rc.Read(func(fd uintptr) bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		called := time.Now().UnixNano()
		for {
			n, oobn, _, from, rerr = unix.Recvmsg(int(fd), buf, c.oob, unix.MSG_DONTWAIT)
			if rerr != unix.EINTR {
				break
			}
		}
		if rerr == unix.EAGAIN {
			// Nothing queued, nothing in hand: caught up.
			c.releaseLocked(math.MaxInt64)
			return false // wait until readable
		}
		if rerr == nil {
			c.inFlight = true
			stamp = rxTimestamp(c.oob[:oobn])
			if stamp >= called {
				// The kernel stamps a packet when it is read if
				// it was not stamped on arrival: for a moment
				// after the first socket of the host asks for
				// timestamps (the kernel turns them on from a
				// work queue), arrivals are not stamped. Such a
				// stamp says nothing of when the packet came.
				stamp = 0
			}
			if stamp != 0 {
				c.releaseLocked(stamp)
			}
		}
		return true
	})
	readAt := time.Now()
	if err != nil {
		return Packet{}, err
	}
	if rerr != nil {
		return Packet{}, fmt.Errorf("reading %s VRRP socket on %s: %w", c.fam, c.ifi.Name, rerr)
	}
	var p Packet
	if stamp != 0 {
		// The age is taken in the wall clock's terms (the kernel's
		// stamp is CLOCK_REALTIME) two readings apart, and At is
		// placed on readAt's monotonic reading, so that only a step of
		// the wall clock between those two readings could skew it. A
		// packet is never dated after it was read.
		age := max(0, readAt.UnixNano()-stamp)
		p.At = readAt.Add(-time.Duration(age))
	}
	if c.fam == IPv4 {
		// A raw IPv4 socket returns the IP header too.
		if n < ipv4.HeaderLen {
			return p, fmt.Errorf("short IPv4 packet (%d bytes)", n)
		}
		hdrlen := int(buf[0]&0x0f) << 2
		if hdrlen < ipv4.HeaderLen || n < hdrlen {
			return p, fmt.Errorf("IPv4 packet of %d bytes with a header of %d", n, hdrlen)
		}
		var cm ipv4.ControlMessage
		if err := cm.Parse(c.oob[:oobn]); err != nil {
			return p, fmt.Errorf("parsing control messages: %w", err)
		}
		p.TTL = cm.TTL
		p.Dst, _ = netip.AddrFromSlice(cm.Dst.To4())
		p.Payload = buf[hdrlen:n]
		if sa, ok := from.(*unix.SockaddrInet4); ok {
			p.Src = netip.AddrFrom4(sa.Addr)
		}
	} else {
		var cm ipv6.ControlMessage
		if err := cm.Parse(c.oob[:oobn]); err != nil {
			return p, fmt.Errorf("parsing control messages: %w", err)
		}
		p.TTL = cm.HopLimit
		p.Dst, _ = netip.AddrFromSlice(cm.Dst)
		p.Payload = buf[:n]
		if sa, ok := from.(*unix.SockaddrInet6); ok {
			p.Src = netip.AddrFrom16(sa.Addr).Unmap()
		}
	}
	if !p.Dst.IsValid() || !p.Src.IsValid() {
		return p, fmt.Errorf("packet without addresses (src %v, control message dst %v)", p.Src, p.Dst)
	}
	return p, nil
}

// rxTimestamp returns the SO_TIMESTAMPNS receive time in oob (Unix ns), or
// 0 if there is none.
func rxTimestamp(oob []byte) int64 {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return 0
	}
	for _, m := range msgs {
		if m.Header.Level != unix.SOL_SOCKET || m.Header.Type != unix.SCM_TIMESTAMPNS {
			continue
		}
		// struct timespec: two longs.
		d := m.Data
		switch len(d) {
		case 16:
			return int64(binary.NativeEndian.Uint64(d))*1e9 + int64(binary.NativeEndian.Uint64(d[8:]))
		case 8:
			return int64(int32(binary.NativeEndian.Uint32(d)))*1e9 + int64(binary.NativeEndian.Uint32(d[4:]))
		}
	}
	return 0
}

// backlog returns nil if every packet that reached the socket before the
// call has been read and handed over by the reader (or dropped by it), and
// otherwise a channel that is closed once that is so: when the reader has
// read a packet that came later, or has found the socket empty, or the
// socket is closed. Packets the kernel received before the call are
// older than it by their receive timestamps; without timestamps only an
// empty socket counts.
func (c *rawConn) backlog() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || !c.inFlight && c.queuedLocked() == 0 {
		return nil
	}
	w := backlogWaiter{mark: time.Now().UnixNano(), done: make(chan struct{})}
	if len(c.waiters) >= maxBacklogWaiters {
		close(c.waiters[0].done)
		c.waiters = c.waiters[1:]
	}
	c.waiters = append(c.waiters, w)
	return w.done
}

// queuedLocked returns the size of the next packet in the kernel's queue
// (SIOCINQ on a raw socket), 0 if there is none. An error counts as one
// queued packet: waiting for the reader is the safe side.
func (c *rawConn) queuedLocked() int {
	n := 1
	_ = c.rc.Control(func(fd uintptr) {
		if v, err := unix.IoctlGetInt(int(fd), unix.SIOCINQ); err == nil {
			n = v
		}
	})
	return n
}

// releaseLocked wakes the waiters whose packets have all been handed over,
// now that the reader has read a packet received at stamp (math.MaxInt64:
// the socket is empty and the reader idle).
func (c *rawConn) releaseLocked(stamp int64) {
	kept := c.waiters[:0]
	for _, w := range c.waiters {
		if w.mark <= stamp {
			close(w.done)
			continue
		}
		kept = append(kept, w)
	}
	clear(c.waiters[len(kept):])
	c.waiters = kept
}

// WritePacket sends b from src to dst.
func (c *rawConn) WritePacket(b []byte, src, dst netip.Addr) error {
	to := &net.IPAddr{IP: dst.AsSlice()}
	var err error
	if c.fam == IPv4 {
		_, err = c.p4.WriteTo(b, &ipv4.ControlMessage{IfIndex: c.ifi.Index, Src: src.AsSlice()}, to)
	} else {
		if dst.IsLinkLocalUnicast() || dst.IsLinkLocalMulticast() {
			to.Zone = c.ifi.Name
		}
		_, err = c.p6.WriteTo(b, &ipv6.ControlMessage{IfIndex: c.ifi.Index, Src: src.AsSlice(), HopLimit: 255}, to)
	}
	return err
}

// Close closes the socket; a blocked ReadPacket returns, and instances
// waiting for the backlog stop waiting.
func (c *rawConn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.releaseLocked(math.MaxInt64)
	c.mu.Unlock()
	return c.pc.Close()
}
