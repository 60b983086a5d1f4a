package vrrp

import (
	"fmt"
	"log/slog"
	"net/netip"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keepvip/keepvip/test/framework/netnstest"
)

// Issue #10: setting a link down makes the kernel remove its IPv6
// addresses, the VIPs among them. keepvip must not blame "another
// program", must not put the VIPs back on the down link (nor announce
// them there), and must add them again, once each, when the link is up and
// the router master again. IPv4 VIPs, which the kernel keeps, are
// released by the Fault and come back the same way.
func TestLinkIssue10DownFlushIsTheKernels(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	va, _ := vethPair(t)
	mon := startAddrMonitor(t)
	logs := &lockedBuffer{}
	m := NewManager(Options{Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	defer m.Stop()
	v4 := testConfig("v4", "va", 30, "192.0.2.30/24", "198.51.100.30/24")
	v6 := testConfig("v6", "va", 31, "fe80::31/64", "2001:db8::31/64")
	if err := m.Sync([]Config{v4, v6}); err != nil {
		t.Fatal(err)
	}
	vips := append(append([]netip.Prefix{}, v4.VIPs...), v6.VIPs...)
	waitUp := func(what string) {
		t.Helper()
		waitState(t, m, "v4", StateMaster)
		waitState(t, m, "v6", StateMaster)
		for _, p := range vips {
			waitPrefixes(t, va.Index, p.Addr(), []netip.Prefix{p}, 5*time.Second, what+": VIP "+p.String())
		}
	}
	waitUp("master at start")
	mon.sync(t, va.Index)

	begin := mon.mark()
	logFrom := logs.Len()
	netnstest.Sh(t, "ip link set va down")
	waitState(t, m, "v4", StateFault)
	waitState(t, m, "v6", StateFault)
	// Down for longer than a failed VIP add waits before its retry
	// (vipRetry): a re-add on the down link would show.
	time.Sleep(vipRetry + 500*time.Millisecond)
	mon.sync(t, va.Index)
	up := mon.mark()
	netnstest.Sh(t, "ip link set va up")
	waitUp("after the link came up")
	mon.sync(t, va.Index)

	var problems []string
	mon.mu.Lock()
	all := slices.Clone(mon.events[begin.events:])
	mon.mu.Unlock()
	down, after := all[:up.events-begin.events], all[up.events-begin.events:]
	for _, p := range vips {
		for _, e := range down {
			if e.added && e.prefix == p {
				problems = append(problems, fmt.Sprintf("VIP %s added while the link was down (%s)", p, e))
			}
		}
		// Appearances after the link came up: the VIP was absent then.
		n, present := 0, false
		for _, e := range after {
			if e.prefix != p {
				continue
			}
			if e.added && !present {
				n++
			}
			present = e.added
		}
		if n != 1 {
			problems = append(problems, fmt.Sprintf("VIP %s appeared %d times after the link came up; want once", p, n))
		}
	}
	fault := map[string]time.Time{}
	for _, s := range m.Status() {
		for _, tr := range s.Transitions {
			if tr.To == StateFault {
				fault[s.Name] = tr.At
			}
		}
		for _, e := range s.Errors {
			// Send errors: see below, with their exact time.
			if !strings.Contains(e, " send: ") {
				problems = append(problems, fmt.Sprintf("instance %s reports: %s", s.Name, e))
			}
		}
	}
	log := logs.since(logFrom)
	// No VIP or announcement failure, and no failed advert once in Fault:
	// an advert due at the moment the link went down, before keepvip
	// heard of it, may fail (the kernel's notification delay).
	failed := regexp.MustCompile(`(?m)^time=(\S+) level=WARN msg="vrrp operation failed" instance=(\S+) .*op=(\S+).*$`)
	for _, f := range failed.FindAllStringSubmatch(log, -1) {
		at, err := time.Parse(time.RFC3339Nano, f[1])
		if f[3] == "send" && err == nil && !at.After(fault[f[2]]) {
			continue
		}
		problems = append(problems, "logged: "+f[0])
	}
	if len(problems) == 0 {
		return
	}
	var ev strings.Builder
	for _, e := range all {
		fmt.Fprintf(&ev, "\t%s\n", e)
	}
	t.Errorf("link down and up:\n  %s\naddress notifications from the link going down on (it came up after %d of them):\n%s`ip -ts monitor address` meanwhile:\n%s\nkeepvip's log meanwhile:\n%s",
		strings.Join(problems, "\n  "), up.events-begin.events, ev.String(), mon.ip.since(begin.ip), log)
}
