package vrrp

// The state machine of one virtual router, RFC 9568 §6.4: Initialize
// (start), Backup and Master, RFC 9568's Active (handleTimers,
// handlePacket), with the transitions becomeMaster, becomeBackup and
// shutdown. Its helpers live beside it: instance_io.go (what it talks to), instance_backlog.go (a
// stalled instance), instance_vips.go, instance_announce.go,
// instance_links.go, instance_reconfigure.go and instance_log.go.

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"time"

	"github.com/keepvip/keepvip/internal/clock"
)

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
	// sinceAdvert is what becomeMaster measured of the backup's silence,
	// for setState to record with the transition.
	sinceAdvert time.Duration
	// announcedEarly counts the announcements becomeMaster sent before
	// its transition is recorded.
	announcedEarly int
	fault          string
	local          netip.Addr // source of adverts; compared in equal-priority elections

	masterAdverInterval time.Duration
	timers              timers
	heard               heard   // the master as last heard (Backup)
	vips                vipBook // what this router holds of its VIPs
	garp                garpSchedule
	handoff             handoff // a stopping master handing its VIPs over
	linkUp              map[string]bool
	stopped             bool
	// inherited are this router's VIPs that an earlier keepvip left on the
	// interface (it was master when it died); start decides what becomes
	// of them.
	inherited []netip.Prefix
	// takeOver: the keepvip before this one on the host handed this
	// router over as master (Options.Inherit); it is master again at
	// once with the inherited VIPs (see resume).
	takeOver bool
	// leftMaster: it left as master (see leave), for Manager.Leave.
	leftMaster bool

	// wait is set while an expired timer waits for the adverts that were
	// queued when it expired (see onTimer).
	wait backlogWait

	stats stats
	logs  logs

	rx   chan received
	ctl  chan func()
	done chan struct{}
}

// timers are the instance's deadlines (RFC 9568 §6.1, and this
// implementation's own); the zero time is a timer that is not running.
type timers struct {
	masterDown time.Time // Master_Down_Timer (Backup)
	adver      time.Time // Adver_Timer (Master)
	preempt    time.Time // preemption allowed from then (preempt_delay)
	retry      time.Time // Fault without a source address: try again
	lastForced time.Time // last answer to a lower-priority master
}

// heard is what a backup knows of the master from its adverts.
type heard struct {
	master netip.Addr
	prio   uint8
	at     time.Time // the last advert
	left   time.Time // when the master sent priority 0
}

// handoff is a stopping master's way out: it keeps its VIPs until the new
// master is heard, or holdUntil at the latest.
type handoff struct {
	active    bool // shutdown requested while master
	to        netip.Addr
	holdUntil time.Time // VIPs given up then at the latest
	zeroAt    time.Time // priority 0 sent again then
}

// stats is what the instance reports in its Status.
type stats struct {
	sent, received uint64
	drops          dropCounts
	transitions    []Transition
	errs           []string
}

// logs bound the lines an instance writes.
type logs struct {
	peer *logLimiter // lines caused by received packets
	err  *logLimiter // failure lines
}

func newInstance(cfg Config, io instanceIO, clk clock.Clock, log *slog.Logger, m *Metrics, links map[string]bool) *Instance {
	in := &Instance{
		cfg:    cfg,
		io:     io,
		clock:  clk,
		log:    log.With("instance", cfg.Name, "vrid", cfg.VRID, "interface", cfg.Interface, "family", cfg.Family().String()),
		m:      m,
		linkUp: map[string]bool{},
		vips: vipBook{
			installed: map[netip.Prefix]bool{},
			blocked:   map[netip.Addr]bool{},
		},
		logs: logs{
			peer: io.peerLog,
			err:  newLogLimiter(errorLogEvery, errorLogBudget),
		},
		rx:   make(chan received, 256),
		ctl:  make(chan func()),
		done: make(chan struct{}),
	}
	if in.logs.peer == nil {
		in.logs.peer = newLogLimiter(logEvery, peerLogBudget)
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
		VIPsInstalled: len(in.vips.installed) > 0, Master: in.heard.master, MasterPriority: in.heard.prio,
		AdvertInterval: Duration(in.cfg.Interval), MasterAdvertInterval: Duration(in.masterAdverInterval),
		MasterDownInterval: Duration(in.masterDownInterval()), Preempt: in.cfg.Preempt,
		LastAdvert: in.heard.at, AdvertsSent: in.stats.sent, AdvertsReceived: in.stats.received,
		Transitions: slices.Clone(in.stats.transitions), Errors: slices.Clone(in.stats.errs),
	}
	s.Drops = in.stats.drops.snapshot()
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
	return in.cfg.Preempt && !now.Before(in.timers.preempt)
}

