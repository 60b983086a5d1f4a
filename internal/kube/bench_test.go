package kube

import (
	"fmt"
	"strings"
	"testing"

	"github.com/keepvip/keepvip/configmap"
)

// Parse and Resolve of a large vip-configmap: 1,000 instances (4 VIPs
// each), 1,000 virtual servers (half of them a Service's) and 250 VIP
// keys, as a node meets it on every change. make bench prints them.

func BenchmarkParseResolve(b *testing.B) {
	data, w := review2Big(1000, 250)
	withRouting := map[string]string{}
	for k, v := range data {
		withRouting[k] = v
	}
	var rt strings.Builder
	rt.WriteString("routing:\n  bgp: {asn: 65001, peers: [{address: 192.168.1.254, asn: 65000}]}\n  static:\n")
	for i := 0; i < 1000; i++ {
		fmt.Fprintf(&rt, "  - 172.%d.%d.0/24\n", 16+i/250, i%250)
	}
	withRouting[configmap.StructuredKey] = strings.ReplaceAll(data[configmap.StructuredKey], "vrid: ", "announce: {backup: worse}, vrid: ") + rt.String()
	broken := map[string]string{}
	for k, v := range data {
		broken[k] = v
	}
	broken[configmap.StructuredKey] += "instances: [\n"
	history, _ := configmap.Parse(data, configmap.DefaultDefaults(), nil)
	running, _ := Resolve(history, w.cluster("node-a"), host)
	for _, tc := range []struct {
		name    string
		data    map[string]string
		history bool
	}{
		{"fresh", data, false},
		{"history", data, true},
		{"unreadable", broken, true},
		{"routing", withRouting, false},
	} {
		b.Run(tc.name, func(b *testing.B) {
			c := w.cluster("node-a")
			var prev = (*configmap.Spec)(nil)
			if tc.history {
				prev, c.Previous = history, running
			}
			for b.Loop() {
				spec, _ := configmap.Parse(tc.data, configmap.DefaultDefaults(), prev)
				if cfg, ps := Resolve(spec, c, host); cfg == nil {
					b.Fatal(ps)
				}
			}
		})
	}
}
