package daemon

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"
)

const (
	// metricsRetryFirst and metricsRetryMax bound the wait between two
	// attempts to listen for metrics: doubling from the first to the
	// most, so that a port freed is served within metricsRetryMax.
	metricsRetryFirst = time.Second
	metricsRetryMax   = 5 * time.Second
	// metricsRelog is how often a metrics listener that still cannot
	// listen logs again, if the reason changed.
	metricsRelog = 10 * time.Minute

	// metricsMaxConns bounds the connections the metrics listener
	// serves at once (the others wait in the kernel's accept queue):
	// any local user may connect, and each connection costs a goroutine
	// and its buffers. Prometheus and a curl or two need a handful.
	metricsMaxConns = 256
	// metricsMaxHeaderBytes bounds a request's header (net/http adds
	// 4 KiB of slack): Prometheus and curl send a few hundred bytes;
	// the default, 1 MiB, let each connection of a slowloris hold a
	// megabyte.
	metricsMaxHeaderBytes = 8 << 10
)

// MetricsStatus is what `keepvip status` says of the metrics listener.
type MetricsStatus struct {
	Addr    string `json:"addr"`
	Serving bool   `json:"serving"`
	// Since is when it started serving or, if it is not serving, when
	// the first attempt to listen failed.
	Since time.Time `json:"since"`
	// Error is why it is not serving: the last attempt's error. It is
	// retried every few seconds (at most metricsRetryMax apart).
	Error    string `json:"error,omitempty"`
	Attempts int    `json:"attempts,omitempty"`
	// Holders are the uids of the sockets listening in the way, when the
	// address is in use (from /proc/net/tcp and tcp6).
	Holders []uint32 `json:"holders,omitempty"`
}

// metricsServer serves /metrics, /healthz and /readyz on an address, and
// listens there in the background until it can: any local user may take
// a port above 1023 first (on a hostNetwork pod, any process of the
// node), and that must cost the metrics, not VRRP and IPVS, nor make
// keepvip exit and restart. Being what any local user can connect to, it
// bounds the connections it serves, their header size and how long each
// may take.
type metricsServer struct {
	addr string
	log  *slog.Logger
	srv  *http.Server
	// wrap is what the listener is served through: vipListener, over
	// a bound on the connections served at once.
	wrap func(net.Listener) net.Listener

	stopOnce sync.Once
	stop     chan struct{} // closed by Shutdown
	done     chan struct{} // closed when run has returned

	mu sync.Mutex
	st MetricsStatus
	// logged is the error last logged, and when; lookedUp is when
	// st.Holders were.
	logged             string
	loggedAt, lookedUp time.Time
}

// serveMetrics serves /metrics, /healthz and /readyz on addr, never on a
// VIP: a connection to one is closed at once, and a request on a kept-
// alive connection to an address that became a VIP since is aborted.
// A VIP as addr is an error of the configuration; an address that cannot
// be listened on now (in use, not yet on the node) is retried in the
// background (see metricsServer).
// checkMetricsAddr refuses a metrics address that is not HOST:PORT or
// whose host is a VIP (isVIP).
func checkMetricsAddr(addr string, isVIP func(netip.Addr) bool) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("metrics address %q: %w", addr, err)
	}
	if a, err := netip.ParseAddr(host); err == nil && isVIP(a) {
		return fmt.Errorf("metrics address %s: %s is a VIP of the configuration; keepvip never serves metrics on a VIP (use the node's address)", addr, a)
	}
	return nil
}

func (d *daemon) serveMetrics(addr string, reg *prometheus.Registry, h *health) (*metricsServer, error) {
	if err := checkMetricsAddr(addr, func(a netip.Addr) bool { return d.onVIP(net.TCPAddrFromAddrPort(netip.AddrPortFrom(a, 0))) }); err != nil {
		return nil, err
	}
	refused := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keepvip_metrics_refused_total",
		Help: "Connections to the metrics listener made to a VIP, closed unanswered.",
	})
	if err := reg.Register(refused); err != nil {
		return nil, fmt.Errorf("registering the metrics listener's counter: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, MaxRequestsInFlight: 4}))
	mux.Handle("GET /healthz", h)
	mux.HandleFunc("GET /readyz", d.serveReady)
	notOnVIP := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok && d.onVIP(a) {
			refused.Inc()
			panic(http.ErrAbortHandler) // closes the connection, unanswered and unlogged
		}
		mux.ServeHTTP(w, r)
	})
	m := &metricsServer{
		addr: addr,
		log:  d.log,
		srv: &http.Server{
			Handler:           notOnVIP,
			ReadHeaderTimeout: 5 * time.Second,
			// A request's body (none is wanted) and a response's
			// writing are bounded too: a client that dribbles the one
			// or does not read the other is cut.
			ReadTimeout:    10 * time.Second,
			WriteTimeout:   15 * time.Second,
			IdleTimeout:    30 * time.Second,
			MaxHeaderBytes: metricsMaxHeaderBytes,
		},
		wrap: func(l net.Listener) net.Listener {
			return vipListener{Listener: netutil.LimitListener(l, metricsMaxConns), onVIP: d.onVIP, refused: refused}
		},
		stop: make(chan struct{}),
		done: make(chan struct{}),
		st:   MetricsStatus{Addr: addr},
	}
	// The first attempt now: in the usual case metrics listen before
	// VRRP starts, as they always did.
	l, _ := m.listen()
	go m.run(l)
	return m, nil
}

