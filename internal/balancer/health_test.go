package balancer

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/keepvip/keepvip/healthcheck"
	"github.com/keepvip/keepvip/lvs"
)

// closedPort returns a loopback port nothing listens on: connections to
// it are refused.
func closedPort(t *testing.T) uint16 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := netip.MustParseAddrPort(l.Addr().String()).Port()
	l.Close()
	return port
}

// A real server found down by its check comes back when the check changes
// its port or type: a changed check starts afresh, healthy until its own
// rounds say otherwise, and the weight in IPVS follows at once. It used to
// stay at 0 for good: the balancer kept the old check's verdict while the
// checker, starting the new check healthy, had nothing to report.
//
// The real checker probes real loopback sockets; time is synctest's.
func TestChangedCheckStartsHealthy(t *testing.T) {
	// The servers live outside the bubble: an HTTP server that accepts
	// connections but answers 503, and a port that refuses them.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	}))
	defer srv.Close()
	open := netip.MustParseAddrPort(srv.Listener.Addr().String()).Port()
	closed := closedPort(t)

	tcpCheck := healthcheck.DefaultCheck()
	tcpCheck.Retries = 0
	httpCheck := tcpCheck
	httpCheck.Kind = healthcheck.HTTP
	httpRise2 := httpCheck
	httpRise2.Rise = 2
	checked := func(c healthcheck.Check, port uint16) Service {
		return Service{
			Name: "web",
			Service: lvs.Service{
				Key:       lvs.Key{Addr: netip.MustParseAddr("192.0.2.100"), Port: 80, Proto: lvs.TCP},
				Scheduler: "rr",
				Reals:     []lvs.RealServer{{Addr: netip.MustParseAddr("127.0.0.1"), Port: 8080, Weight: 3}},
			},
			Check:     &c,
			CheckPort: port,
		}
	}
	const down, up = "127.0.0.1:8080=0", "127.0.0.1:8080=3"
	for _, tc := range []struct {
		name          string
		before, after Service
		want          string // in IPVS once the check changed, and rounds after
	}{
		{"port", checked(tcpCheck, closed), checked(tcpCheck, open), up},
		{"type", checked(httpCheck, open), checked(tcpCheck, open), up},
		// Not a new check: the verdict stays until rounds change it.
		{"rise only", checked(httpCheck, open), checked(httpRise2, open), down},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				d := newFakeDirector()
				var b *Balancer
				hc := healthcheck.New(healthcheck.Options{Logger: quiet(), OnChange: func(r healthcheck.Result) { b.HealthChanged(r) }})
				b = New(d, hc, Options{Logger: quiet()})
				ctx, cancel := context.WithCancel(context.Background())
				var wg sync.WaitGroup
				wg.Go(func() { hc.Run(ctx) })
				wg.Go(func() { b.Run(ctx) })
				defer wg.Wait()
				defer cancel()

				key := tc.before.Key
				if err := b.Sync(ctx, []Service{tc.before}); err != nil {
					t.Fatal(err)
				}
				time.Sleep(tc.before.Check.Interval) // its first round
				synctest.Wait()
				if got := d.reals(key); got != down {
					t.Fatalf("after a failed round, IPVS has %s; want %s", got, down)
				}

				if err := b.Sync(ctx, []Service{tc.after}); err != nil {
					t.Fatal(err)
				}
				if got := d.reals(key); got != tc.want {
					t.Errorf("once the check changed, IPVS has %s; want %s", got, tc.want)
				}
				time.Sleep(3 * tc.after.Check.Interval)
				synctest.Wait()
				if got := d.reals(key); got != tc.want {
					t.Errorf("three rounds of the changed check later, IPVS has %s; want %s", got, tc.want)
				}
			})
		})
	}
}
