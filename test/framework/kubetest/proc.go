package kubetest

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Children get SIGKILL when their parent dies (PR_SET_PDEATHSIG), so an
// etcd or kube-apiserver never outlives a test binary that crashed or was
// killed by go test's -timeout. The kernel ties that signal to the
// *thread* that forked the child, not the process: the child is killed
// when that thread exits. Go ends a thread when a goroutine locked to it
// returns, which this package does on purpose (see inNetNS) and which other
// code may do too. So every child is started from one goroutine locked to
// its thread for the life of the process.
var spawner struct {
	once sync.Once
	reqs chan spawnReq
}

type spawnReq struct {
	cmd  *exec.Cmd
	done chan error
}

func startChild(cmd *exec.Cmd) error {
	spawner.once.Do(func() {
		spawner.reqs = make(chan spawnReq)
		go func() {
			runtime.LockOSThread() // never unlocked: this thread lives as long as the process
			for r := range spawner.reqs {
				r.done <- r.cmd.Start()
			}
		}()
	})
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	r := spawnReq{cmd: cmd, done: make(chan error, 1)}
	spawner.reqs <- r
	return <-r.done
}

// netnsCommand prefixes argv with `ip netns exec NAME` when netns is set.
// ip execs the command in place (it forks only in batch mode), so the PID
// we track and the death signal are those of the command itself.
func netnsCommand(netns string, argv ...string) []string {
	if netns == "" {
		return argv
	}
	return append([]string{"ip", "netns", "exec", netns}, argv...)
}

// Process is a long-running child: etcd, kube-apiserver, a kubelet. It is
// SIGKILLed if this process dies first.
type Process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed when the process has exited and been reaped
	err     error         // exit status, valid after done
}

// startProc starts argv (inside netns if set) with stdout and stderr
// appended to logPath. It is not tied to a context: the process lives
// until Stop, or until this test process dies.
func startProc(name, netns, logPath string, argv []string) (*Process, error) {
	return StartProcess(name, logPath, netnsCommand(netns, argv...))
}

// StartProcess starts argv with stdout and stderr appended to logPath,
// killed (SIGKILL) when this process dies. argv[0] must exec the program
// in place (nsenter and `ip netns exec` do), so that the PID and the death
// signal are the program's.
func StartProcess(name, logPath string, argv []string) (*Process, error) {
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	defer logf.Close() // the child has its own copy
	fmt.Fprintf(logf, "=== kubetest %s: %q\n", time.Now().Format(time.RFC3339Nano), argv)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := startChild(cmd); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Process{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// PID is the process's ID.
func (p *Process) PID() int { return p.cmd.Process.Pid }

// LogPath is the file its output goes to.
func (p *Process) LogPath() string { return p.logPath }

// Done is closed when the process has exited and been reaped.
func (p *Process) Done() <-chan struct{} { return p.done }

// Signal sends sig to the process.
func (p *Process) Signal(sig os.Signal) error { return p.cmd.Process.Signal(sig) }

// Exited reports whether the process has exited.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Stop kills the process and waits, with a bound, until it is reaped.
// SIGKILL, not SIGTERM: everything it wrote is scratch, and a graceful
// kube-apiserver shutdown takes seconds for nothing.
func (p *Process) Stop() error {
	if p.Exited() {
		return nil
	}
	if err := p.cmd.Process.Kill(); err != nil && !p.Exited() {
		return fmt.Errorf("killing %s (pid %d): %w", p.name, p.cmd.Process.Pid, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(10 * time.Second):
		return fmt.Errorf("killing %s (pid %d): still running after 10s", p.name, p.cmd.Process.Pid)
	}
}

// LogTail is the end of the process's log, for error messages.
func (p *Process) LogTail() string {
	return fileTail(p.logPath, 40)
}

func fileTail(path string, lines int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	defer f.Close()
	const max = 64 << 10
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		_, _ = f.Seek(fi.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	return tailLines(b, lines)
}

func tailLines(b []byte, n int) string {
	b = bytes.TrimRight(b, "\n")
	for i, cut := len(b)-1, 0; i >= 0; i-- {
		if b[i] == '\n' {
			if cut++; cut == n {
				return "...\n" + string(b[i+1:])
			}
		}
	}
	return string(b)
}

// inNetNS runs f on a thread moved into the named network namespace
// (/run/netns/NAME, as made by `ip netns add`). Sockets keep the namespace
// they were created in, so a listener or connection made by f works from
// any goroutine afterwards. The thread is never moved back: the goroutine
// returns still locked and Go discards the thread, which is simpler and
// safer than restoring it.
func inNetNS(name string, f func() error) error {
	if name == "" {
		return f()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // deliberately never unlocked
		fd, err := unix.Open("/run/netns/"+name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			errc <- fmt.Errorf("opening network namespace %s: %w", name, err)
			return
		}
		err = unix.Setns(fd, unix.CLONE_NEWNET)
		unix.Close(fd)
		if err != nil {
			errc <- fmt.Errorf("entering network namespace %s: %w", name, err)
			return
		}
		errc <- f()
	}()
	return <-errc
}

// freePorts asks the kernel, inside netns if set, for n distinct free TCP
// ports on addr. All listeners stay open until all ports are chosen so
// none is handed out twice. Another process can still take a port before
// our child binds it; callers retry on "address already in use".
func freePorts(netns, addr string, n int) ([]int, error) {
	ports := make([]int, 0, n)
	err := inNetNS(netns, func() error {
		var ls []net.Listener
		defer func() {
			for _, l := range ls {
				l.Close()
			}
		}()
		for range n {
			l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
			if err != nil {
				return err
			}
			ls = append(ls, l)
			ports = append(ports, l.Addr().(*net.TCPAddr).Port)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("finding free ports on %s: %w", addr, err)
	}
	return ports, nil
}

// dialer dials TCP inside netns if set, so that the test process (in the
// host namespace) can reach servers listening on that namespace's
// addresses, 127.0.0.1 included.
func dialer(netns string) func(ctx context.Context, network, address string) (net.Conn, error) {
	var d net.Dialer
	if netns == "" {
		return d.DialContext
	}
	return func(ctx context.Context, network, address string) (net.Conn, error) {
		var c net.Conn
		err := inNetNS(netns, func() error {
			var err error
			c, err = d.DialContext(ctx, network, address)
			return err
		})
		return c, err
	}
}
