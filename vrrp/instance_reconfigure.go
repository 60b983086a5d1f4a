package vrrp

// A live change of an Instance's configuration.

import (
	"slices"
	"time"
)

// reconfigure takes a new configuration of the same router without
// restarting it.
func (in *Instance) reconfigure(now time.Time, cfg Config, links map[string]bool) {
	old := in.cfg
	in.cfg = cfg
	in.setLinks(links)
	if in.handoff.active || in.stopped {
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
			in.timers.adver = now.Add(cfg.Interval)
		}
		in.heard.prio = cfg.Priority
		if cfg.GARP.Refresh != old.GARP.Refresh {
			in.garp.refresh = time.Time{}
			if cfg.GARP.Refresh > 0 {
				in.garp.refresh = now.Add(cfg.GARP.Refresh)
			}
		}
	case StateBackup:
		if in.resuming() && (!slices.Equal(old.VIPs, cfg.VIPs) || old.Accept != cfg.Accept || old.Priority != cfg.Priority) {
			// Changed before it resumed: what it kept may no longer be
			// right (a VIP gone, the filter); it gives them up.
			in.abandonResume(now)
		}
		if cfg.Priority == PriorityOwner {
			in.becomeMaster(now, "priority raised to 255: address owner")
			return
		}
		if old.Priority != cfg.Priority && in.timers.masterDown.After(now) && in.heard.left.IsZero() && !in.heard.at.IsZero() {
			// Skew_Time depends on our priority. (After a priority 0
			// the timer is Skew_Time itself and stays.)
			in.timers.masterDown = in.heard.at.Add(in.masterDownInterval())
		}
	}
}

func (in *Instance) lastAdvertOr(t time.Time) time.Time {
	if in.heard.at.IsZero() {
		return t
	}
	return in.heard.at
}
