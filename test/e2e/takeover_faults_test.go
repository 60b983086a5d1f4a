package e2e

// keepvip run --take-over when things go wrong: each test is a fault a
// hostile review of the feature found (and that failed before its fix).

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/keepvip/keepvip/internal/daemon"
	"github.com/keepvip/keepvip/test/framework/lab"
	"github.com/keepvip/keepvip/vrrp"
)

// rvWaitReady waits until the keepvip on socket says ready.
func rvWaitReady(t *testing.T, k *lab.Keepvip) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), clWait)
	defer cancel()
	for {
		err := daemon.GetHealth(ctx, k.Socket(), true)
		if err == nil {
			return
		}
		select {
		case <-k.Proc().Exited():
			t.Fatalf("successor exited before it was ready:\n%s", k.Log())
		default:
		}
		if ctx.Err() != nil {
			t.Fatalf("successor never ready: %v\n%s", err, k.Log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A successor that could not run (here its configuration is one this
// version rejects; a typo made while upgrading) fails before it says
// ready, while the running keepvip still holds everything: a rollout
// waits on it, and nothing moves. (It used to say ready, take the VIPs
// over and exit, leaving them on a with no keepvip, and b took them too.)
func TestTakeOverSuccessorThatCannotStartIsNeverReady(t *testing.T) {
	c := newClCluster(t)
	cfg := func(n string) string { return clConfig(clV4(clPrio[n])) }
	c.startABC(cfg)
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitBackupOf("b", "v4", c.v4("a"), 150)

	bad := filepath.Join(t.TempDir(), "new.yaml")
	if err := os.WriteFile(bad, []byte(strings.Replace(cfg("a"), "priority: 150", "priority: 300", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	succ, err := c.nodes["a"].StartKeepvipArgs("--config", bad, "--take-over", "--status-socket", filepath.Join(t.TempDir(), "succ.sock"))
	if err != nil {
		t.Fatal(err)
	}
	c.all = append(c.all, succ)
	select {
	case <-succ.Proc().Exited():
	case <-time.After(clWait):
		t.Fatalf("the successor with a configuration it cannot load still runs:\n%s", succ.Log())
	}
	if err := succ.Proc().Wait(); err == nil || !strings.Contains(succ.Log(), "priority: 300") {
		t.Errorf("the successor exited with %v; want an error naming the bad field:\n%s", err, clTail(clNoDebug(succ.Log()), 1500))
	}
	if err := daemon.GetHealth(context.Background(), succ.Socket(), true); err == nil {
		t.Error("the successor that could not start said ready")
	}
	time.Sleep(5 * clAdv)
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitBackupOf("b", "v4", c.v4("a"), 150)
	c.wantVIPs("a", clVIP4)
	if s, err := c.kv["a"].Status(context.Background()); err != nil || s.Handover != nil && s.Handover.Successor != 0 {
		t.Errorf("the running keepvip still sees a successor: %+v, %v", s, err)
	}
}

// A client holding a connection to the running keepvip's metrics port
// (anyone on the network can: the DaemonSet listens on the node's
// address) does not delay the successor: "go" is sent right after the
// last advert, the servers close after. (It used to be sent after them:
// 2 s of silence, and b took over at 100 ms adverts.)
func TestTakeOverStalledMetricsClient(t *testing.T) {
	c := newClCluster(t)
	cfg := func(n string) string { return clConfig(clV4(clPrio[n])) }
	metrics := func(n string) string { return c.v4(n).String() + ":9742" }
	for _, n := range []string{"a", "b", "c"} {
		c.start(n, cfg(n), "--metrics-addr", metrics(n))
	}
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitBackupOf("b", "v4", c.v4("a"), 150)
	w := c.watch()
	old := c.kv["a"]
	succ := c.start("a", cfg("a"), "--take-over", "--metrics-addr", metrics("a"), "--status-socket", filepath.Join(t.TempDir(), "succ.sock"))
	rvWaitReady(t, succ)
	time.Sleep(3 * clAdv)
	bBefore := c.waitState("b", "v4", vrrp.StateBackup)

	// A client that connects to the metrics port and says nothing.
	var conn net.Conn
	if err := c.client.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", metrics("a"), time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	time.Sleep(50 * time.Millisecond)

	sig := time.Now()
	if err := old.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("running keepvip took %v to exit after SIGTERM", time.Since(sig).Round(time.Millisecond))
	as := c.waitState("a", "v4", vrrp.StateMaster)
	tr := c.mustLast(as, "a", vrrp.StateMaster)
	t.Logf("successor MASTER %v after SIGTERM (%s)", tr.At.Sub(sig).Round(time.Millisecond), tr.Reason)
	time.Sleep(5 * clAdv)
	bNow := c.mustInst("b", "v4")
	if n := len(bNow.Transitions) - len(bBefore.Transitions); n > 0 {
		t.Errorf("b changed state %d times across the takeover (split brain): %s", n, clTrString(bNow.Transitions[len(bBefore.Transitions):]))
	}
	var prev time.Time
	var widest time.Duration
	for _, a := range w.Adverts() {
		if a.Time.Before(sig.Add(-2*clAdv)) || a.VRID != clVRID || a.Src != c.v4("a") {
			continue
		}
		if !prev.IsZero() {
			widest = max(widest, a.Time.Sub(prev))
		}
		prev = a.Time
	}
	t.Logf("widest gap between a's adverts across the takeover: %v (Master_Down_Interval of b %v)", widest.Round(time.Millisecond), clMDI(120))
	delete(c.kv, "a")
	c.kv["a"] = succ
}

// A successor that said "ready" and is gone before "go" (it was killed,
// it crashed, its pod was deleted): the running keepvip sees Go fail,
// takes the VIPs back and hands them off as a stopping keepvip does. (It
// used to exit with them on the node and nobody running them.)
func TestTakeOverSuccessorGoneAfterReady(t *testing.T) {
	c := newClCluster(t)
	cfg := func(n string) string { return clConfig(clV4(clPrio[n])) }
	c.startABC(cfg)
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitBackupOf("b", "v4", c.v4("a"), 150)

	// A successor speaking the protocol (as root, as the real one).
	var conn net.Conn
	if err := c.nodes["a"].Do(func() (err error) {
		conn, err = net.Dial("unix", "@keepvip-handover")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "{\"successor\":%d}\n", os.Getpid())
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil || !strings.Contains(line, "holder") {
		t.Fatalf("holder's answer %q, %v", line, err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		l, err := r.ReadString('\n')
		if err == nil && strings.Contains(l, "prepare") {
			fmt.Fprint(conn, "{\"ready\":true}\n")
			conn.Close() // dies right after saying ready
		}
	}()
	old := c.kv["a"]
	if err := old.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	<-done
	delete(c.kv, "a")
	t.Logf("old keepvip's last lines:\n%s", clTail(clNoDebug(old.Log()), 900))
	c.waitState("b", "v4", vrrp.StateMaster)
	time.Sleep(5 * clAdv)
	if c.hasAddr("a", clVIP4.Addr()) && c.hasAddr("b", clVIP4.Addr()) {
		t.Errorf("VIP %v is on a (no keepvip runs there, and the one that left knew the successor did not get the word) AND on b", clVIP4)
	}
}

// A local user who is not root binds @keepvip-handover before keepvip
// starts: the running keepvip cannot be replaced in place (logged once,
// and in its status), and the successor, which says Ready so that a
// rollout goes on, warns once and says in its status that the VIPs will
// be handed off. (It warned every 200 ms while it waited.)
func TestTakeOverSquatterLogFlood(t *testing.T) {
	c := newClCluster(t)
	cfg := func(n string) string { return clConfig(clV4(clPrio[n])) }
	// Bind the name as uid 65534 on a thread of our own (setresuid is per
	// thread in the raw syscall): the kernel records the listener's creds.
	var squat int
	if err := c.nodes["a"].Do(func() error {
		if _, _, e := unix.RawSyscall(unix.SYS_SETRESUID, 65534, 65534, 65534); e != 0 {
			return e
		}
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			return err
		}
		if err := unix.Bind(fd, &unix.SockaddrUnix{Name: "@keepvip-handover"}); err != nil {
			return err
		}
		squat = fd
		return unix.Listen(fd, 8)
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(squat)
	c.startABC(cfg)
	c.waitState("a", "v4", vrrp.StateMaster)
	old := c.kv["a"]
	succ := c.start("a", cfg("a"), "--take-over", "--status-socket", filepath.Join(t.TempDir(), "succ.sock"))
	rvWaitReady(t, succ)
	time.Sleep(2 * time.Second)
	n := strings.Count(succ.Log(), "not waiting on the handover socket")
	t.Logf("successor logged %d warnings in ~2 s; running keepvip: %q", n, grepLine(old.Log(), "cannot be replaced"))
	if bin, err := lab.KeepvipBinary(); err == nil {
		out, _ := c.nodes["a"].Exec(context.Background(), bin, "status", "--socket", succ.Socket())
		t.Logf("keepvip status of the successor, though the running keepvip will hand off (priority 0) when stopped:\n%s", out)
	}
	if n > 2 {
		t.Errorf("successor logs a warning every poll (%d in ~2 s): a squatter floods the log", n)
	}
	if err := succ.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
}

func grepLine(log, s string) string {
	for _, l := range strings.Split(log, "\n") {
		if strings.Contains(l, s) {
			return l
		}
	}
	return ""
}

// A non-owner master with accept: false has its VIP's packets dropped by
// nftables table inet keepvip. The running keepvip leaves the table for
// the successor, which adopts it instead of pruning it (as after a
// crash): the table is there at every sample, 0.5 ms apart. (The
// successor pruned it and blocked again only at its first Sync: 4 ms
// with the VIP unfiltered.)
func TestTakeOverAcceptModeFilterGap(t *testing.T) {
	c := newClCluster(t)
	cfg := func(n string) string { return clConfig(clV4(clPrio[n], "accept: false")) }
	c.startABC(cfg)
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitBackupOf("b", "v4", c.v4("a"), 150)
	old := c.kv["a"]
	succ := c.start("a", cfg("a"), "--take-over", "--status-socket", filepath.Join(t.TempDir(), "succ.sock"))
	rvWaitReady(t, succ)

	type sample struct {
		at    time.Time
		table bool
	}
	var samples []sample
	stopped := make(chan struct{})
	res := make(chan error, 1)
	go func() {
		res <- c.nodes["a"].Do(func() error {
			deadline := time.Now().Add(3 * time.Second)
			for time.Now().Before(deadline) {
				conn, err := nftables.New()
				if err != nil {
					return err
				}
				tb, _ := conn.ListTableOfFamily("keepvip", nftables.TableFamilyINet)
				samples = append(samples, sample{time.Now(), tb != nil})
				select {
				case <-stopped:
					if len(samples) > 0 && time.Now().After(deadline.Add(-2*time.Second)) {
						return nil
					}
				default:
				}
				time.Sleep(500 * time.Microsecond)
			}
			return nil
		})
	}()
	time.Sleep(100 * time.Millisecond)
	sig := time.Now()
	if err := old.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	close(stopped)
	c.waitState("a", "v4", vrrp.StateMaster)
	if err := <-res; err != nil {
		t.Fatal(err)
	}
	delete(c.kv, "a")
	c.kv["a"] = succ
	var gapStart time.Time
	var gaps []string
	for _, s := range samples {
		switch {
		case !s.table && gapStart.IsZero():
			gapStart = s.at
		case s.table && !gapStart.IsZero():
			gaps = append(gaps, fmt.Sprintf("from %v to %v after SIGTERM", gapStart.Sub(sig).Round(time.Millisecond), s.at.Sub(sig).Round(time.Millisecond)))
			gapStart = time.Time{}
		}
	}
	if !gapStart.IsZero() {
		gaps = append(gaps, fmt.Sprintf("from %v after SIGTERM to the end", gapStart.Sub(sig).Round(time.Millisecond)))
	}
	t.Logf("%d samples; VIP %v held by a throughout: %v", len(samples), clVIP4.Addr(), c.hasAddr("a", clVIP4.Addr()))
	if len(gaps) > 0 {
		t.Errorf("table inet keepvip (accept: false) missing on a while it holds the VIP: %s", strings.Join(gaps, "; "))
	}
}

// The running keepvip leaves its ECMP VIPs for the successor. A successor
// whose configuration no longer has them (the operator removed the ECMP
// VIP while upgrading) releases them: the handover names their devices.
// (They stayed on the host for good.)
func TestTakeOverECMPLeftForGood(t *testing.T) {
	l := lab.ForTest(t)
	n, err := l.AddNode("a", netip.MustParsePrefix("192.0.2.11/24"), netip.MustParsePrefix("2001:db8::11/64"))
	if err != nil {
		t.Fatal(err)
	}
	inst := "instances:\n- {name: v4, interface: eth0, vrid: 51, priority: 200, advertInterval: 100ms, vips: [198.51.100.100/24]}\n"
	withECMP := inst + "routing:\n  exporter: kernel\n  kernelTable: {table: 100}\n  ecmp: [{vip: 192.0.2.200}]\n"
	state := filepath.Join(l.Dir(), "state-a")
	old, err := n.StartKeepvip(withECMP, "--state-dir", state)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := old.WaitState(ctx, "v4", vrrp.StateMaster); err != nil {
		t.Fatal(err)
	}
	ecmp := netip.MustParseAddr("192.0.2.200")
	onLo := func() bool {
		out, err := n.Exec(ctx, "ip", "-o", "addr", "show", "dev", "lo")
		if err != nil {
			t.Fatal(err)
		}
		return strings.Contains(string(out), " "+ecmp.String()+"/")
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if onLo() {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ECMP VIP never held:\n%s", old.Log())
		}
	}
	newCfg := filepath.Join(t.TempDir(), "new.yaml")
	if err := os.WriteFile(newCfg, []byte(inst), 0o644); err != nil {
		t.Fatal(err)
	}
	succ, err := n.StartKeepvipArgs("--config", newCfg, "--state-dir", state, "--take-over", "--status-socket", filepath.Join(t.TempDir(), "succ.sock"))
	if err != nil {
		t.Fatal(err)
	}
	rvWaitReady(t, succ)
	if err := old.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if err := succ.WaitState(ctx, "v4", vrrp.StateMaster); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	held := onLo()
	t.Logf("successor (no ECMP VIP configured) runs; ECMP VIP %v on the node: %v", ecmp, held)
	if err := succ.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if onLo() {
		out, _ := n.Exec(ctx, "ip", "-d", "addr", "show", "dev", "lo")
		t.Errorf("ECMP VIP %v still on the node after the successor, which does not configure it, stopped (no keepvip will ever remove it):\n%s", ecmp, out)
	}
}

// Two keepvips wait with --take-over (the second is told "busy", warns
// once and polls). The one told to go takes over; the second must not
// take the lock first in the moment between the running one's Leave and
// its "go" (which used to last as long as the servers took to close: 2 s
// with a stalled metrics connection).
func TestTakeOverSecondSuccessorSteals(t *testing.T) {
	c := newClCluster(t)
	cfg := func(n string) string { return clConfig(clV4(clPrio[n])) }
	metrics := c.v4("a").String() + ":9742"
	c.startABC(cfg)
	c.kv["a"].Stop(5 * time.Second)
	c.start("a", cfg("a"), "--metrics-addr", metrics)
	c.waitState("a", "v4", vrrp.StateMaster)
	old := c.kv["a"]
	s1 := c.start("a", cfg("a"), "--take-over", "--status-socket", filepath.Join(t.TempDir(), "s1.sock"))
	rvWaitReady(t, s1)
	s2 := c.start("a", cfg("a"), "--take-over", "--status-socket", filepath.Join(t.TempDir(), "s2.sock"))
	rvWaitReady(t, s2)
	time.Sleep(time.Second)
	t.Logf("second successor's 'busy' warnings in 1 s: %d", strings.Count(s2.Log(), "another keepvip waits to take over already"))
	var conn net.Conn
	if err := c.client.Do(func() (err error) {
		conn, err = net.DialTimeout("tcp", metrics, time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	time.Sleep(50 * time.Millisecond)
	if err := old.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	for name, k := range map[string]*lab.Keepvip{"s1 (told to go)": s1, "s2 (busy)": s2} {
		select {
		case <-k.Proc().Exited():
			t.Logf("%s exited: %v\n%s", name, k.Proc().Wait(), clTail(clNoDebug(k.Log()), 700))
		default:
			t.Logf("%s runs; took over: %v; started on its own: %v", name, strings.Contains(k.Log(), "taking over from the keepvip before"), strings.Contains(k.Log(), "starting on its own"))
		}
	}
	select {
	case <-s1.Proc().Exited():
		t.Errorf("the successor that was told to go exited (the lock was taken by the other waiting keepvip)")
	default:
	}
	s1.Stop(5 * time.Second)
	s2.Stop(5 * time.Second)
	delete(c.kv, "a")
}

// A successor that took the word and then cannot run what it took (here
// its lock directory became one it refuses, a shared sticky directory,
// after it said ready) hands it off rather than leave the VIPs on the
// node with no keepvip: with no Manager to send priority 0 either, it
// removes them, and b takes over after its Master_Down_Interval. Never
// two nodes holding the VIP.
func TestTakeOverSuccessorThatFailsAfterTheWordHandsOff(t *testing.T) {
	c := newClCluster(t)
	cfg := func(n string) string { return clConfig(clV4(clPrio[n])) }
	state := filepath.Join(c.l.Dir(), "state-a")
	c.start("a", cfg("a"), "--state-dir", state)
	c.start("b", cfg("b"))
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitBackupOf("b", "v4", c.v4("a"), 150)
	old := c.kv["a"]
	succ := c.start("a", cfg("a"), "--state-dir", state, "--take-over", "--status-socket", filepath.Join(t.TempDir(), "succ.sock"))
	rvWaitReady(t, succ)
	if err := os.Chmod(state, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Chmod(state, 0o700) })
	if err := old.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-succ.Proc().Exited():
	case <-time.After(clWait):
		t.Fatalf("the successor runs despite its lock directory:\n%s", succ.Log())
	}
	if err := succ.Proc().Wait(); err == nil || !strings.Contains(succ.Log(), "handing it off") {
		t.Errorf("successor exited with %v; want an error and the handoff:\n%s", err, clTail(clNoDebug(succ.Log()), 1500))
	}
	delete(c.kv, "a")
	c.waitState("b", "v4", vrrp.StateMaster)
	time.Sleep(3 * clAdv)
	if c.hasAddr("a", clVIP4.Addr()) {
		t.Errorf("VIP %v left on a, where no keepvip runs, while b is master", clVIP4)
	}
	c.wantVIPs("b", clVIP4)
}
