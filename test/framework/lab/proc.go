package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// killWait bounds how long Kill waits for a SIGKILLed process to go.
const killWait = 10 * time.Second

// Proc is a process started by Node.Start. It leads its own process
// group. When it exits, whatever is left in its process group is
// SIGKILLed (before its PID is released), so a Proc never leaves children
// behind.
type Proc struct {
	// Name is the name given to Start.
	Name string
	// Node is the node it runs in.
	Node *Node

	cmd     *exec.Cmd
	pid     int
	logPath string
	done    chan struct{}

	mu     sync.Mutex
	reaped bool
	err    error
}

func newProc(name string, n *Node, cmd *exec.Cmd, logPath string) *Proc {
	p := &Proc{
		Name:    name,
		Node:    n,
		cmd:     cmd,
		pid:     cmd.Process.Pid,
		logPath: logPath,
		done:    make(chan struct{}),
	}
	go p.wait()
	return p
}

func (p *Proc) wait() {
	// Wait for the exit without reaping, so that the PID (and so the
	// process group ID) cannot be reused while we kill leftovers.
	var info unix.Siginfo
	for {
		err := unix.Waitid(unix.P_PID, p.pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		if err != unix.EINTR {
			break
		}
	}
	p.mu.Lock()
	_ = unix.Kill(-p.pid, unix.SIGKILL)
	p.reaped = true
	p.err = p.cmd.Wait()
	p.mu.Unlock()
	close(p.done)
}

// PID is the process's ID (also its process group ID).
func (p *Proc) PID() int { return p.pid }

// Exited is closed once the process has exited and been reaped.
func (p *Proc) Exited() <-chan struct{} { return p.done }

// Wait waits for the process to exit and returns its exit error (nil for
// status 0, an *exec.ExitError otherwise).
func (p *Proc) Wait() error {
	<-p.done
	return p.err
}

// Signal sends sig to the process (not its group). It returns an error
// once the process has been reaped.
func (p *Proc) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.reaped {
		return fmt.Errorf("signal %v to %s (pid %d): %w", sig, p.Name, p.pid, os.ErrProcessDone)
	}
	if err := unix.Kill(p.pid, sig); err != nil {
		return fmt.Errorf("signal %v to %s (pid %d): %w", sig, p.Name, p.pid, err)
	}
	return nil
}

// Kill SIGKILLs the process and its whole process group at once and waits
// for it to be reaped. It returns nil if the process is gone (also if it
// had already exited).
func (p *Proc) Kill() error {
	p.mu.Lock()
	if !p.reaped {
		_ = unix.Kill(-p.pid, unix.SIGKILL)
		_ = unix.Kill(p.pid, unix.SIGKILL)
	}
	p.mu.Unlock()
	select {
	case <-p.done:
		return nil
	case <-time.After(killWait):
		return fmt.Errorf("killing %s (pid %d): still running %v after SIGKILL", p.Name, p.pid, killWait)
	}
}

// ErrKilled is returned (wrapped) by Stop when the process ignored SIGTERM
// for the whole timeout and had to be SIGKILLed.
var ErrKilled = errors.New("did not exit after SIGTERM; killed")

// Stop sends SIGTERM, waits up to timeout for the process to exit, and
// SIGKILLs it (and its group) if it has not. It returns nil if the process
// exited on its own after SIGTERM, whatever its exit status (see Wait), and
// an error wrapping ErrKilled if it had to be killed.
func (p *Proc) Stop(timeout time.Duration) error {
	if err := p.Signal(unix.SIGTERM); err != nil {
		if errors.Is(err, os.ErrProcessDone) {
			return nil
		}
		return err
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
	}
	if err := p.Kill(); err != nil {
		return err
	}
	return fmt.Errorf("stopping %s (pid %d) within %v: %w", p.Name, p.pid, timeout, ErrKilled)
}

// LogPath is the file receiving the process's stdout and stderr.
func (p *Proc) LogPath() string { return p.logPath }

// Log returns the process's output so far.
func (p *Proc) Log() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return fmt.Sprintf("(reading log %s: %v)", p.logPath, err)
	}
	return string(b)
}
