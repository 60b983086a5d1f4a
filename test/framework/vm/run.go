package vm

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options configures one run of the machine.
type Options struct {
	// Binaries are host files copied to GuestBinDir (/usr/local/bin, on the
	// guest's PATH) under their base names, with their shared libraries
	// if they are dynamically linked.
	Binaries []string
	// Files are more host files or directories (copied recursively), by
	// absolute guest path.
	Files map[string]string
	// Commands run one after the other, whatever their exit status, in /
	// with stdin from /dev/null. argv[0] is looked up in the guest's PATH:
	// the binaries, the real ip and ipvsadm, then busybox's applets.
	Commands [][]string
	// Env are KEY=VALUE entries added to the commands' environment, after
	// KEEPVIP_IN_VM=1 and KEEPVIP_PRIVILEGED=1.
	Env []string
	// Modules are kernel modules to load besides DefaultModules (with
	// their dependencies); they must be among those the cache keeps.
	Modules []string
	// Timeout bounds the whole run, boot included. Default 10 minutes.
	Timeout time.Duration
	// CommandTimeout bounds each command in the guest: it gets SIGQUIT,
	// then SIGKILL 5 s later, and the run goes on with the next one.
	// 0: only Timeout bounds them.
	CommandTimeout time.Duration
	// MemoryMB is the guest's memory. Default 1024.
	MemoryMB int
	// CPUs is the number of virtual CPUs, each a host thread under TCG.
	// Default: the host's CPUs, at most 2.
	CPUs int
	// UserNet gives the guest a network interface, eth0, on qemu's user
	// network (slirp): configured as 10.0.2.15/24, it reaches the host's
	// loopback at 10.0.2.2 (a server on the host's 127.0.0.1:PORT is
	// 10.0.2.2:PORT). The guest configures it; nothing else is routed.
	UserNet bool
	// Console, if set, receives the guest's console (kernel messages and
	// /init's progress lines) as it comes.
	Console io.Writer

	initHook string // shell code /init runs before it reports ready (tests)
}

// Result is what a run brought back.
type Result struct {
	Commands []CommandResult // the commands that finished, in order
	Console  string          // the guest's console: kernel log, /init's progress
	Boot     time.Duration   // from starting qemu to the guest ready for its first command
	Elapsed  time.Duration   // from starting qemu to its exit
	Image    *Image          // the kernel that ran
}

// CommandResult is one command's outcome.
type CommandResult struct {
	Args     []string
	Stdout   []byte
	Stderr   []byte
	ExitCode int           // the shell's status: 128+N when killed by signal N
	TimedOut bool          // killed for CommandTimeout
	Duration time.Duration // by the guest's clock, 10 ms resolution
}

// Err describes a command that did not succeed, or returns nil.
func (c CommandResult) Err() error {
	switch {
	case c.TimedOut:
		return fmt.Errorf("%s: timed out in the VM after %v (status %d)", strings.Join(c.Args, " "), c.Duration.Round(time.Millisecond), c.ExitCode)
	case c.ExitCode != 0:
		return fmt.Errorf("%s: exit status %d in the VM", strings.Join(c.Args, " "), c.ExitCode)
	}
	return nil
}

