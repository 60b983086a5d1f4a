// Package handover replaces a running keepvip in place: a new keepvip
// started beside it on the same host (in the same network namespace)
// waits, and when the old one stops it leaves what it holds where it is —
// the VIPs on their interfaces, the IPVS services — and passes the word
// to the new one, which carries on from there. To the other routers and
// to the clients nothing happens: no VIP moves, no connection breaks.
// deploy/ upgrades so: the DaemonSet starts the new pod on a node before
// it stops the old one (maxSurge), and keepvip runs with --take-over.
//
// The two meet on an abstract unix socket (Name), which belongs to the
// network namespace: two pods of the host network see the same one
// whatever their volumes. The running keepvip (Listen) accepts one
// successor at a time; the successor (Wait) waits on the connection. At
// the end the running one asks the successor whether it is still there
// (Claim: "prepare", answered "ready"), leaves, and sends "go" with what
// the successor needs to know (the state, opaque here). A successor that
// finds the connection closed without "go" (the old keepvip died, or is
// one that knows nothing of this) waits for it to be gone and starts as
// any keepvip does, resuming what it finds.
//
// Both ends must be root, checked with SO_PEERCRED: anyone may connect to
// an abstract socket, and a process that could pose as a successor could
// make keepvip leave its VIPs to no one.
package handover

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/keepvip/keepvip/internal/rootonly"
)

// Name is the abstract unix socket where a running keepvip waits for its
// successor.
const Name = "@keepvip-handover"

// message is one line of the conversation, JSON.
type message struct {
	// Successor, from the successor as it connects: its pid.
	Successor int32 `json:"successor,omitempty"`
	// Holder, the running keepvip's answer: its pid; the successor waits.
	Holder int32 `json:"holder,omitempty"`
	// Busy: another successor waits already; try again later.
	Busy bool `json:"busy,omitempty"`
	// Prepare: the running keepvip is stopping and will leave for the
	// successor if it answers Ready.
	Prepare bool `json:"prepare,omitempty"`
	Ready   bool `json:"ready,omitempty"`
	// Go: the running keepvip has left; State is what it passes on.
	Go    bool            `json:"go,omitempty"`
	State json.RawMessage `json:"state,omitempty"`
	// Took: the successor's answer to Go; without it the running keepvip
	// takes back what it left.
	Took bool `json:"took,omitempty"`
}

func send(c net.Conn, m message) error {
	b, err := json.Marshal(m)
	if err != nil {
		return err
	}
	c.SetWriteDeadline(time.Now().Add(ioTimeout))
	_, err = c.Write(append(b, '\n'))
	return err
}

// ioTimeout bounds each write, and the wait for an answer to Prepare.
const ioTimeout = 2 * time.Second

// maxLine bounds a message: the state is a few names and numbers.
const maxLine = 1 << 20

// Listener is the running keepvip's side.
type Listener struct {
	l   net.Listener
	log *slog.Logger

	mu   sync.Mutex
	succ *waiting // nil while no successor waits
	done chan struct{}
}

// waiting is a connected successor.
type waiting struct {
	c   *net.UnixConn
	pid int32
	rx  chan message // its messages; closed when the connection ends
}

// Listen opens the socket name (Name outside tests) for successors. It
// fails if another process has it: two keepvips already run in this
// network namespace, or someone else took the name.
func Listen(name string, log *slog.Logger) (*Listener, error) {
	l, err := net.Listen("unix", name)
	if err != nil {
		if errors.Is(err, syscall.EADDRINUSE) {
			who := "a process"
			if cred, perr := rootonly.Peer(name); perr == nil {
				who = fmt.Sprintf("pid %d (uid %d)", cred.Pid, cred.Uid)
			}
			return nil, fmt.Errorf("listening for a successor on %s: %s has it", name, who)
		}
		return nil, fmt.Errorf("listening for a successor on %s: %w", name, err)
	}
	hl := &Listener{l: l, log: log, done: make(chan struct{})}
	go hl.accept()
	return hl, nil
}

func (hl *Listener) accept() {
	defer close(hl.done)
	for {
		c, err := hl.l.Accept()
		if err != nil {
			return
		}
		go hl.greet(c.(*net.UnixConn))
	}
}

