package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// KeepalivedInstance is one vrrp_instance of a keepalived configuration.
type KeepalivedInstance struct {
	// Name is the instance name (as in the notify FIFO).
	Name string
	// Interface defaults to the node's eth0.
	Interface string
	// VRID is the virtual router id (1-255).
	VRID int
	// Priority is 1-255.
	Priority int
	// AdvertInterval defaults to 1 s; it must be a multiple of 10 ms and
	// is rendered in seconds (e.g. "advert_int 0.1").
	AdvertInterval time.Duration
	// VIPs are the virtual addresses (all of one family).
	VIPs []netip.Prefix
	// UnicastSrc and UnicastPeers switch the instance to unicast.
	UnicastSrc   netip.Addr
	UnicastPeers []netip.Addr
	// NoPreempt renders "nopreempt".
	NoPreempt bool
	// Version is 2 or 3 (0 means 3). keepalived always uses 3 for IPv6.
	Version int
	// Extra lines are copied into the vrrp_instance block verbatim
	// (e.g. "garp_master_delay 0").
	Extra []string
}

// RenderKeepalivedConfig renders a keepalived.conf for insts. The global
// vrrp_version is 2 if every instance asks for version 2, else 3;
// version-2 instances in a version-3 configuration get a "version 2"
// line. fifo, if
// not empty, becomes vrrp_notify_fifo. vrrp_strict is not set.
func RenderKeepalivedConfig(insts []KeepalivedInstance, fifo string) (string, error) {
	if len(insts) == 0 {
		return "", errors.New("no vrrp instances")
	}
	global := 2
	for _, in := range insts {
		if in.Version != 0 && in.Version != 2 && in.Version != 3 {
			return "", fmt.Errorf("instance %s: version %d", in.Name, in.Version)
		}
		if in.Version != 2 {
			global = 3
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "global_defs {\n    vrrp_version %d\n", global)
	if fifo != "" {
		fmt.Fprintf(&b, "    vrrp_notify_fifo %s\n", fifo)
	}
	b.WriteString("}\n")
	names := map[string]bool{}
	for _, in := range insts {
		if in.Name == "" || strings.ContainsAny(in.Name, " \t\n\"{}") {
			return "", fmt.Errorf("bad instance name %q", in.Name)
		}
		if names[in.Name] {
			return "", fmt.Errorf("duplicate instance name %q", in.Name)
		}
		names[in.Name] = true
		if in.Interface == "" {
			return "", fmt.Errorf("instance %s: no interface", in.Name)
		}
		adv := in.AdvertInterval
		if adv == 0 {
			adv = time.Second
		}
		if adv < 10*time.Millisecond || adv%(10*time.Millisecond) != 0 {
			return "", fmt.Errorf("instance %s: advert interval %v is not a positive multiple of 10ms", in.Name, adv)
		}
		if len(in.VIPs) == 0 {
			return "", fmt.Errorf("instance %s: no VIPs", in.Name)
		}
		fmt.Fprintf(&b, "\nvrrp_instance %s {\n", in.Name)
		fmt.Fprintf(&b, "    state BACKUP\n")
		fmt.Fprintf(&b, "    interface %s\n", in.Interface)
		fmt.Fprintf(&b, "    virtual_router_id %d\n", in.VRID)
		fmt.Fprintf(&b, "    priority %d\n", in.Priority)
		fmt.Fprintf(&b, "    advert_int %s\n", strconv.FormatFloat(adv.Seconds(), 'f', -1, 64))
		if in.Version == 2 && global != 2 {
			fmt.Fprintf(&b, "    version %d\n", in.Version)
		}
		if in.NoPreempt {
			b.WriteString("    nopreempt\n")
		}
		if in.UnicastSrc.IsValid() {
			fmt.Fprintf(&b, "    unicast_src_ip %s\n", in.UnicastSrc)
		}
		if len(in.UnicastPeers) > 0 {
			b.WriteString("    unicast_peer {\n")
			for _, p := range in.UnicastPeers {
				fmt.Fprintf(&b, "        %s\n", p)
			}
			b.WriteString("    }\n")
		}
		b.WriteString("    virtual_ipaddress {\n")
		for _, v := range in.VIPs {
			fmt.Fprintf(&b, "        %s\n", v)
		}
		b.WriteString("    }\n")
		for _, e := range in.Extra {
			fmt.Fprintf(&b, "    %s\n", e)
		}
		b.WriteString("}\n")
	}
	return b.String(), nil
}

// StateChange is one line read from keepalived's vrrp_notify_fifo, e.g.
// `INSTANCE "VI4" MASTER 150`.
type StateChange struct {
	// Time is when the line was read (not when keepalived wrote it).
	Time time.Time
	// Kind is "INSTANCE" or "GROUP".
	Kind string
	// Name is the instance (or sync group) name, without quotes.
	Name string
	// State is MASTER, BACKUP, FAULT or STOP.
	State string
	// Priority is the instance's priority (0 for groups).
	Priority int
	// Line is the raw line.
	Line string
}

// Keepalived is a keepalived daemon running in a node.
type Keepalived struct {
	// Node is the node it runs in.
	Node *Node
	// ConfPath, FIFOPath, PIDFile and VRRPPIDFile are its files in the
	// lab's Dir.
	ConfPath, FIFOPath, PIDFile, VRRPPIDFile string

	proc       *Proc
	fifo       *os.File
	readerDone chan struct{}

	mu      sync.Mutex
	history []StateChange
	states  map[string]string
	changed chan struct{}
}

// StartKeepalived renders a configuration for insts (Interface defaults
// to eth0), checks it with `keepalived -t` inside n's namespace, and runs
// `keepalived -n -l -D -G -P -f CONF -p PID -r VRRPPID` there, with its
// own pid files. keepalived's state changes are read continuously from its
// vrrp_notify_fifo; see State, WaitState and History. The FIFO is created
// (and opened read-write) before keepalived starts, so no line is lost
// and keepalived leaves it in place. keepalived is installed with apt-get
// if missing.
func (n *Node) StartKeepalived(insts []KeepalivedInstance) (*Keepalived, error) {
	if err := EnsureTools(n.lab.logf, "keepalived"); err != nil {
		return nil, fmt.Errorf("starting keepalived in %s: %w", n.Name, err)
	}
	insts = append([]KeepalivedInstance(nil), insts...)
	for i := range insts {
		if insts[i].Interface == "" {
			insts[i].Interface = n.IfName
		}
	}
	stem := strings.TrimSuffix(n.lab.logPath(n.Name+"-keepalived-files"), ".log")
	k := &Keepalived{
		Node:        n,
		ConfPath:    stem + ".conf",
		FIFOPath:    stem + ".fifo",
		PIDFile:     stem + ".pid",
		VRRPPIDFile: stem + ".vrrp.pid",
		states:      map[string]string{},
		changed:     make(chan struct{}),
		readerDone:  make(chan struct{}),
	}
	fail := func(err error) (*Keepalived, error) {
		if k.fifo != nil {
			k.fifo.Close()
		}
		return nil, fmt.Errorf("starting keepalived in %s: %w", n.Name, err)
	}
	conf, err := RenderKeepalivedConfig(insts, k.FIFOPath)
	if err != nil {
		return fail(err)
	}
	if err := os.WriteFile(k.ConfPath, []byte(conf), 0o644); err != nil {
		return fail(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	if out, err := n.Exec(ctx, "keepalived", "-t", "-f", k.ConfPath); err != nil {
		return fail(fmt.Errorf("invalid configuration:\n%s\n%w: %s", conf, err, out))
	}
	if err := unix.Mkfifo(k.FIFOPath, 0o600); err != nil {
		return fail(fmt.Errorf("creating FIFO: %w", err))
	}
	// Read-write: reads never see EOF when keepalived exits or restarts,
	// and the file is pollable, so Close and deadlines interrupt Read.
	k.fifo, err = os.OpenFile(k.FIFOPath, os.O_RDWR, 0)
	if err != nil {
		return fail(fmt.Errorf("opening FIFO: %w", err))
	}
	unreg, err := n.lab.addCloser(func() {
		k.fifo.Close()
		<-k.readerDone
	})
	if err != nil {
		return fail(err)
	}
	go k.readFIFO()
	k.proc, err = n.Start("keepalived", "keepalived", "-n", "-l", "-D", "-G", "-P",
		"-f", k.ConfPath, "-p", k.PIDFile, "-r", k.VRRPPIDFile)
	if err != nil {
		unreg()
		k.fifo.Close()
		<-k.readerDone
		return nil, fmt.Errorf("starting keepalived in %s: %w", n.Name, err)
	}
	go func() {
		// Once keepalived is gone, read what it wrote last, then stop.
		select {
		case <-k.proc.Exited():
			k.fifo.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
			<-k.readerDone
			k.fifo.Close()
			unreg()
		case <-k.readerDone:
		}
	}()
	return k, nil
}

func (k *Keepalived) readFIFO() {
	defer close(k.readerDone)
	r := bufio.NewReader(k.fifo)
	for {
		line, err := r.ReadString('\n')
		if line = strings.TrimSpace(line); line != "" {
			k.record(line)
		}
		if err != nil {
			return
		}
	}
}

func (k *Keepalived) record(line string) {
	sc := StateChange{Time: time.Now(), Line: line}
	f := strings.Fields(line)
	if len(f) >= 3 {
		sc.Kind = f[0]
		sc.Name = strings.Trim(f[1], `"`)
		sc.State = f[2]
		if len(f) >= 4 {
			sc.Priority, _ = strconv.Atoi(f[3])
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.history = append(k.history, sc)
	// keepalived 2.2.7 also writes event lines such as
	// `INSTANCE "X" MASTER_RX_LOWER_PRI 100` (a master heard a lower
	// priority); they stay in the history but are not states.
	if sc.Kind == "INSTANCE" && isKeepalivedState(sc.State) {
		k.states[sc.Name] = sc.State
	}
	close(k.changed)
	k.changed = make(chan struct{})
	k.Node.lab.logf("lab %s: %s: keepalived: %s", k.Node.lab.id, k.Node.Name, line)
}

func isKeepalivedState(s string) bool {
	switch s {
	case "MASTER", "BACKUP", "FAULT", "STOP":
		return true
	}
	return false
}

// Proc is the keepalived parent process.
func (k *Keepalived) Proc() *Proc { return k.proc }

// Log returns keepalived's output so far.
func (k *Keepalived) Log() string { return k.proc.Log() }

// State is the latest state of instance from the FIFO (MASTER, BACKUP,
// FAULT, STOP), or "" if none has been reported.
func (k *Keepalived) State(instance string) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.states[instance]
}

// History returns every line read from the FIFO, oldest first.
func (k *Keepalived) History() []StateChange {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]StateChange(nil), k.history...)
}

// WaitState waits until the latest state of instance is state. The error
// includes the FIFO history and the end of keepalived's log.
func (k *Keepalived) WaitState(ctx context.Context, instance, state string) error {
	for {
		k.mu.Lock()
		cur := k.states[instance]
		ch := k.changed
		k.mu.Unlock()
		if cur == state {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %s to be %s (is %q): %w\nFIFO history:\n%s\nlog tail:\n%s",
				k.Node.Name, instance, state, cur, ctx.Err(), k.historyText(), tail(k.Log(), 30))
		case <-ch:
		case <-k.readerDone:
			k.mu.Lock()
			cur = k.states[instance]
			k.mu.Unlock()
			if cur == state {
				return nil
			}
			return fmt.Errorf("waiting for %s: %s to be %s (is %q): keepalived exited (%v)\nFIFO history:\n%s\nlog tail:\n%s",
				k.Node.Name, instance, state, cur, k.proc.Wait(), k.historyText(), tail(k.Log(), 30))
		}
	}
}

func (k *Keepalived) historyText() string {
	var b strings.Builder
	for _, h := range k.History() {
		fmt.Fprintf(&b, "  %s %s\n", h.Time.Format("15:04:05.000000"), h.Line)
	}
	return b.String()
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// VRRPPID returns the PID of keepalived's VRRP child process.
func (k *Keepalived) VRRPPID() (int, error) {
	b, err := os.ReadFile(k.VRRPPIDFile)
	if err != nil {
		return 0, fmt.Errorf("keepalived in %s: %w", k.Node.Name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("keepalived in %s: bad pid file: %w", k.Node.Name, err)
	}
	return pid, nil
}

// Stop shuts keepalived down gracefully (SIGTERM; SIGKILL after timeout):
// a master sends priority-0 adverts and removes its VIPs, and the FIFO
// reports STOP.
func (k *Keepalived) Stop(timeout time.Duration) error {
	return k.proc.Stop(timeout)
}

// Kill simulates a crash: SIGKILL to keepalived and its VRRP child at
// once. No priority-0 advert is sent and the VIPs stay configured on the
// interface (remove them, or cut the node's link, to make the node stop
// answering for them). Note that SIGKILLing only the parent process is
// not a crash: the VRRP child then shuts down gracefully.
func (k *Keepalived) Kill() error {
	return k.proc.Kill()
}
