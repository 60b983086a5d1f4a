//go:build vmtest

package lvs

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func sh(t *testing.T, cmd string) string {
	t.Helper()
	out, err := exec.Command("sh", "-c", cmd).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	return string(out)
}

// The daemon commands against the kernel, as ipvsadm sees them: start
// with the kernel's defaults and with every setting given, list, the
// kernel's errors for a second start, a stop of nothing and an unknown
// interface.
func TestKernelSyncDaemonCommands(t *testing.T) {
	sh(t, "ip link add kvsync0 type veth peer name kvsync1 && ip addr add 10.99.0.1/24 dev kvsync0 && ip link set kvsync0 up && ip link set kvsync1 up")
	t.Cleanup(func() {
		exec.Command("ipvsadm", "--stop-daemon", "master").Run()
		exec.Command("ipvsadm", "--stop-daemon", "backup").Run()
		exec.Command("ip", "link", "del", "kvsync0").Run()
	})
	if err := StartSyncDaemon(SyncDaemon{Role: SyncMaster, Interface: "kvsync0", SyncID: 51}); err != nil {
		t.Fatal(err)
	}
	group := netip.MustParseAddr("239.1.2.3")
	if err := StartSyncDaemon(SyncDaemon{Role: SyncBackup, Interface: "kvsync1", SyncID: 52, MaxLen: 1400, Group: group, Port: 9000, TTL: 2}); err != nil {
		t.Fatal(err)
	}
	got, err := SyncDaemons()
	if err != nil {
		t.Fatal(err)
	}
	want := []SyncDaemon{
		{Role: SyncMaster, Interface: "kvsync0", SyncID: 51, MaxLen: 1472, Group: netip.MustParseAddr("224.0.0.81"), Port: 8848, TTL: 1},
		{Role: SyncBackup, Interface: "kvsync1", SyncID: 52, MaxLen: 1400, Group: group, Port: 9000, TTL: 2},
	}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("SyncDaemons() = %+v\nwant %+v", got, want)
	}
	out := sh(t, "ipvsadm -L --daemon")
	for _, w := range []string{"master sync daemon (mcast=kvsync0, syncid=51", "backup sync daemon (mcast=kvsync1, syncid=52"} {
		if !strings.Contains(out, w) {
			t.Errorf("ipvsadm -L --daemon lacks %q:\n%s", w, out)
		}
	}
	if err := StartSyncDaemon(SyncDaemon{Role: SyncMaster, Interface: "kvsync0", SyncID: 1}); !errors.Is(err, syscall.EEXIST) {
		t.Errorf("a second master: %v; want EEXIST", err)
	}
	for _, r := range []SyncRole{SyncMaster, SyncBackup} {
		if err := StopSyncDaemon(r); err != nil {
			t.Fatal(err)
		}
		if err := StopSyncDaemon(r); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("stopping the %s daemon again: %v; want ESRCH", r, err)
		}
	}
	if got, err := SyncDaemons(); err != nil || len(got) != 0 {
		t.Errorf("after stopping both: %+v %v", got, err)
	}
	if err := StartSyncDaemon(SyncDaemon{Role: SyncBackup, Interface: "nosuch0", SyncID: 1}); !errors.Is(err, syscall.ENODEV) {
		t.Errorf("an unknown interface: %v; want ENODEV", err)
	}
}

// inNetns runs f on a locked thread inside the named network namespace.
func inNetns(t *testing.T, name string, f func() error) error {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // the thread dies with the goroutine: never unlocked
		ns, err := os.Open("/run/netns/" + name)
		if err != nil {
			errc <- err
			return
		}
		defer ns.Close()
		if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		errc <- f()
	}()
	return <-errc
}

// A connection through a master director shows up in a backup's table,
// marked as synced: the two daemons, started with these commands in two
// namespaces, speak to each other.
func TestKernelSyncDaemonsSyncAConnection(t *testing.T) {
	sh(t, `set -e
ip netns add kvs-a; ip netns add kvs-b; ip netns add kvs-c; ip netns add kvs-r
ip link add kvs-br type bridge; ip link set kvs-br up
for n in a b c r; do
  ip link add kvs-$n type veth peer name eth0 netns kvs-$n
  ip link set kvs-$n master kvs-br up
  ip -n kvs-$n link set lo up; ip -n kvs-$n link set eth0 up
done
ip -n kvs-a addr add 10.98.0.1/24 dev eth0
ip -n kvs-b addr add 10.98.0.2/24 dev eth0
ip -n kvs-c addr add 10.98.0.50/24 dev eth0
ip -n kvs-r addr add 10.98.0.20/24 dev eth0
ip -n kvs-r addr add 10.98.0.100/32 dev lo
for n in a b; do
  ip netns exec kvs-$n ipvsadm -A -t 10.98.0.100:80 -s rr
  ip netns exec kvs-$n ipvsadm -a -t 10.98.0.100:80 -r 10.98.0.20:80 -g
done
ip -n kvs-a addr add 10.98.0.100/32 dev eth0
ip -n kvs-c route add 10.98.0.100/32 via 10.98.0.1
`)
	t.Cleanup(func() {
		for _, n := range []string{"a", "b", "c", "r"} {
			exec.Command("ip", "netns", "del", "kvs-"+n).Run()
			exec.Command("ip", "link", "del", "kvs-"+n).Run()
		}
		exec.Command("ip", "link", "del", "kvs-br").Run()
	})
	if err := inNetns(t, "kvs-b", func() error {
		return StartSyncDaemon(SyncDaemon{Role: SyncBackup, Interface: "eth0", SyncID: 9})
	}); err != nil {
		t.Fatal(err)
	}
	if err := inNetns(t, "kvs-a", func() error {
		return StartSyncDaemon(SyncDaemon{Role: SyncMaster, Interface: "eth0", SyncID: 9})
	}); err != nil {
		t.Fatal(err)
	}
	// A real server that listens, and a client that connects through a
	// (direct routing: the reply goes straight back) and sends a little.
	srv := exec.Command("ip", "netns", "exec", "kvs-r", "busybox", "nc", "-l", "-p", "80")
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Process.Kill()
	time.Sleep(200 * time.Millisecond)
	cli := exec.Command("ip", "netns", "exec", "kvs-c", "sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10; do echo hello; sleep 0.1; done | busybox nc 10.98.0.100 80")
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	defer cli.Process.Kill()
	var conns string
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		out, _ := exec.Command("ip", "netns", "exec", "kvs-b", "cat", "/proc/net/ip_vs_conn_sync").CombinedOutput()
		conns = string(out)
		for _, line := range strings.Split(conns, "\n") {
			if f := strings.Fields(line); len(f) >= 9 && f[1] == "0A620032" && f[8] == "SYNC" { // the client, 10.98.0.50
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	a, _ := exec.Command("ip", "netns", "exec", "kvs-a", "cat", "/proc/net/ip_vs_conn_sync").CombinedOutput()
	t.Fatalf("the backup has no synced connection from the client:\n%s\nthe master has:\n%s", conns, a)
}
