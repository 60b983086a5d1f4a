package lab

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

// These tests need no privileges.

func TestRenderKeepalivedConfig(t *testing.T) {
	conf, err := RenderKeepalivedConfig([]KeepalivedInstance{
		{Name: "VI4", Interface: "eth0", VRID: 51, Priority: 150, AdvertInterval: 100 * time.Millisecond,
			VIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.100/24")}, NoPreempt: true,
			UnicastSrc:   netip.MustParseAddr("192.0.2.1"),
			UnicastPeers: []netip.Addr{netip.MustParseAddr("192.0.2.2")}},
		{Name: "VI2", Interface: "eth0", VRID: 53, Priority: 100, Version: 2,
			VIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.101/24")}, Extra: []string{"garp_master_delay 0"}},
	}, "/tmp/x.fifo")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"vrrp_version 3", "vrrp_notify_fifo /tmp/x.fifo", "vrrp_instance VI4 {", "advert_int 0.1",
		"nopreempt", "unicast_src_ip 192.0.2.1", "unicast_peer {\n        192.0.2.2\n    }",
		"192.0.2.100/24", "advert_int 1\n", "version 2", "garp_master_delay 0",
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("config lacks %q:\n%s", want, conf)
		}
	}
	if strings.Contains(conf, "vrrp_strict") {
		t.Error("config has vrrp_strict")
	}
	for _, bad := range [][]KeepalivedInstance{
		nil,
		{{Name: "X", Interface: "eth0", VRID: 1, Priority: 1, AdvertInterval: 15 * time.Millisecond,
			VIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.1/24")}}},
		{{Name: "X", Interface: "eth0", VRID: 1, Priority: 1}},
		{{Name: "has space", Interface: "eth0", VRID: 1, Priority: 1,
			VIPs: []netip.Prefix{netip.MustParsePrefix("192.0.2.1/24")}}},
	} {
		if _, err := RenderKeepalivedConfig(bad, ""); err == nil {
			t.Errorf("RenderKeepalivedConfig(%+v) succeeded", bad)
		}
	}
}

func TestParseAdvert(t *testing.T) {
	// keepalived's VRRPv3 advert (reference vector K1): vrid 51, prio 100,
	// 1 s, VIPs 192.0.2.100 and .101.
	b := []byte{0x31, 0x33, 0x64, 0x02, 0x00, 0x64, 0x43, 0x07, 192, 0, 2, 100, 192, 0, 2, 101}
	a, err := ParseAdvert(b, false)
	if err != nil {
		t.Fatal(err)
	}
	if a.Version != 3 || a.Type != 1 || a.VRID != 51 || a.Priority != 100 || a.Interval != time.Second ||
		len(a.Addrs) != 2 || a.Addrs[1] != netip.MustParseAddr("192.0.2.101") {
		t.Errorf("ParseAdvert = %+v", a)
	}
	if _, err := ParseAdvert(b[:12], false); err == nil {
		t.Error("truncated advert parsed")
	}
	v6 := append([]byte{0x31, 52, 200, 1, 0x00, 0x0a, 0, 0}, netip.MustParseAddr("fe80::52").AsSlice()...)
	a, err = ParseAdvert(v6, true)
	if err != nil {
		t.Fatal(err)
	}
	if a.Interval != 100*time.Millisecond || a.Addrs[0] != netip.MustParseAddr("fe80::52") {
		t.Errorf("ParseAdvert v6 = %+v", a)
	}
}

// fakeProber builds a prober with probes every 1 ms; answered[i] tells
// whether probe i was answered (after 100 µs).
func fakeProber(answered string) *Prober {
	p := &Prober{start: time.Now(), interval: time.Millisecond}
	for i, c := range answered {
		sent := time.Duration(i+1) * time.Millisecond
		p.sent = append(p.sent, sent)
		if c == '1' {
			p.reply = append(p.reply, sent+100*time.Microsecond)
		} else {
			p.reply = append(p.reply, 0)
		}
	}
	return p
}

func TestProberOutage(t *testing.T) {
	//                  0123456789
	p := fakeProber("1110000110")
	at := func(ms float64) time.Time { return p.start.Add(time.Duration(ms * float64(time.Millisecond))) }
	// The event happens at 3.5 ms, between probe 2 (sent at 3 ms) and
	// probe 3 (4 ms); probe 7 (8 ms) is the first answered after it.
	info, err := p.OutageDetail(at(3.5))
	if err != nil {
		t.Fatal(err)
	}
	if info.Recovered.Seq != 7 || info.ToSend != 4500*time.Microsecond ||
		info.ToReply != 4600*time.Microsecond || info.Lost != 4 || info.LastBefore.Seq != 2 {
		t.Errorf("OutageDetail = %+v", info)
	}
	if d, _ := p.Outage(at(3.5)); d != 4500*time.Microsecond {
		t.Errorf("Outage = %v", d)
	}
	// An event at a probe's send time counts that probe.
	if pr, ok := p.FirstReplyAfter(at(8)); !ok || pr.Seq != 7 {
		t.Errorf("FirstReplyAfter(8ms) = %+v, %v", pr, ok)
	}
	if _, err := p.Outage(at(9.5)); err == nil {
		t.Error("Outage with no later reply succeeded")
	}
	g, ok := p.LongestGap(time.Time{}, time.Time{})
	if !ok || g.FirstLost.Seq != 3 || g.Recovered.Seq != 7 || g.Lost != 4 || g.Duration != 4*time.Millisecond || g.Open {
		t.Errorf("LongestGap = %+v, %v", g, ok)
	}
	if _, ok := p.LongestGap(at(1), at(3)); ok {
		t.Error("LongestGap found a gap among answered probes")
	}
	g, ok = p.LongestGap(at(9), time.Time{})
	if !ok || !g.Open || g.Lost != 1 {
		t.Errorf("trailing LongestGap = %+v, %v", g, ok)
	}
}
