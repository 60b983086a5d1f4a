package config

import (
	"fmt"
	"strings"
	"testing"
)

const routedBase = `
instances:
- {name: web, interface: eth0, vrid: 51, vips: [192.0.2.100/24], announce: {backup: worse, communities: ["65000:7"]}}
- {name: web6, interface: eth0, vrid: 51, vips: ["2001:db8::100"], announce: {backup: worse, communities: ["65000:7"]}}
- {name: quiet, interface: eth0, vrid: 52, vips: [192.0.2.101], announce: {mode: none}}
- {name: db, interface: eth0, vrid: 53, vips: [192.0.2.102]}
routing:
  communities: ["65000:100"]
  med: 10
  bgp:
    asn: 65001
    routerID: 192.0.2.11
    nextHop6: "2001:db8:1::11"
    peers:
    - {address: 192.0.2.1, asn: 65000, password: s3cret, holdTime: 9s, keepaliveInterval: 3s, gracefulRestart: 120s}
    - {address: "2001:db8:1::1", asn: 65000}
`

func TestRoutingParses(t *testing.T) {
	c, err := Parse([]byte(routedBase))
	if err != nil {
		t.Fatal(err)
	}
	e := c.Desired().Exporter
	if e.Kind != "bgp" || e.BGP.ASN != 65001 || len(e.Peers) != 2 || e.Peers[0].HoldTime.String() != "9s" || e.Peers[0].GracefulRestart.String() != "2m0s" {
		t.Fatalf("exporter %+v", e)
	}
	var got []string
	for _, v := range c.Desired().Announcements {
		s := v.Instance + " " + v.Master.String()
		if v.Backup != nil {
			s += " | backup " + v.Backup.String()
		}
		got = append(got, s)
	}
	want := []string{
		"web 192.0.2.100/32 [65000:7] med 10 | backup 192.0.2.100/32 [65000:7] localpref 50 med 110 prepend 3",
		"web6 2001:db8::100/128 via 2001:db8:1::11 [65000:7] med 10 | backup 2001:db8::100/128 via 2001:db8:1::11 [65000:7] localpref 50 med 110 prepend 3",
		"db 192.0.2.102/32 [65000:100] med 10",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("announcements:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestRoutingErrors(t *testing.T) {
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"asn 0 and a bad router id", `
instances: [{interface: eth0, vrid: 1, vips: [192.0.2.1]}]
routing: {bgp: {asn: 0, routerID: "2001:db8::1", peers: [{address: 192.0.2.2, asn: 65000}]}}`,
			[]string{"routing.bgp: asn: 0 is outside 1-4294967294", "routing.bgp: routerID: 2001:db8::1 is not an IPv4 address"}},
		{"asn out of range", `
instances: [{interface: eth0, vrid: 1, vips: [192.0.2.1]}]
routing: {bgp: {asn: 4294967296, routerID: 192.0.2.1, peers: [{address: 192.0.2.2, asn: 65000}]}}`,
			[]string{"asn"}},
		{"peer not an IP, duplicates", `
instances: [{interface: eth0, vrid: 1, vips: [192.0.2.1]}]
routing: {bgp: {asn: 65001, routerID: 192.0.2.1, peers: [{address: router1, asn: 65000}, {address: 192.0.2.2, asn: 65000}, {address: 192.0.2.2, asn: 65002}]}}`,
			[]string{`routing.bgp.peers[0].address: "router1" is not an IP address`, "routing.bgp: peers[2].address: 192.0.2.2 is also peers[1]"}},
		{"no peers, no router id", `
instances: [{interface: eth0, vrid: 1, vips: [192.0.2.1]}]
routing: {bgp: {asn: 65001}}`,
			[]string{"routing.bgp.routerID: is required", "routing.bgp.peers: at least one peer is needed"}},
		{"ipv6 vip without a next hop", `
instances: [{interface: eth0, vrid: 1, vips: ["2001:db8::1"]}]
routing: {bgp: {asn: 65001, routerID: 192.0.2.1, peers: [{address: 192.0.2.2, asn: 65000}]}}`,
			[]string{"instances[0].vips[0]: announcing an IPv6 VIP over BGP needs routing.bgp.nextHop6"}},
		{"prepend with ibgp", `
instances: [{interface: eth0, vrid: 1, vips: [192.0.2.1], announce: {backup: worse, backupPrepend: 2}}]
routing: {bgp: {asn: 65001, routerID: 192.0.2.1, peers: [{address: 192.0.2.2, asn: 65001}]}}`,
			[]string{"instances[0].announce.backupPrepend: an iBGP peer would find its own AS in the path"}},
		{"bad community and mode", `
instances: [{interface: eth0, vrid: 1, vips: [192.0.2.1], announce: {mode: ecmpp, communities: [x]}}]
routing: {communities: ["65000"], bgp: {asn: 65001, routerID: 192.0.2.1, peers: [{address: 192.0.2.2, asn: 65000}]}}`,
			[]string{"routing.communities[0]: community \"65000\": want ASN:value", `instances[0].announce.mode: "ecmpp": want active-backup or none`}},
		{"unknown exporter", `
instances: [{interface: eth0, vrid: 1, vips: [192.0.2.1]}]
routing: {exporter: ospf}`,
			[]string{`routing.exporter: "ospf": want bgp or kernel`}},
		{"kernel table", `
instances: [{interface: eth0, vrid: 1, vips: [192.0.2.1]}]
routing: {exporter: kernel, kernelTable: {table: 255}}`,
			[]string{"routing.kernelTable: table: 255 is the kernel's local table"}},
		{"worse with the kernel exporter", `
instances: [{interface: eth0, vrid: 1, vips: [192.0.2.1], announce: {backup: worse}}]
routing: {exporter: kernel, kernelTable: {table: 200}}`,
			[]string{"instances[0].announce.backup: worse needs the bgp exporter"}},
		{"a backup preferred", `
instances: [{interface: eth0, vrid: 1, vips: [192.0.2.1], announce: {backup: worse, localPref: 40}}]
routing: {bgp: {asn: 65001, routerID: 192.0.2.1, peers: [{address: 192.0.2.2, asn: 65001}]}}`,
			[]string{"instances[0].announce.backupLocalPref: 50 is not below the master's local preference 40"}},
		{"static also a VIP", `
instances: [{interface: eth0, vrid: 1, vips: [192.0.2.1]}]
routing: {static: [192.0.2.1/32, 198.51.100.0/24, 198.51.100.0/24], ecmp: [{vip: 192.0.2.9}], bgp: {asn: 65001, routerID: 192.0.2.1, peers: [{address: 192.0.2.2, asn: 65000}]}}`,
			[]string{"routing.static[0]: 192.0.2.1/32 is also a VIP of instance eth0-1", "routing.static[2]: 198.51.100.0/24 is also routing.static[1]"}},
		{"bad bfd", `
instances: [{interface: eth0, vrid: 1, vips: [192.0.2.1]}]
routing: {bgp: {asn: 65001, routerID: 192.0.2.1, peers: [{address: 192.0.2.2, asn: 65000, bfd: {minTx: 5ms, minRx: soon, multiplier: 1}}]}}`,
			[]string{"routing.bgp.peers[0].bfd.minTx: 5ms is outside 10ms-1m0s", `routing.bgp.peers[0].bfd.minRx: "soon" is not a duration`, "routing.bgp.peers[0].bfd.multiplier: 1 is outside 2-255"}},
		{"announce without routing", `
instances: [{interface: eth0, vrid: 1, vips: [192.0.2.1], announce: {backup: worse}}]`,
			[]string{"instances[0].announce: needs a routing section"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.yaml))
			if err == nil {
				t.Fatal("Parse accepted it")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Parse error:\n%v\nwant %q", err, w)
				}
			}
		})
	}
}

