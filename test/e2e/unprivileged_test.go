package e2e

// Issue #10, end to end with the keepvip binary: a local process that is
// not root (nobody, without capabilities) shares keepvip's network
// namespace, as every process on a node does with a hostNetwork
// DaemonSet. It must not keep keepvip from starting or running, make it
// restart, fake its health, or read anything private of it.
//
// The process as nobody is this test binary again (TestUnprivilegedProcess)
// under setpriv, in node a; keepvip runs as root in a, the usual way, with
// b as its backup, so that a master slowed down by an attack would show as
// a transition on b.

import (
	"bufio"
	"context"
	"debug/buildinfo"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keepvip/keepvip/internal/daemon"
	"github.com/keepvip/keepvip/test/framework/lab"
	"github.com/keepvip/keepvip/vrrp"
)

const (
	// upWait bounds every wait for an outcome that is not itself
	// measured: generous, for a race-built daemon on a loaded machine.
	upWait = 30 * time.Second
	// upNobody is nobody's uid and gid.
	upNobody = 65534
	// upEnvMode and upEnvArgs make TestUnprivilegedProcess the process
	// as nobody: what it does, and with what (JSON of upArgs).
	upEnvMode = "KEEPVIP_E2E_NOBODY"
	upEnvArgs = "KEEPVIP_E2E_NOBODY_ARGS"
	// upSaid starts every line the process as nobody reports on.
	upSaid = "nobody: "
)

var (
	upNodeAddr = netip.MustParseAddr("192.0.2.1") // a's address (clNodeAddrs)
	upMetrics  = net.JoinHostPort(upNodeAddr.String(), "9742")
)

// upArgs says what the process as nobody tries.
type upArgs struct {
	// Squatting: listen on these TCP addresses and this unix socket path
	// (after removing what is there, if Replace), answering every
	// request with a fake "ok" and a fake status, until killed.
	TCP     []string `json:",omitempty"`
	Unix    string   `json:",omitempty"`
	Replace bool     `json:",omitempty"`

	// Probing: each attempt is reported with its outcome.
	Read     []string    `json:",omitempty"` // open and read a file
	ReadDir  []string    `json:",omitempty"`
	Readlink []string    `json:",omitempty"`
	Connect  []string    `json:",omitempty"` // unix sockets: connect, ask for the status
	Create   []string    `json:",omitempty"` // create a file (removed again if that worked)
	Rename   [][2]string `json:",omitempty"`
	Metrics  []string    `json:",omitempty"` // GET /metrics on these HOST:PORTs
	Bind     []string    `json:",omitempty"` // TCP addresses (with SO_REUSEPORT)
	Abstract []string    `json:",omitempty"` // abstract unix sockets to bind
	PID      int         `json:",omitempty"` // keepvip: signals and ptrace
	Netlink  []upNetlink `json:",omitempty"` // keepvip's netlink sockets
	Raw      bool        `json:",omitempty"` // VRRP and packet sockets

	// Slowloris: PerKind connections of each upSlowKinds to Addr, held
	// until the server cuts them or Hold has passed.
	Addr    string        `json:",omitempty"`
	PerKind int           `json:",omitempty"`
	Hold    time.Duration `json:",omitempty"`
}

// upNetlink is a netlink socket: its protocol and port ID.
type upNetlink struct{ Proto, PortID int }

// upReport is what the process as nobody reports.
type upReport struct {
	UID, GID               int
	CapEff, CapPrm, CapBnd string
	// Results maps each attempt to "ok ..." or the error it met.
	Results map[string]string `json:",omitempty"`
	// Slow maps each slowloris kind to what became of its connections.
	Slow map[string]*upSlow `json:",omitempty"`
}

// upSlow is what became of one kind of slowloris connection.
type upSlow struct {
	Opened, DialFailed int
	// Cut counts the connections the server closed or reset while the
	// client still held them; CutAfter is when the last of them was cut.
	Cut      int
	CutAfter time.Duration
}

// upSlowKinds are the slowloris connections: nothing sent; a request
// header dribbled a byte at a time; a header line of almost 1 MiB left
// unfinished (what the server buffers); a complete request whose body
// is dribbled; pipelined requests whose answers are never read.
var upSlowKinds = []string{"idle", "slow-header", "big-header", "slow-body", "slow-reader"}

// TestUnprivilegedProcess is not a test of its own: it is the process
// as nobody of TestFaultUnprivileged, which sets upEnvMode.
func TestUnprivilegedProcess(t *testing.T) {
	mode := os.Getenv(upEnvMode)
	if mode == "" {
		return
	}
	var a upArgs
	if err := json.Unmarshal([]byte(os.Getenv(upEnvArgs)), &a); err != nil {
		fmt.Printf("%sbad arguments: %v\n", upSaid, err)
		os.Exit(2)
	}
	r := upWhoAmI()
	say := func(what string) {
		b, _ := json.Marshal(r)
		fmt.Printf("%s%s %s\n", upSaid, what, b)
	}
	switch mode {
	case "squat":
		r.Results = upSquat(a)
		say("ready")
		time.Sleep(10 * time.Minute) // killed long before
	case "probe":
		r.Results = upProbe(a)
		say("done")
	case "slowloris":
		r.Slow = upSlowloris(a, func() { say("ready") })
		say("done")
	default:
		fmt.Printf("%sunknown mode %q\n", upSaid, mode)
		os.Exit(2)
	}
	os.Exit(0) // nothing of the testing package's own output
}

