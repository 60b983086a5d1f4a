package vrrp

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/keepvip/keepvip/test/framework/netnstest"
)

// envSquat makes TestLockIssue10Squatter the squatter: the lock directory
// it tries.
const envSquat = "KEEPVIP_TEST_SQUAT_DIR"

// Issue #10: any local user could keep keepvip from starting by binding
// the abstract socket it locked its network namespace with. A process
// running as nobody, without capabilities, in keepvip's network namespace,
// takes that socket and tries for the lock file too; keepvip still starts,
// and says who squats.
func TestLockIssue10SquatterCannotBlockStart(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	vethPair(t)
	// The squatter is this test binary, run as nobody: copied where
	// nobody can run it from.
	bin := filepath.Join(mkdirMode(t, 0o755), "vrrp.test")
	copyFile(t, os.Args[0], bin, 0o755)
	cmd := exec.Command(bin, "-test.run", "^TestLockIssue10Squatter$", "-test.v")
	// The default lock directory, DefaultLockDir.
	cmd.Env = append(os.Environ(), envSquat+"=/run/keepvip")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	lines := bufio.NewScanner(stdout)
	var said []string
	for lines.Scan() {
		said = append(said, lines.Text())
		if strings.HasPrefix(lines.Text(), "squatting:") {
			break
		}
	}
	go io.Copy(io.Discard, stdout)
	report := strings.Join(said, "\n")
	if !strings.Contains(report, "squatting:") || !strings.Contains(report, "uid=65534") || !strings.Contains(report, "capeff=0000000000000000") {
		t.Fatalf("the squatter did not start as nobody without capabilities:\n%s", report)
	}
	if !strings.Contains(report, "abstract=held") {
		t.Fatalf("the squatter could not take the abstract socket (the test would prove nothing):\n%s", report)
	}
	t.Logf("squatter: %s", said[len(said)-1])

	logs := &lockedBuffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	m := NewManager(Options{Logger: log})
	if err := m.Start(); err != nil {
		t.Fatalf("keepvip did not start while a process as nobody squats: %v\nsquatter: %s", err, report)
	}
	defer m.Stop()
	if !strings.Contains(logs.String(), "uid=65534") {
		t.Errorf("keepvip did not say who squats its socket; log:\n%s", logs)
	}
	if err := m.Sync([]Config{testConfig("v", "va", 40, "192.0.2.40/32")}); err != nil {
		t.Fatal(err)
	}
	waitState(t, m, "v", StateMaster)
	// A second keepvip in the same namespace is still refused.
	if err := NewManager(Options{Logger: discard()}).Start(); err == nil || !strings.Contains(err.Error(), "another keepvip is running") {
		t.Errorf("a second keepvip in the namespace, while the first runs and the socket is squatted: Start = %v; want refused", err)
	}
}

// TestLockIssue10Squatter is not a test of its own: it is the squatter
// process of TestLockIssue10SquatterCannotBlockStart, run as nobody. It
// takes the abstract socket, tries every way into the lock directory,
// reports, and holds on until its standard input closes.
func TestLockIssue10Squatter(t *testing.T) {
	dir := os.Getenv(envSquat)
	if dir == "" {
		return
	}
	abstract := "held"
	l, err := net.Listen("unix", lockName)
	if err != nil {
		abstract = err.Error()
	} else {
		defer l.Close()
	}
	var tries []string
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err == nil {
		for _, name := range []string{fmt.Sprintf("vrrp-netns-%d.lock", st.Ino), "x.lock"} {
			f, err := os.OpenFile(filepath.Join(dir, name), os.O_RDONLY|os.O_CREATE, 0o644)
			if err == nil {
				err = unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
				if err == nil {
					err = fmt.Errorf("LOCKED")
				}
			}
			tries = append(tries, name+": "+err.Error())
		}
	}
	capEff := "?"
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, l := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
				capEff = strings.TrimSpace(v)
			}
		}
	}
	fmt.Printf("squatting: uid=%d capeff=%s abstract=%s lock dir %s: %s\n", os.Getuid(), capEff, abstract, dir, strings.Join(tries, "; "))
	io.Copy(io.Discard, os.Stdin)
}

// mkdirMode returns a new directory with exactly mode perm.
func mkdirMode(t *testing.T, perm os.FileMode) string {
	t.Helper()
	d, err := os.MkdirTemp("", "keepvip-lock-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	if err := os.Chmod(d, perm); err != nil {
		t.Fatal(err)
	}
	return d
}

func copyFile(t *testing.T, from, to string, perm os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, perm); err != nil {
		t.Fatal(err)
	}
}
