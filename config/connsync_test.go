package config

import (
	"fmt"
	"strings"
	"testing"

	"github.com/keepvip/keepvip/lvs"
)

func TestConnectionSync(t *testing.T) {
	one := "instances: [{name: web, interface: eth1, vrid: 51, vips: [192.0.2.100]}]\n"
	two := "instances: [{name: web, interface: eth1, vrid: 51, vips: [192.0.2.100]}, {name: db, interface: eth2, vrid: 52, vips: [192.0.2.101]}]\n"
	for _, c := range []struct {
		name, yaml string
		want       string // the resolved ConnSync, or the error
	}{
		{"defaults from the only instance", one + "connectionSync: {}", "web: master on eth1, sync ID 51 (group invalid IP, port 0, ttl 0, maxlen 0) settings <nil> <nil> <nil>"},
		{"everything", two + `connectionSync: {instance: db, interface: eth0, syncID: 7, group: 239.0.0.7, port: 9000, ttl: 2, maxLen: 1400, threshold: 2, period: 20, refreshPeriod: 30s, persistMode: true}`,
			"db: master on eth0, sync ID 7 (group 239.0.0.7, port 9000, ttl 2, maxlen 1400) settings [2 20] 30 true"},
		{"which instance", two + "connectionSync: {}", "connectionSync.instance: is required"},
		{"no such instance", one + "connectionSync: {instance: nope}", `connectionSync.instance: "nope" is not an instance`},
		{"bad values", one + `connectionSync: {syncID: 256, group: 192.0.2.1, port: 70000, ttl: 300, maxLen: 10, threshold: 50, period: 50, refreshPeriod: 1.5s}`,
			strings.Join([]string{"connectionSync.syncID: 256 is outside 0-255", `connectionSync.group: "192.0.2.1" is not a multicast address`, "connectionSync.port: 70000 is outside 1-65535",
				"connectionSync.ttl: 300 is outside 1-255", "connectionSync.maxLen: 10 is outside 1024-65487", "connectionSync.threshold: 50 is not below the period 50", "connectionSync.refreshPeriod: 1.5s: want whole seconds, 0s-24h"}, "|")},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := Parse([]byte(c.yaml))
			if err != nil {
				for _, w := range strings.Split(c.want, "|") {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("Parse error lacks %q:\n%v", w, err)
					}
				}
				return
			}
			cs := cfg.Desired().ConnSync
			d := cs.Daemon
			d.Role = lvs.SyncMaster
			opt := func(p any) string {
				switch v := p.(type) {
				case *[2]int:
					if v != nil {
						return fmt.Sprint(*v)
					}
				case *int:
					if v != nil {
						return fmt.Sprint(*v)
					}
				case *bool:
					if v != nil {
						return fmt.Sprint(*v)
					}
				}
				return "<nil>"
			}
			got := fmt.Sprintf("%s: %s (group %v, port %d, ttl %d, maxlen %d) settings %s %s %s", cs.Instance, d, d.Group, d.Port, d.TTL, d.MaxLen,
				opt(cs.Settings.SyncThreshold), opt(cs.Settings.SyncRefreshPeriod), opt(cs.Settings.SyncPersistMode))
			if got != c.want {
				t.Errorf("got  %s\nwant %s", got, c.want)
			}
		})
	}
}
