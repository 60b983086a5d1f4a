package nodes_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/keepvip/keepvip/test/framework/kubenodes"
	"github.com/keepvip/keepvip/vrrp"
)

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

// containerPID is the host PID of the pod's keepvip container.
func containerPID(ctx context.Context, c *kubenodes.Cluster, p corev1.Pod) (int, error) {
	if len(p.Status.ContainerStatuses) == 0 {
		return 0, fmt.Errorf("pod %s: no container status", p.Name)
	}
	id, ok := strings.CutPrefix(p.Status.ContainerStatuses[0].ContainerID, "containerd://")
	if !ok {
		return 0, fmt.Errorf("pod %s: container ID %q", p.Name, p.Status.ContainerStatuses[0].ContainerID)
	}
	n := c.Node(p.Spec.NodeName)
	out, err := n.Ctr(ctx, "tasks", "ls")
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) >= 3 && f[0] == id {
			return strconv.Atoi(f[1])
		}
	}
	return 0, fmt.Errorf("pod %s: task %s not in ctr tasks ls:\n%s", p.Name, id, out)
}

// The shipped DaemonSet runs on every node as it says it does: not
// privileged, exactly NET_ADMIN and NET_RAW, a read-only root, the host's
// /proc/sys/net writable, the ServiceAccount's own token and nothing else.
func TestDaemonSetRunsAsShipped(t *testing.T) {
	c := cluster(t)
	ctx := t.Context()
	ps := pods(t, c)
	if len(ps) != len(c.Nodes) {
		t.Fatalf("%d keepvip pods for %d nodes: %v", len(ps), len(c.Nodes), ps)
	}
	for _, n := range c.Nodes {
		p, ok := ps[n.Name]
		if !ok {
			t.Errorf("no keepvip pod on %s", n.Name)
			continue
		}
		ready := false
		for _, cond := range p.Status.Conditions {
			ready = ready || cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue
		}
		if !ready {
			t.Errorf("pod %s on %s is not Ready: %+v", p.Name, n.Name, p.Status.Conditions)
		}
		pid, err := containerPID(ctx, c, p)
		if err != nil {
			t.Fatal(err)
		}
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(st), "\n") {
			if v, ok := strings.CutPrefix(l, "CapEff:"); ok && strings.TrimSpace(v) != "0000000000003000" {
				t.Errorf("%s: keepvip's effective capabilities %s, want 0x3000 (NET_ADMIN, NET_RAW)", n.Name, strings.TrimSpace(v))
			}
			if v, ok := strings.CutPrefix(l, "NoNewPrivs:"); ok && strings.TrimSpace(v) != "1" {
				t.Errorf("%s: NoNewPrivs %s, want 1 (allowPrivilegeEscalation: false)", n.Name, strings.TrimSpace(v))
			}
		}
		mi, err := os.ReadFile(fmt.Sprintf("/proc/%d/mountinfo", pid))
		if err != nil {
			t.Fatal(err)
		}
		mounts := map[string]string{} // mount point: options
		for _, l := range strings.Split(string(mi), "\n") {
			if f := strings.Fields(l); len(f) > 5 {
				mounts[f[4]] = f[5]
			}
		}
		for mp, want := range map[string]string{"/": "ro", "/host/proc/sys/net": "rw", "/proc/sys": "ro"} {
			if opts, ok := mounts[mp]; !ok || !strings.HasPrefix(opts, want) {
				t.Errorf("%s: %s mounted %q, want %s", n.Name, mp, opts, want)
			}
		}
		// Kernel settings go through /host/proc/sys/net, which shows the
		// network namespace of the process that opens it: keepvip's must
		// be the node's. (Writing them needs IPVS, which this kernel
		// lacks; test/ipvs writes them in the VM.)
		var nodeNS, podNS syscall.Stat_t
		if err := errors.Join(syscall.Stat("/run/netns/"+n.Lab.NS, &nodeNS), syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &podNS)); err != nil {
			t.Fatal(err)
		}
		if nodeNS.Ino != podNS.Ino {
			t.Errorf("%s: keepvip runs in network namespace %d, not the node's %d", n.Name, podNS.Ino, nodeNS.Ino)
		}
		for mp := range mounts {
			if strings.Contains(mp, "kubeconfig") || strings.HasPrefix(mp, "/etc/kubernetes") {
				t.Errorf("%s: credentials other than the ServiceAccount's mounted at %s", n.Name, mp)
			}
		}
		if p.Spec.ServiceAccountName != "keepvip" {
			t.Errorf("%s: ServiceAccount %q", n.Name, p.Spec.ServiceAccountName)
		}
	}
}