// upWhoAmI reports the process's credentials and capabilities.
func upWhoAmI() upReport {
	r := upReport{UID: os.Getuid(), GID: os.Getgid(), CapEff: "?", CapPrm: "?", CapBnd: "?"}
	if b, err := os.ReadFile("/proc/self/status"); err == nil {
		for _, f := range []struct {
			name string
			to   *string
		}{{"CapEff", &r.CapEff}, {"CapPrm", &r.CapPrm}, {"CapBnd", &r.CapBnd}} {
			if m := regexp.MustCompile(`(?m)^` + f.name + `:\s*(\S+)`).FindSubmatch(b); m != nil {
				*f.to = string(m[1])
			}
		}
	}
	return r
}

// upFake answers every request as keepvip would if all were well: its
// health, its readiness, and a status of its own making.
var upFake = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v1/status" {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintln(w, `{"version":"squatter","instances":[]}`)
		return
	}
	fmt.Fprintln(w, "ok")
})

// upSquat listens where keepvip would and serves upFake there.
func upSquat(a upArgs) map[string]string {
	res := map[string]string{}
	serve := func(l net.Listener) {
		go (&http.Server{Handler: upFake, ReadHeaderTimeout: 5 * time.Second}).Serve(l)
	}
	for _, addr := range a.TCP {
		l, err := net.Listen("tcp", addr)
		res["listen "+addr] = upOutcome(err)
		if err == nil {
			serve(l)
		}
	}
	if a.Unix != "" {
		if a.Replace {
			res["remove "+a.Unix] = upOutcome(os.Remove(a.Unix))
		}
		l, err := net.Listen("unix", a.Unix)
		res["listen "+a.Unix] = upOutcome(err)
		if err == nil {
			serve(l)
		}
	}
	return res
}

func upOutcome(err error) string {
	if err != nil {
		return err.Error()
	}
	return "ok"
}

// upProbe tries each attempt of a and reports how it went.
func upProbe(a upArgs) map[string]string {
	res := map[string]string{}
	for _, p := range a.Read {
		res["read "+p] = upOutcome(upReadFile(p))
	}
	for _, p := range a.ReadDir {
		_, err := os.ReadDir(p)
		res["readdir "+p] = upOutcome(err)
	}
	for _, p := range a.Readlink {
		_, err := os.Readlink(p)
		res["readlink "+p] = upOutcome(err)
	}
	for _, p := range a.Connect {
		res["connect "+p] = upAskStatus(p)
	}
	for _, p := range a.Create {
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
		if err == nil {
			f.Close()
			os.Remove(p)
		}
		res["create "+p] = upOutcome(err)
	}
	for _, r := range a.Rename {
		err := os.Rename(r[0], r[1])
		if err == nil {
			os.Rename(r[1], r[0]) // as it was, as far as nobody can
		}
		res["rename "+r[0]] = upOutcome(err)
	}
	for _, addr := range a.Metrics {
		res["GET /metrics on "+addr] = upGetMetrics(addr)
	}
	for _, addr := range a.Bind {
		lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			})
			return errors.Join(err, serr)
		}}
		l, err := lc.Listen(context.Background(), "tcp", addr)
		if err == nil {
			l.Close()
		}
		res["bind "+addr] = upOutcome(err)
	}
	for _, name := range a.Abstract {
		l, err := net.Listen("unix", name)
		if err == nil {
			l.Close()
		}
		res["bind "+name] = upOutcome(err)
	}
	if a.PID > 0 {
		for _, sig := range []unix.Signal{unix.SIGTERM, unix.SIGHUP, unix.SIGSTOP} {
			res["signal "+unix.SignalName(sig)] = upOutcome(unix.Kill(a.PID, sig))
		}
		res["ptrace attach"] = upOutcome(upPtrace(a.PID))
	}
	for _, nl := range a.Netlink {
		res[fmt.Sprintf("netlink %d to port %d", nl.Proto, nl.PortID)] = upOutcome(upNetlinkSend(nl))
	}
	if a.Raw {
		for _, s := range []struct {
			name             string
			family, typ, pro int
		}{
			{"raw socket IPv4 VRRP", unix.AF_INET, unix.SOCK_RAW, 112},
			{"raw socket IPv6 VRRP", unix.AF_INET6, unix.SOCK_RAW, 112},
			{"packet socket (ARP)", unix.AF_PACKET, unix.SOCK_RAW, int(upHtons(unix.ETH_P_ARP))},
		} {
			fd, err := unix.Socket(s.family, s.typ|unix.SOCK_CLOEXEC, s.pro)
			if err == nil {
				unix.Close(fd)
			}
			res[s.name] = upOutcome(err)
		}
	}
	return res
}

func upHtons(v uint16) uint16 { return v<<8 | v>>8 }

// upReadFile opens p and reads from it: /proc/PID/mem is refused at the
// open, a directory at the read.
func upReadFile(p string) error {
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && fi.IsDir() {
		_, err := f.ReadDir(-1)
		return err
	}
	_, err = f.Read(make([]byte, 4096))
	if errors.Is(err, io.EOF) {
		err = nil // empty, and read
	}
	return err
}

