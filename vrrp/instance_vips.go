package vrrp

// The VIPs of an Instance: added as master, removed as backup, put back
// when someone else removes them, and, with accept off, filtered.

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// vipBook is what an instance holds of its VIPs.
type vipBook struct {
	installed map[netip.Prefix]bool // added by this instance
	blocked   map[netip.Addr]bool   // filtered for Accept_Mode false
	retryAt   time.Time             // an add or delete failed: try again then
	backoff   time.Duration         // wait before the next retry; 0: vipRetry
	// resumed: installed holds VIPs kept from before a restart while the
	// router, a backup, listens for a master (Instance.resume).
	resumed bool
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

// installVIPs adds the VIPs, first filtering them when the router must not
// accept packets sent to them.
func (in *Instance) installVIPs() {
	for _, p := range in.cfg.VIPs {
		if in.vips.installed[p] {
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
		in.vips.installed[p] = true
	}
}

// retryVIPs schedules reconcileVIPs after a failed add or delete: after
// vipRetry, then twice as long after each retry that fails again, up to
// vipRetryMax, so that a kernel that keeps refusing is not hammered and a
// transient failure is still mended at once.
func (in *Instance) retryVIPs() {
	if !in.vips.retryAt.IsZero() {
		return
	}
	wait := max(in.vips.backoff, vipRetry)
	in.vips.retryAt = in.clock.Now().Add(wait)
	in.vips.backoff = min(2*wait, vipRetryMax)
}

// reconcileVIPs retries what failed: a master adds the VIPs it lacks (and
// announces them), any other state removes those it still holds.
func (in *Instance) reconcileVIPs(now time.Time) {
	defer func() {
		if in.vips.retryAt.IsZero() {
			in.vips.backoff = 0 // all done: the next failure waits vipRetry again
		}
	}()
	if in.state == StateMaster && !in.handoff.active {
		in.removeUnwanted()
		missing := slices.ContainsFunc(in.cfg.VIPs, func(p netip.Prefix) bool { return !in.vips.installed[p] })
		in.installVIPs()
		if missing {
			in.startBurst(now, in.cfg.GARP.Repeat)
		}
		return
	}
	if !in.handoff.active && !in.resuming() {
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
	for p := range in.vips.installed {
		if slices.Contains(in.cfg.VIPs, p) {
			continue
		}
		if err := in.io.addrs.DeleteVIP(in.io.ifindex, p); err != nil {
			in.fail("vip-delete", err)
			in.retryVIPs()
			continue
		}
		delete(in.vips.installed, p)
	}
}

// vipGone takes note that a VIP this router installed was removed by
// someone else. A master puts it back at once and announces it.
func (in *Instance) vipGone(now time.Time, p netip.Prefix) {
	if !in.vips.installed[p] {
		return
	}
	delete(in.vips.installed, p)
	if !slices.Contains(in.cfg.VIPs, p) {
		return // no longer configured: its removal was due
	}
	in.fail("vip-removed", fmt.Errorf("VIP %s was removed from %s by another program", p, in.cfg.Interface))
	if in.state == StateMaster && !in.handoff.active {
		in.reconcileVIPs(now)
	}
}

// releaseVIPs removes the VIPs. One that cannot be removed is kept as
// installed and retried, so that a backup never keeps answering for it.
func (in *Instance) releaseVIPs(now time.Time) time.Duration {
	for p := range in.vips.installed {
		if err := in.io.addrs.DeleteVIP(in.io.ifindex, p); err != nil {
			in.fail("vip-delete", err)
			in.retryVIPs()
			continue
		}
		delete(in.vips.installed, p)
	}
	keep := map[netip.Addr]bool{}
	for p := range in.vips.installed {
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
	if in.vips.blocked[a] {
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
	in.vips.blocked[a] = true
	return true
}

// unblockAll lets in packets to every filtered VIP not in keep.
func (in *Instance) unblockAll(keep map[netip.Addr]bool) {
	for a := range in.vips.blocked {
		if keep[a] {
			continue
		}
		if err := in.io.filter.Unblock(a); err != nil {
			in.fail("filter", err)
		}
		delete(in.vips.blocked, a)
	}
}

// syncFilter makes the filtered set match Accept_Mode for the installed
// VIPs, after a live change of accept or priority.
func (in *Instance) syncFilter() {
	keep := map[netip.Addr]bool{}
	if in.mustFilter() {
		for p := range in.vips.installed {
			if in.blockVIP(p.Addr()) {
				keep[p.Addr()] = true
			}
		}
	}
	in.unblockAll(keep)
}