// Run boots a machine, runs opts.Commands in it and returns their results.
//
// A command's failure is in its CommandResult, not in the error. The error
// is for the machine: qemu would not start, the guest did not boot, a
// module did not load, the run timed out or qemu died; it then carries the
// tail of the guest console, and the Result (never nil) what came back
// before. qemu is killed on every path, and also if this process dies
// (PR_SET_PDEATHSIG).
func Run(ctx context.Context, opts Options) (*Result, error) {
	res := &Result{}
	if len(opts.Commands) == 0 {
		return res, errors.New("vm: no commands")
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	if opts.MemoryMB <= 0 {
		opts.MemoryMB = 1024
	}
	if opts.CPUs <= 0 {
		opts.CPUs = min(runtime.NumCPU(), 2)
	}

	img, err := Prepare(ctx)
	if err != nil {
		return res, err
	}
	res.Image = img
	want := append(append([]string(nil), DefaultModules...), opts.Modules...)
	if opts.UserNet {
		want = append(want, userNetModules...)
	}
	mods, err := img.modules.loadOrder(want)
	if err != nil {
		return res, fmt.Errorf("vm: %w", err)
	}
	names := map[string]string{}
	for _, b := range opts.Binaries {
		st, err := os.Stat(b)
		if err != nil {
			return res, fmt.Errorf("vm: binary: %w", err)
		}
		if !st.Mode().IsRegular() {
			return res, fmt.Errorf("vm: binary %s is not a regular file", b)
		}
		base := filepath.Base(b)
		if prev, dup := names[base]; dup {
			return res, fmt.Errorf("vm: binaries %s and %s have the same name", prev, b)
		}
		names[base] = b
	}
	for g := range opts.Files {
		if !filepath.IsAbs(g) {
			return res, fmt.Errorf("vm: guest path %q is not absolute", g)
		}
	}

	nonce, err := newNonce()
	if err != nil {
		return res, err
	}
	env := append([]string{EnvInVM + "=1", EnvPrivileged + "=1"}, opts.Env...)
	script, err := initScript(nonce, img.Release, mods, env, opts.Commands, opts.CommandTimeout, opts.initHook)
	if err != nil {
		return res, fmt.Errorf("vm: %w", err)
	}

	sweepTemp()
	tmp, err := os.MkdirTemp("", fmt.Sprintf("%s%d-", tempPrefix, os.Getpid()))
	if err != nil {
		return res, fmt.Errorf("vm: %w", err)
	}
	defer os.RemoveAll(tmp)
	if strings.ContainsAny(tmp, ",") {
		return res, fmt.Errorf("vm: temporary directory %q has a comma, which qemu options cannot take", tmp)
	}
	initrd := filepath.Join(tmp, "initramfs.cpio")
	fs := &initramfs{img: img, mods: mods, init: script, bins: opts.Binaries, files: opts.Files,
		sbin: []string{img.tools.ip, img.tools.ipvsadm}}
	if err := fs.write(ctx, initrd); err != nil {
		return res, fmt.Errorf("vm: building the initramfs: %w", err)
	}

	dataPath := filepath.Join(tmp, "ttyS1")
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		// Nested KVM hangs at boot on the machines this runs on: TCG only.
		"-accel", "tcg,thread=multi", "-cpu", "max",
		"-smp", strconv.Itoa(opts.CPUs), "-m", strconv.Itoa(opts.MemoryMB),
		"-kernel", img.Kernel, "-initrd", initrd,
		// panic=-1 and oops=panic: a dead guest reboots, which -no-reboot
		// turns into qemu's exit.
		"-append", "console=ttyS0 panic=-1 oops=panic quiet mitigations=off rdinit=/init",
		"-serial", "stdio",
		"-serial", "file:" + dataPath,
	}
	if opts.UserNet {
		// No DHCP, DNS, TFTP or SMB are used; ipv6 off so that the guest
		// sees only the one address.
		args = append(args, "-netdev", "user,id=net0,ipv6=off", "-device", "virtio-net-pci,netdev=net0")
	}
	console := newConsole(opts.Console)
	var qemuErr bytes.Buffer
	cmd := exec.Command(img.tools.qemu, args...)
	cmd.Stdout = console
	cmd.Stderr = &qemuErr
	cmd.WaitDelay = 5 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}

	start := time.Now()
	exited, err := startLocked(cmd)
	if err != nil {
		return res, fmt.Errorf("vm: starting qemu: %w", err)
	}
	var waitErr error
	killed := false
	select {
	case waitErr = <-exited:
	case <-ctx.Done():
		killed = true
		cmd.Process.Kill()
		waitErr = <-exited
	}
	res.Elapsed = time.Since(start)
	if t := console.readyAt(); !t.IsZero() {
		res.Boot = t.Sub(start)
	}
	res.Console = console.String()

	data, rerr := os.ReadFile(dataPath)
	p, perr := parseRecords(nonce, data)
	for _, c := range p.cmds {
		if c.index >= 0 && c.index < len(opts.Commands) {
			c.CommandResult.Args = opts.Commands[c.index]
		}
		res.Commands = append(res.Commands, c.CommandResult)
	}

	fail := func(format string, a ...any) error {
		msg := fmt.Sprintf(format, a...)
		if s := strings.TrimSpace(qemuErr.String()); s != "" {
			msg += "\nqemu stderr:\n" + tail([]byte(s), 20)
		}
		return fmt.Errorf("vm: %s\n--- guest console (%s) ---\n%s\n--- end of guest console ---",
			msg, img.Package, tail([]byte(res.Console), 60))
	}
	running := ""
	if p.started >= 0 && p.started < len(opts.Commands) {
		running = fmt.Sprintf("command %d (%s)", p.started, strings.Join(opts.Commands[p.started], " "))
	}
	switch {
	case killed && !p.ready:
		return res, fail("the guest did not boot within %v (%v)", opts.Timeout, ctx.Err())
	case killed && running != "":
		return res, fail("%s was still running after %v (%v): qemu killed", running, res.Elapsed.Round(time.Second), ctx.Err())
	case killed:
		return res, fail("the run did not finish within %v (%v): qemu killed", res.Elapsed.Round(time.Second), ctx.Err())
	case p.fail != "":
		return res, fail("the guest's init failed: %s", p.fail)
	case waitErr != nil && !p.done:
		return res, fail("qemu: %v", waitErr)
	case rerr != nil:
		return res, fail("reading the guest's output: %v", rerr)
	case perr != nil:
		return res, fail("the guest's output is garbled: %v", perr)
	case !p.ready:
		return res, fail("the guest stopped before it was ready (kernel panic, or /init died)")
	case running != "":
		return res, fail("the guest stopped while %s ran", running)
	case !p.done:
		return res, fail("the guest stopped before it finished")
	case len(res.Commands) != len(opts.Commands):
		return res, fail("%d commands ran, %d were asked for", len(res.Commands), len(opts.Commands))
	case waitErr != nil:
		return res, fail("qemu: %v", waitErr)
	}
	return res, nil
}