// upAskStatus connects to a status socket and asks for the status.
func upAskStatus(path string) string {
	c, err := net.DialTimeout("unix", path, 3*time.Second)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, "GET /v1/status HTTP/1.0\r\nHost: keepvip\r\n\r\n"); err != nil {
		return "connected; " + err.Error()
	}
	b, err := io.ReadAll(io.LimitReader(c, 200))
	return fmt.Sprintf("ok, connected and read %q (%v)", b, err)
}

// upGetMetrics asks addr for /metrics; "closed unanswered" is what
// keepvip does on a VIP.
func upGetMetrics(addr string) string {
	c, err := net.DialTimeout("tcp", addr, 3*time.Second)
	if err != nil {
		return err.Error()
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := io.WriteString(c, "GET /metrics HTTP/1.0\r\nHost: keepvip\r\n\r\n"); err != nil {
		return "connected; " + err.Error()
	}
	b, err := io.ReadAll(c)
	if len(b) == 0 {
		return fmt.Sprintf("closed unanswered (%v)", err)
	}
	line, _, _ := strings.Cut(string(b), "\r\n")
	return fmt.Sprintf("ok, %d bytes, %q, keepvip metrics: %t", len(b), line, strings.Contains(string(b), "keepvip_"))
}

func upPtrace(pid int) error {
	runtime.LockOSThread() // ptrace belongs to the thread; this one ends with the process
	if err := unix.PtraceAttach(pid); err != nil {
		return err
	}
	return unix.PtraceDetach(pid)
}

// upNetlinkSend sends a netlink message to another socket of the
// namespace, as the kernel would send it an event.
func upNetlinkSend(nl upNetlink) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, nl.Proto)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	// A bare RTM_DELLINK: what a fake "link gone" event starts with.
	msg := make([]byte, unix.SizeofNlMsghdr+unix.SizeofIfInfomsg)
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], unix.RTM_DELLINK)
	return unix.Sendto(fd, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Pid: uint32(nl.PortID)})
}

// upSlowloris opens a.PerKind connections of each kind to a.Addr, says
// ready, and holds them until the server cuts each or a.Hold has passed.
func upSlowloris(a upArgs, ready func()) map[string]*upSlow {
	type conn struct {
		kind string
		c    *net.TCPConn
	}
	out := map[string]*upSlow{}
	var conns []conn
	for _, kind := range upSlowKinds {
		out[kind] = &upSlow{}
		for range a.PerKind {
			d := net.Dialer{Timeout: 5 * time.Second}
			if kind == "slow-reader" {
				d.Control = func(_, _ string, c syscall.RawConn) error {
					return c.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, 1024) })
				}
			}
			c, err := d.Dial("tcp", a.Addr)
			if err != nil {
				out[kind].DialFailed++
				continue
			}
			out[kind].Opened++
			conns = append(conns, conn{kind, c.(*net.TCPConn)})
		}
	}
	// Under net/http's default limit (1 MiB + 4 KiB), and no end of
	// line: all of it is held while the server waits for more.
	bigHeader := "GET /metrics HTTP/1.1\r\nHost: keepvip\r\nX-Pad: " + strings.Repeat("a", 1<<20-1024)
	start := time.Now()
	deadline := start.Add(a.Hold)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM)
	ready()
	var mu sync.Mutex
	report := func() map[string]*upSlow {
		mu.Lock()
		defer mu.Unlock()
		rep := map[string]*upSlow{}
		for k, v := range out {
			rep[k] = new(*v)
		}
		return rep
	}
	var wg sync.WaitGroup
	for _, cn := range conns {
		wg.Go(func() {
			defer cn.c.Close()
			c := cn.c
			_ = c.SetWriteDeadline(deadline)
			switch cn.kind {
			case "slow-header":
				_, _ = io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: keepvip\r\n")
			case "big-header":
				_, _ = io.WriteString(c, bigHeader)
			case "slow-body":
				_, _ = io.WriteString(c, "GET /metrics HTTP/1.1\r\nHost: keepvip\r\nContent-Length: 100000\r\n\r\n")
			case "slow-reader":
				_, _ = io.WriteString(c, strings.Repeat("GET /metrics HTTP/1.1\r\nHost: keepvip\r\n\r\n", 50))
			}
			for time.Now().Before(deadline) {
				if upCut(c) {
					mu.Lock()
					s := out[cn.kind]
					s.Cut++
					s.CutAfter = max(s.CutAfter, time.Since(start).Round(100*time.Millisecond))
					mu.Unlock()
					return
				}
				if cn.kind == "slow-header" || cn.kind == "slow-body" {
					_ = c.SetWriteDeadline(time.Now().Add(time.Second))
					_, _ = io.WriteString(c, "a")
				}
				time.Sleep(500 * time.Millisecond)
			}
		})
	}
	all := make(chan struct{})
	go func() { wg.Wait(); close(all) }()
	select {
	case <-all:
	case <-stop: // reported as it stands, the connections still held
	}
	return report()
}

