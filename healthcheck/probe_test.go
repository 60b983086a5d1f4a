package healthcheck

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// Real probes against servers on loopback.
func TestProbes(t *testing.T) {
	ok := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ready" && r.Host == "app.example" {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer ok.Close()
	okAddr := netip.MustParseAddrPort(ok.Listener.Addr().String())

	// A port nothing listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := netip.MustParseAddrPort(l.Addr().String())
	l.Close()

	// A server that accepts and never answers.
	silent, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	go func() {
		for {
			c, err := silent.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	silentAddr := netip.MustParseAddrPort(silent.Addr().String())

	tests := []struct {
		name string
		t    Target
		want string // "" for success, else part of the error
	}{
		{"tcp open", Target{Addr: okAddr, Check: Check{Kind: TCP}}, ""},
		{"tcp refused", Target{Addr: closed, Check: Check{Kind: TCP}}, "connection refused"},
		{"http status", Target{Addr: okAddr, Check: Check{Kind: HTTP, Path: "/ready", Host: "app.example", Status: 200}}, ""},
		{"http wrong status", Target{Addr: okAddr, Check: Check{Kind: HTTP, Path: "/other", Status: 200}}, "HTTP 503, want 200"},
		{"http expects 503", Target{Addr: okAddr, Check: Check{Kind: HTTP, Path: "/other", Status: 503}}, ""},
		{"http silent", Target{Addr: silentAddr, Check: Check{Kind: HTTP, Path: "/", Status: 200}}, "timed out"},
		{"http refused", Target{Addr: closed, Check: Check{Kind: HTTP, Path: "/", Status: 200}}, "connection refused"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			err := netProber{}.Probe(ctx, &tt.t)
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Probe = %v; want success", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Probe = %v; want an error with %q", err, tt.want)
			}
		})
	}
}

// The whole Checker with real probes: a server that goes away is marked
// down within interval × fall + timeout, and up again when it returns.
func TestCheckerDetectsRealServerGoingAway(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := netip.MustParseAddrPort(l.Addr().String())
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	changes := make(chan Result, 10)
	c := New(Options{Logger: quiet(), OnChange: func(r Result) { changes <- r }})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)
	chk := Check{Kind: TCP, Interval: 100 * time.Millisecond, Timeout: 50 * time.Millisecond, Retries: 0, Rise: 1, Fall: 2}
	c.Sync(ctx, []Target{{Key: "rs", Addr: addr, Check: chk}})
	time.Sleep(150 * time.Millisecond)
	l.Close()
	gone := time.Now()
	select {
	case r := <-changes:
		if r.Healthy {
			t.Fatalf("first change is %+v", r)
		}
		// Bound: interval × fall + timeout, plus the phase of the
		// first round that sees it (up to one interval).
		if d := time.Since(gone); d > 3*chk.Interval+chk.Timeout+100*time.Millisecond {
			t.Errorf("down after %v", d)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the checker did not notice the server going away")
	}
}
