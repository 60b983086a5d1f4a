package vrrp

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/keepvip/keepvip/internal/clock"
)

// sender writes one VRRP message from src to dst.
type sender interface {
	WritePacket(b []byte, src, dst netip.Addr) error
}

// addresser puts VIPs on an interface and takes them off again. Deleting a
// VIP the addresser did not add must do nothing.
type addresser interface {
	AddVIP(ifindex int, p netip.Prefix) error
	DeleteVIP(ifindex int, p netip.Prefix) error
}

// filterer drops or admits packets addressed to an address (Accept_Mode).
type filterer interface {
	Block(a netip.Addr) error
	Unblock(a netip.Addr) error
}

// announcer sends one gratuitous ARP or unsolicited NA per address and
// returns how many it sent.
type announcer interface {
	Announce(addrs []netip.Addr) (int, error)
}

// backlogger tells an instance whether adverts that have reached the host
// are still on their way to it: queued in the kernel's socket buffer, or
// read and not yet handed over by the socket reader (which may have been
// stalled too).
type backlogger interface {
	// backlog returns nil if everything received before the call has
	// been handed over (to deliver) or dropped, and otherwise a channel
	// closed once it has.
	backlog() <-chan struct{}
}

// instanceIO is what an instance does to the world, behind seams that tests
// replace.
type instanceIO struct {
	tx       sender
	addrs    addresser
	announce announcer
	filter   filterer
	// source returns the address to send from when Config.Source is unset.
	source  func(*Config) (netip.Addr, error)
	ifindex int
	// backlog, if set, is asked before an expired timer is acted on; nil:
	// the sender, if it is also the receiving socket (rawConn).
	backlog backlogger
	// peerLog limits the lines that received packets cause (nil: the
	// instance has its own). A Manager shares one among all its instances
	// and socket readers, so that its budget bounds the whole process.
	peerLog *logLimiter
}

// received is an advert that passed decode, on its way to its instance.
type received struct {
	pkt Packet
	adv Advertisement
}

const (
	maxTransitions = 16
	maxErrors      = 8
	// sourceRetry is how often a router without a usable source address
	// tries again.
	sourceRetry = time.Second
	// maxHold caps how long a stopping master keeps its VIPs
	// (HandoffHold). The hold is 2 × Advertisement_Interval: the backup
	// that takes over does so Skew_Time (less than one interval) after the
	// priority 0 it hears, and if the first priority 0 is lost, after the
	// repeat one interval later. Kubernetes kills the pod when its
	// termination grace ends (30 s by default, and in deploy/), and a
	// killed keepvip leaves its VIPs on the node, held twice until it
	// starts again. So the hold takes at most a third of that grace,
	// leaving the rest for what follows it (routes withdrawn, servers shut
	// down) and for a slow node. 10 s still covers, at intervals up to
	// 5 s, the loss of the first priority 0, and at intervals up to 10 s a
	// handoff that loses nothing; a longer hold, for intervals that fail
	// over in half a minute anyway, would be paid by every stopping pod.
	maxHold = 10 * time.Second
	// vipRetry is how soon a failed VIP add or delete is tried again; each
	// further failure doubles the wait, up to vipRetryMax.
	vipRetry    = time.Second
	vipRetryMax = 16 * time.Second
	// logEvery rate-limits the logs a peer can cause by what it sends:
	// once per logEvery for each source and kind of line, and
	// peerLogBudget lines per logEvery in all, whatever the sources.
	logEvery      = 10 * time.Second
	peerLogBudget = 50
	// errorLogBudget bounds the failure lines of an instance per
	// errorLogEvery, however many different failures there are.
	errorLogBudget = 20
	// handoffGrace is how long a stopping master keeps its VIPs after the
	// new master's first advert: its GARP/NA follows the advert, and until
	// clients have it they still send to the old master.
	handoffGrace = 20 * time.Millisecond
	// errorLogEvery collapses repeats of the same failure in the log.
	errorLogEvery = 10 * time.Second
	// minBacklogWait and maxBacklogWait bound how long an expired timer
	// waits for the socket reader to hand over the adverts that were
	// queued when it expired (Master_Adver_Interval, within these
	// bounds). The reader needs microseconds per packet, and a socket
	// buffer holds a few hundred; the bound is there for a reader that
	// cannot run at all.
	minBacklogWait = 20 * time.Millisecond
	maxBacklogWait = time.Second
)

// Instance is one virtual router. All its state is owned by the goroutine
// running run; everything else talks to it through channels.
type Instance struct {
	cfg   Config
	io    instanceIO
	clock clock.Clock
	log   *slog.Logger
	m     *Metrics
	// onChange is told of each state change (Options.OnTransition).
	onChange func(instance string, t Transition)

	state State
	since time.Time
	fault string
	local netip.Addr // source of adverts; compared in equal-priority elections

	masterAdverInterval time.Duration
	masterDownAt        time.Time     // Master_Down_Timer (Backup)
	adverAt             time.Time     // Adver_Timer (Master)
	preemptAt           time.Time     // preemption allowed from then (preempt_delay)
	retryAt             time.Time     // Fault without a source address: try again
	vipRetryAt          time.Time     // a VIP add or delete failed: try again
	vipBackoff          time.Duration // wait before the next VIP retry; 0: vipRetry
	lastForced          time.Time     // last answer to a lower-priority master
	holdUntil           time.Time     // stopping master gives its VIPs up then at the latest
	zeroAt              time.Time     // stopping master sends priority 0 again
	master              netip.Addr
	masterPrio          uint8
	lastAdvert          time.Time
	masterLeft          time.Time // when the master sent priority 0
	linkUp              map[string]bool
	installed           map[netip.Prefix]bool
	blocked             map[netip.Addr]bool // VIPs filtered for Accept_Mode false
	garp                garpSchedule
	stopping            bool // shutdown requested while master: handing off
	handedTo            netip.Addr
	stopped             bool

	// wait is set while an expired timer waits for the adverts that were
	// queued when it expired (see onTimer).
	wait backlogWait

	sent, received uint64
	drops          dropCounts
	transitions    []Transition
	errs           []string
	peerLog        *logLimiter // lines caused by received packets
	errLog         *logLimiter // failure lines

	rx   chan received
	ctl  chan func()
	done chan struct{}
}

