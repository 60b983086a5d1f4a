package vm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keepvip/keepvip/test/framework/netnstest"
)

// requireHost skips or fails (KEEPVIP_PRIVILEGED=1) a test that boots a
// machine when the host cannot.
func requireHost(t *testing.T) {
	t.Helper()
	if InGuest() {
		t.Skip("already in the VM")
	}
	if err := EnsureHost(context.Background()); err != nil {
		netnstest.Unavailable(t, err.Error())
	}
	// Download the kernel now if need be, not within a test's timeout.
	if _, err := Prepare(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestRun boots one machine for everything a run must bring back: exit
// statuses, both outputs byte for byte, environment, arguments that need
// quoting, copied binaries and files, the real ip and ipvsadm, and a
// command timeout that does not stop the commands after it.
func TestRun(t *testing.T) {
	requireHost(t)
	dir := t.TempDir()
	script := filepath.Join(dir, "args.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nprintf '[%s]' \"$@\"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	blob := make([]byte, 200_000)
	rand.Read(blob)
	if err := os.WriteFile(filepath.Join(dir, "blob"), blob, 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := Run(context.Background(), Options{
		Binaries: []string{script},
		Files:    map[string]string{"/data": dir},
		Env:      []string{"KV_TEST=a b 'c'"},
		Commands: [][]string{
			{"sh", "-c", "echo out; echo err >&2; exit 3"},
			{"sh", "-c", `echo "$KEEPVIP_IN_VM $KEEPVIP_PRIVILEGED $KV_TEST"`},
			{"args.sh", "it's", "two words", "$HOME", ""},
			{"cat", "/data/blob"},
			{"sh", "-c", "ip -V; ipvsadm -v; lsmod | grep -c '^ip_vs'"},
			{"sh", "-c", "echo started; exec sleep 600"},
			{"echo", "after the timeout"},
		},
		CommandTimeout: 6 * time.Second,
		Timeout:        3 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("boot %v, total %v", res.Boot, res.Elapsed)
	if len(res.Commands) != 7 {
		t.Fatalf("%d results", len(res.Commands))
	}
	check := func(i int, stdout, stderr string, status int) {
		t.Helper()
		c := res.Commands[i]
		if string(c.Stdout) != stdout || string(c.Stderr) != stderr || c.ExitCode != status {
			t.Errorf("command %d %q: stdout %q stderr %q status %d, want %q %q %d",
				i, c.Args, c.Stdout, c.Stderr, c.ExitCode, stdout, stderr, status)
		}
	}
	check(0, "out\n", "err\n", 3)
	check(1, "1 1 a b 'c'\n", "", 0)
	check(2, "[it's][two words][$HOME][]", "", 0)
	if c := res.Commands[3]; !bytes.Equal(c.Stdout, blob) || c.ExitCode != 0 {
		t.Errorf("cat /data/blob: %d bytes, status %d, stderr %q", len(c.Stdout), c.ExitCode, c.Stderr)
	}
	out := string(res.Commands[4].Stdout)
	if !strings.Contains(out, "iproute2") || !strings.Contains(out, "ipvsadm v1.") || !strings.HasSuffix(out, "14\n") {
		t.Errorf("tools: %q (stderr %q)", out, res.Commands[4].Stderr)
	}
	if c := res.Commands[5]; !c.TimedOut || c.ExitCode != 128+int(syscall.SIGQUIT) || string(c.Stdout) != "started\n" ||
		c.Duration < 6*time.Second || c.Duration > 10*time.Second || c.Err() == nil {
		t.Errorf("timed-out command: %+v", c)
	}
	check(6, "after the timeout\n", "", 0)
	if res.Commands[6].Err() != nil || res.Commands[6].Args[0] != "echo" {
		t.Errorf("result 6: %+v", res.Commands[6])
	}
	if !strings.Contains(res.Console, "keepvip-vm: ready") {
		t.Errorf("console:\n%s", res.Console)
	}
	if res.Boot <= 0 || res.Boot > res.Elapsed {
		t.Errorf("boot %v of %v", res.Boot, res.Elapsed)
	}
	assertNoChildren(t)
}

// TestRunInitFailure: when /init gives up, Run says why and shows the
// console.
func TestRunInitFailure(t *testing.T) {
	requireHost(t)
	res, err := Run(context.Background(), Options{
		Commands: [][]string{{"true"}},
		Timeout:  2 * time.Minute,
		initHook: `die "injected failure"`,
	})
	if err == nil || !strings.Contains(err.Error(), "the guest's init failed: injected failure") ||
		!strings.Contains(err.Error(), "keepvip-vm: FAILED: injected failure") {
		t.Fatalf("err = %v", err)
	}
	if len(res.Commands) != 0 {
		t.Errorf("results %+v", res.Commands)
	}
	if _, err := Run(context.Background(), Options{Commands: [][]string{{"true"}}, Modules: []string{"no_such_module"}}); err == nil ||
		!strings.Contains(err.Error(), "no_such_module is not in the kernel package") {
		t.Errorf("unknown module: %v", err)
	}
	assertNoChildren(t)
}

// TestRunTimeout: a run cut short (its context ends, or its Timeout) has
// its qemu killed, and the error names the command that was running.
func TestRunTimeout(t *testing.T) {
	requireHost(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	_, err := Run(ctx, Options{
		Commands: [][]string{{"true"}, {"sleep", "600"}},
		Console:  onLine("keepvip-vm: command 1:", cancel),
	})
	if err == nil || !strings.Contains(err.Error(), "command 1 (sleep 600) was still running") ||
		!strings.Contains(err.Error(), "context canceled") {
		t.Fatalf("err = %v", err)
	}
	if d := time.Since(start); d > time.Minute {
		t.Errorf("Run returned after %v", d)
	}
	assertNoChildren(t)

	_, err = Run(context.Background(), Options{Commands: [][]string{{"true"}}, Timeout: 500 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "the guest did not boot within 500ms") {
		t.Errorf("with a 0.5 s Timeout: %v", err)
	}
	assertNoChildren(t)
}

// onLine calls f once when the console shows a line starting with prefix.
func onLine(prefix string, f func()) io.Writer {
	pr, pw := io.Pipe()
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			if strings.HasPrefix(strings.TrimLeft(sc.Text(), "\r"), prefix) {
				f()
				break
			}
		}
		io.Copy(io.Discard, pr)
	}()
	return pw
}

const envDieChild = "KEEPVIP_VM_TEST_DIE_CHILD"

// TestQemuDiesWithParent kills a process in the middle of Run and checks
// that its qemu goes too.
func TestQemuDiesWithParent(t *testing.T) {
	if os.Getenv(envDieChild) == "1" {
		Run(context.Background(), Options{Commands: [][]string{{"sleep", "600"}}, Console: os.Stdout})
		return
	}
	requireHost(t)
	cmd := exec.Command(os.Args[0], "-test.run", "^TestQemuDiesWithParent$", "-test.count=1")
	cmd.Env = append(os.Environ(), envDieChild+"=1")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if strings.Contains(sc.Text(), "keepvip-vm: command 0") {
				close(ready)
				break
			}
		}
		for sc.Scan() {
		}
	}()
	select {
	case <-ready:
	case <-time.After(2 * time.Minute):
		t.Fatal("the child's machine did not start its command")
	}
	qemus := children(cmd.Process.Pid)
	if len(qemus) != 1 {
		t.Fatalf("the child has %d child processes, want its qemu", len(qemus))
	}
	cmd.Process.Kill()
	cmd.Wait()
	// The next run removes the killed process's temporary directory.
	leftover, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+strconv.Itoa(cmd.Process.Pid)+"-*"))
	if len(leftover) != 1 {
		t.Errorf("the killed child left %v, want its one temporary directory", leftover)
	}
	sweepTemp()
	if left, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+strconv.Itoa(cmd.Process.Pid)+"-*")); len(left) != 0 {
		t.Errorf("sweepTemp left %v", left)
	}
	deadline := time.Now().Add(10 * time.Second)
	for alive(qemus[0]) {
		if time.Now().After(deadline) {
			syscall.Kill(qemus[0], syscall.SIGKILL)
			t.Fatalf("qemu (pid %d) outlived its parent", qemus[0])
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// children lists the processes whose parent is pid.
func children(pid int) []int {
	ents, _ := os.ReadDir("/proc")
	var kids []int
	for _, e := range ents {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...: comm may hold spaces and parentheses.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(pid) && f[0] != "Z" {
			kids = append(kids, p)
		}
	}
	return kids
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

func assertNoChildren(t *testing.T) {
	t.Helper()
	if kids := children(os.Getpid()); len(kids) > 0 {
		t.Errorf("processes left behind: %v", kids)
	}
}

// TestUserNet: with UserNet the guest has eth0 and reaches a server on the
// host's loopback at 10.0.2.2.
func TestUserNet(t *testing.T) {
	requireHost(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "hello from the host") })}
	go srv.Serve(l)
	defer srv.Close()
	port := l.Addr().(*net.TCPAddr).Port
	res, err := Run(context.Background(), Options{
		UserNet: true,
		Commands: [][]string{{"sh", "-c", "ip link set eth0 up && ip addr add 10.0.2.15/24 dev eth0 && " +
			// busybox's wget crashes without NSS in the guest; nc does not.
			"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 20 10.0.2.2 " + strconv.Itoa(port) + " | tail -n 1"}},
		Timeout: 3 * time.Minute,
	})
	if err != nil {
		t.Fatal(err)
	}
	if c := res.Commands[0]; c.ExitCode != 0 || string(c.Stdout) != "hello from the host" {
		t.Errorf("wget from the guest: status %d, stdout %q, stderr %q", c.ExitCode, c.Stdout, c.Stderr)
	}
}
