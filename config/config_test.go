package config

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"sigs.k8s.io/yaml"

	"github.com/keepvip/keepvip/healthcheck"
	"github.com/keepvip/keepvip/internal/balancer"
	"github.com/keepvip/keepvip/lvs"
	"github.com/keepvip/keepvip/vrrp"
)

func TestParseFullExample(t *testing.T) {
	data, err := os.ReadFile("testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse(data)
	if err != nil {
		t.Fatalf("Parse(testdata/full.yaml): %v", err)
	}
	got := c.Desired().VRRP
	want0 := vrrp.DefaultConfig()
	want0.Name = "web"
	want0.Interface = "eth0"
	want0.VRID = 51
	want0.Priority = 150
	want0.Interval = 100 * time.Millisecond
	want0.PreemptDelay = 30 * time.Second
	want0.VIPs = []netip.Prefix{netip.MustParsePrefix("192.0.2.100/24"), netip.MustParsePrefix("192.0.2.101/32")}
	want0.Track = []string{"eth1"}
	want0.GARP.Delay = 2 * time.Second
	want0.GARP.Refresh = time.Minute

	want1 := vrrp.DefaultConfig()
	want1.Name = "eth0-52-v6"
	want1.Interface = "eth0"
	want1.VRID = 52
	want1.Preempt = false
	want1.VIPs = []netip.Prefix{netip.MustParsePrefix("fe80::52/64"), netip.MustParsePrefix("2001:db8::100/64")}

	want2 := vrrp.DefaultConfig()
	want2.Name = "uni"
	want2.Interface = "eth0"
	want2.VRID = 71
	want2.Interval = 500 * time.Millisecond
	want2.Source = netip.MustParseAddr("192.0.2.1")
	want2.Peers = []netip.Addr{netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")}
	want2.VIPs = []netip.Prefix{netip.MustParsePrefix("192.0.2.171/32")}
	want2.Checksum = vrrp.ChecksumMessageOnly
	want2.LowerPriorityAdvert = false
	want2.HandoffHold = false

	want3 := vrrp.DefaultConfig()
	want3.Name = "legacy"
	want3.Interface = "eth0"
	want3.VRID = 61
	want3.Version = 2
	want3.Interval = 2 * time.Second
	want3.AuthPassword = "secret12"
	want3.VIPs = []netip.Prefix{netip.MustParsePrefix("192.0.2.161/32")}

	opt := cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})
	if diff := cmp.Diff([]vrrp.Config{want0, want1, want2, want3}, got, opt); diff != "" {
		t.Errorf("Parse(full.yaml).Desired().VRRP mismatch (-want +got):\n%s", diff)
	}

	web := healthcheck.Check{Kind: healthcheck.HTTP, Interval: 2 * time.Second, Timeout: time.Second, Retries: 2,
		DelayBeforeRetry: 500 * time.Millisecond, Rise: 2, Fall: 3, Path: "/healthz", Status: 200}
	fw := healthcheck.DefaultCheck()
	wantLB := []balancer.Service{
		{Name: "web", Service: lvs.Service{Key: lvs.Key{Addr: netip.MustParseAddr("192.0.2.100"), Port: 80, Proto: lvs.TCP}, Scheduler: "wlc",
			Reals: []lvs.RealServer{
				{Addr: netip.MustParseAddr("10.0.0.1"), Port: 8080, Forward: lvs.NAT, Weight: 3},
				{Addr: netip.MustParseAddr("10.0.0.2"), Port: 8080, Forward: lvs.NAT, Weight: 1, Upper: 1000, Lower: 800},
			}}, Check: &web, OnUnhealthy: balancer.Drain},
		{Name: "192.0.2.101:53/udp", Service: lvs.Service{Key: lvs.Key{Addr: netip.MustParseAddr("192.0.2.101"), Port: 53, Proto: lvs.UDP}, Scheduler: "sh",
			Flags: lvs.FlagFallback | lvs.FlagPort, Persistence: 300 * time.Second, PersistenceMask: 24,
			Reals: []lvs.RealServer{
				{Addr: netip.MustParseAddr("192.0.2.21"), Port: 53, Forward: lvs.DR, Weight: 1},
				{Addr: netip.MustParseAddr("192.0.2.22"), Port: 53, Forward: lvs.DR, Weight: 1},
			}}},
		{Name: "fwmark 7 (ipv4)", Service: lvs.Service{Key: lvs.Key{Addr: netip.IPv4Unspecified(), FWMark: 7}, Scheduler: "mh",
			Reals: []lvs.RealServer{{Addr: netip.MustParseAddr("10.0.0.3"), Forward: lvs.TUN, Weight: 1}}},
			Check: &fw, CheckPort: 443, OnUnhealthy: balancer.Remove},
	}
	if diff := cmp.Diff(wantLB, c.Desired().VirtualServers, opt); diff != "" {
		t.Errorf("Parse(full.yaml).Desired().VirtualServers mismatch (-want +got):\n%s", diff)
	}
	if !c.Desired().IPVSRequired || *c.Desired().Kernel.ConnReuseMode != 0 || c.Desired().Kernel.Conntrack != nil || !*c.Desired().Kernel.ExpireNodestConn {
		t.Errorf("kernel settings = %+v", c.Desired().Kernel)
	}
}