// greet takes a successor's first message and keeps it as the successor,
// unless one waits already.
func (hl *Listener) greet(c *net.UnixConn) {
	cred, err := rootonly.ConnPeer(c)
	if err != nil || cred.Uid != 0 {
		if err == nil {
			err = fmt.Errorf("pid %d is uid %d, not root", cred.Pid, cred.Uid)
		}
		hl.log.Warn("refused a would-be successor", "socket", Name, "err", err)
		c.Close()
		return
	}
	r := bufio.NewReaderSize(c, 4096)
	c.SetReadDeadline(time.Now().Add(ioTimeout))
	var hello message
	if err := readMessage(r, &hello); err != nil || hello.Successor == 0 {
		hl.log.Warn("refused a would-be successor: it did not say who it is", "pid", cred.Pid, "err", err)
		c.Close()
		return
	}
	c.SetReadDeadline(time.Time{})
	w := &waiting{c: c, pid: cred.Pid, rx: make(chan message, 4)}
	hl.mu.Lock()
	busy := hl.succ != nil
	if !busy {
		hl.succ = w
	}
	hl.mu.Unlock()
	if busy {
		send(c, message{Busy: true})
		c.Close()
		return
	}
	if err := send(c, message{Holder: int32(os.Getpid())}); err != nil {
		hl.drop(w, true)
		return
	}
	hl.log.Info("a keepvip waits to take over on this host", "pid", w.pid)
	took := false
	for {
		var m message
		if err := readMessage(r, &m); err != nil {
			break
		}
		took = took || m.Took
		select {
		case w.rx <- m:
		default: // it says more than it should; Claim reads what counts
		}
	}
	close(w.rx)
	hl.drop(w, !took)
}

// drop forgets a successor whose connection ended (or was ended: gone
// says whether to log that it went away).
func (hl *Listener) drop(w *waiting, gone bool) {
	hl.mu.Lock()
	if hl.succ == w {
		hl.succ = nil
		if gone {
			hl.log.Info("the keepvip that waited to take over is gone", "pid", w.pid)
		}
	}
	hl.mu.Unlock()
	w.c.Close()
}

// Waiting returns the pid of the successor that waits, or 0.
func (hl *Listener) Waiting() int32 {
	if hl == nil {
		return 0
	}
	hl.mu.Lock()
	defer hl.mu.Unlock()
	if hl.succ == nil {
		return 0
	}
	return hl.succ.pid
}

// Successor is a successor that has said it is ready to take over.
type Successor struct {
	hl  *Listener
	w   *waiting
	Pid int32
}

// Claim asks the waiting successor, if there is one, whether it is still
// there and ready, and stops accepting others. nil: none is (keepvip stops
// as usual, handing its VIPs off to the other routers).
func (hl *Listener) Claim() *Successor {
	if hl == nil {
		return nil
	}
	hl.l.Close()
	<-hl.done
	hl.mu.Lock()
	w := hl.succ
	hl.mu.Unlock()
	if w == nil {
		return nil
	}
	if err := send(w.c, message{Prepare: true}); err != nil {
		hl.log.Warn("the keepvip waiting to take over did not take the word", "pid", w.pid, "err", err)
		hl.drop(w, false)
		return nil
	}
	t := time.NewTimer(ioTimeout)
	defer t.Stop()
	for {
		select {
		case m, ok := <-w.rx:
			if !ok {
				hl.log.Warn("the keepvip waiting to take over went away as it was asked", "pid", w.pid)
				return nil
			}
			if m.Ready {
				return &Successor{hl: hl, w: w, Pid: w.pid}
			}
		case <-t.C:
			hl.log.Warn("the keepvip waiting to take over did not answer", "pid", w.pid, "within", ioTimeout)
			hl.drop(w, false)
			return nil
		}
	}
}

// Go tells the successor to take over, with state, waits for its answer
// and ends the conversation. An error means it did not take the word (it
// died meanwhile, it was stopped): what was left for it is the caller's
// again.
func (s *Successor) Go(state any) error {
	defer s.hl.drop(s.w, false)
	b, err := json.Marshal(state)
	if err != nil {
		return fmt.Errorf("encoding the state for the successor: %w", err)
	}
	if err := send(s.w.c, message{Go: true, State: b}); err != nil {
		return fmt.Errorf("telling keepvip pid %d to take over: %w", s.Pid, err)
	}
	t := time.NewTimer(ioTimeout)
	defer t.Stop()
	for {
		select {
		case m, ok := <-s.w.rx:
			if !ok {
				return fmt.Errorf("keepvip pid %d went away as it was told to take over", s.Pid)
			}
			if m.Took {
				return nil
			}
		case <-t.C:
			return fmt.Errorf("keepvip pid %d did not answer within %v when told to take over", s.Pid, ioTimeout)
		}
	}
}

// Close stops listening and lets a waiting successor go (it starts on
// its own once this keepvip is gone).
func (hl *Listener) Close() {
	if hl == nil {
		return
	}
	hl.l.Close()
	<-hl.done
	hl.mu.Lock()
	w := hl.succ
	hl.mu.Unlock()
	if w != nil {
		hl.drop(w, false)
	}
}

