package lab

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keepvip/keepvip/internal/daemon"
	"github.com/keepvip/keepvip/vrrp"
)

// EnvKeepvipBin names a keepvip binary to use instead of building one.
const EnvKeepvipBin = "KEEPVIP_BIN"

var (
	buildOnce sync.Once
	buildPath string
	buildErr  error
)

// KeepvipBinary returns the keepvip binary to run: $KEEPVIP_BIN if set,
// otherwise one built once per process from this module into a temporary
// directory.
func KeepvipBinary() (string, error) {
	if p := os.Getenv(EnvKeepvipBin); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", err
		}
		if _, err := os.Stat(abs); err != nil {
			return "", fmt.Errorf("%s=%s: %w", EnvKeepvipBin, p, err)
		}
		return abs, nil
	}
	buildOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOMOD").Output()
		if err != nil {
			buildErr = fmt.Errorf("finding the module: %w", err)
			return
		}
		root := filepath.Dir(strings.TrimSpace(string(out)))
		dir, err := os.MkdirTemp("", "keepvip-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildPath = filepath.Join(dir, "keepvip")
		cmd := exec.Command("go", "build", "-race", "-o", buildPath, "./cmd/keepvip")
		cmd.Dir = root
		if b, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building keepvip: %w\n%s", err, b)
		}
	})
	return buildPath, buildErr
}

// Keepvip is a keepvip daemon running in a node.
type Keepvip struct {
	node   *Node
	proc   *Proc
	config string
	socket string
}

// StartKeepvip writes config (YAML) to the lab directory and runs
// `keepvip run` with it in n, with its status socket in the lab directory.
func (n *Node) StartKeepvip(config string, args ...string) (*Keepvip, error) {
	path := filepath.Join(n.lab.dir, "keepvip-"+n.Name+".yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		return nil, fmt.Errorf("writing keepvip config for %s: %w", n.Name, err)
	}
	k, err := n.startKeepvip(append([]string{"--config", path}, args...))
	if k != nil {
		k.config = path
	}
	return k, err
}

// StartKeepvipArgs runs `keepvip run` in n with args and no configuration
// file (Kubernetes mode: --configmap ...), its status socket in the lab
// directory.
func (n *Node) StartKeepvipArgs(args ...string) (*Keepvip, error) {
	return n.startKeepvip(args)
}

func (n *Node) startKeepvip(args []string) (*Keepvip, error) {
	bin, err := KeepvipBinary()
	if err != nil {
		return nil, err
	}
	k := &Keepvip{node: n, socket: filepath.Join(n.lab.dir, "keepvip-"+n.Name+".sock")}
	// A second keepvip on the node (--take-over) has a socket of its own.
	for i, a := range args {
		if a == "--status-socket" && i+1 < len(args) {
			k.socket = args[i+1]
		} else if v, ok := strings.CutPrefix(a, "--status-socket="); ok {
			k.socket = v
		}
	}
	// env execs the daemon (same PID); a race-built daemon otherwise
	// sleeps 1 s at exit (GORACE atexit_sleep_ms).
	argv := []string{"env", "GORACE=atexit_sleep_ms=0", bin, "run", "--status-socket", k.socket, "--log-level", "debug"}
	// The node's own state directory unless the test names one: the
	// default, /var/lib/keepvip, is the host's.
	if !slices.ContainsFunc(args, func(a string) bool { return a == "--state-dir" || strings.HasPrefix(a, "--state-dir=") }) {
		argv = append(argv, "--state-dir", filepath.Join(n.lab.dir, "state-"+n.Name))
	}
	argv = append(argv, args...)
	k.proc, err = n.Start("keepvip", argv...)
	if err != nil {
		return nil, err
	}
	return k, nil
}

// Proc returns the daemon's process.
func (k *Keepvip) Proc() *Proc { return k.proc }

// Node returns the node it runs in.
func (k *Keepvip) Node() *Node { return k.node }

// Socket returns the path of its status socket.
func (k *Keepvip) Socket() string { return k.socket }

// Log returns what it logged so far.
func (k *Keepvip) Log() string { return k.proc.Log() }

// Status asks the daemon for its status.
func (k *Keepvip) Status(ctx context.Context) (*daemon.Status, error) {
	return daemon.GetStatus(ctx, k.socket)
}

// Instance returns the status of one instance.
func (k *Keepvip) Instance(ctx context.Context, name string) (vrrp.Status, error) {
	s, err := k.Status(ctx)
	if err != nil {
		return vrrp.Status{}, err
	}
	for _, in := range s.Instances {
		if in.Name == name {
			return in, nil
		}
	}
	return vrrp.Status{}, fmt.Errorf("%s: no instance %q", k.node.Name, name)
}

// State returns the state of one instance.
func (k *Keepvip) State(ctx context.Context, name string) (vrrp.State, error) {
	in, err := k.Instance(ctx, name)
	return in.State, err
}

// WaitState polls until the instance is in state want.
func (k *Keepvip) WaitState(ctx context.Context, name string, want vrrp.State) error {
	var last string
	for {
		select {
		case <-k.proc.Exited():
			return fmt.Errorf("%s: keepvip exited while waiting for %s %v:\n%s", k.node.Name, name, want, tail(k.Log(), 3000))
		default:
		}
		st, err := k.State(ctx, name)
		if err == nil && st == want {
			return nil
		}
		if err != nil {
			last = err.Error()
		} else {
			last = st.String()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: instance %s did not reach %v (last: %s): %w\n%s", k.node.Name, name, want, last, ctx.Err(), tail(k.Log(), 3000))
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// Reload writes a new configuration and sends SIGHUP.
func (k *Keepvip) Reload(config string) error {
	if err := os.WriteFile(k.config, []byte(config), 0o644); err != nil {
		return err
	}
	return k.proc.Signal(syscall.SIGHUP)
}

// Stop sends SIGTERM (masters hand off with priority 0) and waits.
func (k *Keepvip) Stop(timeout time.Duration) error { return k.proc.Stop(timeout) }

// Kill sends SIGKILL: a crash, which leaves the VIPs where they are.
func (k *Keepvip) Kill() error { return k.proc.Kill() }
