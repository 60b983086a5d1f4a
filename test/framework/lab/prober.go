package lab

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strconv"
	"sync"
	"time"

	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// DefaultProbeInterval is the Prober's interval when none is given.
const DefaultProbeInterval = time.Millisecond

// Probe is one ICMP echo request sent by a Prober.
type Probe struct {
	// Seq numbers the probes of a Prober from 0.
	Seq int
	// Sent is taken just before the request is handed to the kernel.
	Sent time.Time
	// Reply is taken when the first matching echo reply has been read
	// from the socket; zero if none has arrived (yet).
	Reply time.Time
}

// Replied reports whether the probe has been answered.
func (p Probe) Replied() bool { return !p.Reply.IsZero() }

// RTT is Reply - Sent, or 0 if unanswered.
func (p Probe) RTT() time.Duration {
	if !p.Replied() {
		return 0
	}
	return p.Reply.Sub(p.Sent)
}

// ProbeStats counts a Prober's probes.
type ProbeStats struct {
	Sent       int // requests attempted (including SendErrors)
	Replied    int // requests answered at least once
	Dups       int // extra replies to already answered requests (e.g. two nodes holding the VIP)
	SendErrors int // requests the kernel refused to send (counted as lost)
}

// Prober measures the reachability of an address from a client node as
// the client sees it: it sends an ICMP (or ICMPv6) echo request every
// interval from inside the client's namespace and records, per request,
// when it was sent and when its reply was read. Times are user-space
// time.Now readings (monotonic), so they are accurate to a few tens of
// microseconds plus scheduling delay; the resolution of outage
// measurements is the interval.
//
// A reply counts however late it arrives (Probe.RTT shows how late).
// Sending uses a time.Ticker: on a loaded machine (or under -race) some
// ticks are dropped, so probes can be further apart than interval;
// Probe.Sent is always the real send time.
type Prober struct {
	node     *Node
	target   netip.Addr
	interval time.Duration
	id       uint16
	token    uint64
	start    time.Time
	conn     *icmp.PacketConn

	cancel   context.CancelFunc
	wg       sync.WaitGroup
	stopOnce sync.Once
	unreg    func()

	mu      sync.Mutex
	sent    []time.Duration // offset from start, index = Seq
	reply   []time.Duration // offset from start; 0 = no reply
	stats   ProbeStats
	lastErr error
	changed chan struct{}
}

// StartProber starts probing target from client every interval
// (DefaultProbeInterval if 0) until ctx is done, Stop is called or the lab
// is closed. For a link-local target give a zone: an interface name of
// the client's namespace (e.g. "eth0", resolved there) or an index.
func StartProber(ctx context.Context, client *Node, target netip.Addr, interval time.Duration) (*Prober, error) {
	if interval <= 0 {
		interval = DefaultProbeInterval
	}
	if !target.IsValid() {
		return nil, fmt.Errorf("starting prober in %s: invalid target", client.Name)
	}
	target = target.Unmap()
	var rnd [10]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, fmt.Errorf("starting prober in %s: %w", client.Name, err)
	}
	p := &Prober{
		node:     client,
		interval: interval,
		id:       binary.BigEndian.Uint16(rnd[:2]),
		token:    binary.BigEndian.Uint64(rnd[2:]),
		changed:  make(chan struct{}),
	}
	err := client.Do(func() error {
		var err error
		if z := target.Zone(); z != "" {
			if _, err := strconv.Atoi(z); err != nil {
				idx, err := ifIndex(z)
				if err != nil {
					return err
				}
				target = target.WithZone(strconv.Itoa(idx))
			}
		}
		if target.Is4() {
			p.conn, err = icmp.ListenPacket("ip4:icmp", "0.0.0.0")
			return err
		}
		p.conn, err = icmp.ListenPacket("ip6:ipv6-icmp", "::")
		if err != nil {
			return err
		}
		var f ipv6.ICMPFilter
		f.SetAll(true)
		f.Accept(ipv6.ICMPTypeEchoReply)
		return p.conn.IPv6PacketConn().SetICMPFilter(&f)
	})
	if err != nil {
		if p.conn != nil {
			p.conn.Close()
		}
		return nil, fmt.Errorf("starting prober in %s: opening ICMP socket: %w", client.Name, err)
	}
	p.target = target
	if p.unreg, err = client.lab.addCloser(func() { p.Stop() }); err != nil {
		p.conn.Close()
		return nil, fmt.Errorf("starting prober in %s: %w", client.Name, err)
	}
	ctx, p.cancel = context.WithCancel(ctx)
	p.start = time.Now()
	p.wg.Add(2)
	go p.receive()
	go p.send(ctx)
	go func() {
		<-ctx.Done()
		p.Stop()
	}()
	return p, nil
}

