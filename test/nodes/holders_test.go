package nodes_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/keepvip/keepvip/test/framework/kubenodes"
)

// holderWatch samples which nodes hold a VIP every few milliseconds, over
// netlink in each node's namespace, and keeps every change: the evidence
// for "nobody held it" and "two held it".
type holderWatch struct {
	vip  netip.Addr
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	changes []holderChange
	end     time.Time // when sampling stopped
	err     error
}

type holderChange struct {
	at      time.Time
	holders []string
}

const holderEvery = 5 * time.Millisecond

func watchHolders(t *testing.T, c *kubenodes.Cluster, vip string) *holderWatch {
	t.Helper()
	w := &holderWatch{vip: netip.MustParseAddr(vip), stop: make(chan struct{}), done: make(chan struct{})}
	handles := map[string]*netlink.Handle{}
	for _, n := range c.Nodes {
		ns, err := netns.GetFromPath("/run/netns/" + n.Lab.NS)
		if err != nil {
			t.Fatal(err)
		}
		h, err := netlink.NewHandleAt(ns)
		ns.Close()
		if err != nil {
			t.Fatal(err)
		}
		handles[n.Name] = h
	}
	go func() {
		defer close(w.done)
		defer func() {
			for _, h := range handles {
				h.Close()
			}
		}()
		tick := time.NewTicker(holderEvery)
		defer tick.Stop()
		var last []string
		defer func() {
			// The last sample ends the timeline.
			w.mu.Lock()
			w.end = time.Now()
			w.mu.Unlock()
		}()
		for first := true; ; first = false {
			var now []string
			for name, h := range handles {
				addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
				if err != nil {
					w.mu.Lock()
					w.err = fmt.Errorf("%s: listing addresses: %w", name, err)
					w.mu.Unlock()
					return
				}
				for _, a := range addrs {
					if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == w.vip {
						now = append(now, name)
						break
					}
				}
			}
			slices.Sort(now)
			if first || !slices.Equal(now, last) {
				w.mu.Lock()
				w.changes = append(w.changes, holderChange{time.Now(), now})
				w.mu.Unlock()
				last = now
			}
			select {
			case <-w.stop:
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(w.Stop)
	return w
}

// Err is why sampling stopped early, if it did: the figures are not to be
// trusted then.
func (w *holderWatch) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Stop ends the sampling; the changes stay.
func (w *holderWatch) Stop() {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
}

// held returns, from t0 on, the longest and the total time with n holders
// of the VIP (0: nobody, 2: two at once).
func (w *holderWatch) held(t0 time.Time, n int) (longest, total time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	end := w.end
	if end.IsZero() {
		end = time.Now()
	}
	for i, c := range w.changes {
		until := end
		if i+1 < len(w.changes) {
			until = w.changes[i+1].at
		}
		if until.Before(t0) || len(c.holders) != n {
			continue
		}
		d := until.Sub(maxTime(c.at, t0))
		total += d
		longest = max(longest, d)
	}
	return longest, total
}

// moves counts the changes of holder from t0 on (a node taking the VIP
// from another, or taking it after nobody had it).
func (w *holderWatch) moves(t0 time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	var prev string
	n := 0
	for _, c := range w.changes {
		if len(c.holders) != 1 {
			continue
		}
		if prev != "" && c.holders[0] != prev && !c.at.Before(t0) {
			n++
		}
		prev = c.holders[0]
	}
	return n
}

// String is the timeline, for failure messages.
func (w *holderWatch) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	var b strings.Builder
	if w.err != nil {
		fmt.Fprintf(&b, "sampling stopped: %v\n", w.err)
	}
	for _, c := range w.changes {
		fmt.Fprintf(&b, "  %s %v\n", c.at.Format("15:04:05.000"), c.holders)
	}
	return b.String()
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