// dropCounts counts drops by reason; the socket reader adds to it too.
type dropCounts struct {
	mu sync.Mutex
	n  map[DropReason]uint64
}

// countDrop counts a dropped packet for the status command. Safe from any
// goroutine.
func (in *Instance) countDrop(r DropReason) {
	in.drops.mu.Lock()
	defer in.drops.mu.Unlock()
	if in.drops.n == nil {
		in.drops.n = map[DropReason]uint64{}
	}
	in.drops.n[r]++
}

func (d *dropCounts) get(r DropReason) uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.n[r]
}

func (d *dropCounts) snapshot() map[string]uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.n) == 0 {
		return nil
	}
	out := make(map[string]uint64, len(d.n))
	for r, n := range d.n {
		out[string(r)] = n
	}
	return out
}

// backlogWait is an expired timer waiting for the socket reader.
type backlogWait struct {
	done    <-chan struct{} // closed when the reader has caught up; nil: not waiting
	since   time.Time       // when the wait began
	until   time.Time       // act anyway then
	expired time.Time       // the timer's deadline
	state   State           // the state it expired in
}

// garpSchedule tracks the announcement bursts of a master.
type garpSchedule struct {
	rounds  int       // rounds left in the current burst
	next    time.Time // when the next round is due
	second  time.Time // second burst (garp_master_delay)
	refresh time.Time // next refresh (garp_master_refresh)
}

func newInstance(cfg Config, io instanceIO, clk clock.Clock, log *slog.Logger, m *Metrics, links map[string]bool) *Instance {
	in := &Instance{
		cfg:       cfg,
		io:        io,
		clock:     clk,
		log:       log.With("instance", cfg.Name, "vrid", cfg.VRID, "interface", cfg.Interface, "family", cfg.Family().String()),
		m:         m,
		linkUp:    map[string]bool{},
		installed: map[netip.Prefix]bool{},
		blocked:   map[netip.Addr]bool{},
		peerLog:   io.peerLog,
		errLog:    newLogLimiter(errorLogEvery, errorLogBudget),
		rx:        make(chan received, 256),
		ctl:       make(chan func()),
		done:      make(chan struct{}),
	}
	if in.peerLog == nil {
		in.peerLog = newLogLimiter(logEvery, peerLogBudget)
	}
	in.setLinks(links)
	in.m.state.WithLabelValues(in.labels()...).Set(float64(StateInit))
	return in
}

func (in *Instance) labels() []string {
	return []string{in.cfg.Name, in.cfg.Interface, strconv.Itoa(int(in.cfg.VRID)), in.cfg.Family().String()}
}

// run is the instance goroutine. It returns when ctx is cancelled and the
// router has stopped: at once for a backup, after the handoff for a master.
func (in *Instance) run(ctx context.Context) {
	defer close(in.done)
	timer := in.clock.NewTimer(time.Hour)
	timer.Stop()
	if c, ok := timer.(io.Closer); ok {
		defer c.Close()
	}
	in.start(in.clock.Now())
	stop := ctx.Done()
	for !in.stopped {
		if next, ok := in.nextDeadline(); ok {
			timer.Reset(max(0, next.Sub(in.clock.Now())))
		} else {
			timer.Stop()
		}
		select {
		case <-stop:
			stop = nil
			in.shutdown(in.clock.Now())
		case r := <-in.rx:
			in.handlePacket(in.clock.Now(), r.pkt, r.adv)
		case f := <-in.ctl:
			f()
		case <-timer.C():
			in.onTimer(in.clock.Now())
		case <-in.wait.done: // nil unless waiting
			in.onTimer(in.clock.Now())
		}
	}
	timer.Stop()
}

// onTimer runs when a timer has expired, or when an expired timer was
// waiting for the socket reader and it has caught up.
//
// A timer that expires means that something did not happen in time; but
// when the process was stopped, starved of CPU or paused for garbage
// collection, it may well have happened and be waiting to be read: adverts
// queued in the socket, or read and queued for this goroutine. Timers are
// then late, and the one that should have been reset by those adverts
// fires as soon as the process runs again, ahead of them: a backup took
// over from a live master, sent its GARPs and stepped back a few
// milliseconds later. So before acting, the instance takes in what has
// arrived:
//   - the adverts already handed over (rx), at once;
//   - for timers whose action is decided by what the peers said
//     (Master_Down_Timer, and a stopping master's hold and priority 0
//     repeats), also those still in the socket or in the reader's hands
//     when the timer was found expired: it waits for the reader to hand
//     them over, at most Master_Adver_Interval (within minBacklogWait and
//     maxBacklogWait), handling everything else meanwhile.
//
// A master's Adver_Timer is not held back: after a stall it advertises at
// once, since its adverts are what keep the backups from taking over.
func (in *Instance) onTimer(now time.Time) {
	expired, due := in.awaitedTimer(), in.awaitedDue(now)
	in.drainRx(now)
	switch {
	case in.awaitedDue(now):
		if !in.caughtUp(now) {
			return
		}
	case in.wait.done != nil:
		// The adverts came while waiting.
		in.endWait(now)
	case due:
		in.logQueued(now, expired, now)
	}
	in.handleTimers(now)
}

// awaitedTimer returns the earliest timer whose action depends on adverts
// that may still be queued, zero if none is set.
func (in *Instance) awaitedTimer() time.Time {
	switch in.state {
	case StateBackup:
		return in.masterDownAt
	case StateMaster:
		if in.stopping {
			if in.zeroAt.IsZero() || in.holdUntil.Before(in.zeroAt) {
				return in.holdUntil
			}
			return in.zeroAt
		}
	}
	return time.Time{}
}

// awaitedDue reports whether a timer has expired whose action depends on
// adverts that may still be queued.
func (in *Instance) awaitedDue(now time.Time) bool {
	t := in.awaitedTimer()
	return !t.IsZero() && !now.Before(t)
}