// Target is the probed address (with a numeric zone if it has one).
func (p *Prober) Target() netip.Addr { return p.target }

// Interval is the time between probes.
func (p *Prober) Interval() time.Duration { return p.interval }

// Stop stops probing and closes the socket. Results stay available.
func (p *Prober) Stop() {
	p.stopOnce.Do(func() {
		p.cancel()
		p.conn.Close()
		p.unreg()
	})
	p.wg.Wait()
}

func (p *Prober) send(ctx context.Context) {
	defer p.wg.Done()
	dst := &net.IPAddr{IP: net.IP(p.target.AsSlice()), Zone: p.target.Zone()}
	var typ icmp.Type = ipv4.ICMPTypeEcho
	if p.target.Is6() {
		typ = ipv6.ICMPTypeEchoRequest
	}
	tick := time.NewTicker(p.interval)
	defer tick.Stop()
	for seq := 0; ; seq++ {
		data := make([]byte, 16)
		binary.BigEndian.PutUint64(data[:8], p.token)
		binary.BigEndian.PutUint64(data[8:], uint64(seq))
		msg := icmp.Message{Type: typ, Body: &icmp.Echo{ID: int(p.id), Seq: seq & 0xffff, Data: data}}
		b, err := msg.Marshal(nil) // the kernel fills in the ICMPv6 checksum
		if err != nil {
			panic(err) // cannot happen for an echo
		}
		p.mu.Lock()
		now := time.Since(p.start)
		p.sent = append(p.sent, now)
		p.reply = append(p.reply, 0)
		p.stats.Sent++
		p.mu.Unlock()
		if _, err := p.conn.WriteTo(b, dst); err != nil {
			if ctx.Err() != nil {
				return
			}
			p.mu.Lock()
			p.stats.SendErrors++
			p.lastErr = err
			p.mu.Unlock()
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func (p *Prober) receive() {
	defer p.wg.Done()
	proto := 1
	if p.target.Is6() {
		proto = 58
	}
	buf := make([]byte, 1500)
	for {
		n, _, err := p.conn.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			continue
		}
		at := time.Since(p.start)
		m, err := icmp.ParseMessage(proto, buf[:n])
		if err != nil {
			continue
		}
		echo, ok := m.Body.(*icmp.Echo)
		if !ok || (m.Type != ipv4.ICMPTypeEchoReply && m.Type != ipv6.ICMPTypeEchoReply) ||
			echo.ID != int(p.id) || len(echo.Data) < 16 ||
			binary.BigEndian.Uint64(echo.Data[:8]) != p.token {
			continue
		}
		seq := binary.BigEndian.Uint64(echo.Data[8:16])
		p.mu.Lock()
		if seq < uint64(len(p.reply)) {
			if p.reply[seq] == 0 {
				p.reply[seq] = at
				p.stats.Replied++
				close(p.changed)
				p.changed = make(chan struct{})
			} else {
				p.stats.Dups++
			}
		}
		p.mu.Unlock()
	}
}

func (p *Prober) probeLocked(i int) Probe {
	pr := Probe{Seq: i, Sent: p.start.Add(p.sent[i])}
	if r := p.reply[i]; r != 0 {
		pr.Reply = p.start.Add(r)
	}
	return pr
}

// firstSentLocked is the index of the first probe sent at or after t.
func (p *Prober) firstSentLocked(t time.Time) int {
	d := t.Sub(p.start)
	return sort.Search(len(p.sent), func(i int) bool { return p.sent[i] >= d })
}

// Probes returns a copy of every probe so far.
func (p *Prober) Probes() []Probe {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]Probe, len(p.sent))
	for i := range p.sent {
		out[i] = p.probeLocked(i)
	}
	return out
}

// Stats counts the probes so far.
func (p *Prober) Stats() ProbeStats {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stats
}

// LastSendError is the last error the kernel returned when sending.
func (p *Prober) LastSendError() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.lastErr
}

// FirstReplyAfter returns the first probe (in sending order) that was sent
// at or after t and has been answered.
func (p *Prober) FirstReplyAfter(t time.Time) (Probe, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := p.firstSentLocked(t); i < len(p.sent); i++ {
		if p.reply[i] != 0 {
			return p.probeLocked(i), true
		}
	}
	return Probe{}, false
}