func TestParseVirtualServerErrors(t *testing.T) {
	base := "virtualServers:\n- vip: 192.0.2.1\n  port: 80\n  realServers: [{address: 10.0.0.1}]\n"
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"good", base, nil},
		{"vip not an IP", "virtualServers:\n- {vip: www, port: 80, realServers: []}\n", []string{`virtualServers[0].vip: "www" is not an IP address`}},
		{"port 0", "virtualServers:\n- {vip: 192.0.2.1, realServers: []}\n", []string{"virtualServers[0].port: 0 is outside 1-65535"}},
		{"unknown scheduler", base + "  scheduler: fastest\n", []string{`virtualServers[0].scheduler: "fastest" is not an IPVS scheduler`}},
		{"weight", "virtualServers:\n- {vip: 192.0.2.1, port: 80, realServers: [{address: 10.0.0.1, weight: 70000}]}\n", []string{"virtualServers[0].realServers[0].weight: 70000 is outside 0-65535"}},
		{"dr port remap", "virtualServers:\n- {vip: 192.0.2.1, port: 80, forwarding: dr, realServers: [{address: 10.0.0.1, port: 8080}]}\n", []string{"virtualServers[0].realServers[0].port: 8080: dr forwarding cannot change the port"}},
		{"udp checked on its own port", "virtualServers:\n- {vip: 192.0.2.1, port: 53, protocol: udp, healthCheck: {type: tcp}, realServers: [{address: 10.0.0.1}]}\n", []string{"virtualServers[0].healthCheck.type: a udp service cannot be checked with tcp on its own port"}},
		{"bad check", base + "  healthCheck: {type: ping}\n", []string{`virtualServers[0].healthCheck.type: "ping" is not a health check (tcp or http), or none`}},
		{"short interval clamps the defaults", base + "  healthCheck: {interval: 500ms}\n", nil},
		{"bad interval", base + "  healthCheck: {interval: 10ms}\n", []string{"virtualServers[0].healthCheck.interval: 10ms is outside 100ms-1h"}},
		{"twice", base + "- {vip: 192.0.2.1, port: 80, realServers: []}\n", []string{"virtualServers[1]: 192.0.2.1:80/tcp is also virtualServers[0]"}},
		{"bad netmask", base + "  persistence: {timeout: 60s, netmask: 255.0.255.0}\n", []string{`virtualServers[0].persistence.netmask: "255.0.255.0" is not a contiguous mask`}},
		{"flags on rr", base + "  scheduler: rr\n  schedulerFlags: [port]\n", []string{"virtualServers[0].schedulerFlags: only sh and mh take flags"}},
		{"bad unhealthy", base + "  unhealthy: reboot\n", []string{`virtualServers[0].unhealthy: "reboot": want drain or remove`}},
		{"bad kernel", "kernel: {ipvs: maybe, connReuseMode: 7}\n", []string{`kernel.ipvs: "maybe": want required or optional`, "kernel.connReuseMode: 7: want 0, 1 or 2"}},
		// The nftables drop of accept: false runs before IPVS.
		{"served VIP without accept", "instances: [{interface: eth0, vrid: 1, accept: false, vips: [192.0.2.1/24]}]\n" + base, []string{"virtualServers[0].vip: 192.0.2.1 is a VIP of instances[0], which has accept: false"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml))
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Parse = %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse accepted %q", tt.yaml)
			}
			got := splitErrors(err)
			if len(got) != len(tt.want) {
				t.Fatalf("errors %q; want %q", got, tt.want)
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tt.want[i]) {
					t.Errorf("error %d = %q; want prefix %q", i, got[i], tt.want[i])
				}
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	base := "instances:\n- interface: eth0\n  vrid: 51\n  vips: [192.0.2.100]\n"
	tests := []struct {
		name string
		yaml string
		want []string // every message, in order
	}{
		{"not yaml", "instances: [", []string{"cannot read the configuration"}},
		// Problems found by decoding name their full path, list indices
		// included, and every one is reported.
		{"unknown field", base + "  prio: 100\n", []string{`instances[0].prio: unknown field`}},
		{"wrong type", "instances:\n- interface: eth0\n  vrid: one\n", []string{`instances[0].vrid: got the string "one", want an integer`}},
		{"every decoding problem, with indices", base + "- {interface: eth0, vrid: two, bogus: 1, vips: 192.0.2.2}\nbogus2: x\n", []string{
			"bogus2: unknown field",
			"instances[1].bogus: unknown field",
			`instances[1].vips: got the string "192.0.2.2", want a list`,
			`instances[1].vrid: got the string "two", want an integer`}},
		{"deep unknown field", "virtualServers:\n- {vip: 192.0.2.1, port: 80, realServers: [{address: 10.0.0.1}, {address: 10.0.0.2, wieght: 2}]}\n", []string{
			"virtualServers[0].realServers[1].wieght: unknown field"}},
		{"deep wrong type", "routing:\n  bgp: {asn: 65001, routerID: 192.0.2.1, peers: [{address: 192.0.2.254, asn: -1}]}\n", []string{
			"routing.bgp.peers[0].asn: got the number -1, want a non-negative integer"}},
		{"mapping for a list item", base + "  unicastPeers: [192.0.2.2, {a: b}]\n", []string{
			"instances[0].unicastPeers[1]: got a mapping, want a string"}},
		{"integer out of range", "routing:\n  bgp: {asn: 65001, routerID: 192.0.2.1, peers: [{address: 192.0.2.254, asn: 4294967296}]}\n", []string{
			"routing.bgp.peers[0].asn: 4294967296 is out of range"}},
		{"key given twice", base + "  vrid: 52\n", []string{"instances[0].vrid: given twice (lines 3 and 5)"}},
		// NaN and the infinities are no durations: they used to come out
		// as a huge negative one.
		{"interval .nan", base + "  advertInterval: .nan\n", []string{"instances[0].advertInterval: .nan (line 5) is not a finite number"}},
		{"interval .inf and -.Inf", base + "  advertInterval: .inf\n  preemptDelay: -.Inf\n", []string{
			"instances[0].advertInterval: .inf (line 5) is not a finite number",
			"instances[0].preemptDelay: -.Inf (line 6) is not a finite number"}},
		{"interval NaN", base + "  advertInterval: NaN\n", []string{`instances[0].advertInterval: "NaN" is not a number of seconds`}},
		{"interval 'Inf'", base + "  advertInterval: '+Inf'\n", []string{`instances[0].advertInterval: "+Inf" seconds is beyond any duration`}},
		{"interval 1e300", base + "  advertInterval: 1e300\n", []string{`instances[0].advertInterval: "1e+300" seconds is beyond any duration`}},
		{"garp delay NaN", base + "  garp: {masterDelay: nan}\n", []string{`instances[0].garp.masterDelay: "nan" is not a number of seconds`}},
		{"missing interface and vrid", "instances:\n- vips: [192.0.2.1]\n", []string{
			"instances[0].interface: is required", "instances[0].vrid: 0 is outside 1-255"}},
		{"priority out of range", base + "  priority: 300\n", []string{"instances[0].priority: 300 is outside 1-255"}},
		{"priority 0", base + "  priority: 0\n", []string{"instances[0].priority: 0 is outside 1-255"}},
		{"bad VIP", "instances:\n- interface: eth0\n  vrid: 1\n  vips: [192.0.2.1, 10.0.0.300/24, fe80::1]\n", []string{
			`instances[0].vips[1]: "10.0.0.300/24" is not an IP address with a prefix length`}},
		{"mixed families", "instances:\n- interface: eth0\n  vrid: 1\n  vips: [192.0.2.1, fe80::1]\n", []string{
			"instances[0].vips[1]: fe80::1/128 is ipv6 while vips[0] is ipv4; use one instance per address family"}},
		{"no VIPs", "instances:\n- interface: eth0\n  vrid: 1\n", []string{"instances[0].vips: at least one virtual address is required"}},
		{"interval not 10ms steps", base + "  advertInterval: 15ms\n", []string{
			"instances[0].advertInterval: 15ms is not a multiple of 10ms between 10ms and 40.95s"}},
		{"interval too long", base + "  advertInterval: 41s\n", []string{"instances[0].advertInterval: 41s is not a multiple of 10ms"}},
		{"interval garbage", base + "  advertInterval: soon\n", []string{`instances[0].advertInterval: "soon" is not a duration`}},
		{"interval as seconds", base + "  advertInterval: 0.1\n", nil},
		{"v2 sub-second", base + "  version: 2\n  advertInterval: 100ms\n", []string{"instances[0].advertInterval: 100ms is not whole seconds"}},
		{"v2 IPv6", "instances:\n- interface: eth0\n  vrid: 1\n  version: 2\n  vips: [fe80::1]\n", []string{"instances[0].version: VRRP version 2 carries IPv4 only"}},
		{"version 4", base + "  version: 4\n", []string{"instances[0].version: 4: want 3 (RFC 9568) or 2 (RFC 3768)"}},
		{"password in v3", base + "  authPassword: x\n", []string{"instances[0].authPassword: VRRP version 3 has no authentication"}},
		{"bad peer", base + "  unicastPeers: [192.0.2.2, nope]\n", []string{`instances[0].unicastPeers[1]: "nope" is not an IP address`}},
		{"peer family", base + "  unicastPeers: [2001:db8::2]\n", []string{"instances[0].unicastPeers[0]: 2001:db8::2 is not ipv4 like the VIPs"}},
		{"duplicate peer", base + "  unicastPeers: [192.0.2.2, 192.0.2.2]\n", []string{"instances[0].unicastPeers[1]: 192.0.2.2 is listed twice"}},
		{"bad checksum", base + "  checksum: crc32\n", []string{`instances[0].checksum: "crc32": want rfc5798`}},
		{"bad garp", base + "  garp:\n    masterRepeat: 0\n    masterRefresh: 10ms\n", []string{
			"instances[0].garp.masterRepeat: 0 is outside 1-255", "instances[0].garp.masterRefresh: 10ms is below 1s"}},
		{"duplicate VRID", base + "- interface: eth0\n  vrid: 51\n  vips: [192.0.2.200]\n", []string{
			"instances[1].vrid: VRID 51 (ipv4) on eth0 is also used by instances[0]"}},
		{"same VRID other family is fine", base + "- interface: eth0\n  vrid: 51\n  vips: [fe80::51]\n", nil},
		{"duplicate VIP", base + "- interface: eth1\n  vrid: 52\n  vips: [192.0.2.100/24]\n", []string{
			"instances[1].vips[0]: 192.0.2.100 is also a VIP of instances[0]"}},
		{"duplicate name", "instances:\n- {name: a, interface: eth0, vrid: 1, vips: [192.0.2.1]}\n- {name: a, interface: eth0, vrid: 2, vips: [192.0.2.2]}\n", []string{
			`instances[1].name: "a" is also the name of instances[0]`}},
		{"default name clashes with an explicit one", "instances:\n- {name: eth0-51, interface: eth1, vrid: 7, vips: [192.0.2.7]}\n- {interface: eth0, vrid: 51, vips: [192.0.2.51]}\n", []string{
			`instances[1].name: "eth0-51" is also the name of instances[0]`}},
		{"zoned peer", base + "  unicastPeers: ['fe80::2%eth0']\n", []string{"instances[0].unicastPeers[0]: fe80::2%eth0: a zone is not allowed"}},
		{"zoned source", "instances:\n- {interface: eth0, vrid: 1, vips: ['fe80::1'], sourceAddress: 'fe80::9%eth0'}\n", []string{"instances[0].sourceAddress: fe80::9%eth0: a zone is not allowed"}},
		{"bad name", "instances:\n- {name: 'a b', interface: eth0, vrid: 1, vips: [192.0.2.1]}\n", []string{`instances[0].name: "a b": use letters`}},
		{"every bad entry is reported", "instances:\n- {interface: eth0, vrid: 1, priority: 0, vips: [192.0.2.1]}\n- {interface: eth0, vrid: 2, vips: [x]}\n", []string{
			"instances[0].priority", "instances[1].vips[0]"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse([]byte(tt.yaml))
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("Parse(%q) = %v; want no error", tt.yaml, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Parse(%q) accepted it; want %q", tt.yaml, tt.want)
			}
			got := splitErrors(err)
			if len(got) != len(tt.want) {
				t.Fatalf("Parse(%q) gave %d errors %q; want %d like %q", tt.yaml, len(got), got, len(tt.want), tt.want)
			}
			for i := range got {
				if !strings.Contains(got[i], tt.want[i]) {
					t.Errorf("error %d = %q; want it to contain %q", i, got[i], tt.want[i])
				}
				var fe *FieldError
				if !errors.As(err, &fe) {
					t.Errorf("errors are not *FieldError")
				}
			}
		})
	}
}

