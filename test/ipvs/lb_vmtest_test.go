//go:build vmtest

// Package ipvs holds the end-to-end test of keepvip's load balancing, with
// real traffic: a client namespace sends HTTP requests to a VIP held by
// keepvip in a director namespace, IPVS forwards them to backend
// namespaces, and the backends answer with their name. It needs IPVS and
// runs in the test VM (make test-vm).
package ipvs

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keepvip/keepvip/test/framework/lab"
	"github.com/keepvip/keepvip/vrrp"
)

// backend is an HTTP server inside a node that answers with its name.
type backend struct {
	t    *testing.T // the test that owns it: servers live until it ends
	name string
	node *lab.Node
	addr string // listen address inside the node
	mu   sync.Mutex
	l    net.Listener
}

func (b *backend) start() {
	t := b.t
	t.Helper()
	var l net.Listener
	err := b.node.Do(func() error {
		var err error
		l, err = net.Listen("tcp", b.addr)
		return err
	})
	if err != nil {
		t.Fatalf("backend %s: %v", b.name, err)
	}
	b.mu.Lock()
	b.l = l
	b.mu.Unlock()
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, b.name)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
}

// stop closes the listener: new connections are refused.
func (b *backend) stop() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.l.Close()
}

// client sends requests from a node, each on a new connection, from a
// chosen source address.
type client struct{ node *lab.Node }