// WaitReplyAfter waits until a probe sent at or after t has been answered
// and returns the first such probe (as FirstReplyAfter).
func (p *Prober) WaitReplyAfter(ctx context.Context, t time.Time) (Probe, error) {
	for {
		p.mu.Lock()
		ch := p.changed
		p.mu.Unlock()
		if pr, ok := p.FirstReplyAfter(t); ok {
			return pr, nil
		}
		select {
		case <-ctx.Done():
			st := p.Stats()
			return Probe{}, fmt.Errorf("waiting for %v to answer from %s (sent %d, replied %d, send errors %d, last %v): %w",
				p.target, p.node.Name, st.Sent, st.Replied, st.SendErrors, p.LastSendError(), ctx.Err())
		case <-ch:
		}
	}
}

// Outage measures the client-visible outage following the event at time
// after (e.g. the moment the master was killed): with R the first probe
// sent at or after `after` that was answered (FirstReplyAfter), it returns
// R.Sent - after. That is the time from the event until the client first
// sent a request that got through, with a resolution of one interval; it
// does not include R's round-trip time (see OutageDetail).
//
// Take `after` once the path is really broken (e.g. after CutLink or
// Kill has returned): a probe sent while the old path still worked is
// answered and makes the result about one interval or less. LongestGap
// measures the outage without knowing when it started. Outage fails if no
// probe sent at or after `after` has been answered yet (see
// WaitReplyAfter).
func (p *Prober) Outage(after time.Time) (time.Duration, error) {
	d, err := p.OutageDetail(after)
	if err != nil {
		return 0, err
	}
	return d.ToSend, nil
}

// OutageInfo details an outage measured by OutageDetail.
type OutageInfo struct {
	// After is the event time given.
	After time.Time
	// LastBefore is the last answered probe sent before After (zero Seq
	// and times if none).
	LastBefore Probe
	// Recovered is the first answered probe sent at or after After.
	Recovered Probe
	// ToSend is Recovered.Sent - After (what Outage returns).
	ToSend time.Duration
	// ToReply is Recovered.Reply - After: the time until the client
	// actually held an answer.
	ToReply time.Duration
	// Lost counts the probes sent in [After, Recovered.Sent), none of
	// which was answered.
	Lost int
}

// OutageDetail is Outage with the probes it is based on.
func (p *Prober) OutageDetail(after time.Time) (OutageInfo, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	info := OutageInfo{After: after}
	first := p.firstSentLocked(after)
	for i := first - 1; i >= 0; i-- {
		if p.reply[i] != 0 {
			info.LastBefore = p.probeLocked(i)
			break
		}
	}
	for i := first; i < len(p.sent); i++ {
		if p.reply[i] != 0 {
			info.Recovered = p.probeLocked(i)
			info.ToSend = info.Recovered.Sent.Sub(after)
			info.ToReply = info.Recovered.Reply.Sub(after)
			info.Lost = i - first
			return info, nil
		}
	}
	return info, fmt.Errorf("outage of %v after %v: none of the %d probes sent since was answered",
		p.target, after.Format("15:04:05.000000"), len(p.sent)-first)
}

// Gap is a run of consecutive unanswered probes.
type Gap struct {
	// FirstLost is the first unanswered probe of the run.
	FirstLost Probe
	// Recovered is the answered probe ending the run (zero if Open).
	Recovered Probe
	// Lost is the number of unanswered probes in the run.
	Lost int
	// Duration is Recovered.Sent - FirstLost.Sent: how long requests
	// went unanswered, to within one interval. For an Open run it is
	// measured to the last probe sent.
	Duration time.Duration
	// Open means no probe after the run has been answered (yet).
	Open bool
}

// LongestGap returns the longest run of unanswered probes among those
// sent in [from, to] (a zero to means "until now"); ok is false if every
// probe in the window was answered. A run still open at the end of the
// window is only considered if it is longer than any closed one; probes
// sent less than a round trip ago show up as an open run.
func (p *Prober) LongestGap(from, to time.Time) (g Gap, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	start := p.firstSentLocked(from)
	end := len(p.sent)
	if !to.IsZero() {
		end = p.firstSentLocked(to.Add(1))
	}
	for i := start; i < end; {
		if p.reply[i] != 0 {
			i++
			continue
		}
		j := i
		for j < end && p.reply[j] == 0 {
			j++
		}
		cur := Gap{FirstLost: p.probeLocked(i), Lost: j - i}
		if j < len(p.sent) && p.reply[j] != 0 {
			cur.Recovered = p.probeLocked(j)
			cur.Duration = cur.Recovered.Sent.Sub(cur.FirstLost.Sent)
		} else {
			cur.Open = true
			cur.Duration = p.probeLocked(j - 1).Sent.Sub(cur.FirstLost.Sent)
		}
		if !ok || cur.Duration > g.Duration {
			g, ok = cur, true
		}
		i = j
	}
	return g, ok
}