// listen makes one attempt to listen on m.addr and records its outcome.
func (m *metricsServer) listen() (net.Listener, error) {
	l, err := net.Listen("tcp", m.addr)
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	m.st.Attempts++
	if err == nil {
		if !m.st.Serving && m.st.Attempts > 1 {
			m.log.Info("metrics listening now", "addr", l.Addr().String(), "after", now.Sub(m.st.Since).Round(time.Millisecond), "attempts", m.st.Attempts)
		}
		m.st = MetricsStatus{Addr: m.addr, Serving: true, Since: now}
		host, _, _ := net.SplitHostPort(m.addr)
		if a, err := netip.ParseAddr(host); host == "" || (err == nil && a.IsUnspecified()) {
			m.log.Info("metrics listen on every address of the node; connections to a VIP are closed unanswered", "addr", l.Addr().String())
		}
		return l, nil
	}
	if m.st.Attempts == 1 {
		m.st.Since = now
	}
	m.st.Error = err.Error()
	// Whose socket is in the way is the first thing an operator asks;
	// looked up once a minute at most.
	switch {
	case !errors.Is(err, syscall.EADDRINUSE):
		m.st.Holders = nil
	case m.lookedUp.IsZero() || now.Sub(m.lookedUp) >= time.Minute:
		m.st.Holders, m.lookedUp = listeners(m.addr), now
	}
	if m.logged == "" || m.st.Error != m.logged && now.Sub(m.loggedAt) >= metricsRelog {
		msg := "metrics cannot listen; VRRP and IPVS run without them, and keepvip tries again every few seconds (keepvip status shows it)"
		if m.logged != "" {
			msg = "metrics still cannot listen, for another reason"
		}
		m.log.Warn(msg, "addr", m.addr, "err", err, "heldBy", uidList(m.st.Holders))
		m.logged, m.loggedAt = m.st.Error, now
	}
	return nil, err
}

// run listens until it can (l is the first attempt's listener, nil if
// it failed), then serves until Shutdown.
func (m *metricsServer) run(l net.Listener) {
	defer close(m.done)
	wait := metricsRetryFirst
	for l == nil {
		t := time.NewTimer(wait)
		select {
		case <-m.stop:
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, metricsRetryMax)
		l, _ = m.listen()
	}
	// After Shutdown, Serve returns at once (and closes l).
	if err := m.srv.Serve(m.wrap(l)); err != nil && !errors.Is(err, http.ErrServerClosed) {
		m.log.Error("metrics server", "err", err)
	}
}

// status returns the listener's state.
func (m *metricsServer) status() *MetricsStatus {
	m.mu.Lock()
	defer m.mu.Unlock()
	s := m.st
	s.Holders = slices.Clone(s.Holders)
	return &s
}

// Shutdown stops trying to listen, and serving.
func (m *metricsServer) Shutdown(ctx context.Context) error {
	m.stopOnce.Do(func() { close(m.stop) })
	err := m.srv.Shutdown(ctx)
	select {
	case <-m.done:
	case <-ctx.Done():
		if err == nil {
			err = ctx.Err()
		}
	}
	return err
}

func uidList(uids []uint32) string {
	if len(uids) == 0 {
		return "unknown"
	}
	s := make([]string, len(uids))
	for i, u := range uids {
		s[i] = "uid " + strconv.FormatUint(uint64(u), 10)
	}
	return strings.Join(s, ", ")
}

// listeners returns the uids owning the TCP sockets listening where addr
// would: on its port, at its address or a wildcard (or anywhere, if addr
// is a wildcard or a name), as /proc/net/tcp and tcp6 of the caller's
// network namespace list them.
func listeners(addr string) []uint32 {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return nil
	}
	want, err := netip.ParseAddr(host)
	if err == nil {
		want = want.Unmap()
	}
	var uids []uint32
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		for _, s := range procNetListeners(f) {
			a := s.addr.Addr().Unmap()
			if s.addr.Port() != uint16(port) || want.IsValid() && !want.IsUnspecified() && !a.IsUnspecified() && a != want {
				continue
			}
			if !slices.Contains(uids, s.uid) {
				uids = append(uids, s.uid)
			}
		}
	}
	slices.Sort(uids)
	return uids
}

type procNetSocket struct {
	addr netip.AddrPort
	uid  uint32
}

// procNetListeners reads the listening sockets of a /proc/net/tcp file:
//
//	sl  local_address rem_address   st tx_queue:rx_queue tr:tm->when retrnsmt  uid ...
//	 0: 0100007F:2616 00000000:0000 0A 00000000:00000000 00:00000000 00000000    0 ...
//
// The address is printed as 32-bit words in host byte order.
func procNetListeners(path string) []procNetSocket {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	var out []procNetSocket
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 || fields[3] != "0A" { // TCP_LISTEN
			continue
		}
		hexAddr, hexPort, ok := strings.Cut(fields[1], ":")
		raw, err1 := hex.DecodeString(hexAddr)
		port, err2 := strconv.ParseUint(hexPort, 16, 16)
		uid, err3 := strconv.ParseUint(fields[7], 10, 32)
		if !ok || err1 != nil || err2 != nil || err3 != nil || len(raw)%4 != 0 {
			continue
		}
		for i := 0; i < len(raw); i += 4 {
			binary.NativeEndian.PutUint32(raw[i:], binary.BigEndian.Uint32(raw[i:]))
		}
		a, ok := netip.AddrFromSlice(raw)
		if !ok {
			continue
		}
		out = append(out, procNetSocket{addr: netip.AddrPortFrom(a, uint16(port)), uid: uint32(uid)})
	}
	return out
}