func (c client) get(src netip.Addr, url string) (string, error) {
	tr := &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := c.node.Do(func() error {
				d := net.Dialer{Timeout: 2 * time.Second}
				if src.IsValid() {
					d.LocalAddr = &net.TCPAddr{IP: src.AsSlice()}
				}
				var err error
				conn, err = d.DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}
	defer tr.CloseIdleConnections()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// counts sends n requests and counts the answers by backend name.
func (c client) counts(t *testing.T, src netip.Addr, url string, n int) map[string]int {
	t.Helper()
	out := map[string]int{}
	for i := range n {
		start := time.Now()
		name, err := c.get(src, url)
		if err != nil {
			t.Fatalf("GET %s from %v (request %d of %d, %v): %v\n%s", url, src, i+1, n, time.Since(start), err, diagnose(c.node.Lab()))
		}
		out[name]++
	}
	return out
}

// diagnose dumps what explains a stuck connection.
func diagnose(l *lab.Lab) string {
	var b strings.Builder
	for _, cmd := range []struct{ node, cmd string }{
		{"director", "ipvsadm -Ln; ipvsadm -Lnc; sysctl net.ipv4.vs.conn_reuse_mode net.ipv4.vs.expire_nodest_conn net.ipv4.vs.conntrack"},
		{"client", "ip neigh; ss -tan"},
		{"director", "ip neigh; ip addr show dev eth0"},
	} {
		out, err := l.Node(cmd.node).Exec(context.Background(), "sh", "-c", cmd.cmd)
		fmt.Fprintf(&b, "--- %s: %s (%v)\n%s\n", cmd.node, cmd.cmd, err, out)
	}
	return b.String()
}

// addNode adds a node with an IPv4 address to l, or fails t.
func addNode(t *testing.T, l *lab.Lab, name, v4 string) *lab.Node {
	t.Helper()
	n, err := l.AddNode(name, netip.MustParsePrefix(v4), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func sh(t *testing.T, n *lab.Node, cmd string) string {
	t.Helper()
	out, err := n.Exec(context.Background(), "sh", "-c", cmd)
	if err != nil {
		t.Fatalf("%s: %s: %v", n.Name, cmd, err)
	}
	return string(out)
}

const keepvipConfig = `
instances:
  - name: vi
    interface: eth0
    vrid: 1
    priority: 200
    advertInterval: 100ms
    vips: [192.0.2.100/24, 192.0.2.101/24]
virtualServers:
  - name: nat-rr
    vip: 192.0.2.100
    port: 80
    scheduler: rr
    healthCheck: {type: http, interval: 500ms, timeout: 200ms, retries: 0, rise: 1, fall: 2}
    realServers:
      - {address: 10.0.0.11, port: 8080}
      - {address: 10.0.0.12, port: 8080}
      - {address: 10.0.0.13, port: 8080}
  - name: nat-sh
    vip: 192.0.2.100
    port: 81
    scheduler: sh
    healthCheck: {type: none}
    realServers:
      - {address: 10.0.0.11, port: 8080}
      - {address: 10.0.0.12, port: 8080}
      - {address: 10.0.0.13, port: 8080}
  - name: nat-persistent
    vip: 192.0.2.100
    port: 82
    scheduler: rr
    persistence: {timeout: 60s}
    healthCheck: {type: none}
    realServers:
      - {address: 10.0.0.11, port: 8080}
      - {address: 10.0.0.12, port: 8080}
      - {address: 10.0.0.13, port: 8080}
  - name: dr-rr
    vip: 192.0.2.101
    port: 80
    scheduler: rr
    forwarding: dr
    healthCheck: {type: tcp, interval: 500ms, timeout: 200ms, retries: 0}
    realServers:
      - {address: 192.0.2.21}
      - {address: 192.0.2.22}
      - {address: 192.0.2.23}
kernel:
  ipvs: required
`

func TestLoadBalancing(t *testing.T) {
	l := lab.ForTest(t)
	add := func(name, v4 string) *lab.Node { return addNode(t, l, name, v4) }
	dir := add("director", "192.0.2.10/24")
	cli := add("client", "192.0.2.50/24")
	// More source addresses for the source-hashing test.
	for i := 51; i <= 60; i++ {
		sh(t, cli, fmt.Sprintf("ip addr add 192.0.2.%d/24 dev eth0", i))
	}
	// NAT backends: a second subnet on the same segment, routed back
	// through the director, which rewrites the replies.
	sh(t, dir, "ip addr add 10.0.0.1/24 dev eth0 && sysctl -qw net.ipv4.ip_forward=1")
	var nat []*backend
	for i := 1; i <= 3; i++ {
		n := add(fmt.Sprintf("b%d", i), fmt.Sprintf("10.0.0.1%d/24", i))
		sh(t, n, "ip route add 192.0.2.0/24 via 10.0.0.1")
		b := &backend{t: t, name: n.Name, node: n, addr: ":8080"}
		b.start()
		nat = append(nat, b)
	}
	// DR backends: on the client's subnet, the VIP on lo, not answering
	// ARP for it; they reply to the client directly from the VIP.
	var dr []*backend
	for i := 1; i <= 3; i++ {
		n := add(fmt.Sprintf("d%d", i), fmt.Sprintf("192.0.2.2%d/24", i))
		sh(t, n, "ip addr add 192.0.2.101/32 dev lo && sysctl -qw net.ipv4.conf.eth0.arp_ignore=1 net.ipv4.conf.eth0.arp_announce=2 net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2")
		// Listening on every address: the VIP for the traffic, the real
		// address for the health check.
		b := &backend{t: t, name: n.Name, node: n, addr: ":80"}
		b.start()
		dr = append(dr, b)
	}

	state := "--state-dir=" + l.Dir()
	k, err := dir.StartKeepvip(keepvipConfig, state)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := k.WaitState(ctx, "vi", vrrp.StateMaster); err != nil {
		t.Fatal(err)
	}
	t.Logf("ipvsadm on the director:\n%s", sh(t, dir, "ipvsadm -Ln"))
	// The kernel settings keepvip applies by default; with NAT real
	// servers on the clients' segment, no ICMP redirects (else they answer
	// the clients directly, and connections hang now and then).
	for key, want := range map[string]string{
		"net.ipv4.vs.conntrack": "0", "net.ipv4.vs.expire_nodest_conn": "1",
		"net.ipv4.vs.expire_quiescent_template": "1", "net.ipv4.ip_nonlocal_bind": "1",
		"net.ipv4.conf.all.send_redirects": "0", "net.ipv4.conf.eth0.send_redirects": "0",
	} {
		if got := strings.TrimSpace(sh(t, dir, "sysctl -n "+key)); got != want {
			t.Errorf("%s = %s; want %s", key, got, want)
		}
	}
	c := client{cli}
	src := netip.MustParseAddr("192.0.2.50")

	t.Run("nat round robin", func(t *testing.T) {
		got := c.counts(t, src, "http://192.0.2.100/", 30)
		if got["b1"] != 10 || got["b2"] != 10 || got["b3"] != 10 {
			t.Errorf("30 requests by rr: %v; want 10 each", got)
		}
		// No real server was taught to answer the client directly.
		for _, b := range nat {
			if r := sh(t, b.node, "ip route get 192.0.2.50"); strings.Contains(r, "redirected") || !strings.Contains(r, "via 10.0.0.1") {
				t.Errorf("%s reaches the client by %q, not through the director", b.name, strings.TrimSpace(r))
			}
		}
	})
	t.Run("source hashing is sticky per client", func(t *testing.T) {
		used := map[string]bool{}
		for i := 51; i <= 60; i++ {
			s := netip.MustParseAddr(fmt.Sprintf("192.0.2.%d", i))
			got := c.counts(t, s, "http://192.0.2.100:81/", 5)
			if len(got) != 1 {
				t.Errorf("client %v spread over %v; want one backend", s, got)
			}
			for name := range got {
				used[name] = true
			}
		}
		if len(used) < 2 {
			t.Errorf("10 clients all hashed to %v", used)
		}
	})
	t.Run("persistence keeps a client on one backend", func(t *testing.T) {
		got := c.counts(t, src, "http://192.0.2.100:82/", 12)
		if len(got) != 1 {
			t.Errorf("12 requests with persistence went to %v; want one backend", got)
		}
		other := c.counts(t, netip.MustParseAddr("192.0.2.51"), "http://192.0.2.100:82/", 3)
		if len(other) != 1 {
			t.Errorf("another client spread over %v", other)
		}
	})
	t.Run("direct routing", func(t *testing.T) {
		got := c.counts(t, src, "http://192.0.2.101/", 30)
		if got["d1"] != 10 || got["d2"] != 10 || got["d3"] != 10 {
			// The evidence: IPVS's connection entries (did every request
			// go through the director?) and whose MAC the client has
			// for the VIP (a real server answering ARP for it would
			// take requests past IPVS).
			var checks []string
			for _, l := range strings.Split(k.Log(), "\n") {
				if strings.Contains(l, "health check: real server") {
					checks = append(checks, l)
				}
			}
			t.Errorf("30 requests by DR rr: %v; want 10 each (a real server that went down and up meanwhile shifts rr by one turn)\nhealth changes:\n%s\n%s",
				got, strings.Join(checks, "\n"), diagnose(c.node.Lab()))
		}
	})
	t.Run("a dead backend leaves the rotation and comes back", func(t *testing.T) {
		// Bound: interval x fall + timeout, plus up to one interval for
		// the phase of the round that sees it, plus slack.
		const interval, fall, timeout = 500 * time.Millisecond, 2, 200 * time.Millisecond
		bound := interval*fall + timeout + interval + 500*time.Millisecond
		weight := func() string {
			for _, line := range strings.Split(sh(t, dir, "ipvsadm -Ln -t 192.0.2.100:80"), "\n") {
				f := strings.Fields(line)
				if len(f) >= 4 && f[1] == "10.0.0.12:8080" {
					return f[3]
				}
			}
			return "absent"
		}
		nat[1].stop()
		killed := time.Now()
		for weight() != "0" {
			if time.Since(killed) > bound+2*time.Second {
				t.Fatalf("b2 still has weight %s %v after it died", weight(), time.Since(killed))
			}
			time.Sleep(20 * time.Millisecond)
		}
		took := time.Since(killed)
		t.Logf("b2 drained %v after it died (bound %v)", took.Round(time.Millisecond), bound)
		if took > bound {
			t.Errorf("drained after %v; want within %v", took, bound)
		}
		got := c.counts(t, src, "http://192.0.2.100/", 20)
		if got["b2"] != 0 || got["b1"] != 10 || got["b3"] != 10 {
			t.Errorf("with b2 down: %v; want b1 and b3 only", got)
		}
		st, err := k.Status(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var line string
		for _, vs := range st.VirtualServers {
			for _, r := range vs.RealServers {
				if vs.Name == "nat-rr" && r.Address == "10.0.0.12:8080" {
					line = fmt.Sprintf("%s weight %d of %d %s", r.Health, r.Weight, r.ConfiguredWeight, r.Reason)
				}
			}
		}
		if !strings.HasPrefix(line, "unhealthy weight 0 of 1") {
			t.Errorf("status of b2: %q", line)
		}
		// Back: listening again, restored within a round or two.
		nat[1].start()
		back := time.Now()
		for weight() != "1" {
			if time.Since(back) > bound+2*time.Second {
				t.Fatalf("b2 not restored %v after it came back", time.Since(back))
			}
			time.Sleep(20 * time.Millisecond)
		}
		t.Logf("b2 restored %v after it came back", time.Since(back).Round(time.Millisecond))
		if got := c.counts(t, src, "http://192.0.2.100/", 30); got["b2"] != 10 {
			t.Errorf("after b2 came back: %v", got)
		}
	})
	t.Run("a keepvip restart keeps services and established connections", func(t *testing.T) {
		// One keep-alive connection through the VIP, across the restart.
		tr := &http.Transport{DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := cli.Do(func() error {
				var err error
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		}, MaxIdleConnsPerHost: 1}
		defer tr.CloseIdleConnections()
		keep := &http.Client{Transport: tr, Timeout: 3 * time.Second}
		var local []string
		get := func() string {
			t.Helper()
			resp, err := keep.Get("http://192.0.2.100:82/")
			if err != nil {
				t.Fatalf("GET on the kept connection: %v\n%s", err, diagnose(l))
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			return string(b)
		}
		first := get()
		local = append(local, sh(t, cli, "ss -tn state established '( dport = :82 )' | tail -n +2"))
		before := sh(t, dir, "ipvsadm -Sn | sort")
		if err := k.Kill(); err != nil {
			t.Fatal(err)
		}
		if out := sh(t, dir, "ipvsadm -Sn | sort"); out != before {
			t.Fatalf("IPVS changed when keepvip died:\n%s\nwas\n%s", out, before)
		}
		k2, err := dir.StartKeepvip(keepvipConfig, state)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		if err := k2.WaitState(ctx, "vi", vrrp.StateMaster); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second) // a few health-check rounds
		if out := sh(t, dir, "ipvsadm -Sn | sort"); out != before {
			t.Errorf("IPVS after the restart:\n%s\nwas\n%s", out, before)
		}
		second := get()
		local = append(local, sh(t, cli, "ss -tn state established '( dport = :82 )' | tail -n +2"))
		if second != first || local[0] != local[1] || local[0] == "" {
			t.Errorf("the connection did not survive: %s then %s, sockets %q", first, second, local)
		}
	})
}

// keepvip cleanup after a crash removes the IPVS services keepvip created
// (its state file says which) and its state, and leaves another's service
// on the same host as it is.
func TestCleanupRemovesOwnedServices(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	dir, k, state := cleanupDirector(ctx, t, "", `
- {vip: 192.0.2.100, port: 80, scheduler: rr, realServers: [{address: 10.0.0.11, port: 8080}, {address: 10.0.0.12, port: 8080}]}
- {vip: 192.0.2.100, port: 443, realServers: [{address: 10.0.0.11, port: 8443}]}
`)
	// Someone else's service, on another VIP.
	sh(t, dir, "ipvsadm -A -t 192.0.2.99:80 -s wlc && ipvsadm -a -t 192.0.2.99:80 -r 10.0.0.13:80 -m")
	if got := sh(t, dir, "ipvsadm -Ln"); !strings.Contains(got, "192.0.2.100:443") || !strings.Contains(got, "192.0.2.99:80") {
		t.Fatalf("before: %s", got)
	}
	if err := k.Kill(); err != nil {
		t.Fatal(err)
	}
	bin, err := lab.KeepvipBinary()
	if err != nil {
		t.Fatal(err)
	}
	out, err := dir.Exec(ctx, bin, "cleanup", "--state-dir", state)
	if err != nil {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	t.Logf("cleanup:\n%s", out)
	got := sh(t, dir, "ipvsadm -Ln")
	if strings.Contains(got, "192.0.2.100") || !strings.Contains(got, "192.0.2.99:80") || !strings.Contains(got, "10.0.0.13:80") {
		t.Errorf("after cleanup:\n%s", got)
	}
	if !strings.Contains(string(out), "removed IPVS service 192.0.2.100:80/tcp") || !strings.Contains(string(out), "ipvs.json") {
		t.Errorf("cleanup said:\n%s", out)
	}
	if _, err := os.Stat(filepath.Join(state, "ipvs.json")); !os.IsNotExist(err) {
		t.Errorf("the state file is left: %v", err)
	}
}

// keepvip cleanup leaves every IPVS service that is not keepvip's: one
// kube-proxy (here ipvsadm) had at a VIP:port keepvip's configuration
// also wanted (keepvip refused it, so its state file does not list it),
// and those a state file from before a reboot names. A damaged state file
// makes it fail, naming the file and keeping it, and remove nothing.
func TestCleanupKeepsOthersServices(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir, k, state := cleanupDirector(ctx, t,
		"ipvsadm -A -t 192.0.2.100:8080 -s wlc && ipvsadm -a -t 192.0.2.100:8080 -r 10.0.0.13:80 -m", `
- {vip: 192.0.2.100, port: 80, realServers: [{address: 10.0.0.11, port: 8080}]}
- {vip: 192.0.2.100, port: 8080, realServers: [{address: 10.0.0.11, port: 8080}]}
`)
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(sh(t, dir, "ipvsadm -Ln"), "192.0.2.100:80 "); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("keepvip's service is not there:\n%s\n%s", sh(t, dir, "ipvsadm -Ln"), k.Log())
		}
	}
	if err := k.Kill(); err != nil {
		t.Fatal(err)
	}
	bin, err := lab.KeepvipBinary()
	if err != nil {
		t.Fatal(err)
	}
	ipvsJSON := filepath.Join(state, "ipvs.json")
	good, err := os.ReadFile(ipvsJSON)
	if err != nil {
		t.Fatal(err)
	}
	// Damaged: nothing removed, the file kept, a failure naming it.
	damaged := good[:len(good)/2]
	if err := os.WriteFile(ipvsJSON, damaged, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := dir.Exec(ctx, bin, "cleanup", "--state-dir", state)
	if err == nil || !strings.Contains(string(out), "damaged") {
		t.Errorf("cleanup with a damaged state file = %v\n%s", err, out)
	}
	if b, _ := os.ReadFile(ipvsJSON); string(b) != string(damaged) {
		t.Errorf("the damaged state file was changed: %q", b)
	}
	if got := sh(t, dir, "ipvsadm -Ln"); !strings.Contains(got, "192.0.2.100:80 ") || !strings.Contains(got, "192.0.2.100:8080") {
		t.Errorf("after a failed cleanup:\n%s", got)
	}
	// From before a reboot: the services it names are not keepvip's.
	old := strings.Replace(string(good), `"bootID": "`, `"bootID": "0`, 1)
	if err := os.WriteFile(ipvsJSON, []byte(old), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := dir.Exec(ctx, bin, "cleanup", "--state-dir", state); err != nil {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	if got := sh(t, dir, "ipvsadm -Ln"); !strings.Contains(got, "192.0.2.100:80 ") {
		t.Errorf("cleanup with a state file from before a reboot removed the service it names:\n%s", got)
	}
	// The real one: keepvip's goes, kube-proxy's at the same VIP stays.
	if err := os.WriteFile(ipvsJSON, good, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = dir.Exec(ctx, bin, "cleanup", "--state-dir", state)
	if err != nil {
		t.Fatalf("cleanup: %v\n%s", err, out)
	}
	t.Logf("cleanup:\n%s", out)
	got := sh(t, dir, "ipvsadm -Ln")
	if strings.Contains(got, "192.0.2.100:80 ") || !strings.Contains(got, "192.0.2.100:8080") || !strings.Contains(got, "10.0.0.13:80") {
		t.Errorf("after cleanup:\n%s", got)
	}
	if strings.Contains(string(out), "8080") {
		t.Errorf("cleanup reports removing a service that is not keepvip's:\n%s", out)
	}
}

// cleanupDirector starts keepvip with a state directory on a director
// node, after first (a shell command: another program's services, or
// ""), with the instance vi on 192.0.2.100 and the virtual servers vs (a
// YAML list), and waits until it is master.
func cleanupDirector(ctx context.Context, t *testing.T, first, vs string) (dir *lab.Node, k *lab.Keepvip, state string) {
	t.Helper()
	l := lab.ForTest(t)
	dir, err := l.AddNode("director", netip.MustParsePrefix("192.0.2.10/24"), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	state = filepath.Join(l.Dir(), "state")
	if first != "" {
		sh(t, dir, first)
	}
	k, err = dir.StartKeepvip(`
instances:
- {name: vi, interface: eth0, vrid: 51, priority: 200, advertInterval: 100ms, vips: [192.0.2.100]}
virtualServers:`+vs, "--state-dir", state)
	if err != nil {
		t.Fatal(err)
	}
	if err := k.WaitState(ctx, "vi", vrrp.StateMaster); err != nil {
		t.Fatal(err)
	}
	return dir, k, state
}