// An empty configuration file is refused (on reload it would remove every
// VIP) unless it says `instances: []`; Parse itself, which also reads the
// vip-configmap's cached configuration, still takes it.
func TestParseFileEmpty(t *testing.T) {
	tests := []struct {
		name, yaml string
		want       string // "" = accepted
	}{
		{"zero bytes", "", "instances: the file is empty (truncated, or not written yet?): loading it would remove every VIP; write `instances: []` if that is meant"},
		{"blank and comments", "\n# keepvip\n\n", "instances: the file is empty"},
		{"document marker only", "---\n", "instances: the file is empty"},
		{"cut after instances:", "instances:\n", "instances: the file configures no instance, virtual server, ECMP VIP or static route"},
		{"kernel settings only", "kernel: {ipvs: optional}\n", "instances: the file configures no instance"},
		{"explicitly none", "instances: []\n", ""},
		{"explicitly none, in JSON", `{"instances": []}`, ""},
		{"explicitly none, with kernel settings", "kernel: {ipvs: optional}\ninstances: []\n", ""},
		{"an instance", "instances: [{interface: eth0, vrid: 1, vips: [192.0.2.1]}]\n", ""},
		{"virtual servers only", "virtualServers:\n- {vip: 192.0.2.1, port: 80, realServers: [{address: 10.0.0.1}]}\n", ""},
		{"static routes only", "routing:\n  exporter: kernel\n  kernelTable: {table: 100}\n  static: [10.0.0.0/24]\n", ""},
		{"a bad file still says what is wrong", "instances: [{interface: eth0, vrid: 0, vips: [192.0.2.1]}]\n", "instances[0].vrid: 0 is outside 1-255"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseFile([]byte(tt.yaml))
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("ParseFile(%q) = %v; want it accepted", tt.yaml, err)
			case tt.want == "":
				return
			case err == nil:
				t.Fatalf("ParseFile(%q) accepted it; want %q", tt.yaml, tt.want)
			case c != nil:
				t.Errorf("ParseFile(%q) returned a Config with its error", tt.yaml)
			case !strings.HasPrefix(err.Error(), tt.want):
				t.Errorf("ParseFile(%q) = %q; want prefix %q", tt.yaml, err, tt.want)
			}
			var fe *FieldError
			if !errors.As(err, &fe) {
				t.Errorf("ParseFile(%q): %T is not a *FieldError", tt.yaml, err)
			}
		})
	}
	for _, s := range []string{"", "instances:\n"} {
		if _, err := Parse([]byte(s)); err != nil {
			t.Errorf("Parse(%q) = %v; the vip-configmap's empty configuration must still parse", s, err)
		}
	}
}

