package kubenodes

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Close stops everything Start started and removes what it left on the
// host, in the order that leaves nothing behind: the kubelets first (they
// would restart what goes), then every container through containerd, then
// containerd, the shims and any container process that outlived its shim,
// the containers' cgroups, the nodes' mount namespaces, and the control
// plane. The lab (network namespaces, directory) is its caller's. It may
// be called more than once.
func (c *Cluster) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	for _, n := range c.Nodes {
		if err := n.StopKubelet(); err != nil {
			errs = append(errs, err)
		}
	}
	var ids []string
	for _, n := range c.Nodes {
		got, err := n.removeContainers(ctx)
		ids = append(ids, got...)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", n.Name, err))
		}
	}
	for _, n := range c.Nodes {
		if n.containerd != nil {
			if err := n.containerd.Stop(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := killShims(c.dir); err != nil {
		errs = append(errs, err)
	}
	if err := removeCgroups(ids); err != nil {
		errs = append(errs, err)
	}
	for _, n := range c.Nodes {
		if n.mntNS == "" {
			continue
		}
		// Lazily: a process the above missed may still hold the
		// namespace; the lab kills what is left in the node's network
		// namespace when it closes.
		if _, err := run(ctx, "umount", "-l", n.mntNS); err != nil {
			errs = append(errs, err)
		}
		if _, err := run(ctx, "umount", "-l", filepath.Dir(n.mntNS)); err != nil {
			errs = append(errs, err)
		}
	}
	if c.API != nil {
		if err := c.API.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.restoreSysctls(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("closing the kube nodes: %w", err)
	}
	return nil
}

// removeContainers kills and removes every container of the node through
// its containerd, and returns their IDs.
func (n *Node) removeContainers(ctx context.Context) ([]string, error) {
	if n.containerd == nil || n.containerd.Exited() {
		return nil, nil
	}
	out, err := n.Ctr(ctx, "containers", "ls", "-q")
	if err != nil {
		return nil, err
	}
	ids := strings.Fields(string(out))
	var errs []error
	tasks, err := n.Ctr(ctx, "tasks", "ls", "-q")
	if err != nil {
		return ids, err
	}
	for _, id := range strings.Fields(string(tasks)) {
		_, _ = n.Ctr(ctx, "tasks", "kill", "-s", "SIGKILL", id)
	}
	for _, id := range strings.Fields(string(tasks)) {
		// -f: a task whose process the kill has not reaped yet.
		err := retry(ctx, 5*time.Second, func() error {
			out, err := n.Ctr(ctx, "tasks", "rm", "-f", id)
			if err != nil && strings.Contains(string(out), "not found") {
				return nil // gone with the kill
			}
			return err
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, id := range ids {
		if _, err := n.Ctr(ctx, "containers", "rm", id); err != nil {
			errs = append(errs, err)
		}
	}
	return ids, errors.Join(errs...)
}

// killShims SIGKILLs the containerd shims of our nodes: those whose
// command line names our directory (their -address is a node's socket).
func killShims(dir string) error {
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		b, err := os.ReadFile(p)
		if err != nil || !bytes.Contains(b, []byte("containerd-shim")) || !bytes.Contains(b, []byte(dir+"/")) {
			continue
		}
		pid, err := strconv.Atoi(filepath.Base(filepath.Dir(p)))
		if err == nil && pid != os.Getpid() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	return nil
}

// removeCgroups kills what is left in the containers' cgroups (runc puts
// container ID in /k8s.io/ID of every hierarchy) and removes them, and
// /k8s.io where it is left empty.
func removeCgroups(ids []string) error {
	var errs []error
	for _, id := range ids {
		dirs, _ := filepath.Glob("/sys/fs/cgroup/*/k8s.io/" + id)
		for _, d := range dirs {
			err := retry(context.Background(), 5*time.Second, func() error {
				b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
				if errors.Is(err, os.ErrNotExist) {
					return nil
				}
				for _, f := range strings.Fields(string(b)) {
					if pid, err := strconv.Atoi(f); err == nil {
						_ = syscall.Kill(pid, syscall.SIGKILL)
					}
				}
				if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
					return fmt.Errorf("removing cgroup %s: %w", d, err)
				}
				return nil
			})
			if err != nil {
				errs = append(errs, err)
			}
		}
	}
	parents, _ := filepath.Glob("/sys/fs/cgroup/*/k8s.io")
	for _, p := range parents {
		_ = syscall.Rmdir(p) // only if empty: another cluster may be using it
	}
	return errors.Join(errs...)
}

// retry calls f every 50 ms until it succeeds or the bound passes.
func retry(ctx context.Context, bound time.Duration, f func() error) error {
	deadline := time.Now().Add(bound)
	for {
		err := f()
		if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}
