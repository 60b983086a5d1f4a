package announce

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/keepvip/keepvip/routes"
	"github.com/keepvip/keepvip/vrrp"
)

type fakeExporter struct {
	mu    sync.Mutex
	syncs chan []routes.Route
	fail  int // Syncs to fail
}

func (f *fakeExporter) Sync(_ context.Context, rs []routes.Route) error {
	f.mu.Lock()
	fail := f.fail > 0
	f.fail--
	f.mu.Unlock()
	f.syncs <- rs
	if fail {
		return errors.New("peer gone")
	}
	return nil
}

func (f *fakeExporter) Close() error { return nil }

func prefixes(rs []routes.Route) string {
	s := ""
	for _, r := range rs {
		if s != "" {
			s += " "
		}
		s += r.String()
	}
	return s
}

func TestRoutesFollowStates(t *testing.T) {
	exp := &fakeExporter{syncs: make(chan []routes.Route, 10)}
	var lat []time.Duration
	var latMu sync.Mutex
	c := New(exp, slog.New(slog.NewTextHandler(io.Discard, nil)), func(d time.Duration) { latMu.Lock(); lat = append(lat, d); latMu.Unlock() })
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	next := func(what string) string {
		t.Helper()
		select {
		case rs := <-exp.syncs:
			return prefixes(rs)
		case <-time.After(5 * time.Second):
			t.Fatalf("no Sync after %s", what)
			return ""
		}
	}
	p := netip.MustParsePrefix
	worse := routes.Route{Prefix: p("192.0.2.101/32"), Prepend: 3}
	c.Set([]VIP{
		{Instance: "a", Master: routes.Route{Prefix: p("192.0.2.100/32")}},
		{Instance: "b", Master: routes.Route{Prefix: p("192.0.2.101/32")}, Backup: &worse},
	}, []routes.Route{{Prefix: p("198.51.100.0/24")}})
	if got := next("Set"); got != "198.51.100.0/24" {
		t.Errorf("before any state: %q", got)
	}
	c.Transition("a", vrrp.Transition{To: vrrp.StateMaster})
	if got := next("a master"); got != "192.0.2.100/32 198.51.100.0/24" {
		t.Errorf("a master: %q", got)
	}
	c.Transition("b", vrrp.Transition{To: vrrp.StateBackup})
	if got := next("b backup"); got != "192.0.2.100/32 192.0.2.101/32 prepend 3 198.51.100.0/24" {
		t.Errorf("b backup: %q", got)
	}
	c.Transition("b", vrrp.Transition{To: vrrp.StateMaster})
	c.Transition("a", vrrp.Transition{To: vrrp.StateFault})
	// The two changes may come as one Sync or two: the last counts.
	got := next("b master, a fault")
	for quiet := false; !quiet; {
		select {
		case rs := <-exp.syncs:
			got = prefixes(rs)
		case <-time.After(200 * time.Millisecond):
			quiet = true
		}
	}
	if got != "192.0.2.101/32 198.51.100.0/24" {
		t.Errorf("b master, a fault: %q", got)
	}
	// A failed Sync is retried without a new change.
	exp.mu.Lock()
	exp.fail = 1
	exp.mu.Unlock()
	c.Transition("a", vrrp.Transition{To: vrrp.StateBackup})
	first := next("a backup")
	if retried := next("the retry"); retried != first {
		t.Errorf("retry synced %q, the failed one %q", retried, first)
	}
	for deadline := time.Now().Add(time.Second); ; time.Sleep(time.Millisecond) {
		if _, err := c.Status(); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Errorf("status after the retry: %v", err)
			break
		}
	}
	latMu.Lock()
	defer latMu.Unlock()
	if len(lat) < 4 {
		t.Errorf("%d latencies reported", len(lat))
	}
}