// drainRx handles the adverts the socket reader has handed over, without
// waiting for more, and returns how many there were.
func (in *Instance) drainRx(now time.Time) int {
	for n := range cap(in.rx) {
		select {
		case r := <-in.rx:
			in.handlePacket(now, r.pkt, r.adv)
		default:
			return n
		}
	}
	return cap(in.rx)
}

// caughtUp reports whether every advert that had reached the socket when
// the expired timer was first looked at has been handled. If not, it
// starts or continues the wait.
func (in *Instance) caughtUp(now time.Time) bool {
	if in.wait.done == nil {
		if in.io.backlog == nil {
			return true
		}
		expired := in.awaitedTimer()
		done := in.io.backlog.backlog()
		// What the reader handed over before it answered.
		in.drainRx(now)
		if !in.awaitedDue(now) {
			in.logQueued(now, expired, now)
			return true
		}
		if done == nil {
			return true
		}
		in.wait = backlogWait{done: done, since: now, until: now.Add(in.backlogWaitMax()), expired: expired, state: in.state}
		return false
	}
	select {
	case <-in.wait.done:
	default:
		if now.Before(in.wait.until) {
			return false
		}
		in.fail("backlog", fmt.Errorf("the socket reader did not hand over the queued adverts within %v; acting on the expired timer", in.wait.until.Sub(in.wait.since)))
	}
	in.drainRx(now)
	in.endWait(now)
	return true
}

// endWait ends a wait for queued adverts.
func (in *Instance) endWait(now time.Time) {
	w := in.wait
	in.wait = backlogWait{}
	if in.state == w.state && !in.awaitedDue(now) {
		in.logQueued(now, w.expired, w.since)
	}
}

// logQueued logs that adverts which were queued when a timer expired (at
// expired; noticed at since) reset it.
func (in *Instance) logQueued(now, expired, since time.Time) {
	in.logLimited(now, "queued", "a timer expired while adverts were queued; they reset it",
		"state", in.state.String(), "late", since.Sub(expired), "waited", now.Sub(since))
}

// backlogWaitMax is how long an expired timer waits for the socket reader.
func (in *Instance) backlogWaitMax() time.Duration {
	return min(max(in.masterAdverInterval, minBacklogWait), maxBacklogWait)
}

// do runs f on the instance goroutine and waits for it. It reports false if
// the instance has stopped.
func (in *Instance) do(f func()) bool {
	ran := make(chan struct{})
	select {
	case in.ctl <- func() { f(); close(ran) }:
		<-ran
		return true
	case <-in.done:
		return false
	}
}

// deliver queues an advert for the instance without blocking the reader.
func (in *Instance) deliver(r received) bool {
	select {
	case in.rx <- r:
		return true
	default:
		return false
	}
}

// Status returns a snapshot; the second result is false if the instance has
// stopped.
func (in *Instance) Status() (Status, bool) {
	var s Status
	ok := in.do(func() { s = in.status() })
	return s, ok
}

func (in *Instance) status() Status {
	s := Status{
		Name: in.cfg.Name, Interface: in.cfg.Interface, VRID: in.cfg.VRID,
		Family: in.cfg.Family().String(), Version: in.cfg.Version,
		State: in.state, Since: in.since, Fault: in.fault, Priority: in.cfg.Priority,
		Source: in.local, Peers: slices.Clone(in.cfg.Peers), VIPs: slices.Clone(in.cfg.VIPs),
		VIPsInstalled: len(in.installed) > 0, Master: in.master, MasterPriority: in.masterPrio,
		AdvertInterval: Duration(in.cfg.Interval), MasterAdvertInterval: Duration(in.masterAdverInterval),
		MasterDownInterval: Duration(in.masterDownInterval()), Preempt: in.cfg.Preempt,
		LastAdvert: in.lastAdvert, AdvertsSent: in.sent, AdvertsReceived: in.received,
		Transitions: slices.Clone(in.transitions), Errors: slices.Clone(in.errs),
	}
	s.Drops = in.drops.snapshot()
	return s
}

// skew returns Skew_Time: RFC 9568 §6.1 for version 3 (scaled by the
// master's interval), RFC 3768 §6.1 for version 2 (in seconds).
func (in *Instance) skew() time.Duration {
	p := time.Duration(256 - int(in.cfg.Priority))
	if in.cfg.Version == 2 {
		return p * time.Second / 256
	}
	return p * in.masterAdverInterval / 256
}

// masterDownInterval is 3 × Master_Adver_Interval + Skew_Time.
func (in *Instance) masterDownInterval() time.Duration {
	return 3*in.masterAdverInterval + in.skew()
}

func (in *Instance) preemptAllowed(now time.Time) bool {
	return in.cfg.Preempt && !now.Before(in.preemptAt)
}

// start is the Startup event in Initialize (RFC 9568 §6.4.1), also taken
// when a Fault clears.
func (in *Instance) start(now time.Time) {
	in.retryAt = time.Time{}
	if down := in.downLink(); down != "" {
		in.enterFault(now, "link "+down+" is down")
		return
	}
	local, err := in.resolveSource()
	if err != nil {
		in.enterFault(now, err.Error())
		in.retryAt = now.Add(sourceRetry)
		return
	}
	in.local = local
	in.fault = ""
	in.lastAdvert, in.masterLeft = time.Time{}, time.Time{}
	if in.cfg.Priority == PriorityOwner {
		in.becomeMaster(now, "priority 255: address owner")
		return
	}
	in.warmUp()
	// (150)-(160): Master_Adver_Interval = Advertisement_Interval,
	// Master_Down_Timer = Master_Down_Interval.
	in.masterAdverInterval = in.cfg.Interval
	in.masterDownAt = now.Add(in.masterDownInterval())
	in.preemptAt = now.Add(in.cfg.PreemptDelay)
	in.master, in.masterPrio = netip.Addr{}, 0
	in.setState(now, StateBackup, "startup", 0)
}

