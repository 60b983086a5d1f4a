package daemon

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keepvip/keepvip/config"
	"github.com/keepvip/keepvip/vrrp"
)

// The metrics listener, given a wildcard address, never answers on a VIP
// (the load balancer's clients would read /metrics and probe /healthz
// there), in either family, and still answers on the node's addresses.
func TestMetricsNeverOnAVIP(t *testing.T) {
	if !enterWithEth0(t, `ip addr add 2001:db8::1/64 dev eth0 nodad`) {
		return
	}
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "keepvip.yaml")
	cfg := "instances:\n" +
		"- {name: v4, interface: eth0, vrid: 5, advertInterval: 50ms, vips: [192.0.2.100/24]}\n" +
		"- {name: v6, interface: eth0, vrid: 6, advertInterval: 50ms, vips: [fe80::6/64, 2001:db8::100/64]}\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "keepvip.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		// [::] listens on both families (IPv4 as mapped addresses).
		done <- Run(ctx, Options{ConfigFile: cfgPath, StatusSocket: sock, MetricsAddr: "[::]:19743",
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	waitFor(t, "both instances master, their VIPs on eth0", func() bool {
		s, err := GetStatus(context.Background(), sock)
		if err != nil || len(s.Instances) != 2 {
			return false
		}
		for _, in := range s.Instances {
			// A VIP not on eth0 yet would not be local: a connection
			// to it would time out, not reach the listener.
			if in.State != vrrp.StateMaster || !in.VIPsInstalled {
				return false
			}
		}
		return true
	})
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	get := func(host, path string) (int, string, error) {
		resp, err := client.Get("http://" + net.JoinHostPort(host, "19743") + path)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), err
	}
	// The VIPs are local addresses now: the kernel delivers connections
	// to them to a wildcard listener.
	for _, vip := range []string{"192.0.2.100", "2001:db8::100"} {
		for _, path := range []string{"/metrics", "/healthz", "/readyz"} {
			if code, body, err := get(vip, path); err == nil {
				t.Errorf("GET %s on the VIP %s = %d %.40q; want the connection closed unanswered", path, vip, code, body)
			}
		}
	}
	for _, node := range []string{"192.0.2.1", "2001:db8::1", "127.0.0.1", "::1"} {
		if code, _, err := get(node, "/healthz"); err != nil || code != http.StatusOK {
			t.Errorf("GET /healthz on the node's address %s = %d, %v; want 200", node, code, err)
		}
	}
	_, body, err := get("192.0.2.1", "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(body, "keepvip_metrics_refused_total 6\n") {
		t.Errorf("metrics do not count the 6 connections refused on VIPs:\n%s", grep(body, "keepvip_metrics"))
	}
}

func grep(s, word string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, word) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// stuckInstances is a VRRP manager whose instances do not answer until
// released.
type stuckInstances struct {
	release chan struct{}
	mu      sync.Mutex
	calls   int
}

func (s *stuckInstances) Status() []vrrp.Status {
	s.mu.Lock()
	s.calls++
	s.mu.Unlock()
	<-s.release
	return nil
}

// /healthz with a stuck manager answers 503 in bounded time, and many
// probes do not pile goroutines up (each used to leave one behind).
func TestHealthzStuckManager(t *testing.T) {
	stuck := &stuckInstances{release: make(chan struct{})}
	h := newHealth(stuck, 200*time.Millisecond)
	serve := func() *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/healthz", nil))
		return w
	}
	before := runtime.NumGoroutine()
	const parallel, sequential = 200, 50
	start := time.Now()
	var wg sync.WaitGroup
	got := make([]*httptest.ResponseRecorder, parallel, parallel+sequential)
	for i := range parallel {
		wg.Go(func() { got[i] = serve() })
	}
	wg.Wait()
	// Probes after the check in flight timed out answer at once.
	for range sequential {
		got = append(got, serve())
	}
	took := time.Since(start)
	time.Sleep(50 * time.Millisecond) // let finished goroutines exit
	if grown := runtime.NumGoroutine() - before; grown > 3 {
		t.Errorf("%d probes of a stuck manager left %d more goroutines; want at most the one check", len(got), grown)
	}
	for i, w := range got {
		if w.Code != http.StatusServiceUnavailable {
			t.Fatalf("probe %d of a stuck manager = %d %q; want 503", i, w.Code, w.Body.String())
		}
	}
	if b := got[len(got)-1].Body.String(); !strings.Contains(b, "VRRP instances have not answered for") {
		t.Errorf("/healthz with a stuck manager says %q; want since when the instances have not answered", b)
	}
	if took > 5*time.Second {
		t.Errorf("%d probes of a stuck manager took %s; want each to wait at most until the check in flight times out", len(got), took)
	}
	stuck.mu.Lock()
	calls := stuck.calls
	stuck.mu.Unlock()
	if calls != 1 {
		t.Errorf("the stuck manager was asked %d times; want once (one check at a time)", calls)
	}
	// Unstuck: the next probe is healthy and nothing is left running.
	close(stuck.release)
	waitFor(t, "a healthy probe", func() bool { return serve().Code == http.StatusOK })
	waitFor(t, "goroutines back", func() bool { return runtime.NumGoroutine() <= before+1 })
}

