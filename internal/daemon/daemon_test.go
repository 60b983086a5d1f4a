package daemon

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keepvip/keepvip/lvs"
	"github.com/keepvip/keepvip/test/framework/netnstest"
	"github.com/keepvip/keepvip/vrrp"
)

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	waitWithin(t, 5*time.Second, what, ok)
}

// waitWithin waits until ok, failing the test after d.
func waitWithin(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// enterWithEth0 runs the test in a fresh network namespace (false in the
// process that started it: return then) with lo and eth0 up, eth0 a veth
// holding 192.0.2.1/24, then runs each of more as a shell command.
func enterWithEth0(t *testing.T, more ...string) bool {
	t.Helper()
	if !netnstest.Enter(t) {
		return false
	}
	netnstest.Sh(t, `ip link set lo up
		ip link add eth0 type veth peer name peer0
		ip addr add 192.0.2.1/24 dev eth0
		ip link set eth0 up; ip link set peer0 up`)
	for _, c := range more {
		netnstest.Sh(t, c)
	}
	return true
}

// statusOf returns the status a daemon gives on sock, nil while it does
// not answer.
func statusOf(sock string) *Status {
	s, err := GetStatus(context.Background(), sock)
	if err != nil {
		return nil
	}
	return s
}

func TestRunReloadKeepsLastGoodConfig(t *testing.T) {
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
	write("instances:\n- {name: vi, interface: eth0, vrid: 5, priority: 100, advertInterval: 50ms, vips: [192.0.2.100/24]}\n")
	sock := filepath.Join(dir, "s", "keepvip.sock")
	reload := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Options{ConfigFile: cfgPath, StatusSocket: sock, MetricsAddr: "127.0.0.1:19742",
			Version: "test", Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Reload: reload})
	}()
	status := func() *Status { return statusOf(sock) }
	waitFor(t, "master", func() bool {
		s := status()
		return s != nil && len(s.Instances) == 1 && s.Instances[0].State == vrrp.StateMaster
	})
	if fi, err := os.Stat(sock); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("status socket mode = %v, %v; want 0600 (root only)", fi.Mode().Perm(), err)
	}
	// A bad file: reported, nothing that runs changes.
	write("instances:\n- {name: vi, interface: eth0, vrid: 5, priority: 900, vips: [192.0.2.100/24]}\n")
	reload <- struct{}{}
	waitFor(t, "config error in status", func() bool { s := status(); return s != nil && len(s.ConfigErrors) > 0 })
	s := status()
	if !strings.Contains(strings.Join(s.ConfigErrors, "\n"), "instances[0].priority: 900 is outside 1-255") {
		t.Errorf("config errors = %q", s.ConfigErrors)
	}
	if s.Instances[0].State != vrrp.StateMaster || s.Instances[0].Priority != 100 {
		t.Errorf("bad reload disturbed the running instance: %+v", s.Instances[0])
	}
	// Status calls do not leave connections behind (each used to keep an
	// fd and a goroutine on both sides until the daemon exited).
	fds := func() int {
		d, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(d)
	}
	fd0 := fds()
	for range 200 {
		if status() == nil {
			t.Fatal("status call failed")
		}
	}
	time.Sleep(100 * time.Millisecond)
	if grown := fds() - fd0; grown > 10 {
		t.Errorf("200 status calls left %d more open files", grown)
	}
	resp, err := http.Get("http://127.0.0.1:19742/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`keepvip_config_reloads_total{result="error"} 1`, `keepvip_vrrp_state{family="ipv4",instance="vi",interface="eth0",vrid="5"} 2`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
	// A good file: applied live, errors cleared.
	write("instances:\n- {name: vi, interface: eth0, vrid: 5, priority: 120, advertInterval: 50ms, vips: [192.0.2.100/24]}\n")
	reload <- struct{}{}
	waitFor(t, "new priority", func() bool {
		s := status()
		return s != nil && len(s.ConfigErrors) == 0 && len(s.Instances) == 1 && s.Instances[0].Priority == 120
	})
	// An unreadable file is an error too (one), and changes nothing.
	if err := os.Remove(cfgPath); err != nil {
		t.Fatal(err)
	}
	reload <- struct{}{}
	waitFor(t, "read error in status", func() bool { s := status(); return s != nil && len(s.ConfigErrors) > 0 })
	resp, err = http.Get("http://127.0.0.1:19742/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "keepvip_config_errors 1\n") {
		t.Errorf("an unreadable file is not counted as a configuration error")
	}
	if s := status(); s.Instances[0].Priority != 120 {
		t.Errorf("an unreadable file changed the running instance: %+v", s.Instances[0])
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
}

func TestIPVSRequiredOrOptional(t *testing.T) {
	if !enterWithEth0(t) {
		return
	}
	haveIPVS := lvs.Available() == nil
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "keepvip.yaml")
	cfg := "instances:\n- {name: vi, interface: eth0, vrid: 5, advertInterval: 50ms, vips: [192.0.2.100/24]}\n" +
		"virtualServers:\n- {vip: 192.0.2.100, port: 80, healthCheck: {type: none}, realServers: [{address: 10.0.0.1}]}\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := Run(ctx, Options{ConfigFile: cfgPath, StatusSocket: filepath.Join(dir, "a.sock"), StateDir: dir, Logger: log})
	if haveIPVS {
		t.Logf("this kernel has IPVS: required mode starts (the VM tests cover it)")
	} else if err == nil || !strings.Contains(err.Error(), "ip_vs") || !strings.Contains(err.Error(), "kernel.ipvs: required") {
		t.Fatalf("without IPVS, required: Run = %v; want an error naming ip_vs", err)
	}
	// Optional: VRRP runs, status says why load balancing is off.
	if err := os.WriteFile(cfgPath, []byte(cfg+"kernel: {ipvs: optional}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "b.sock")
	ctx2, cancel2 := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx2, Options{ConfigFile: cfgPath, StatusSocket: sock, StateDir: dir, Logger: log})
	}()
	waitFor(t, "master with IPVS optional", func() bool {
		s, err := GetStatus(context.Background(), sock)
		return err == nil && len(s.Instances) == 1 && s.Instances[0].State == vrrp.StateMaster
	})
	s, _ := GetStatus(context.Background(), sock)
	if !haveIPVS && (!strings.Contains(s.IPVS, "IPVS unavailable") || !strings.Contains(strings.Join(s.ConfigErrors, " "), "ip_vs")) {
		t.Errorf("status without IPVS: ipvs %q, errors %q", s.IPVS, s.ConfigErrors)
	}
	cancel2()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
