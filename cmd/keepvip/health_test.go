package main

import (
	"bytes"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keepvip/keepvip/internal/daemon"
)

// `keepvip health` (the DaemonSet's probes) exits 0 when keepvip on the
// status socket says it is healthy (ready), and 1 with keepvip's reason
// when it says it is not, or with why it could not ask.
func TestHealthExitCodes(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "keepvip.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var healthy, ready, slow atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, _ *http.Request) {
		if slow.Load() {
			time.Sleep(2 * time.Second)
		}
		if !healthy.Load() {
			http.Error(w, "VRRP instances have not answered for 2s", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /v1/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte("ok\n"))
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(l)
	defer srv.Close()

	health := func(args ...string) (int, string, string) {
		var out, errb bytes.Buffer
		code := run(append([]string{"health", "--socket", sock}, args...), &out, &errb)
		return code, out.String(), errb.String()
	}
	for _, tt := range []struct {
		name           string
		healthy, ready bool
		args           []string
		code           int
		says           string
	}{
		{"healthy", true, false, nil, 0, "keepvip is healthy"},
		{"unhealthy", false, true, nil, 1, "keepvip: not healthy: VRRP instances have not answered for 2s"},
		{"ready", true, true, []string{"--ready"}, 0, "keepvip is ready"},
		{"not ready", true, false, []string{"--ready"}, 1, "keepvip: not ready: starting"},
	} {
		healthy.Store(tt.healthy)
		ready.Store(tt.ready)
		code, out, errs := health(tt.args...)
		if code != tt.code || !strings.Contains(out+errs, tt.says) {
			t.Errorf("%s: keepvip health %v = %d, %q %q; want %d and %q", tt.name, tt.args, code, out, errs, tt.code, tt.says)
		}
	}
	// An answer that does not come in time is a failure too.
	healthy.Store(true)
	slow.Store(true)
	if code, _, errs := health("--timeout", "500ms"); code != 1 || !strings.Contains(errs, "deadline exceeded") {
		t.Errorf("keepvip health with keepvip slower than --timeout = %d, %q; want 1", code, errs)
	}
	if code, _, errs := health("--timeout", "0s"); code != 2 {
		t.Errorf("keepvip health --timeout 0s = %d, %q; want a usage error", code, errs)
	}
}

// `keepvip status` says when metrics are not served, since when, why,
// and whose socket holds the port.
func TestStatusTableMetricsNotServing(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	s := sampleStatus(now)
	s.Metrics = &daemon.MetricsStatus{Addr: "192.0.2.1:9742", Since: now.Add(-42 * time.Second), Attempts: 11,
		Error: "listen tcp 192.0.2.1:9742: bind: address already in use", Holders: []uint32{65534}}
	var b bytes.Buffer
	if err := printStatus(&b, s, "table", now); err != nil {
		t.Fatal(err)
	}
	want := "metrics: not serving on 192.0.2.1:9742 for 42s, retrying (attempt 11): listen tcp 192.0.2.1:9742: bind: address already in use; the port is held by a socket of uid 65534"
	if !strings.Contains(b.String(), want) {
		t.Errorf("table lacks %q:\n%s", want, b.String())
	}
	s.Metrics = &daemon.MetricsStatus{Addr: "192.0.2.1:9742", Serving: true, Since: now}
	b.Reset()
	if err := printStatus(&b, s, "table", now); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), "metrics") {
		t.Errorf("table speaks of metrics that are served:\n%s", b.String())
	}
}
