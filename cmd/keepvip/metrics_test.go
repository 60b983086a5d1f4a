package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestListenAddr(t *testing.T) {
	tests := []struct {
		in, want, err string
	}{
		{"", "", ""},
		{"127.0.0.1:9742", "127.0.0.1:9742", ""},
		{":9742", ":9742", ""},
		{"[::]:9742", "[::]:9742", ""},
		{"[2001:db8::1]:9742", "[2001:db8::1]:9742", ""},
		// What $(HOST_IP):9742 gives on an IPv6 node.
		{"2001:db8::1:9742", "[2001:db8::1]:9742", ""},
		{"[::ffff:192.0.2.1]:9742", "192.0.2.1:9742", ""},
		{"localhost:9742", "localhost:9742", ""},
		{"9742", "", `"9742": want HOST:PORT`},
		{"127.0.0.1", "", `"127.0.0.1": want HOST:PORT`},
		{"127.0.0.1:http", "", `port "http" is not a number in 0-65535`},
		{"127.0.0.1:70000", "", `port "70000" is not a number`},
		{"$(HOST_IP):9742", "", "$(HOST_IP) was not expanded"},
	}
	for _, tt := range tests {
		got, err := listenAddr(tt.in)
		switch {
		case tt.err == "" && (err != nil || got != tt.want):
			t.Errorf("listenAddr(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("listenAddr(%q) = %q, %v; want an error with %q", tt.in, got, err, tt.err)
		}
	}
}

// The DaemonSet's KEEPVIP_METRICS_ADDR, expanded as the kubelet does for
// a node of either family, is an address keepvip listens on.
func TestDaemonSetMetricsAddrExpands(t *testing.T) {
	_, c := readDaemonSet(t)
	var value string
	for _, e := range c.Env {
		if e.Name == "KEEPVIP_METRICS_ADDR" {
			value = e.Value
		}
	}
	for hostIP, want := range map[string]string{"192.0.2.10": "192.0.2.10:9742", "2001:db8::10": "[2001:db8::10]:9742"} {
		got, err := listenAddr(strings.ReplaceAll(value, "$(HOST_IP)", hostIP))
		if err != nil || got != want {
			t.Errorf("KEEPVIP_METRICS_ADDR %q with HOST_IP %s = %q, %v; want %q", value, hostIP, got, err, want)
		}
	}
}

func TestRunRefusesBadMetricsAddr(t *testing.T) {
	var out, errb bytes.Buffer
	code := run([]string{"run", "--config", "/nonexistent", "--status-socket=", "--metrics-addr", "9742"}, &out, &errb)
	if code != 2 || !strings.Contains(errb.String(), `run: --metrics-addr: "9742": want HOST:PORT`) {
		t.Errorf("keepvip run --metrics-addr 9742 = %d, %q; want 2 and the flag named", code, errb.String())
	}
}