// An edit of the vip-configmap puts the VIP on exactly one node, which the
// client reaches; every pod answers `kubectl exec … keepvip status` (and
// -o json) with the same master, and `kubectl logs` shows it running.
func TestVIPFromConfigMap(t *testing.T) {
	c := cluster(t)
	ctx := t.Context()
	const vip = "192.0.2.100"
	t.Cleanup(func() { clearVIPs(t, c, vip) })
	edit := time.Now()
	if err := setVIPs(ctx, c, map[string]string{vip: ""}); err != nil {
		t.Fatal(err)
	}
	var held []string
	for held = holders(ctx, c, vip); len(held) == 0; held = holders(ctx, c, vip) {
		if time.Since(edit) > 30*time.Second {
			t.Fatalf("no node holds %s 30 s after the edit", vip)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("%v holds %s %v after the ConfigMap edit", held, vip, time.Since(edit).Round(time.Millisecond))
	if _, err := c.Client.Ping(ctx, mustAddr(vip)); err != nil {
		t.Fatalf("the client cannot reach %s: %v", vip, err)
	}
	if len(held) != 1 {
		t.Errorf("%s held by %v", vip, held)
	}
	master := held[0]
	// Every backup has heard the new master before its status is read.
	waitFor(t, 30*time.Second, "every pod to follow "+master, func(ctx context.Context) bool { return steady(ctx, c, master) })
	ps := pods(t, c)
	for node, p := range ps {
		out, err := c.Kubectl(ctx, "exec", "-n", namespace, p.Name, "--", "keepvip", "status")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(out), vip) {
			t.Errorf("keepvip status in %s does not name %s:\n%s", p.Name, vip, out)
		}
		st, err := status(ctx, c, p.Name)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Instances) != 1 {
			t.Fatalf("%s: %d instances: %+v", p.Name, len(st.Instances), st.Instances)
		}
		in := st.Instances[0]
		want := vrrp.StateBackup
		if node == master {
			want = vrrp.StateMaster
		}
		if in.State != want || in.Master != c.Node(master).Addr {
			t.Errorf("%s on %s: %v, master %v; want %v, master %v", p.Name, node, in.State, in.Master, want, c.Node(master).Addr)
		}
		if st.Kubernetes == nil || st.Kubernetes.APIServer != "ok" {
			t.Errorf("%s: Kubernetes status %+v", p.Name, st.Kubernetes)
		}
		logs, err := c.Kubectl(ctx, "logs", "-n", namespace, p.Name)
		if err != nil || !strings.Contains(string(logs), "keepvip running") {
			t.Errorf("kubectl logs %s: %v\n%s", p.Name, err, logs)
		}
	}
}

// clearVIPs empties the vip-configmap and waits until no node holds vips.
func clearVIPs(t *testing.T, c *kubenodes.Cluster, vips ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := setVIPs(ctx, c, map[string]string{}); err != nil {
		t.Error(err)
		return
	}
	for _, v := range vips {
		for len(holders(ctx, c, v)) > 0 {
			if ctx.Err() != nil {
				t.Errorf("%s still held by %v after the vip-configmap was emptied", v, holders(context.Background(), c, v))
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}