// warmUp runs, without effect, the code that becoming master runs, so that
// the first takeover of a freshly started daemon is not slowed by code and
// data the process has not touched yet (measured: about 1 ms cold, 0.2 ms
// warm).
func (in *Instance) warmUp() {
	adv := Advertisement{Version: in.cfg.Version, VRID: in.cfg.VRID, Priority: in.cfg.Priority,
		Interval: in.cfg.Interval, Addrs: in.cfg.vipAddrs()}
	for _, dst := range in.cfg.destinations() {
		_, _ = adv.Marshal(in.local, dst, in.cfg.Checksum)
	}
	if w, ok := in.io.announce.(interface{ warmUp([]netip.Addr) }); ok {
		w.warmUp(in.cfg.vipAddrs())
	}
	if w, ok := in.io.addrs.(interface{ warmUp(Family) }); ok {
		w.warmUp(in.cfg.Family())
	}
}

// newSource looks the source address up again when it was not configured,
// and reports whether it changed.
func (in *Instance) newSource() bool {
	if in.cfg.Source.IsValid() {
		return false
	}
	a, err := in.resolveSource()
	if err != nil || a == in.local {
		return false
	}
	in.log.Warn("source address changed", "from", in.local, "to", a)
	in.local = a
	return true
}

func (in *Instance) resolveSource() (netip.Addr, error) {
	if in.cfg.Source.IsValid() {
		return in.cfg.Source, nil
	}
	if in.io.source == nil {
		return netip.Addr{}, fmt.Errorf("no source address for %s", in.cfg.Interface)
	}
	a, err := in.io.source(&in.cfg)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("finding the %s source address on %s: %w", in.cfg.Family(), in.cfg.Interface, err)
	}
	return a, nil
}

func (in *Instance) downLink() string {
	for _, name := range in.cfg.tracked() {
		if !in.linkUp[name] {
			return name
		}
	}
	return ""
}

// setLinks records the link state of the tracked interfaces.
func (in *Instance) setLinks(links map[string]bool) {
	for _, name := range in.cfg.tracked() {
		in.linkUp[name] = links[name]
	}
}

// handleLink takes a link change of a tracked interface.
func (in *Instance) handleLink(now time.Time, name string, up bool) {
	if !slices.Contains(in.cfg.tracked(), name) || in.stopping {
		return
	}
	in.linkUp[name] = up
	switch {
	case !up && in.state != StateFault:
		in.enterFault(now, "link "+name+" is down")
	case up && in.state == StateFault && in.downLink() == "":
		in.log.Info("tracked links are up again, leaving fault")
		in.start(now)
	}
}

func (in *Instance) enterFault(now time.Time, reason string) {
	var took time.Duration
	if in.state == StateMaster {
		// A master whose own link still works tells the others to take
		// over now rather than after Master_Down_Interval.
		if in.linkUp[in.cfg.Interface] {
			in.sendAdvert(PriorityStop)
		}
		took = in.releaseVIPs(now)
	}
	in.clearTimers()
	if in.state == StateFault && in.fault == reason {
		return // a retry that failed the same way: not a new transition
	}
	in.fault = reason
	in.setState(now, StateFault, reason, took)
}

func (in *Instance) clearTimers() {
	// vipRetryAt stays: a VIP that could not be removed on the way into
	// Fault must still be retried there.
	in.masterDownAt, in.adverAt, in.holdUntil, in.retryAt, in.zeroAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}, time.Time{}
	in.garp = garpSchedule{}
}

// becomeMaster is (110)-(140) and (250)-(280): advertise, take the VIPs,
// announce them.
func (in *Instance) becomeMaster(now time.Time, reason string) {
	in.masterDownAt, in.masterLeft = time.Time{}, time.Time{}
	in.sendAdvert(in.cfg.Priority)
	in.installVIPs()
	in.garp = garpSchedule{}
	in.startBurst(now, in.cfg.GARP.Repeat)
	if in.cfg.GARP.Delay > 0 {
		in.garp.second = now.Add(in.cfg.GARP.Delay)
	}
	if in.cfg.GARP.Refresh > 0 {
		in.garp.refresh = now.Add(in.cfg.GARP.Refresh)
	}
	in.adverAt = now.Add(in.cfg.Interval)
	in.master, in.masterPrio = in.local, in.cfg.Priority
	in.masterAdverInterval = in.cfg.Interval
	took := in.clock.Now().Sub(now)
	in.m.takeover.WithLabelValues(in.cfg.Name).Observe(took.Seconds())
	in.setState(now, StateMaster, reason, took)
}

// becomeBackup is (725)-(765): a master yields to a better one.
//
// Before it does, it sends one last advert at its own priority (unless
// LowerPriorityAdvert is off). After a partition heals, clients may still
// point at this router's MAC, while the new master, whose advert arrived
// first, has no reason to announce the VIPs again: without that advert the
// clients stay cut off until their neighbour entry expires (4.5 s measured,
// 3.3 s with keepalived 2.2.7 in the same place). Hearing a lower-priority
// master, the new master answers with an advert and a GARP/NA burst, as
// keepalived and keepvip do by default.
func (in *Instance) becomeBackup(now time.Time, p Packet, adv Advertisement, reason string) {
	if in.cfg.LowerPriorityAdvert {
		in.sendAdvert(in.cfg.Priority)
	}
	in.adverAt = time.Time{}
	in.garp = garpSchedule{}
	// Master_Down_Timer runs from now, not from when the advert came: a
	// master that yields to an advert that waited in its socket gives
	// the new master a whole Master_Down_Interval to be heard.
	in.follow(now, p, adv)
	took := in.releaseVIPs(now)
	in.setState(now, StateBackup, reason, took)
}

// arrival returns when p came: its kernel receive time, or now if it has
// none (or one after now).
func arrival(now time.Time, p Packet) time.Time {
	if p.At.IsZero() || p.At.After(now) {
		return now
	}
	return p.At
}

