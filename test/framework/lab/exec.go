package lab

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"syscall"
)

// Every child is started from one OS thread that never exits: the Linux
// parent-death signal fires when the *thread* that forked a child exits,
// and this package deliberately lets threads that entered a namespace
// exit (see Node.Do). Starting all children from a dedicated locked
// thread makes PDEATHSIG mean "the Go program died".
var (
	spawnOnce sync.Once
	spawnCh   chan spawnReq
)

type spawnReq struct {
	cmd  *exec.Cmd
	errc chan error
}

func spawner() {
	runtime.LockOSThread() // never unlocked: this thread lives as long as the process
	for r := range spawnCh {
		r.errc <- r.cmd.Start()
	}
}

// startCmd starts cmd with SIGKILL as its parent-death signal, in a new
// process group.
func startCmd(cmd *exec.Cmd) error {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	cmd.SysProcAttr.Setpgid = true
	spawnOnce.Do(func() {
		spawnCh = make(chan spawnReq)
		go spawner()
	})
	r := spawnReq{cmd: cmd, errc: make(chan error, 1)}
	spawnCh <- r
	return <-r.errc
}

// runCmd runs name with args to completion (or until ctx is done) and
// returns its combined output. The error names the command and includes
// the output.
func runCmd(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if err := startCmd(cmd); err != nil {
		return nil, fmt.Errorf("%s: %w", cmdString(name, args), err)
	}
	if err := cmd.Wait(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%w)", err, ctx.Err())
		}
		return out.Bytes(), fmt.Errorf("%s: %w: %s", cmdString(name, args), err, strings.TrimSpace(out.String()))
	}
	return out.Bytes(), nil
}

// runStdout is runCmd keeping stdout apart from stderr.
func runStdout(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errb
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if err := startCmd(cmd); err != nil {
		return nil, fmt.Errorf("%s: %w", cmdString(name, args), err)
	}
	if err := cmd.Wait(); err != nil {
		return out.Bytes(), fmt.Errorf("%s: %w: %s", cmdString(name, args), err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

func cmdString(name string, args []string) string {
	s := name + " " + strings.Join(args, " ")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}