// start is the Startup event in Initialize (RFC 9568 §6.4.1), also taken
// when a Fault clears.
func (in *Instance) start(now time.Time) {
	in.timers.retry = time.Time{}
	if len(in.inherited) > 0 {
		// Held already, and this process's (the Manager adopted them):
		// whatever follows — resume, Fault, the owner's takeover — has
		// them to keep or to release.
		for _, p := range in.inherited {
			in.vips.installed[p] = true
		}
		in.inherited = nil
		in.vips.resumed = true
	}
	if down := in.downLink(); down != "" {
		in.enterFault(now, "link "+down+" is down")
		return
	}
	local, err := in.resolveSource()
	if err != nil {
		in.enterFault(now, err.Error())
		in.timers.retry = now.Add(sourceRetry)
		return
	}
	in.local = local
	in.fault = ""
	in.heard.at, in.heard.left = time.Time{}, time.Time{}
	if in.cfg.Priority == PriorityOwner {
		in.becomeMaster(now, "priority 255: address owner")
		return
	}
	if in.resume(now) {
		return
	}
	in.warmUp()
	// (150)-(160): Master_Adver_Interval = Advertisement_Interval,
	// Master_Down_Timer = Master_Down_Interval.
	in.masterAdverInterval = in.cfg.Interval
	in.timers.masterDown = now.Add(in.masterDownInterval())
	in.timers.preempt = now.Add(in.cfg.PreemptDelay)
	in.heard.master, in.heard.prio = netip.Addr{}, 0
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

func (in *Instance) clearTimers() {
	// vips.retryAt stays: a VIP that could not be removed on the way into
	// Fault must still be retried there.
	in.timers.masterDown, in.timers.adver, in.handoff.holdUntil, in.timers.retry, in.handoff.zeroAt = time.Time{}, time.Time{}, time.Time{}, time.Time{}, time.Time{}
	in.garp = garpSchedule{}
}

// becomeMaster is (110)-(140) and (250)-(280): advertise, take the VIPs,
// announce them.
func (in *Instance) becomeMaster(now time.Time, reason string) {
	in.timers.masterDown, in.heard.left = time.Time{}, time.Time{}
	in.announcedEarly = 0 // what a backup announced belongs to no mastership
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
	in.timers.adver = now.Add(in.cfg.Interval)
	in.heard.master, in.heard.prio = in.local, in.cfg.Priority
	in.masterAdverInterval = in.cfg.Interval
	took := in.clock.Now().Sub(now)
	in.m.takeover.WithLabelValues(in.cfg.Name).Observe(took.Seconds())
	if in.state == StateBackup {
		quiet := now.Sub(in.lastAdvertOr(in.since))
		in.sinceAdvert = quiet
		in.m.failover.WithLabelValues(in.cfg.Name).Observe((quiet + took).Seconds())
	}
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
	in.timers.adver = time.Time{}
	in.garp = garpSchedule{}
	// Master_Down_Timer runs from now, not from when the advert came: a
	// master that yields to an advert that waited in its socket gives
	// the new master a whole Master_Down_Interval to be heard.
	in.follow(now, p, adv)
	took := in.releaseVIPs(now)
	in.setState(now, StateBackup, reason, took)
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
	in.timers.masterDown = now.Add(in.masterDownInterval())
	in.heard.master, in.heard.prio, in.heard.at = p.Src, adv.Priority, now
	in.heard.left = time.Time{}
}

// shutdown is the Shutdown event: a master sends priority 0 (RFC 9568
// §6.4.3 (610)-(640)) and gives up its VIPs, after the handoff if
// HandoffHold is set.
func (in *Instance) shutdown(now time.Time) {
	if in.state == StateMaster && in.io.leaving != nil && in.io.leaving() {
		in.leave(now)
		return
	}
	if in.state != StateMaster {
		took := in.abandonResume(now) // a backup still holding what it resumed with
		in.clearTimers()
		in.setState(now, StateInit, "shutdown", took)
		in.stopped = true
		return
	}
	in.sendAdvert(PriorityStop)
	in.timers.adver = time.Time{}
	in.garp = garpSchedule{}
	if in.cfg.HandoffHold {
		in.handoff.active = true
		in.handoff.holdUntil = now.Add(min(2*in.cfg.Interval, maxHold))
		in.handoff.zeroAt = in.nextZero(now)
		in.log.Info("shutting down: sent priority 0, holding VIPs until a new master advertises", "hold", in.handoff.holdUntil.Sub(now))
		return
	}
	in.finishStop(now, "shutdown")
}

// leave is the Shutdown event when another keepvip takes over on this
// host (Manager.Leave): to the other routers, nothing happens. A master
// sends one last advert at its own priority, which starts their
// Master_Down_Timer again and gives the successor a whole
// Master_Down_Interval to be heard, and keeps its VIPs (and their
// filters) for it; the successor is master again with them at once (see
// resume). Backups stop as usual: one still listening with the VIPs it
// restarted with gives them up (abandonResume), as they are not known to
// be its own.
func (in *Instance) leave(now time.Time) {
	in.sendAdvert(in.cfg.Priority)
	in.leftMaster = true
	in.garp = garpSchedule{}
	in.clearTimers()
	clear(in.vips.installed)
	clear(in.vips.blocked)
	in.setState(now, StateInit, "left to the keepvip taking over on this host, VIPs in place", 0)
	in.stopped = true
}

// resume decides what becomes of the VIPs an earlier keepvip left (it was
// master when it died, and nothing since has removed them) and reports
// whether the instance starts from them. The usual start — Backup, the VIPs
// removed — would leave nobody holding them until the backups'
// Master_Down_Interval ran out; the other routers may not even have
// noticed the restart. So it keeps them and listens, as a backup, for one
// Advertisement_Interval and its Skew_Time (resumeWait): a master elected
// meanwhile advertises within that, and the election goes on as the RFC
// says — a better master, or any master when preemption is off, is
// followed and the VIPs go; a worse one is preempted at once when
// preemption is on. If no master is heard, this router still is the
// master as far as the others know (their Master_Down_Interval is three
// intervals): it resumes, its VIPs never having left.
func (in *Instance) resume(now time.Time) bool {
	if !in.vips.resumed {
		return false
	}
	var vips []netip.Prefix
	for p := range in.vips.installed {
		// With Accept_Mode off they are filtered as a master's are; one
		// that cannot be goes (a VIP is never held unfiltered).
		if in.mustFilter() && !in.blockVIP(p.Addr()) {
			if err := in.io.addrs.DeleteVIP(in.io.ifindex, p); err != nil {
				in.fail("vip-delete", err)
				in.retryVIPs()
				continue
			}
			delete(in.vips.installed, p)
			continue
		}
		vips = append(vips, p)
	}
	slices.SortFunc(vips, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	if in.takeOver {
		// Handed over by the keepvip before this one on the host, which
		// was master until a moment ago and sent a last advert as it
		// left: the others still follow this router.
		in.takeOver = false
		in.log.Info("taking over from the keepvip before this one on the host: master with its VIPs in place", "vips", vips)
		in.becomeMaster(now, "took over from the keepvip before this one on the host, VIPs in place")
		return true
	}
	in.masterAdverInterval = in.cfg.Interval
	in.timers.masterDown = now.Add(in.resumeWait())
	in.timers.preempt = now.Add(in.cfg.PreemptDelay)
	in.heard.master, in.heard.prio = netip.Addr{}, 0
	in.log.Info("restarted with its VIPs in place: keeping them, listening for a master", "vips", vips, "for", in.resumeWait())
	in.setState(now, StateBackup, "restarted holding its VIPs: listening for a master", 0)
	return true
}

// resumeWait is how long a router that restarted holding its VIPs listens
// for a master before it resumes (see resume).
func (in *Instance) resumeWait() time.Duration { return in.cfg.Interval + in.skew() }

// resuming reports whether the router is a backup that restarted holding
// its VIPs and has not heard a master yet.
func (in *Instance) resuming() bool { return in.state == StateBackup && in.vips.resumed }

// abandonResume gives up the VIPs a restarted router kept (it stops, its
// link fails, its configuration changed before it resumed). The others
// may still take it for their master, waiting out a Master_Down_Interval
// from its last advert before it died: priority 0 tells them to take over
// now.
func (in *Instance) abandonResume(now time.Time) time.Duration {
	if !in.vips.resumed {
		return 0
	}
	in.vips.resumed = false
	if !in.heard.master.IsValid() && in.local.IsValid() && in.linkUp[in.cfg.Interface] {
		in.sendAdvert(PriorityStop)
	}
	return in.releaseVIPs(now)
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
	if !next.Before(in.handoff.holdUntil) {
		return time.Time{}
	}
	return next
}

func (in *Instance) finishStop(now time.Time, reason string) {
	took := in.releaseVIPs(now)
	in.clearTimers()
	in.setState(now, StateInit, reason, took)
	in.handoff.active = false
	in.stopped = true
}

// handleTimers fires every timer that is due at now.
func (in *Instance) handleTimers(now time.Time) {
	due := func(t time.Time) bool { return !t.IsZero() && !now.Before(t) }
	if due(in.vips.retryAt) {
		in.vips.retryAt = time.Time{}
		in.reconcileVIPs(now)
	}
	switch in.state {
	case StateBackup:
		if due(in.timers.masterDown) {
			reason := fmt.Sprintf("no advert for %v (Master_Down_Interval %v)", now.Sub(in.lastAdvertOr(in.since)).Round(time.Millisecond), in.masterDownInterval())
			if !in.heard.left.IsZero() {
				reason = fmt.Sprintf("master %s sent priority 0 (Skew_Time %v)", in.heard.master, in.skew())
			}
			if in.resuming() && !in.heard.master.IsValid() {
				reason = fmt.Sprintf("restarted holding its VIPs, and no master within %v: resumed", in.resumeWait())
			}
			in.becomeMaster(now, reason)
		}
	case StateMaster:
		if in.handoff.active {
			if due(in.handoff.holdUntil) {
				reason := "shutdown: no new master within the hold time"
				if in.handoff.to.IsValid() {
					reason = fmt.Sprintf("shutdown: handed off to %s", in.handoff.to)
				}
				in.finishStop(now, reason)
				return
			}
			if due(in.handoff.zeroAt) {
				in.handoff.zeroAt = time.Time{}
				if !in.handoff.to.IsValid() {
					in.sendAdvert(PriorityStop)
					in.handoff.zeroAt = in.nextZero(now)
				}
			}
			return
		}
		if due(in.timers.adver) {
			in.sendAdvert(in.cfg.Priority)
			// Keep the cadence unless we fell behind by a whole interval.
			next := in.timers.adver.Add(in.cfg.Interval)
			if !next.After(now) {
				next = now.Add(in.cfg.Interval)
			}
			in.timers.adver = next
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
		if due(in.timers.retry) {
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
		awaited(in.timers.masterDown)
	case StateMaster:
		if in.handoff.active {
			awaited(in.handoff.holdUntil)
			awaited(in.handoff.zeroAt)
			break
		}
		consider(in.timers.adver)
		consider(in.garp.second)
		consider(in.garp.refresh)
		if in.garp.rounds > 0 {
			consider(in.garp.next)
		}
	case StateFault:
		consider(in.timers.retry)
	}
	consider(in.vips.retryAt)
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
	case in.cfg.Priority == PriorityOwner && !in.handoff.active:
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
	in.stats.received++
	in.m.received.WithLabelValues(in.cfg.Name).Inc()
	in.checkAddresses(p, adv)

	if in.handoff.active {
		if adv.Priority != PriorityStop && !in.handoff.to.IsValid() {
			in.handoff.to = p.Src
			in.handoff.zeroAt = time.Time{}
			if grace := now.Add(handoffGrace); grace.Before(in.handoff.holdUntil) {
				in.handoff.holdUntil = grace
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
			if at := came.Add(in.skew()); in.heard.left.IsZero() || at.Before(in.timers.masterDown) {
				in.timers.masterDown = at
			}
			if in.heard.left.IsZero() {
				in.heard.left = came
			}
			in.logLimited(now, "prio0:"+p.Src.String(), "master sent priority 0, taking over after skew time", "master", p.Src, "skew", in.skew())
			return
		}
		// Preemption is judged as of when the advert came, but not
		// before the instance could act on it: an advert that waited in
		// the socket while the instance started (a restarted master
		// hearing the backup that took over) finds preemption allowed
		// from the start, not held because the advert was older.
		judged := came
		if judged.Before(in.since) {
			judged = in.since
		}
		if !in.preemptAllowed(judged) || adv.Priority >= in.cfg.Priority {
			in.follow(came, p, adv)
			if in.resuming() {
				// Restarted holding its VIPs, it heard a master it
				// does not preempt: the VIPs are that master's.
				in.vips.resumed = false
				in.releaseVIPs(now)
				in.log.Info("restarted holding its VIPs: another router is master, VIPs released", "master", p.Src, "priority", adv.Priority)
			}
			return
		}
		if in.resuming() {
			// A worse master was elected while it was down: preempt it
			// now, with the VIPs it never gave up.
			in.becomeMaster(now, fmt.Sprintf("restarted holding its VIPs: preempting %s (priority %d, ours %d)", p.Src, adv.Priority, in.cfg.Priority))
			return
		}
		// (470) a lower-priority master: discard and let
		// Master_Down_Timer run out, which preempts it.
		in.debugLimited(now, "lower-backup:"+p.Src.String(), "received lower priority advert, discarding", "from", p.Src, "priority", adv.Priority)
	case StateMaster:
		if adv.Priority == PriorityStop {
			// (705)-(715) another master is leaving: assert ourselves.
			in.sendAdvert(in.cfg.Priority)
			in.timers.adver = now.Add(in.cfg.Interval)
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
		if in.cfg.LowerPriorityAdvert && (in.timers.lastForced.IsZero() || now.Sub(in.timers.lastForced) >= in.cfg.Interval) {
			in.timers.lastForced = now
			in.logLimited(now, "lower:"+p.Src.String(), "received advert from a lower-priority master, forcing a new election", "from", p.Src, "priority", adv.Priority)
			in.sendAdvert(in.cfg.Priority)
			in.timers.adver = now.Add(in.cfg.Interval)
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
		in.stats.sent++
		in.m.sent.WithLabelValues(in.cfg.Name).Inc()
	}
}

func (in *Instance) setState(now time.Time, to State, reason string, took time.Duration) {
	if to != StateBackup {
		in.vips.resumed = false
	}
	from := in.state
	in.state = to
	// A wait for queued adverts belongs to the timer of the state it
	// began in.
	in.wait = backlogWait{}
	in.since = now
	tr := Transition{At: now, From: from, To: to, Reason: reason, Took: Duration(took), SinceAdvert: Duration(in.sinceAdvert)}
	if to == StateMaster {
		tr.Announced = in.announcedEarly
	}
	in.sinceAdvert, in.announcedEarly = 0, 0
	in.stats.transitions = append(in.stats.transitions, tr)
	if len(in.stats.transitions) > maxTransitions {
		in.stats.transitions = slices.Delete(in.stats.transitions, 0, len(in.stats.transitions)-maxTransitions)
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