func TestRoutingECMP(t *testing.T) {
	c, err := Parse([]byte(routedBase + `  ecmp:
  - {vip: 192.0.2.200}
  - {vip: 192.0.2.201, device: eth1, communities: ["65000:9"], med: 5}
`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range c.Desired().ECMP {
		got = append(got, e.Device+" "+e.Addr.String()+" "+e.Route.String())
	}
	want := "lo 192.0.2.200/32 192.0.2.200/32 [65000:100] med 10\neth1 192.0.2.201/32 192.0.2.201/32 [65000:9] med 5"
	if strings.Join(got, "\n") != want {
		t.Errorf("ECMP VIPs:\n%s\nwant:\n%s", strings.Join(got, "\n"), want)
	}
	_, err = Parse([]byte(routedBase + `  ecmp:
  - {vip: 192.0.2.102}
  - {vip: nope}
  - {vip: 192.0.2.202}
  - {vip: 192.0.2.202}
  - {vip: "2001:db8::9"}
`))
	for _, w := range []string{
		"routing.ecmp[0].vip: 192.0.2.102 is also a VIP of instances[3]",
		`routing.ecmp[1].vip: "nope" is not an IP address`,
		"routing.ecmp[3].vip: 192.0.2.202 is also routing.ecmp[2]",
	} {
		if err == nil || !strings.Contains(err.Error(), w) {
			t.Errorf("Parse error %v; want %q", err, w)
		}
	}
}

func TestRoutingStatic(t *testing.T) {
	c, err := Parse([]byte(routedBase + "  static: [10.96.0.10/32, 198.51.100.0/24, \"2001:db8:5::/64\"]\n"))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range c.Desired().StaticRoutes {
		got = append(got, r.String())
	}
	want := "10.96.0.10/32 [65000:100] med 10\n198.51.100.0/24 [65000:100] med 10\n2001:db8:5::/64 via 2001:db8:1::11 [65000:100] med 10"
	if strings.Join(got, "\n") != want {
		t.Errorf("static:\n%s\nwant:\n%s", strings.Join(got, "\n"), want)
	}
	if _, err := Parse([]byte(routedBase + "  static: [198.51.100.1/24, x]\n")); err == nil ||
		!strings.Contains(err.Error(), "routing.static[0]: 198.51.100.1/24 has host bits set") || !strings.Contains(err.Error(), "routing.static[1]") {
		t.Errorf("bad static prefixes: %v", err)
	}
}

// passwordSecretKey is the vip-configmap's: a file gives the password.
func TestPasswordSecretKeyOnlyInTheConfigMap(t *testing.T) {
	_, err := Parse([]byte("routing:\n  bgp: {asn: 65001, routerID: 192.0.2.1, peers: [{address: 192.0.2.2, asn: 65000, passwordSecretKey: k}]}\n"))
	if err == nil || !strings.Contains(err.Error(), "routing.bgp.peers[0].passwordSecretKey: only in the vip-configmap") {
		t.Errorf("Parse = %v", err)
	}
}

// A peer's bfd section, with what it leaves out defaulted; multihop
// follows the peer's unless given.
func TestRoutingBFD(t *testing.T) {
	c, err := Parse([]byte(`
instances: [{interface: eth0, vrid: 1, vips: [192.0.2.1]}]
routing:
  bgp:
    asn: 65001
    routerID: 192.0.2.11
    peers:
    - {address: 192.0.2.1, asn: 65000, localAddress: 192.0.2.11, bfd: {}}
    - {address: 198.51.100.1, asn: 65000, multihop: 3, bfd: {minTx: 100ms, minRx: 50ms, multiplier: 5}}
    - {address: 198.51.100.2, asn: 65000, multihop: 3, bfd: {multihop: false}}
    - {address: 192.0.2.3, asn: 65000}
`))
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range c.Desired().Exporter.BFD {
		got = append(got, fmt.Sprintf("%s from %v multihop %v %v/%v×%d", p.Remote, p.Local, p.Multihop, p.DesiredMinTx, p.RequiredMinRx, p.DetectMult))
	}
	want := []string{
		"192.0.2.1 from 192.0.2.11 multihop false 300ms/300ms×3",
		"198.51.100.1 from invalid IP multihop true 100ms/50ms×5",
		"198.51.100.2 from invalid IP multihop false 300ms/300ms×3",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("BFD sessions:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