func splitErrors(err error) []string {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []string
		for _, e := range j.Unwrap() {
			out = append(out, e.Error())
		}
		return out
	}
	return []string{err.Error()}
}

func TestDefaultsAndDurations(t *testing.T) {
	c, err := Parse([]byte("instances:\n- interface: eth0\n  vrid: 9\n  vips: [192.0.2.9]\n  advertInterval: 0.25\n  garp: {masterDelay: 0s}\n"))
	if err != nil {
		t.Fatal(err)
	}
	v := c.Desired().VRRP[0]
	if v.Name != "eth0-9" || v.Priority != 100 || !v.Preempt || v.Version != 3 || v.Interval != 250*time.Millisecond {
		t.Errorf("defaults = %+v", v)
	}
	if v.GARP.Delay != 0 || v.GARP.Repeat != 5 {
		t.Errorf("masterDelay 0s must turn the second burst off, keeping the rest: %+v", v.GARP)
	}
	if v.VIPs[0].Bits() != 32 {
		t.Errorf("VIP without prefix length got /%d; want /32", v.VIPs[0].Bits())
	}
}

func FuzzParse(f *testing.F) {
	if b, err := os.ReadFile("testdata/full.yaml"); err == nil {
		f.Add(b)
	}
	f.Add([]byte("instances:\n- interface: eth0\n  vrid: 51\n  vips: [192.0.2.100]\n"))
	f.Add([]byte("instances: [{interface: e, vrid: 300, vips: [::1/200]}]"))
	f.Add([]byte("virtualServers:\n- {vip: 192.0.2.1, port: 53, protocol: udp, healthCheck: {port: 53}, persistence: {timeout: 1s, netmask: 24}, realServers: [{address: 10.0.0.1, forwarding: dr}]}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse(data)
		if err != nil {
			if c != nil {
				t.Fatal("Parse returned a config with an error")
			}
			return
		}
		// Whatever Parse accepts must be valid for the protocol.
		for _, v := range c.Desired().VRRP {
			if errs := v.Validate(); len(errs) > 0 {
				t.Fatalf("Parse accepted %q but vrrp rejects it: %v", data, errs)
			}
		}
		for _, s := range c.Desired().VirtualServers {
			if errs := s.Validate(); len(errs) > 0 {
				t.Fatalf("Parse accepted %q but the balancer rejects it: %v", data, errs)
			}
		}
	})
}