func readMessage(r *bufio.Reader, m *message) error {
	var line []byte
	for {
		chunk, isPrefix, err := r.ReadLine()
		if err != nil {
			return err
		}
		line = append(line, chunk...)
		if len(line) > maxLine {
			return fmt.Errorf("a message longer than %d bytes", maxLine)
		}
		if !isPrefix {
			break
		}
	}
	*m = message{}
	if err := json.Unmarshal(line, m); err != nil {
		return fmt.Errorf("reading a message: %w", err)
	}
	return nil
}

// WaitOptions configure Wait.
type WaitOptions struct {
	// Name is the socket (Name outside tests).
	Name string
	// Running reports the pid of a keepvip that runs in this network
	// namespace, if one does (it may not listen on Name: an older one, or
	// one still starting); Wait waits for it to be gone.
	Running func() (int32, bool)
	// OnWaiting is told whom Wait waits for (0: no one any more), and
	// whether that keepvip will hand over in place (it listens on Name and
	// took this one as its successor) or only stop (an older keepvip, one
	// that could not listen, one starting): then the VIPs are handed off
	// to the other routers as usual, and this one starts on its own.
	OnWaiting func(pid int32, inPlace bool)
	Logger    *slog.Logger
	// Poll is how often Wait looks again for a keepvip that runs but
	// does not listen; 0 is 200 ms.
	Poll time.Duration

	warn func(kind, msg string, args ...any)
}

// Wait waits until no other keepvip runs in this network namespace. It
// returns the state that the one it waited for passed on as it left for
// this one, or nil if there was none (no keepvip ran, or the one that ran
// stopped or died without handing over: this one starts on its own). It
// returns ctx's error if ctx ends first.
func Wait(ctx context.Context, o WaitOptions) (json.RawMessage, error) {
	if o.Poll == 0 {
		o.Poll = 200 * time.Millisecond
	}
	if o.OnWaiting == nil {
		o.OnWaiting = func(int32, bool) {}
	}
	defer o.OnWaiting(0, false)
	// Each kind of warning once per wait: the loop runs every Poll.
	warned := map[string]bool{}
	o.warn = func(kind, msg string, args ...any) {
		if !warned[kind] {
			warned[kind] = true
			o.Logger.Warn(msg, args...)
		}
	}
	pause := func(d time.Duration) error {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
			return nil
		}
	}
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		state, err := converse(ctx, o)
		if err != nil || state != nil {
			return state, err
		}
		pid, running := o.Running()
		if !running {
			return nil, nil
		}
		o.OnWaiting(pid, false)
		o.warn("stop", "a keepvip runs on this host but does not hand over in place (an older one, or it could not listen): waiting for it to stop; its VIPs will be handed off to the other routers as usual", "pid", pid)
		if err := pause(o.Poll); err != nil {
			return nil, err
		}
	}
}

// converse waits on one connection to the running keepvip: the state if
// it handed over (never nil then), or nil if there was no one to talk to
// or the conversation ended without a handover.
func converse(ctx context.Context, o WaitOptions) (json.RawMessage, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", o.Name)
	if err != nil {
		return nil, nil // no one listens
	}
	c := conn.(*net.UnixConn)
	defer c.Close()
	cred, err := rootonly.ConnPeer(c)
	if err != nil || cred.Uid != 0 {
		if err == nil {
			err = fmt.Errorf("pid %d is uid %d, not root", cred.Pid, cred.Uid)
		}
		o.warn("squatter", "not waiting on the handover socket: its holder is not keepvip's", "socket", o.Name, "err", err)
		return nil, nil
	}
	if err := send(c, message{Successor: int32(os.Getpid())}); err != nil {
		return nil, nil
	}
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	r := bufio.NewReaderSize(c, 4096)
	for {
		var m message
		if err := readMessage(r, &m); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, nil // it stopped without handing over
		}
		switch {
		case m.Holder != 0:
			o.Logger.Info("waiting to take over from the keepvip that runs on this host", "pid", m.Holder)
			o.OnWaiting(m.Holder, true)
		case m.Busy:
			o.warn("busy", "another keepvip waits to take over already; waiting for the running one to stop", "pid", cred.Pid)
			return nil, nil
		case m.Prepare:
			if err := send(c, message{Ready: true}); err != nil {
				return nil, nil
			}
		case m.Go:
			// Taken, whatever comes next: from here on what it left
			// is this keepvip's to run or to hand off.
			if err := send(c, message{Took: true}); err != nil {
				return nil, nil // it takes back what it left
			}
			if len(m.State) == 0 {
				m.State = json.RawMessage("null")
			}
			return m.State, nil
		}
	}
}