// A file at the --status-socket path that is not a socket is somebody's:
// keepvip refuses to start rather than delete it. A stale socket is
// replaced; a live one is refused.
func TestStatusSocketPath(t *testing.T) {
	d := &daemon{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	dir := t.TempDir()

	file := filepath.Join(dir, "keepvip.sock")
	if err := os.WriteFile(file, []byte("precious"), 0o644); err != nil {
		t.Fatal(err)
	}
	sub := filepath.Join(dir, "adir")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(file, link); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ path, kind string }{{file, "regular file"}, {sub, "directory"}, {link, "symbolic link"}} {
		srv, err := d.serveStatus(tt.path)
		if err == nil {
			srv.Close()
			t.Errorf("serveStatus(%s) over a %s succeeded; want an error", tt.path, tt.kind)
		} else if want := fmt.Sprintf("status socket %s: a %s is there, not a socket", tt.path, tt.kind); !strings.Contains(err.Error(), want) {
			t.Errorf("serveStatus(%s) = %v; want it to say %q", tt.path, err, want)
		}
		if _, err := os.Lstat(tt.path); err != nil {
			t.Errorf("the %s at the status socket path is gone: %v", tt.kind, err)
		}
	}
	if b, err := os.ReadFile(file); err != nil || string(b) != "precious" {
		t.Errorf("the file at the status socket path = %q, %v; want it untouched", b, err)
	}

	// A stale socket (its listener gone, the file left) is replaced.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	srv, err := d.serveStatus(stale)
	if err != nil {
		t.Fatalf("serveStatus over a stale socket: %v", err)
	}
	defer srv.Close()
	// Now live: a second daemon is refused, and the socket stays.
	if srv2, err := d.serveStatus(stale); err == nil || !strings.Contains(err.Error(), "is in use") {
		if srv2 != nil {
			srv2.Close()
		}
		t.Errorf("serveStatus over a live socket = %v; want it in use", err)
	}
	if c, err := net.Dial("unix", stale); err != nil {
		t.Errorf("the live status socket no longer answers: %v", err)
	} else {
		c.Close()
	}
}

// An empty file is refused, at start and on reload (every VIP would go),
// unless it says `instances: []`.
func TestEmptyConfigFile(t *testing.T) {
	if !enterWithEth0(t) {
		return
	}
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "keepvip.yaml")
	write := func(s string) {
		if err := os.WriteFile(cfgPath, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	write("")
	ctx0, cancel0 := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel0()
	if err := Run(ctx0, Options{ConfigFile: cfgPath, Logger: log}); err == nil || !strings.Contains(err.Error(), "instances: the file is empty") {
		t.Errorf("Run with an empty file = %v; want it refused", err)
	}

	write("instances:\n- {name: vi, interface: eth0, vrid: 5, advertInterval: 50ms, vips: [192.0.2.100/24]}\n")
	sock := filepath.Join(dir, "keepvip.sock")
	reload := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{ConfigFile: cfgPath, StatusSocket: sock, Logger: log, Reload: reload})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	status := func() *Status { return statusOf(sock) }
	waitFor(t, "master", func() bool {
		s := status()
		return s != nil && len(s.Instances) == 1 && s.Instances[0].State == vrrp.StateMaster
	})
	for _, empty := range []string{"", "# being rewritten\n", "instances:\n"} {
		write(empty)
		reload <- struct{}{}
		waitFor(t, fmt.Sprintf("the error of reloading %q", empty), func() bool { s := status(); return s != nil && len(s.ConfigErrors) > 0 })
		s := status()
		if !strings.Contains(strings.Join(s.ConfigErrors, "\n"), "loading it would remove every VIP; write `instances: []` if that is meant") {
			t.Errorf("reloading %q: config errors = %q", empty, s.ConfigErrors)
		}
		if len(s.Instances) != 1 || s.Instances[0].State != vrrp.StateMaster {
			t.Errorf("reloading %q changed what runs: %+v", empty, s.Instances)
		}
		// Back to the good file, errors cleared, for the next one.
		write("instances:\n- {name: vi, interface: eth0, vrid: 5, advertInterval: 50ms, vips: [192.0.2.100/24]}\n")
		reload <- struct{}{}
		waitFor(t, "errors cleared", func() bool { s := status(); return s != nil && len(s.ConfigErrors) == 0 })
	}
	// Said explicitly: applied.
	write("instances: []\n")
	reload <- struct{}{}
	waitFor(t, "no instances", func() bool { s := status(); return s != nil && len(s.ConfigErrors) == 0 && len(s.Instances) == 0 })
}

