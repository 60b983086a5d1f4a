package vrrp

// The links an Instance depends on (its interface and tracked ones) and
// its source address: FAULT while one is down or the source is missing.

import (
	"fmt"
	"net/netip"
	"slices"
	"time"
)

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
	if !slices.Contains(in.cfg.tracked(), name) || in.handoff.active {
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
	} else if in.vips.resumed {
		took = in.abandonResume(now) // kept from before a restart
	}
	in.clearTimers()
	if in.state == StateFault && in.fault == reason {
		return // a retry that failed the same way: not a new transition
	}
	in.fault = reason
	in.setState(now, StateFault, reason, took)
}