// follow takes the advert of the current master, which came at now: learn
// its interval and restart Master_Down_Timer (RFC 9568 §6.4.2
// (440)-(460)).
func (in *Instance) follow(now time.Time, p Packet, adv Advertisement) {
	if in.cfg.Version == 3 && adv.Interval != in.masterAdverInterval {
		if in.masterAdverInterval != 0 {
			in.log.Info("advert interval updated by master", "from", in.masterAdverInterval, "to", adv.Interval, "master", p.Src)
		}
		in.masterAdverInterval = adv.Interval
	}
	if in.cfg.Version == 2 {
		in.masterAdverInterval = in.cfg.Interval
	}
	in.masterDownAt = now.Add(in.masterDownInterval())
	in.master, in.masterPrio, in.lastAdvert = p.Src, adv.Priority, now
	in.masterLeft = time.Time{}
}

// shutdown is the Shutdown event: a master sends priority 0 (RFC 9568
// §6.4.3 (610)-(640)) and gives up its VIPs, after the handoff if
// HandoffHold is set.
func (in *Instance) shutdown(now time.Time) {
	if in.state != StateMaster {
		in.clearTimers()
		in.setState(now, StateInit, "shutdown", 0)
		in.stopped = true
		return
	}
	in.sendAdvert(PriorityStop)
	in.adverAt = time.Time{}
	in.garp = garpSchedule{}
	if in.cfg.HandoffHold {
		in.stopping = true
		in.holdUntil = now.Add(min(2*in.cfg.Interval, maxHold))
		in.zeroAt = in.nextZero(now)
		in.log.Info("shutting down: sent priority 0, holding VIPs until a new master advertises", "hold", in.holdUntil.Sub(now))
		return
	}
	in.finishStop(now, "shutdown")
}

// nextZero returns when a stopping master sends priority 0 again, or zero
// if that would not be before the hold ends. One priority 0 is all a
// backup needs, but a lost one would leave the backups to wait for
// Master_Down_Interval, past the hold: a gap of about one interval plus
// skew. So while no new master has been heard it goes again every
// Advertisement_Interval, the cadence the backups already expect from this
// master. That spacing is what makes the repeat harmless: a backup that
// heard the previous one has taken over by then (Skew_Time is less than
// Master_Adver_Interval), whereas an RFC 9568 (430) backup such as
// keepalived restarts its Skew_Time timer on every priority 0, so a quicker
// repeat would postpone its takeover.
func (in *Instance) nextZero(now time.Time) time.Time {
	next := now.Add(in.cfg.Interval)
	if !next.Before(in.holdUntil) {
		return time.Time{}
	}
	return next
}

func (in *Instance) finishStop(now time.Time, reason string) {
	took := in.releaseVIPs(now)
	in.clearTimers()
	in.setState(now, StateInit, reason, took)
	in.stopping = false
	in.stopped = true
}

// reconfigure takes a new configuration of the same router without
// restarting it.
func (in *Instance) reconfigure(now time.Time, cfg Config, links map[string]bool) {
	old := in.cfg
	in.cfg = cfg
	in.setLinks(links)
	if in.stopping || in.stopped {
		return
	}
	if cfg.Source != old.Source && in.state != StateFault {
		if a, err := in.resolveSource(); err == nil {
			in.local = a
		} else {
			in.fail("source", err)
		}
	}
	if down := in.downLink(); down != "" {
		if in.state != StateFault {
			in.enterFault(now, "link "+down+" is down")
		}
		return
	}
	switch in.state {
	case StateFault:
		in.start(now)
	case StateMaster:
		in.removeUnwanted()
		in.syncFilter()
		vipsChanged := !slices.Equal(old.VIPs, cfg.VIPs)
		if vipsChanged {
			in.installVIPs()
			in.startBurst(now, cfg.GARP.Repeat)
		}
		if vipsChanged || old.Priority != cfg.Priority || old.Interval != cfg.Interval {
			in.sendAdvert(cfg.Priority)
			in.adverAt = now.Add(cfg.Interval)
		}
		in.masterPrio = cfg.Priority
		if cfg.GARP.Refresh != old.GARP.Refresh {
			in.garp.refresh = time.Time{}
			if cfg.GARP.Refresh > 0 {
				in.garp.refresh = now.Add(cfg.GARP.Refresh)
			}
		}
	case StateBackup:
		if cfg.Priority == PriorityOwner {
			in.becomeMaster(now, "priority raised to 255: address owner")
			return
		}
		if old.Priority != cfg.Priority && in.masterDownAt.After(now) && in.masterLeft.IsZero() && !in.lastAdvert.IsZero() {
			// Skew_Time depends on our priority. (After a priority 0
			// the timer is Skew_Time itself and stays.)
			in.masterDownAt = in.lastAdvert.Add(in.masterDownInterval())
		}
	}
}

func (in *Instance) lastAdvertOr(t time.Time) time.Time {
	if in.lastAdvert.IsZero() {
		return t
	}
	return in.lastAdvert
}

// handleTimers fires every timer that is due at now.
func (in *Instance) handleTimers(now time.Time) {
	due := func(t time.Time) bool { return !t.IsZero() && !now.Before(t) }
	if due(in.vipRetryAt) {
		in.vipRetryAt = time.Time{}
		in.reconcileVIPs(now)
	}
	switch in.state {
	case StateBackup:
		if due(in.masterDownAt) {
			reason := fmt.Sprintf("no advert for %v (Master_Down_Interval %v)", now.Sub(in.lastAdvertOr(in.since)).Round(time.Millisecond), in.masterDownInterval())
			if !in.masterLeft.IsZero() {
				reason = fmt.Sprintf("master %s sent priority 0 (Skew_Time %v)", in.master, in.skew())
			}
			in.becomeMaster(now, reason)
		}
	case StateMaster:
		if in.stopping {
			if due(in.holdUntil) {
				reason := "shutdown: no new master within the hold time"
				if in.handedTo.IsValid() {
					reason = fmt.Sprintf("shutdown: handed off to %s", in.handedTo)
				}
				in.finishStop(now, reason)
				return
			}
			if due(in.zeroAt) {
				in.zeroAt = time.Time{}
				if !in.handedTo.IsValid() {
					in.sendAdvert(PriorityStop)
					in.zeroAt = in.nextZero(now)
				}
			}
			return
		}
		if due(in.adverAt) {
			in.sendAdvert(in.cfg.Priority)
			// Keep the cadence unless we fell behind by a whole interval.
			next := in.adverAt.Add(in.cfg.Interval)
			if !next.After(now) {
				next = now.Add(in.cfg.Interval)
			}
			in.adverAt = next
		}
		if due(in.garp.second) {
			in.garp.second = time.Time{}
			in.startBurst(now, in.cfg.GARP.Repeat)
		}
		if due(in.garp.refresh) {
			in.garp.refresh = now.Add(in.cfg.GARP.Refresh)
			in.startBurst(now, in.cfg.GARP.RefreshRepeat)
		}
		if in.garp.rounds > 0 && due(in.garp.next) {
			in.runBurst(now)
		}
	case StateFault:
		if due(in.retryAt) {
			in.start(now)
		}
	}
}

