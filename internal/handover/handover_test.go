package handover

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keepvip/keepvip/test/framework/netnstest"
)

// These tests run in a fresh network namespace each (netnstest.Enter):
// abstract sockets belong to it, so Name is theirs alone.

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// clientEnv makes the test binary a client that connects to Name,
// introduces itself as a successor and prints the first answer (for the
// test run as another user).
const clientEnv = "KEEPVIP_HANDOVER_TEST_CLIENT"

func TestMain(m *testing.M) {
	if os.Getenv(clientEnv) != "" {
		c, err := net.Dial("unix", Name)
		if err != nil {
			fmt.Println("dial:", err)
			os.Exit(0)
		}
		fmt.Fprintf(c, "{\"successor\":%d}\n", os.Getpid())
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		fmt.Printf("answer %q %v\n", line, err)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

type result struct {
	state json.RawMessage
	err   error
}

// inPlace is what the last Wait told OnWaiting of the keepvip it waits for.
var inPlace atomic.Bool

// waitAsync runs Wait in the background; running says whether a keepvip
// runs (the holder, while the test says so).
func waitAsync(ctx context.Context, running *atomic.Bool, waitingFor *atomic.Int32) chan result {
	out := make(chan result, 1)
	go func() {
		st, err := Wait(ctx, WaitOptions{
			Name:    Name,
			Running: func() (int32, bool) { return 4242, running.Load() },
			OnWaiting: func(pid int32, ip bool) {
				waitingFor.Store(pid)
				if pid != 0 {
					inPlace.Store(ip)
				}
			},
			Logger: discard(),
			Poll:   10 * time.Millisecond,
		})
		out <- result{st, err}
	}()
	return out
}

func eventually(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func get(t *testing.T, ch chan result) result {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(5 * time.Second):
		t.Fatal("Wait did not return within 5s")
		return result{}
	}
}

// Nobody runs: Wait returns at once, with nothing inherited.
func TestWaitForNobody(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	var running atomic.Bool
	var waiting atomic.Int32
	r := get(t, waitAsync(context.Background(), &running, &waiting))
	if r.err != nil || r.state != nil {
		t.Fatalf("Wait = %s, %v; want nil, nil", r.state, r.err)
	}
}

// The running keepvip sees its successor, claims it as it stops and
// passes its state on; the successor gets exactly that state.
func TestHandOver(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	hl, err := Listen(Name, discard())
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	var running atomic.Bool
	running.Store(true)
	var waitingFor atomic.Int32
	ch := waitAsync(context.Background(), &running, &waitingFor)
	eventually(t, "the holder sees the successor", func() bool { return hl.Waiting() == int32(os.Getpid()) })
	eventually(t, "the successor knows whom it waits for", func() bool { return waitingFor.Load() == int32(os.Getpid()) })
	if !inPlace.Load() {
		t.Error("the successor of a keepvip that listens does not expect a handover in place")
	}
	if _, err := Listen(Name, discard()); err == nil {
		t.Fatal("a second Listen on the same name succeeded")
	}
	s := hl.Claim()
	if s == nil {
		t.Fatal("Claim found no successor")
	}
	type st struct{ Masters []string }
	if err := s.Go(st{Masters: []string{"vi"}}); err != nil {
		t.Fatal(err)
	}
	r := get(t, ch)
	var got st
	if r.err != nil || json.Unmarshal(r.state, &got) != nil || len(got.Masters) != 1 || got.Masters[0] != "vi" {
		t.Fatalf("Wait = %s, %v; want the state passed on", r.state, r.err)
	}
	if waitingFor.Load() != 0 {
		t.Error("OnWaiting not told that the wait is over")
	}
}

// A keepvip that stops without handing over (Close), or an older one
// that does not listen at all: the successor waits until it is gone,
// then starts on its own.
func TestNoHandOver(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	for _, listens := range []bool{true, false} {
		t.Run(fmt.Sprintf("listens=%v", listens), func(t *testing.T) {
			var hl *Listener
			if listens {
				var err error
				if hl, err = Listen(Name, discard()); err != nil {
					t.Fatal(err)
				}
			}
			var running atomic.Bool
			running.Store(true)
			var waitingFor atomic.Int32
			ch := waitAsync(context.Background(), &running, &waitingFor)
			if listens {
				eventually(t, "the holder sees the successor", func() bool { return hl.Waiting() != 0 })
				hl.Close()
			}
			eventually(t, "the successor waits for the running keepvip", func() bool { return waitingFor.Load() != 0 && !inPlace.Load() })
			select {
			case r := <-ch:
				t.Fatalf("Wait returned %s, %v while a keepvip still ran", r.state, r.err)
			case <-time.After(50 * time.Millisecond):
			}
			running.Store(false)
			if r := get(t, ch); r.err != nil || r.state != nil {
				t.Fatalf("Wait = %s, %v; want nil, nil: start on its own", r.state, r.err)
			}
		})
	}
}

// A successor that goes away is forgotten: the holder's Claim finds no
// one and it stops as usual. One that is cancelled returns ctx's error.
func TestSuccessorGoesAway(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	hl, err := Listen(Name, discard())
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	var running atomic.Bool
	running.Store(true)
	var waitingFor atomic.Int32
	ctx, cancel := context.WithCancel(context.Background())
	ch := waitAsync(ctx, &running, &waitingFor)
	eventually(t, "the holder sees the successor", func() bool { return hl.Waiting() != 0 })
	cancel()
	if r := get(t, ch); r.err != context.Canceled {
		t.Fatalf("Wait = %s, %v; want context.Canceled", r.state, r.err)
	}
	eventually(t, "the holder forgets the successor", func() bool { return hl.Waiting() == 0 })
	if s := hl.Claim(); s != nil {
		t.Fatalf("Claim = %+v; want nil", s)
	}
}

// Two successors: the second hears "busy" and waits its turn; a client
// that says nothing sensible, or is not root, is refused, and none of
// them keeps the holder from handing over to the first.
func TestIntrudersAreRefused(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	hl, err := Listen(Name, discard())
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	var running atomic.Bool
	running.Store(true)
	var w1, w2 atomic.Int32
	first := waitAsync(context.Background(), &running, &w1)
	eventually(t, "the holder sees the first successor", func() bool { return hl.Waiting() != 0 })
	second := waitAsync(context.Background(), &running, &w2)
	eventually(t, "the second waits (busy)", func() bool { return w2.Load() != 0 })

	for _, garbage := range []string{"hello\n", "{\"successor\":0}\n", "{\"ready\":true}\n"} {
		c, err := net.Dial("unix", Name)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprint(c, garbage)
		c.SetReadDeadline(time.Now().Add(3 * time.Second))
		if b, err := io.ReadAll(c); len(b) != 0 || err != nil {
			t.Errorf("after %q the holder answered %q (%v); want the connection closed unanswered", garbage, b, err)
		}
		c.Close()
	}
	// A copy of the test binary that user nobody can run.
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(exe)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "keepvip-handover-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	client := dir + "/client"
	if err := os.WriteFile(client, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(client)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), clientEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("client as nobody: %v: %s", err, out)
	}
	// Closed unread: EOF, or a reset for what it sent.
	if !strings.HasPrefix(string(out), "answer \"\" ") {
		t.Errorf("a successor that is not root got %q; want the connection closed unanswered", out)
	}

	s := hl.Claim()
	if s == nil {
		t.Fatal("Claim found no successor")
	}
	if err := s.Go("state"); err != nil {
		t.Fatal(err)
	}
	if r := get(t, first); string(r.state) != `"state"` {
		t.Fatalf("first successor got %s, %v", r.state, r.err)
	}
	running.Store(false)
	if r := get(t, second); r.state != nil || r.err != nil {
		t.Fatalf("second successor got %s, %v; want nothing, to start on its own", r.state, r.err)
	}
}

// Go waits for the successor's answer: one that got the word and died
// (or never answers) leaves Go with an error, and what was left is the
// running keepvip's to take back.
func TestGoWithoutAnswerFails(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	hl, err := Listen(Name, discard())
	if err != nil {
		t.Fatal(err)
	}
	defer hl.Close()
	c, err := net.Dial("unix", Name)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "{\"successor\":%d}\n", os.Getpid())
	r := bufio.NewReader(c)
	if line, err := r.ReadString('\n'); err != nil || !strings.Contains(line, "holder") {
		t.Fatalf("greeting: %q, %v", line, err)
	}
	got := make(chan string, 4)
	go func() {
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				close(got)
				return
			}
			if strings.Contains(line, "prepare") {
				fmt.Fprint(c, "{\"ready\":true}\n")
			}
			got <- line
		}
	}()
	s := hl.Claim()
	if s == nil {
		t.Fatal("Claim found no successor")
	}
	start := time.Now()
	err = s.Go("state")
	if err == nil || !strings.Contains(err.Error(), "did not answer") {
		t.Fatalf("Go = %v; want an error: the successor never answered", err)
	}
	if d := time.Since(start); d < ioTimeout || d > ioTimeout+time.Second {
		t.Errorf("Go gave up after %v; want %v", d, ioTimeout)
	}
	var lines []string
	for l := range got {
		lines = append(lines, l)
	}
	if len(lines) < 2 || !strings.Contains(lines[len(lines)-1], "\"go\":true") {
		t.Errorf("the successor read %q; want prepare, then go", lines)
	}
}