// upCut reports whether the server closed or reset c: its TCP state is
// no longer ESTABLISHED (CLOSE_WAIT after a FIN, CLOSE after a reset).
func upCut(c *net.TCPConn) bool {
	rc, err := c.SyscallConn()
	if err != nil {
		return true
	}
	state := uint8(unix.BPF_TCP_ESTABLISHED)
	_ = rc.Control(func(fd uintptr) {
		if info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO); err == nil {
			state = info.State
		}
	})
	return state != unix.BPF_TCP_ESTABLISHED
}

// ---------------------------------------------------------------------------
// The test side, as root.

// upLab is the cluster with keepvip's own directories where nobody can
// reach them: the status socket in a directory of mode 0777 (as the
// DaemonSet's emptyDir volume is made), the state directory 0755 (as
// its hostPath DirectoryOrCreate is made), both in a 0755 directory.
type upLab struct {
	*clCluster // of the (sub)test running
	root       *clCluster
	t          *testing.T
	dir        string
	bin        string // this test binary, where nobody can run it
	kv         string // the keepvip binary
}

func newUpLab(t *testing.T) *upLab {
	c := newClCluster(t)
	dir, err := os.MkdirTemp("", "keepvip-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "e2e.test")
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	kv, err := lab.KeepvipBinary()
	if err != nil {
		t.Fatal(err)
	}
	u := &upLab{clCluster: c, root: c, t: t, dir: dir, bin: bin, kv: kv}
	// b is the backup throughout: were a's adverts late, b would take
	// over, and its transitions say so.
	c.start("b", clConfig(clV4(clPrio["b"])))
	return u
}

// upKeepvip is a's keepvip, with its status socket and state directory.
type upKeepvip struct {
	k           *lab.Keepvip
	sock, state string
}

// runDir makes a fresh directory as the DaemonSet's emptyDir volume is
// made (0777), for a status socket.
func (u *upLab) runDir(name string) string {
	u.t.Helper()
	d := filepath.Join(u.dir, name)
	if err := os.Mkdir(d, 0o777); err != nil {
		u.t.Fatal(err)
	}
	if err := os.Chmod(d, 0o777); err != nil { // past the umask
		u.t.Fatal(err)
	}
	return d
}

// startA starts keepvip in a, the preferred master, with its status
// socket in runDir, its state in a directory of mode 0755 and metrics
// on a's address.
func (u *upLab) startA(runDir string) *upKeepvip {
	u.t.Helper()
	state := filepath.Join(u.dir, "state")
	if err := os.MkdirAll(state, 0o755); err != nil {
		u.t.Fatal(err)
	}
	sock := filepath.Join(runDir, "keepvip.sock")
	// The lab's --status-socket comes first; this one wins.
	k, err := u.nodes["a"].StartKeepvip(clConfig(clV4(clPrio["a"])),
		"--status-socket", sock, "--state-dir", state, "--metrics-addr", upMetrics)
	if err != nil {
		u.t.Fatal(err)
	}
	// The root cluster dumps the status and log of each daemon on
	// failure (the status from the lab's socket: not this one).
	u.root.kv["a"] = k
	u.root.all = append(u.root.all, k)
	u.t.Logf("a: keepvip pid %d, status socket %s, state directory %s, metrics %s", k.Proc().PID(), sock, state, upMetrics)
	return &upKeepvip{k: k, sock: sock, state: state}
}

// stop stops a's keepvip (b takes over) and waits for b to be master.
func (u *upLab) stop(a *upKeepvip) {
	u.t.Helper()
	if err := a.k.Stop(upWait); err != nil {
		u.t.Errorf("stopping a: %v", err)
	}
	u.waitState("b", "v4", vrrp.StateMaster)
}

// status asks a's keepvip for its status on its own socket.
func (u *upLab) status(a *upKeepvip) (*daemon.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return daemon.GetStatus(ctx, a.sock)
}

// waitMaster waits until a's keepvip says it is master of v4 and holds
// the VIP, and b follows it.
func (u *upLab) waitMaster(a *upKeepvip) vrrp.Status {
	u.t.Helper()
	var st vrrp.Status
	u.waitFor(upWait, "a master of v4 (asked on its socket)", func(context.Context) (bool, string) {
		select {
		case <-a.k.Proc().Exited():
			u.t.Fatalf("a's keepvip exited (%v):\n%s", a.k.Proc().Wait(), clTail(clNoDebug(a.k.Log()), 3000))
		default:
		}
		s, err := u.status(a)
		if err != nil {
			return false, err.Error()
		}
		for _, in := range s.Instances {
			if in.Name == "v4" {
				st = in
				return in.State == vrrp.StateMaster && in.VIPsInstalled, clBrief(in)
			}
		}
		return false, fmt.Sprintf("instances %+v", s.Instances)
	})
	u.waitBackupOf("b", "v4", u.v4("a"), clPrio["a"])
	u.wantVIPs("a", clVIP4)
	return st
}

// keepvip runs the keepvip command in a, as root (as the kubelet runs an
// exec probe), and returns its output and exit code.
func (u *upLab) keepvip(args ...string) (string, int) {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), upWait)
	defer cancel()
	out, err := u.nodes["a"].Exec(ctx, append([]string{u.kv}, args...)...)
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	u.t.Fatalf("keepvip %v: %v", args, err)
	return "", -1
}