// Every VIP keepvip holds or may hold is refused by the metrics
// listener: of instances (held or not), virtual servers and ECMP routes.
func TestDesiredVIPsRefused(t *testing.T) {
	cfg, err := config.Parse([]byte(`instances:
- {interface: eth0, vrid: 1, vips: [192.0.2.100/24, 192.0.2.101]}
- {interface: eth0, vrid: 2, vips: ['fe80::2', '2001:db8::100/64']}
virtualServers:
- {vip: 198.51.100.7, port: 80, realServers: [{address: 10.0.0.1}]}
- {fwmark: 7, realServers: [{address: 10.0.0.1, port: 80}], healthCheck: {type: none}}
- {fwmark: 8, family: ipv6, realServers: [{address: '2001:db8::7', port: 80}], healthCheck: {type: none}}
routing:
  ecmp: [{vip: 203.0.113.9}]
  bgp: {asn: 65001, routerID: 192.0.2.1, nextHop6: "2001:db8::1", peers: [{address: 192.0.2.254, asn: 65000}]}
`))
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{}
	want := cfg.Desired()
	d.refuseVIPs(want.VIPs())
	for _, a := range []string{"192.0.2.100", "192.0.2.101", "fe80::2", "2001:db8::100", "198.51.100.7", "203.0.113.9", "::ffff:192.0.2.100"} {
		if !d.onVIP(net.TCPAddrFromAddrPort(netip.MustParseAddrPort(net.JoinHostPort(a, "9742")))) {
			t.Errorf("%s is not refused", a)
		}
	}
	// A service by firewall mark has no address: the wildcards stay free.
	for _, a := range []string{"192.0.2.1", "127.0.0.1", "2001:db8::1", "0.0.0.0", "::"} {
		if d.onVIP(net.TCPAddrFromAddrPort(netip.MustParseAddrPort(net.JoinHostPort(a, "9742")))) {
			t.Errorf("the node's address %s is refused", a)
		}
	}
}

type fixedInstances []vrrp.Status

func (f fixedInstances) Status() []vrrp.Status { return f }

// Ready means in the election: a rolling update must not go on to the
// next node before the node it replaced can take the VIPs over.
func TestReadyMeansJoinedTheElection(t *testing.T) {
	master := netip.MustParseAddr("192.0.2.1")
	for _, c := range []struct {
		name  string
		insts []vrrp.Status
		want  string // "" for ready
	}{
		{"no instances", nil, ""},
		{"master", []vrrp.Status{{Name: "a", State: vrrp.StateMaster, Master: master}}, ""},
		{"backup following a master", []vrrp.Status{{Name: "a", State: vrrp.StateBackup, Master: master}}, ""},
		{"fault", []vrrp.Status{{Name: "a", State: vrrp.StateFault}}, ""},
		{"backup that has heard nobody", []vrrp.Status{{Name: "a", State: vrrp.StateMaster}, {Name: "b", State: vrrp.StateBackup}}, "instances not in the election yet (no master heard, not master): b"},
		{"init", []vrrp.Status{{Name: "c", State: vrrp.StateInit}}, "instances not in the election yet (no master heard, not master): c"},
	} {
		d := &daemon{ready: true, health: newHealth(fixedInstances(c.insts), time.Second)}
		w := httptest.NewRecorder()
		d.serveReady(w, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		got := ""
		if w.Code != http.StatusOK {
			got = strings.TrimSpace(w.Body.String())
		}
		if got != c.want {
			t.Errorf("%s: /readyz %d %q, want %q", c.name, w.Code, got, c.want)
		}
	}
}