// nextDeadline returns the earliest pending timer.
func (in *Instance) nextDeadline() (time.Time, bool) {
	var next time.Time
	consider := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	// While an expired timer waits for the socket reader, the timers
	// that wait with it are looked at again when the wait ends.
	awaited := consider
	if in.wait.done != nil {
		consider(in.wait.until)
		awaited = func(time.Time) {}
	}
	switch in.state {
	case StateBackup:
		awaited(in.masterDownAt)
	case StateMaster:
		if in.stopping {
			awaited(in.holdUntil)
			awaited(in.zeroAt)
			break
		}
		consider(in.adverAt)
		consider(in.garp.second)
		consider(in.garp.refresh)
		if in.garp.rounds > 0 {
			consider(in.garp.next)
		}
	case StateFault:
		consider(in.retryAt)
	}
	consider(in.vipRetryAt)
	return next, !next.IsZero()
}

// handlePacket applies the instance's receive checks to an advert that
// passed decode, then the state machine (RFC 9568 §6.4.2, §6.4.3).
func (in *Instance) handlePacket(now time.Time, p Packet, adv Advertisement) {
	drop := func(r DropReason) {
		in.countDrop(r)
		in.m.drop(in.cfg.Interface, in.cfg.Family(), in.cfg.VRID, r)
	}
	switch {
	case in.state == StateInit || in.state == StateFault:
		drop(DropInactive)
		return
	case adv.Version != in.cfg.Version:
		drop(DropVersionMismatch)
		return
	case p.Src == in.local:
		drop(DropOwnAddress)
		return
	case in.cfg.unicast() && p.Dst.IsMulticast():
		drop(DropUnexpectedMulti)
		return
	case in.cfg.unicast() && !slices.Contains(in.cfg.Peers, p.Src):
		drop(DropNotPeer)
		return
	case !in.cfg.unicast() && !p.Dst.IsMulticast():
		drop(DropUnexpectedUni)
		return
	case in.cfg.Priority == PriorityOwner && !in.stopping:
		// RFC 9568 §7.1: the owner discards adverts.
		drop(DropOwner)
		return
	}
	if in.cfg.Version == 2 {
		if !in.authOK(adv) {
			drop(DropAuth)
			return
		}
		if adv.Interval != in.cfg.Interval {
			drop(DropIntervalMismatch)
			return
		}
	}
	in.received++
	in.m.received.WithLabelValues(in.cfg.Name).Inc()
	in.checkAddresses(p, adv)

	if in.stopping {
		if adv.Priority != PriorityStop && !in.handedTo.IsValid() {
			in.handedTo = p.Src
			in.zeroAt = time.Time{}
			if grace := now.Add(handoffGrace); grace.Before(in.holdUntil) {
				in.holdUntil = grace
			}
		}
		return
	}
	switch in.state {
	case StateBackup:
		// A backup's timers run from when each advert came, which is
		// when it was read unless the process or its socket reader was
		// stalled meanwhile (see onTimer).
		came := arrival(now, p)
		if adv.Priority == PriorityStop {
			// (430) the master is leaving: take over after Skew_Time.
			// A stopping master repeats its priority 0 in case one is
			// lost; a repeat, or another leaving router, never
			// postpones a takeover already due earlier (RFC 9568 would
			// restart the timer; keepvip keeps the earlier one).
			if at := came.Add(in.skew()); in.masterLeft.IsZero() || at.Before(in.masterDownAt) {
				in.masterDownAt = at
			}
			if in.masterLeft.IsZero() {
				in.masterLeft = came
			}
			in.logLimited(now, "prio0:"+p.Src.String(), "master sent priority 0, taking over after skew time", "master", p.Src, "skew", in.skew())
			return
		}
		if !in.preemptAllowed(came) || adv.Priority >= in.cfg.Priority {
			in.follow(came, p, adv)
			return
		}
		// (470) a lower-priority master: discard and let
		// Master_Down_Timer run out, which preempts it.
		in.debugLimited(now, "lower-backup:"+p.Src.String(), "received lower priority advert, discarding", "from", p.Src, "priority", adv.Priority)
	case StateMaster:
		if adv.Priority == PriorityStop {
			// (705)-(715) another master is leaving: assert ourselves.
			in.sendAdvert(in.cfg.Priority)
			in.adverAt = now.Add(in.cfg.Interval)
			return
		}
		switch c := p.Src.WithZone("").Compare(in.local.WithZone("")); {
		case adv.Priority > in.cfg.Priority:
			in.becomeBackup(now, p, adv, fmt.Sprintf("advert from %s with higher priority %d, ours %d", p.Src, adv.Priority, in.cfg.Priority))
			return
		case adv.Priority == in.cfg.Priority && c > 0:
			in.becomeBackup(now, p, adv, fmt.Sprintf("advert from %s with the same priority %d and a higher address", p.Src, adv.Priority))
			return
		}
		// At most once per interval: a peer flooding lower-priority
		// adverts must not turn each into an advert and a GARP burst.
		if in.cfg.LowerPriorityAdvert && (in.lastForced.IsZero() || now.Sub(in.lastForced) >= in.cfg.Interval) {
			in.lastForced = now
			in.logLimited(now, "lower:"+p.Src.String(), "received advert from a lower-priority master, forcing a new election", "from", p.Src, "priority", adv.Priority)
			in.sendAdvert(in.cfg.Priority)
			in.adverAt = now.Add(in.cfg.Interval)
			in.startBurst(now, in.cfg.GARP.LowerPriorityRepeat)
		}
	}
}