// A Config written out (the daemon caches the one it applied in Kubernetes
// mode) parses back to the same Config: unset durations stay unset.
func TestWrittenConfigParsesBack(t *testing.T) {
	data, err := os.ReadFile("testdata/full.yaml")
	if err != nil {
		t.Fatal(err)
	}
	c, err := Parse(data)
	if err != nil {
		t.Fatal(err)
	}
	out, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	back, err := Parse(out)
	if err != nil {
		t.Fatalf("Parse of the written config: %v\n%s", err, out)
	}
	if !reflect.DeepEqual(back, c) {
		t.Errorf("the written config parses back differently:\n%s", out)
	}
}

// Guardrails on their own: a wide VIP prefix, a VIP that is its prefix's
// network or broadcast address, a static default route; allow lets the
// first and the last pass on purpose, and names only what it knows.
func TestGuardrails(t *testing.T) {
	in := func(vips, allow string) string {
		return "instances: [{interface: eth0, vrid: 1, vips: [" + vips + "]" + allow + "}]\n"
	}
	rt := "routing: {exporter: kernel, kernelTable: {table: 100}, static: [%s]%s}\n"
	for _, tc := range []struct {
		name, yaml string
		want       string // "" for accepted
	}{
		{"a /24 VIP", in("10.0.0.10/24", ""), ""},
		{"a /8 VIP", in("10.0.0.10/8", ""), "instances[0].vips[0]: 10.0.0.10/8: a /8 VIP adds a route to the whole prefix"},
		{"a /8 VIP allowed", in("10.0.0.10/8", ", allow: [widePrefix]"), ""},
		{"an IPv6 /32 VIP", in(`"2001:db8::10/32"`, ""), "a /32 VIP adds a route"},
		{"an IPv6 /64 VIP", in(`"2001:db8::10/64"`, ""), ""},
		{"the network address", in("10.0.0.0/24", ""), "10.0.0.0/24 is the network address of its prefix"},
		{"the broadcast address", in("10.0.0.255/24", ""), "10.0.0.255/24 is the broadcast address of its prefix"},
		{"a /31 end", in("10.0.0.1/31", ""), ""},
		{"an unknown allow", in("10.0.0.10", ", allow: [everything]"), `instances[0].allow[0]: "everything": want one of widePrefix`},
		{"a default route", fmt.Sprintf(rt, "0.0.0.0/0", ""), "routing.static[0]: 0.0.0.0/0 is a default route"},
		{"an IPv6 default route", fmt.Sprintf(rt, `"::/0"`, ""), "routing.static[0]: ::/0 is a default route"},
		{"a default route allowed", fmt.Sprintf(rt, "0.0.0.0/0", ", allow: [defaultRoute]"), ""},
		{"a Service CIDR", fmt.Sprintf(rt, "10.96.0.0/12", ""), ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("Parse = %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("Parse = %v; want %q", err, tc.want)
			}
		})
	}
}
