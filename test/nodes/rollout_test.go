package nodes_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keepvip/keepvip/test/framework/kubenodes"
	"github.com/keepvip/keepvip/test/framework/lab"
)

// echoPort is where every node serves TCP echo: the service behind the
// VIP that the client keeps connections open to.
const echoPort = 8080

// serveEcho listens on echoPort in every node's network namespace until
// the test ends.
func serveEcho(t *testing.T, c *kubenodes.Cluster) {
	t.Helper()
	for _, n := range c.Nodes {
		var l net.Listener
		if err := n.Lab.Do(func() (err error) {
			l, err = net.Listen("tcp", fmt.Sprintf(":%d", echoPort))
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		go func() {
			for {
				conn, err := l.Accept()
				if err != nil {
					return
				}
				go func() {
					defer conn.Close()
					io.Copy(conn, conn)
				}()
			}
		}()
	}
}

// connWatch keeps n TCP connections from the client to vip:echoPort, each
// exchanging a byte every 50 ms; a connection that fails (reset, no echo
// within a second) is counted lost and replaced.
type connWatch struct {
	lost    atomic.Int64
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	mu      sync.Mutex
	reasons []string
}

func keepConnections(t *testing.T, c *kubenodes.Cluster, vip string, n int) *connWatch {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	w := &connWatch{cancel: cancel}
	dial := func() (net.Conn, error) {
		var conn net.Conn
		err := c.Client.Do(func() (err error) {
			conn, err = net.DialTimeout("tcp", net.JoinHostPort(vip, fmt.Sprint(echoPort)), time.Second)
			return err
		})
		return conn, err
	}
	up := make(chan error, n)
	for i := range n {
		w.wg.Add(1)
		go func() {
			defer w.wg.Done()
			first := true
			for ctx.Err() == nil {
				conn, err := dial()
				if first {
					up <- err
					first = false
				}
				if err != nil {
					time.Sleep(50 * time.Millisecond)
					continue
				}
				err = exchange(ctx, conn)
				conn.Close()
				if ctx.Err() == nil {
					w.lost.Add(1)
					w.mu.Lock()
					w.reasons = append(w.reasons, fmt.Sprintf("%s conn %d: %v", time.Now().Format("15:04:05.000"), i, err))
					w.mu.Unlock()
				}
			}
		}()
	}
	for range n {
		if err := <-up; err != nil {
			w.stop()
			t.Fatalf("connecting to %s:%d: %v", vip, echoPort, err)
		}
	}
	t.Cleanup(w.stop)
	return w
}

func exchange(ctx context.Context, conn net.Conn) error {
	b := []byte{'x'}
	for ctx.Err() == nil {
		conn.SetDeadline(time.Now().Add(time.Second))
		if _, err := conn.Write(b); err != nil {
			return err
		}
		if _, err := io.ReadFull(conn, b); err != nil {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("stopped")
}

func (w *connWatch) stop() {
	w.cancel()
	w.wg.Wait()
}

// A rolling update of keepvip (kubectl rollout restart) must not cost the
// clients anything: the client pings the VIP every millisecond and keeps
// TCP connections to the service behind it through the whole rollout.
// Targets: no gap longer than one advert interval, the VIP moving at most
// once, never two nodes answering for it.
func TestRollingRestart(t *testing.T) {
	c := cluster(t)
	const vip = "192.0.2.103"
	master := withVIP(t, c, vip)
	serveEcho(t, c)
	probe, err := lab.StartProber(t.Context(), c.Client, mustAddr(vip), time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Stop()
	hw := watchHolders(t, c, vip)
	conns := keepConnections(t, c, vip, 20)
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	if _, err := c.Kubectl(t.Context(), "rollout", "restart", "-n", namespace, "daemonset/keepvip"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Kubectl(t.Context(), "rollout", "status", "-n", namespace, "daemonset/keepvip", "--timeout=5m"); err != nil {
		t.Fatalf("%v\n%s", err, c.Describe(context.Background(), namespace))
	}
	rolled := time.Now()
	// The order the DaemonSet controller replaced the pods in (it picks
	// among the available old pods in no particular order).
	var order []string
	byTime := pods(t, c)
	for len(byTime) > 0 {
		first := ""
		for n, p := range byTime {
			if first == "" || p.CreationTimestamp.Time.Before(byTime[first].CreationTimestamp.Time) {
				first = n
			}
		}
		order = append(order, first)
		delete(byTime, first)
	}
	time.Sleep(3 * advert)
	conns.stop()
	hw.Stop()
	probe.Stop()
	if err := hw.Err(); err != nil {
		t.Fatal(err)
	}
	gap, _ := probe.LongestGap(start, time.Time{})
	two, twoTotal := hw.held(start, 2)
	nobody, _ := hw.held(start, 0)
	moves := hw.moves(start)
	st := probe.Stats()
	t.Logf("figure: rollout restart of 3 nodes in %v (master %s, replaced in the order %v): client's longest gap %v (%d pings lost of %d), VIP moved %d times, nobody held it %v, two held it %v at most (%v in all), %d duplicate replies, %d TCP connections lost",
		rolled.Sub(start).Round(100*time.Millisecond), master, order, gap.Duration.Round(time.Millisecond), st.Sent-st.Replied, st.Sent, moves, nobody, two, twoTotal, st.Dups, conns.lost.Load())
	t.Logf("BENCH kube_rollout_client_gap_max_ms %.1f ms", float64(gap.Duration)/1e6)
	t.Logf("BENCH kube_rollout_connections_lost %d count", conns.lost.Load())
	t.Logf("BENCH kube_rollout_vip_moves %d count", moves)
	if gap.Duration > advert {
		t.Errorf("client gap %v, want at most one advert interval (%v)", gap.Duration, advert)
	}
	// A master hands its VIPs off when its pod is replaced, to a node
	// whose pod the controller may replace later: when the master's pod
	// goes first or in the middle, the VIP moves twice. Once is the target
	// (issue #12) and needs the master's pod replaced last; until then,
	// twice is the bound.
	if moves > 2 {
		t.Errorf("the VIP moved %d times in one rollout, want at most twice:\n%s", moves, hw)
	}
	// Never nobody; two at once only for the handoff's grace, the 20 ms
	// the stopping master keeps the VIP after the new master's first
	// advert (its GARP reaches the clients meanwhile), measured to the
	// 5 ms sampling. Connections go with each move (no connection sync
	// without IPVS), and only then.
	if nobody > 0 {
		t.Errorf("nobody held %s for %v during the rollout:\n%s", vip, nobody, hw)
	}
	if two > 100*time.Millisecond {
		t.Errorf("two nodes held %s for %v at once:\n%s", vip, two, hw)
	}
	if lost := conns.lost.Load(); lost > int64(20*moves) {
		t.Errorf("%d TCP connections lost, more than the 20 that each of %d moves costs", lost, moves)
	}
	if t.Failed() {
		conns.mu.Lock()
		t.Logf("connections lost:\n%v", conns.reasons)
		conns.mu.Unlock()
	}
}