func (in *Instance) authOK(adv Advertisement) bool {
	var want [8]byte
	copy(want[:], in.cfg.AuthPassword)
	if in.cfg.AuthPassword == "" {
		return adv.AuthType == 0
	}
	return adv.AuthType == 1 && adv.AuthData == want
}

// checkAddresses logs when an advert's address list differs from ours (RFC
// 9568 §7.1 says MAY check, MUST log). keepalived drops such adverts; keepvip
// accepts them, because the election must still see a single master while
// nodes roll out a new configuration one by one.
func (in *Instance) checkAddresses(p Packet, adv Advertisement) {
	want := in.cfg.vipAddrs()
	got := slices.Clone(adv.Addrs)
	slices.SortFunc(want, func(a, b netip.Addr) int { return a.Compare(b) })
	slices.SortFunc(got, func(a, b netip.Addr) int { return a.Compare(b) })
	if slices.Equal(want, got) {
		return
	}
	in.m.mismatch.WithLabelValues(in.cfg.Name).Inc()
	if in.logLimited(in.clock.Now(), "mismatch:"+p.Src.String(), "") {
		in.log.Warn("advert address list differs from the configured VIPs", "from", p.Src, "advertised", got, "configured", want)
	}
}

// sendAdvert sends one advert with priority prio to every destination.
func (in *Instance) sendAdvert(prio uint8) {
	adv := Advertisement{
		Version:  in.cfg.Version,
		VRID:     in.cfg.VRID,
		Priority: prio,
		Interval: in.cfg.Interval,
		Addrs:    in.cfg.vipAddrs(),
	}
	if in.cfg.Version == 2 && in.cfg.AuthPassword != "" {
		adv.AuthType = 1
		copy(adv.AuthData[:], in.cfg.AuthPassword)
	}
	for _, dst := range in.cfg.destinations() {
		b, err := adv.Marshal(in.local, dst, in.cfg.Checksum)
		if err == nil {
			err = in.io.tx.WritePacket(b, in.local, dst)
			if err != nil && in.newSource() {
				// The address we sent from is gone (renumbered):
				// send from the interface's address now.
				if b, err = adv.Marshal(in.local, dst, in.cfg.Checksum); err == nil {
					err = in.io.tx.WritePacket(b, in.local, dst)
				}
			}
		}
		if err != nil {
			in.fail("send", fmt.Errorf("sending advert to %s: %w", dst, err))
			continue
		}
		in.sent++
		in.m.sent.WithLabelValues(in.cfg.Name).Inc()
	}
}

// installVIPs adds the VIPs, first filtering them when the router must not
// accept packets sent to them.
func (in *Instance) installVIPs() {
	for _, p := range in.cfg.VIPs {
		if in.installed[p] {
			continue
		}
		if in.mustFilter() && !in.blockVIP(p.Addr()) {
			in.retryVIPs()
			continue
		}
		if err := in.io.addrs.AddVIP(in.io.ifindex, p); err != nil {
			in.fail("vip-add", err)
			in.retryVIPs()
			continue
		}
		in.installed[p] = true
	}
}

// retryVIPs schedules reconcileVIPs after a failed add or delete: after
// vipRetry, then twice as long after each retry that fails again, up to
// vipRetryMax, so that a kernel that keeps refusing is not hammered and a
// transient failure is still mended at once.
func (in *Instance) retryVIPs() {
	if !in.vipRetryAt.IsZero() {
		return
	}
	wait := max(in.vipBackoff, vipRetry)
	in.vipRetryAt = in.clock.Now().Add(wait)
	in.vipBackoff = min(2*wait, vipRetryMax)
}

// reconcileVIPs retries what failed: a master adds the VIPs it lacks (and
// announces them), any other state removes those it still holds.
func (in *Instance) reconcileVIPs(now time.Time) {
	defer func() {
		if in.vipRetryAt.IsZero() {
			in.vipBackoff = 0 // all done: the next failure waits vipRetry again
		}
	}()
	if in.state == StateMaster && !in.stopping {
		in.removeUnwanted()
		missing := slices.ContainsFunc(in.cfg.VIPs, func(p netip.Prefix) bool { return !in.installed[p] })
		in.installVIPs()
		if missing {
			in.startBurst(now, in.cfg.GARP.Repeat)
		}
		return
	}
	if !in.stopping {
		in.releaseVIPs(now)
	}
}

// removeUnwanted removes the VIPs this router holds that are no longer
// configured, as a master does after a live change: the VIP dropped, or
// the same address with its old prefix length. One that cannot be removed
// stays installed and is retried until it is gone; forgetting it would
// leave it on the interface for good, held by this node and by whichever
// router is master.
func (in *Instance) removeUnwanted() {
	for p := range in.installed {
		if slices.Contains(in.cfg.VIPs, p) {
			continue
		}
		if err := in.io.addrs.DeleteVIP(in.io.ifindex, p); err != nil {
			in.fail("vip-delete", err)
			in.retryVIPs()
			continue
		}
		delete(in.installed, p)
	}
}

// vipGone takes note that a VIP this router installed was removed by
// someone else. A master puts it back at once and announces it.
func (in *Instance) vipGone(now time.Time, p netip.Prefix) {
	if !in.installed[p] {
		return
	}
	delete(in.installed, p)
	if !slices.Contains(in.cfg.VIPs, p) {
		return // no longer configured: its removal was due
	}
	in.fail("vip-removed", fmt.Errorf("VIP %s was removed from %s by another program", p, in.cfg.Interface))
	if in.state == StateMaster && !in.stopping {
		in.reconcileVIPs(now)
	}
}

