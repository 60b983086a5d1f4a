package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepvip/keepvip/vrrp"
)

// waitLong is waitFor with a bound past the metrics listener's retries.
func waitLong(t *testing.T, what string, ok func() bool) {
	t.Helper()
	waitWithin(t, 3*metricsRetryMax+5*time.Second, what, ok)
}

// A metrics port taken by someone else when keepvip starts (any local
// user can bind a port above 1023 first) does not stop Run: VRRP runs,
// health answers on the status socket, the status says why metrics are
// missing and who holds the port, and metrics are served once it is free.
func TestMetricsPortTaken(t *testing.T) {
	if !enterWithEth0(t) {
		return
	}
	squatter, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	addr := squatter.Addr().String()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "keepvip.yaml")
	if err := os.WriteFile(cfgPath, []byte("instances:\n- {name: vi, interface: eth0, vrid: 5, advertInterval: 50ms, vips: [192.0.2.100/24]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "run", "keepvip.sock")
	var logged syncLog
	ctx, cancel := context.WithCancel(context.Background())
	var runErr error
	done := make(chan struct{}) // closed when Run has returned runErr
	go func() {
		defer close(done)
		runErr = Run(ctx, Options{ConfigFile: cfgPath, StatusSocket: sock, MetricsAddr: addr,
			Logger: slog.New(slog.NewTextHandler(&logged, nil))})
	}()
	defer func() {
		cancel()
		<-done
		if runErr != nil {
			t.Errorf("Run: %v", runErr)
		}
	}()
	status := func() *Status { return statusOf(sock) }
	waitFor(t, "master", func() bool {
		select {
		case <-done:
			t.Fatalf("Run returned with the metrics port taken: %v", runErr)
		default:
		}
		s := status()
		return s != nil && len(s.Instances) == 1 && s.Instances[0].State == vrrp.StateMaster
	})
	s := status()
	if m := s.Metrics; m == nil || m.Serving || m.Addr != addr || !strings.Contains(m.Error, "address already in use") || !slices.Contains(m.Holders, uint32(os.Getuid())) {
		t.Errorf("status of the metrics listener with its port taken = %+v; want not serving, the error and the holder's uid %d", m, os.Getuid())
	}
	for _, ready := range []bool{false, true} {
		if err := GetHealth(context.Background(), sock, ready); err != nil {
			t.Errorf("GetHealth(ready %t) with the metrics port taken: %v", ready, err)
		}
	}

	squatter.Close()
	get := func(path string) (int, string) {
		c := http.Client{Timeout: 2 * time.Second}
		resp, err := c.Get("http://" + addr + path)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	waitLong(t, "metrics served once the port is free", func() bool {
		code, body := get("/metrics")
		return code == http.StatusOK && strings.Contains(body, "keepvip_vrrp_state")
	})
	if code, body := get("/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if m := status().Metrics; m == nil || !m.Serving || m.Error != "" {
		t.Errorf("status of the metrics listener serving = %+v", m)
	}
	// Said once when it failed (not at each retry), and once when it
	// listens.
	log := logged.String()
	if n := strings.Count(log, "metrics cannot listen"); n != 1 {
		t.Errorf("logged %d times that metrics cannot listen; want once:\n%s", n, log)
	}
	if !strings.Contains(log, "metrics listening now") {
		t.Errorf("did not log that metrics listen now:\n%s", log)
	}
}

// syncLog keeps what a logger writes from several goroutines.
type syncLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// A metrics listener stopped while it is still trying to listen stops
// trying: it never takes the port later.
func TestMetricsServerStopsRetrying(t *testing.T) {
	squatter, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer squatter.Close()
	d := &daemon{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	m, err := d.serveMetrics(squatter.Addr().String(), prometheus.NewRegistry(), newHealth(&stuckInstances{}, time.Second))
	if err != nil {
		t.Fatalf("serveMetrics on a port in use = %v; want it to retry in the background", err)
	}
	if st := m.status(); st.Serving || st.Attempts != 1 {
		t.Errorf("status after the first attempt = %+v", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := m.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown: %v", err)
	}
	select {
	case <-m.done:
	default:
		t.Fatal("Shutdown returned with the listening goroutine still running")
	}
}

// A VIP as the metrics address stays an error at start: it is one of the
// configuration, not of the moment.
func TestMetricsOnAVIPRefused(t *testing.T) {
	d := &daemon{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	d.refuseVIPs(map[netip.Addr]bool{netip.MustParseAddr("192.0.2.100"): true})
	_, err := d.serveMetrics("192.0.2.100:9742", prometheus.NewRegistry(), newHealth(&stuckInstances{}, time.Second))
	if err == nil || !strings.Contains(err.Error(), "is a VIP of the configuration") {
		t.Errorf("serveMetrics on a VIP = %v; want refused", err)
	}
}

// The metrics listener bounds what a client can make it hold: a header
// is at most metricsMaxHeaderBytes (plus net/http's slack), a request
// that dribbles its body is cut by ReadTimeout, and the connections
// served at once are at most metricsMaxConns.
func TestMetricsServerBounds(t *testing.T) {
	d := &daemon{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	m, err := d.serveMetrics("127.0.0.1:0", prometheus.NewRegistry(), newHealth(&stuckInstances{}, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Shutdown(context.Background())
	if m.srv.MaxHeaderBytes != metricsMaxHeaderBytes || m.srv.ReadHeaderTimeout == 0 || m.srv.ReadTimeout == 0 || m.srv.WriteTimeout == 0 || m.srv.IdleTimeout == 0 {
		t.Errorf("metrics server limits: header %d bytes, timeouts header %v, read %v, write %v, idle %v; want all set",
			m.srv.MaxHeaderBytes, m.srv.ReadHeaderTimeout, m.srv.ReadTimeout, m.srv.WriteTimeout, m.srv.IdleTimeout)
	}
	// A listener of its own, wrapped as the server's: connections past
	// metricsMaxConns wait to be accepted.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	wl := m.wrap(l)
	defer wl.Close()
	var accepted []net.Conn
	defer func() {
		for _, c := range accepted {
			c.Close()
		}
	}()
	var dialed []net.Conn
	defer func() {
		for _, c := range dialed {
			c.Close()
		}
	}()
	for range metricsMaxConns + 1 {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		dialed = append(dialed, c)
	}
	got := make(chan net.Conn)
	go func() {
		for {
			c, err := wl.Accept()
			if err != nil {
				close(got)
				return
			}
			got <- c
		}
	}()
	for range metricsMaxConns {
		accepted = append(accepted, <-got)
	}
	select {
	case c := <-got:
		accepted = append(accepted, c)
		t.Fatalf("accepted connection %d with %d open; want at most %d at once", len(accepted), len(accepted)-1, metricsMaxConns)
	case <-time.After(200 * time.Millisecond):
	}
	accepted[0].Close()
	accepted = accepted[1:]
	select {
	case c := <-got:
		accepted = append(accepted, c)
	case <-time.After(5 * time.Second):
		t.Fatal("a connection closed did not make room for the next")
	}
	wl.Close()
	for c := range got {
		c.Close()
	}
}

// listeners finds the uid of a socket listening on a port, by the
// address it was asked for, a wildcard, or either family's wildcard.
func TestListeners(t *testing.T) {
	for _, network := range []string{"tcp4", "tcp6"} {
		host := "127.0.0.1"
		if network == "tcp6" {
			host = "::1"
		}
		l, err := net.Listen(network, net.JoinHostPort(host, "0"))
		if err != nil {
			t.Logf("%s: %v", network, err)
			continue
		}
		port := l.Addr().(*net.TCPAddr).AddrPort().Port()
		uid := uint32(os.Getuid())
		for _, ask := range []string{host, "", "0.0.0.0", "::"} {
			addr := net.JoinHostPort(ask, fmtPort(port))
			if got := listeners(addr); !slices.Contains(got, uid) {
				t.Errorf("listeners(%s) with %s listening on %s = %v; want uid %d among them", addr, network, l.Addr(), got, uid)
			}
		}
		other := "192.0.2.77"
		if network == "tcp6" {
			other = "2001:db8::77"
		}
		if got := listeners(net.JoinHostPort(other, fmtPort(port))); slices.Contains(got, uid) {
			t.Errorf("listeners(%s) = %v: %s listens on %s only", other, got, network, l.Addr())
		}
		l.Close()
	}
}

func fmtPort(p uint16) string { return strconv.Itoa(int(p)) }