// startLocked starts cmd from a goroutine locked to its OS thread for the
// life of the process: PR_SET_PDEATHSIG fires when the thread that started
// the child exits, and Go may otherwise end that thread at any time. The
// channel gets cmd.Wait's result.
func startLocked(cmd *exec.Cmd) (<-chan error, error) {
	started := make(chan error, 1)
	exited := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		exited <- cmd.Wait()
	}()
	if err := <-started; err != nil {
		return nil, err
	}
	return exited, nil
}

// tempPrefix names a run's temporary directory, with the pid of the
// process that made it.
const tempPrefix = "keepvip-vm-"

// sweepTemp removes the temporary directories of runs whose process died
// without removing them (killed by a signal, as by go test's timeout).
func sweepTemp() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+"*-*"))
	for _, d := range dirs {
		pidText, _, ok := strings.Cut(strings.TrimPrefix(filepath.Base(d), tempPrefix), "-")
		pid, err := strconv.Atoi(pidText)
		if !ok || err != nil || pid <= 0 {
			continue
		}
		if syscall.Kill(pid, 0) == syscall.ESRCH {
			os.RemoveAll(d)
		}
	}
}

func newNonce() (string, error) {
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("vm: nonce: %w", err)
	}
	return "KV" + hex.EncodeToString(b), nil
}

// console keeps the guest console (its last maxConsole bytes), forwards it
// and notes when /init said it was ready.
type console struct {
	mu      sync.Mutex
	buf     []byte
	dropped int
	line    []byte
	ready   time.Time
	fwd     io.Writer
}

const maxConsole = 4 << 20

func newConsole(fwd io.Writer) *console { return &console{fwd: fwd} }

func (c *console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf = append(c.buf, p...)
	if over := len(c.buf) - maxConsole; over > 0 {
		c.buf = append(c.buf[:0], c.buf[over:]...)
		c.dropped += over
	}
	if c.ready.IsZero() {
		c.line = append(c.line, p...)
		for {
			i := bytes.IndexByte(c.line, '\n')
			if i < 0 {
				break
			}
			if bytes.HasPrefix(bytes.TrimLeft(c.line[:i], "\r"), []byte("keepvip-vm: ready")) {
				c.ready = time.Now()
				c.line = nil
				break
			}
			c.line = c.line[i+1:]
		}
	}
	if c.fwd != nil {
		c.fwd.Write(p) // a failing forward must not stop the machine
	}
	return len(p), nil
}

func (c *console) readyAt() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ready
}

func (c *console) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := strings.ReplaceAll(string(c.buf), "\r\n", "\n")
	if c.dropped > 0 {
		s = fmt.Sprintf("[... %d bytes before]\n", c.dropped) + s
	}
	return s
}