// releaseVIPs removes the VIPs. One that cannot be removed is kept as
// installed and retried, so that a backup never keeps answering for it.
func (in *Instance) releaseVIPs(now time.Time) time.Duration {
	for p := range in.installed {
		if err := in.io.addrs.DeleteVIP(in.io.ifindex, p); err != nil {
			in.fail("vip-delete", err)
			in.retryVIPs()
			continue
		}
		delete(in.installed, p)
	}
	keep := map[netip.Addr]bool{}
	for p := range in.installed {
		keep[p.Addr()] = true
	}
	in.unblockAll(keep)
	return in.clock.Now().Sub(now)
}

// mustFilter reports Accept_Mode false for a router that is not the owner
// (the owner always accepts: RFC 9568 §6.4.3).
func (in *Instance) mustFilter() bool {
	return !in.cfg.Accept && in.cfg.Priority != PriorityOwner
}

func (in *Instance) blockVIP(a netip.Addr) bool {
	if in.blocked[a] {
		return true
	}
	if in.io.filter == nil {
		in.fail("filter", fmt.Errorf("accept mode off for %s, but no packet filter is available", a))
		return false
	}
	if err := in.io.filter.Block(a); err != nil {
		in.fail("filter", err)
		return false
	}
	in.blocked[a] = true
	return true
}

// unblockAll lets in packets to every filtered VIP not in keep.
func (in *Instance) unblockAll(keep map[netip.Addr]bool) {
	for a := range in.blocked {
		if keep[a] {
			continue
		}
		if err := in.io.filter.Unblock(a); err != nil {
			in.fail("filter", err)
		}
		delete(in.blocked, a)
	}
}

// syncFilter makes the filtered set match Accept_Mode for the installed
// VIPs, after a live change of accept or priority.
func (in *Instance) syncFilter() {
	keep := map[netip.Addr]bool{}
	if in.mustFilter() {
		for p := range in.installed {
			if in.blockVIP(p.Addr()) {
				keep[p.Addr()] = true
			}
		}
	}
	in.unblockAll(keep)
}

// startBurst queues n rounds of announcements, each one message per VIP,
// and sends what is due now.
// Bursts that overlap merge: the rounds left are the larger of the two,
// so repeated triggers cannot queue announcements without bound.
func (in *Instance) startBurst(now time.Time, n int) {
	if n <= 0 {
		return
	}
	if in.garp.rounds == 0 {
		in.garp.next = now
	}
	in.garp.rounds = max(in.garp.rounds, n)
	in.runBurst(now)
}

func (in *Instance) runBurst(now time.Time) {
	for in.garp.rounds > 0 && !now.Before(in.garp.next) {
		n, err := in.io.announce.Announce(in.cfg.vipAddrs())
		in.m.announced.WithLabelValues(in.cfg.Name).Add(float64(n))
		if err != nil {
			in.fail("announce", err)
		}
		in.garp.rounds--
		if in.cfg.GARP.Interval > 0 {
			in.garp.next = now.Add(in.cfg.GARP.Interval)
		}
	}
}

func (in *Instance) setState(now time.Time, to State, reason string, took time.Duration) {
	from := in.state
	in.state = to
	// A wait for queued adverts belongs to the timer of the state it
	// began in.
	in.wait = backlogWait{}
	in.since = now
	tr := Transition{At: now, From: from, To: to, Reason: reason, Took: Duration(took)}
	in.transitions = append(in.transitions, tr)
	if len(in.transitions) > maxTransitions {
		in.transitions = slices.Delete(in.transitions, 0, len(in.transitions)-maxTransitions)
	}
	in.m.state.WithLabelValues(in.labels()...).Set(float64(to))
	if from != to {
		in.m.transitions.WithLabelValues(in.cfg.Name, from.String(), to.String()).Inc()
	}
	in.log.Info("entering "+to.String()+" state", "from", from.String(), "reason", reason, "took", took)
	if in.onChange != nil && from != to {
		in.onChange(in.cfg.Name, tr)
	}
}

// logLimited logs msg at Info at most once per logEvery for key, within
// the budget shared by everything received (see logLimiter), and reports
// whether it did (with msg "" it only reports).
func (in *Instance) logLimited(now time.Time, key, msg string, args ...any) bool {
	return in.limited(now, slog.LevelInfo, key, msg, args...)
}

// debugLimited is logLimited at Debug; it costs nothing when Debug is off.
func (in *Instance) debugLimited(now time.Time, key, msg string, args ...any) {
	if in.log.Enabled(context.Background(), slog.LevelDebug) {
		in.limited(now, slog.LevelDebug, key, msg, args...)
	}
}

func (in *Instance) limited(now time.Time, level slog.Level, key, msg string, args ...any) bool {
	ok, suppressed := in.peerLog.allow(now, key)
	if suppressed > 0 {
		logSuppressed(in.log, suppressed)
	}
	if ok && msg != "" {
		in.log.Log(context.Background(), level, msg, args...)
	}
	return ok
}

// logSuppressed is the one line that stands for those a log budget
// refused in the window that ended.
func logSuppressed(log *slog.Logger, n int) {
	log.Warn("log lines about received packets suppressed: too many sources or kinds", "suppressed", n, "window", logEvery)
}

// fail records a failed operation: counted, kept for status, logged once
// per errorLogEvery while it repeats.
func (in *Instance) fail(op string, err error) {
	in.m.errors.WithLabelValues(in.cfg.Name, op).Inc()
	msg := op + ": " + err.Error()
	now := in.clock.Now()
	in.errs = append(in.errs, now.Format(time.RFC3339)+" "+msg)
	if len(in.errs) > maxErrors {
		in.errs = slices.Delete(in.errs, 0, len(in.errs)-maxErrors)
	}
	ok, suppressed := in.errLog.allow(now, msg)
	if suppressed > 0 {
		in.log.Warn("failure lines suppressed", "suppressed", suppressed, "window", errorLogEvery)
	}
	if ok {
		in.log.Warn("vrrp operation failed", "op", op, "err", err)
	}
}