// health runs `keepvip health` on a's socket, as the DaemonSet's
// liveness probe does, and fails the test unless it says healthy.
func (u *upLab) health(a *upKeepvip, when string) {
	u.t.Helper()
	if out, code := u.keepvip("health", "--socket", a.sock); code != 0 {
		u.t.Errorf("%s: keepvip health = exit %d: %s; want 0 (healthy)", when, code, strings.TrimSpace(out))
	}
}

// nobody runs this test binary as nobody in a, with no capability left
// in any set, so that no exec can bring one back.
func (u *upLab) nobody(mode string, a upArgs) []string {
	b, err := json.Marshal(a)
	if err != nil {
		u.t.Fatal(err)
	}
	return []string{"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
		"env", upEnvMode + "=" + mode, upEnvArgs + "=" + string(b),
		u.bin, "-test.run=^TestUnprivilegedProcess$", "-test.count=1"}
}

// upParse finds the report line that starts with what.
func upParse(log, what string) (upReport, bool) {
	for _, l := range strings.Split(log, "\n") {
		if rest, ok := strings.CutPrefix(l, upSaid+what+" "); ok {
			var r upReport
			if json.Unmarshal([]byte(rest), &r) == nil {
				return r, true
			}
		}
	}
	return upReport{}, false
}

// wantNobody fails the test unless r comes from nobody without any
// capability.
func (u *upLab) wantNobody(r upReport) {
	u.t.Helper()
	if r.UID != upNobody || r.GID != upNobody || r.CapEff != "0000000000000000" || r.CapPrm != "0000000000000000" || r.CapBnd != "0000000000000000" {
		u.t.Fatalf("the process is not nobody without capabilities: %+v", r)
	}
}

// squat starts a squatter as nobody in a and waits until it reports.
func (u *upLab) squat(name string, a upArgs) (*lab.Proc, upReport) {
	u.t.Helper()
	p, err := u.nodes["a"].Start(name, u.nobody("squat", a)...)
	if err != nil {
		u.t.Fatal(err)
	}
	u.t.Cleanup(func() { p.Kill() })
	var r upReport
	u.waitFor(upWait, name+" to squat", func(context.Context) (bool, string) {
		var ok bool
		r, ok = upParse(p.Log(), "ready")
		return ok, p.Log()
	})
	u.wantNobody(r)
	u.t.Logf("%s (pid %d, uid %d): %v", name, p.PID(), r.UID, r.Results)
	return p, r
}

// probe runs a probe as nobody in a and returns its report.
func (u *upLab) probe(a upArgs) upReport {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*upWait)
	defer cancel()
	out, err := u.nodes["a"].Exec(ctx, u.nobody("probe", a)...)
	r, ok := upParse(string(out), "done")
	if !ok {
		u.t.Fatalf("the probe as nobody did not report (%v):\n%s", err, out)
	}
	u.wantNobody(r)
	return r
}

// wantRefused fails the test for each attempt that did not fail, and
// for each that failed otherwise than with one of errnos.
func (u *upLab) wantRefused(r upReport, errnos ...string) {
	u.t.Helper()
	keys := slices.Sorted(maps.Keys(r.Results))
	for _, k := range keys {
		got := r.Results[k]
		ok := !strings.HasPrefix(got, "ok")
		if ok && len(errnos) > 0 {
			ok = slices.ContainsFunc(errnos, func(e string) bool { return strings.Contains(got, e) })
		}
		if !ok {
			u.t.Errorf("nobody: %s: %s; want it refused (%s)", k, got, strings.Join(errnos, " or "))
		} else {
			u.t.Logf("nobody: %s: refused: %s", k, got)
		}
	}
}

// waitMetrics waits until GET /metrics on a's address is keepvip's and
// returns how long that took.
func (u *upLab) waitMetrics(what string) time.Duration {
	u.t.Helper()
	start := time.Now()
	u.waitFor(upWait, what, func(context.Context) (bool, string) {
		m, err := clMetrics(u.nodes["a"], upMetrics)
		if err != nil {
			return false, err.Error()
		}
		return strings.HasPrefix(m, "HTTP/1.0 200") && strings.Contains(m, "keepvip_vrrp_state"), clTail(m, 300)
	})
	return time.Since(start)
}

// procStatus reads fields (kB) of /proc/PID/status.
func procStatus(t *testing.T, pid int, fields ...string) map[string]int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for _, f := range fields {
		m := regexp.MustCompile(`(?m)^` + f + `:\s*(\d+) kB`).FindSubmatch(b)
		if m == nil {
			t.Fatalf("/proc/%d/status has no %s", pid, f)
		}
		out[f], _ = strconv.Atoi(string(m[1]))
	}
	return out
}

// sockets returns the inodes of the sockets pid has open.
func sockets(t *testing.T, pid int) map[uint64]bool {
	t.Helper()
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := map[uint64]bool{}
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		if s, ok := strings.CutPrefix(l, "socket:["); ok {
			if ino, err := strconv.ParseUint(strings.TrimSuffix(s, "]"), 10, 64); err == nil {
				out[ino] = true
			}
		}
	}
	return out
}

