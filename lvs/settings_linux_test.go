package lvs

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestSettingsWriteTheirKeys(t *testing.T) {
	root := t.TempDir()
	for _, p := range []string{"net/ipv4/vs", "net/ipv6", "net/ipv4/conf/eth0.100", "net/ipv4/conf/all"} {
		if err := os.MkdirAll(filepath.Join(root, p), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	yes, no, mode := true, false, 0
	s := Settings{Conntrack: &yes, ConnReuseMode: &mode, ExpireNodestConn: &no, NonLocalBind: &yes,
		ARPInterfaces: []string{"eth0.100", "missing0"}, NoRedirects: []string{"eth0.100"}, ProcSys: root}
	err := s.Apply()
	// The missing interface is reported by name; the rest is written.
	if err == nil || !strings.Contains(err.Error(), "setting net.ipv4.conf.missing0.arp_ignore = 1") {
		t.Errorf("apply error = %v", err)
	}
	for path, want := range map[string]string{
		"net/ipv4/vs/conntrack":                 "1",
		"net/ipv4/vs/conn_reuse_mode":           "0",
		"net/ipv4/vs/expire_nodest_conn":        "0",
		"net/ipv4/ip_nonlocal_bind":             "1",
		"net/ipv6/ip_nonlocal_bind":             "1",
		"net/ipv4/conf/eth0.100/arp_ignore":     "1",
		"net/ipv4/conf/eth0.100/arp_announce":   "2",
		"net/ipv4/conf/eth0.100/send_redirects": "0",
		"net/ipv4/conf/all/send_redirects":      "0",
	} {
		b, err := os.ReadFile(filepath.Join(root, path))
		if err != nil || string(b) != want {
			t.Errorf("%s = %q, %v; want %q", path, b, err, want)
		}
	}
	if _, err := os.Stat(filepath.Join(root, "net/ipv4/vs/expire_quiescent_template")); err == nil {
		t.Error("an unset setting was written")
	}
}