// netlinkOf returns pid's netlink sockets, from /proc/net/netlink of
// node n (what any process there can read too).
func (u *upLab) netlinkOf(n *lab.Node, pid int) []upNetlink {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), upWait)
	defer cancel()
	out, err := n.Exec(ctx, "cat", "/proc/net/netlink")
	if err != nil {
		u.t.Fatal(err)
	}
	mine := sockets(u.t, pid)
	var nls []upNetlink
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		// sk Eth Pid Groups Rmem Wmem Dump Locks Drops Inode
		f := strings.Fields(sc.Text())
		if len(f) < 10 || f[0] == "sk" {
			continue
		}
		proto, _ := strconv.Atoi(f[1])
		port, _ := strconv.Atoi(f[2])
		ino, _ := strconv.ParseUint(f[9], 10, 64)
		if mine[ino] && port != 0 {
			nls = append(nls, upNetlink{Proto: proto, PortID: port})
		}
	}
	return nls
}

// TestFaultUnprivileged: a process as nobody, without capabilities, in
// keepvip's network namespace tries to read what is keepvip's, to keep
// it from starting, to fake its health and to wear it down while it
// runs. Each subtest says what is tried and what must come of it.
func TestFaultUnprivileged(t *testing.T) {
	u := newUpLab(t)

	// Any local user can bind a port above 1023 before keepvip: the
	// metrics listener cannot bind. keepvip runs all the same (VRRP,
	// VIPs, health on its socket), says why metrics are missing, and
	// serves them once the port is free. (It used to exit at start:
	// CrashLoopBackOff in Kubernetes.)
	for _, sq := range []struct{ name, addr string }{
		{"MetricsPortTakenOnNodeAddress", upMetrics},
		{"MetricsPortTakenOnWildcard", ":9742"},
	} {
		t.Run(sq.name, func(t *testing.T) {
			u := u.with(t)
			p, r := u.squat("metrics-squatter", upArgs{TCP: []string{sq.addr}})
			if r.Results["listen "+sq.addr] != "ok" {
				t.Fatalf("nobody could not take %s first: %v", sq.addr, r.Results)
			}
			a := u.startA(u.runDir("run-" + sq.name))
			defer u.stop(a)
			u.waitMaster(a)
			u.health(a, "metrics port taken")
			// What an httpGet probe of the port would have read: the
			// squatter's answer, whatever keepvip's state.
			if m, err := clMetrics(u.nodes["a"], upMetrics); err == nil {
				line, _, _ := strings.Cut(m, "\r\n")
				t.Logf("GET /metrics on %s while nobody holds the port: %q (the squatter's; an httpGet probe would read the same)", upMetrics, line)
			}
			out, code := u.keepvip("status", "--socket", a.sock)
			if code != 0 || !regexp.MustCompile(`(?i)metrics.*not serving`).MatchString(out) || !strings.Contains(out, "uid 65534") {
				t.Errorf("keepvip status (exit %d) does not say metrics are not served and who holds the port:\n%s", code, out)
			}
			if n := strings.Count(a.k.Log(), "metrics"); n == 0 {
				t.Errorf("a's keepvip did not log that metrics cannot listen:\n%s", clTail(clNoDebug(a.k.Log()), 3000))
			}
			if err := p.Kill(); err != nil {
				t.Fatal(err)
			}
			took := u.waitMetrics("keepvip's metrics once the squatter is gone")
			faultBench(t, "fault_unprivileged_metrics_served_after_squatter_"+strings.ToLower(t.Name()[strings.LastIndexByte(t.Name(), '/')+1:]), float64(took)/1e6, "ms")
			out, _ = u.keepvip("status", "--socket", a.sock, "-o", "json")
			if !regexp.MustCompile(`"serving":\s*true`).MatchString(out) {
				t.Errorf("keepvip status -o json does not say metrics are served now:\n%s", out)
			}
			// Logged once, not once per retry.
			if n := strings.Count(clNoDebug(a.k.Log()), "address already in use"); n > 2 {
				t.Errorf("a's keepvip logged the taken port %d times; want it logged once:\n%s", n, clTail(clNoDebug(a.k.Log()), 3000))
			}
			u.health(a, "after the squatter")
		})
	}

	// The status socket's directory is one any local user may write to
	// (an emptyDir volume is made 0777): nobody listens on the socket's
	// path before keepvip starts. keepvip takes its path back and starts.
	// (It used to refuse to start: "is another keepvip running?")
	t.Run("StatusSocketTakenBeforeStart", func(t *testing.T) {
		u := u.with(t)
		run := u.runDir("run-socket-taken")
		sock := filepath.Join(run, "keepvip.sock")
		p, r := u.squat("socket-squatter", upArgs{Unix: sock})
		if r.Results["listen "+sock] != "ok" {
			t.Fatalf("nobody could not take %s first: %v", sock, r.Results)
		}
		a := u.startA(run)
		defer u.stop(a)
		u.waitMaster(a)
		if s, err := u.status(a); err != nil || s.Version == "squatter" {
			t.Errorf("status on %s = %+v, %v: the squatter's, not keepvip's", sock, s, err)
		}
		u.health(a, "after the socket squatter")
		if log := clNoDebug(a.k.Log()); !regexp.MustCompile(`replaced.*uid=65534`).MatchString(log) {
			t.Errorf("a's keepvip does not say it replaced nobody's socket:\n%s", clTail(log, 3000))
		}
		if fi, err := os.Stat(run); err != nil || fi.Mode().Perm()&0o022 != 0 {
			t.Errorf("status socket directory %s: %v, %v; want writable by root only", run, fi.Mode(), err)
		}
		p.Kill()
	})

	// While keepvip runs, nobody replaces its status socket with its own
	// (or renames it away, or adds files beside it): `keepvip health`, the
	// exec probe, and `keepvip status` would then read the squatter's
	// answers.
	t.Run("StatusSocketReplacedWhileRunning", func(t *testing.T) {
		u := u.with(t)
		run := u.runDir("run-socket-replaced")
		a := u.startA(run)
		defer u.stop(a)
		u.waitMaster(a)
		r := u.probe(upArgs{
			Create: []string{filepath.Join(run, "planted")},
			Rename: [][2]string{{a.sock, a.sock + ".away"}},
		})
		u.wantRefused(r, "permission denied")
		p, r := u.squat("socket-replacer", upArgs{Unix: a.sock, Replace: true})
		t.Logf("replacing the socket: %v", r.Results)
		if r.Results["listen "+a.sock] == "ok" {
			t.Errorf("nobody replaced keepvip's status socket %s: %v", a.sock, r.Results)
		}
		if s, err := u.status(a); err != nil || s.Version == "squatter" {
			t.Errorf("status on %s = %+v, %v: not keepvip's", a.sock, s, err)
		}
		u.health(a, "after the attempt to replace the socket")
		p.Kill()
	})

	// What nobody may not read or do: keepvip's status, its files, its
	// process, its sockets.
	t.Run("ReadAndTouch", func(t *testing.T) {
		u := u.with(t)
		run := u.runDir("run-read")
		a := u.startA(run)
		defer u.stop(a)
		u.waitMaster(a)
		pid := a.k.Proc().PID()
		var files []string
		for _, d := range []string{a.state, run} {
			ents, err := os.ReadDir(d)
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range ents {
				if e.Type()&os.ModeSocket == 0 {
					files = append(files, filepath.Join(d, e.Name()))
				}
			}
		}
		if !slices.ContainsFunc(files, func(f string) bool { return strings.Contains(f, "vrrp-netns-") }) {
			t.Fatalf("the state directory (the lock directory too) holds no lock file: %v", files)
		}
		proc := fmt.Sprintf("/proc/%d/", pid)
		nls := u.netlinkOf(u.nodes["a"], pid)
		if len(nls) == 0 {
			t.Fatalf("found no netlink socket of keepvip (pid %d)", pid)
		}
		// The kernel refuses each of these for a process of another uid
		// without capabilities; keepvip keeps its own files 0600 and its
		// socket 0600.
		r := u.probe(upArgs{
			Connect:  []string{a.sock},
			Read:     append(files, proc+"environ", proc+"mem", proc+"maps", proc+"stack", proc+"fd", proc+"fdinfo/0"),
			ReadDir:  []string{proc + "fd", proc + "map_files"},
			Readlink: []string{proc + "cwd", proc + "root", proc + "exe", proc + "fd/0"},
			Create:   []string{filepath.Join(a.state, "planted"), filepath.Join(run, "planted")},
			PID:      pid,
			Netlink:  nls,
			Raw:      true,
			// keepvip holds these: not even SO_REUSEPORT shares them.
			Bind:     []string{upMetrics, ":9742"},
			Abstract: []string{"@keepvip-vrrp"},
		})
		u.wantRefused(r)
		// A VIP never answers /metrics. (On a's own address it does, to
		// anyone: metrics are not private, by design; they are what
		// Prometheus scrapes.)
		r = u.probe(upArgs{Metrics: []string{net.JoinHostPort(clVIP4.Addr().String(), "9742"), upMetrics}})
		vip := r.Results["GET /metrics on "+net.JoinHostPort(clVIP4.Addr().String(), "9742")]
		if strings.HasPrefix(vip, "ok") {
			t.Errorf("nobody read /metrics on the VIP: %s", vip)
		}
		t.Logf("nobody: GET /metrics on the VIP: %s; on a's address: %s", vip, r.Results["GET /metrics on "+upMetrics])
		u.alive("a")
		u.health(a, "after the probes")
	})

	// Slowloris: nobody opens hundreds of connections to the metrics
	// port and holds them as slowly as it can. VRRP is untouched, the
	// memory keepvip takes is bounded, its health (on its socket)
	// answers, and the server cuts every connection by its timeouts.
	t.Run("Slowloris", func(t *testing.T) {
		u := u.with(t)
		a := u.startA(u.runDir("run-slowloris"))
		defer u.stop(a)
		before := u.waitMaster(a)
		u.waitMetrics("metrics served")
		pid := a.k.Proc().PID()
		time.Sleep(time.Second) // settled
		bBefore := u.mustInst("b", "v4")
		// Peak RSS (VmHWM) from here on.
		if err := os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0); err != nil {
			t.Fatal(err)
		}
		mem0 := procStatus(t, pid, "VmRSS", "VmHWM")
		socks0 := len(sockets(t, pid))
		const perKind, hold = 100, 90 * time.Second
		p, err := u.nodes["a"].Start("slowloris", u.nobody("slowloris", upArgs{Addr: upMetrics, PerKind: perKind, Hold: hold})...)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Kill()
		u.waitFor(upWait, "the slowloris connections open", func(context.Context) (bool, string) {
			_, ok := upParse(p.Log(), "ready")
			return ok, p.Log()
		})
		start := time.Now()
		r, _ := upParse(p.Log(), "ready")
		u.wantNobody(r)
		// Health keeps answering while the connections are held, and
		// keepvip lets go of them all while nobody still holds its ends.
		maxSocks, healthChecks, socks := 0, 0, 0
		for time.Since(start) < hold-15*time.Second {
			socks = len(sockets(t, pid))
			maxSocks = max(maxSocks, socks)
			if healthChecks < 5 && time.Since(start) > time.Duration(healthChecks)*3*time.Second {
				healthChecks++
				u.health(a, fmt.Sprintf("slowloris, %v in", time.Since(start).Round(time.Second)))
			}
			if socks <= socks0+2 && healthChecks >= 3 {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		cutIn := time.Since(start)
		mem := procStatus(t, pid, "VmRSS", "VmHWM")
		grown := mem["VmHWM"] - mem0["VmRSS"]
		t.Logf("figure: slowloris of %d connections (%d of each of %v): keepvip held at most %d sockets (%d before), %d after %v; RSS %d kB before, peak %d kB (+%d kB)",
			perKind*len(upSlowKinds), perKind, upSlowKinds, maxSocks, socks0, socks, cutIn.Round(time.Second), mem0["VmRSS"], mem["VmHWM"], grown)
		faultBench(t, "fault_unprivileged_slowloris_rss_growth", float64(grown)/1024, "MiB")
		faultBench(t, "fault_unprivileged_slowloris_sockets_max", float64(maxSocks), "sockets")
		faultBench(t, "fault_unprivileged_slowloris_all_cut_after", cutIn.Seconds(), "s")
		// The attacker's view (SIGTERM makes it report).
		if err := p.Signal(syscall.SIGTERM); err == nil {
			select {
			case <-p.Exited():
			case <-time.After(upWait):
			}
		}
		if done, ok := upParse(p.Log(), "done"); ok {
			for _, k := range upSlowKinds {
				if s := done.Slow[k]; s != nil {
					// A slow reader does not see the server's FIN: it
					// waits behind the answers it does not read.
					t.Logf("figure: slowloris %s: %d opened, %d seen cut by the server, the last %v in", k, s.Opened+s.DialFailed, s.Cut, s.CutAfter)
				}
			}
		}
		if socks > socks0+2 {
			t.Errorf("keepvip still holds %d sockets (%d before the attack) %v into it: the server did not cut the slowloris connections", socks, socks0, cutIn.Round(time.Second))
		}
		// Not a growth in proportion to what the attacker sends (100
		// headers of 1 MiB, 5000 requests for /metrics): a few MB per
		// hundred connections. A race-built keepvip takes about eight
		// times the memory of a normal one for the same. (Without the
		// bounds, +300 MB normal, +930 MB race-built.)
		maxGrowth := 64 << 10 // kB
		if u.raceBuilt() {
			maxGrowth = 384 << 10
		}
		if grown > maxGrowth {
			t.Errorf("keepvip's memory grew by %d kB under the slowloris; want at most %d kB", grown, maxGrowth)
		}
		u.alive("a")
		after, ok := u.instOn(a, "v4")
		if !ok {
			t.Fatalf("a's keepvip does not answer on its socket after the slowloris")
		}
		bAfter := u.mustInst("b", "v4")
		if after.State != vrrp.StateMaster || len(after.Transitions) != len(before.Transitions) || len(bAfter.Transitions) != len(bBefore.Transitions) {
			t.Errorf("the slowloris changed VRRP: a %s (transitions %s), b %s (transitions %s)",
				clBrief(after), clTrString(clSince(after, start)), clBrief(bAfter), clTrString(clSince(bAfter, start)))
		}
		u.health(a, "after the slowloris")
		u.waitMetrics("metrics served after the slowloris")
	})
}

// with returns u for subtest t.
func (u *upLab) with(t *testing.T) *upLab {
	v := *u
	cc := *u.clCluster
	cc.t = t
	v.clCluster, v.t = &cc, t
	return &v
}

// raceBuilt reports whether the keepvip binary is built with -race.
func (u *upLab) raceBuilt() bool {
	u.t.Helper()
	bi, err := buildinfo.ReadFile(u.kv)
	if err != nil {
		u.t.Fatalf("reading the build settings of %s: %v", u.kv, err)
	}
	return slices.ContainsFunc(bi.Settings, func(s debug.BuildSetting) bool { return s.Key == "-race" && s.Value == "true" })
}

// instOn asks a's keepvip, on its socket, for instance name.
func (u *upLab) instOn(a *upKeepvip, name string) (vrrp.Status, bool) {
	s, err := u.status(a)
	if err != nil {
		return vrrp.Status{}, false
	}
	for _, in := range s.Instances {
		if in.Name == name {
			return in, true
		}
	}
	return vrrp.Status{}, false
}
