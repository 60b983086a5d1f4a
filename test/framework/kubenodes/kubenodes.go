// Package kubenodes runs real Kubernetes nodes on this machine: a control
// plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler:
// test/framework/kubetest) and N nodes, each a containerd and a kubelet
// (Debian's containerd and runc, the kubelet built with the API server),
// and a client with no Kubernetes, all on one segment of a lab
// (test/framework/lab). hostNetwork pods of a node live in that node's
// network namespace, as they would on a machine of their own.
//
// Each node also has a mount namespace of its own in which /run, /var/lib
// and /var/log are its own directories: a hostPath (keepvip's
// /var/lib/keepvip), the kubelet's and containerd's state and the pods'
// logs are per node, as on separate machines, and nothing is written to
// the host's. What cannot be per node is undone by Close: the cgroups of
// the containers (/k8s.io/ID in each hierarchy) are removed, and the
// host-wide kernel settings every kubelet changes as it starts
// (kernel.panic, vm.overcommit_memory, ...) are put back.
//
// No registry and no image pulls: images are OCI archives
// (test/framework/ociimage) imported into every node's containerd; the
// pods' sandbox ("pause") image is a static busybox running sleep. There
// is no kube-proxy and no cluster DNS: in each node a DNAT rule takes the
// kubernetes Service (10.96.0.1:443) to the API server, which is what
// in-cluster clients need.
//
// See ../shared/reference/real-nodes.md of the project for what each
// setting works around.
package kubenodes

import (
	"context"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/keepvip/keepvip/test/framework/kubetest"
	"github.com/keepvip/keepvip/test/framework/lab"
	"github.com/keepvip/keepvip/test/framework/ociimage"
)

const (
	// PauseImage is the sandbox image every node has.
	PauseImage = "localhost/pause:kubenodes"
	// snapshotter: overlayfs works on this machine's ext4 root.
	snapshotter = "overlayfs"
	// serviceIP is the kubernetes Service's ClusterIP (the API server's
	// --service-cluster-ip-range starts at 10.96.0.0/16).
	serviceIP = "10.96.0.1"
	// readyTimeout bounds a node's way to Ready. A busy 2-core machine
	// takes 40 s for three.
	readyTimeout = 3 * time.Minute
	cmdTimeout   = time.Minute
)

// Segment addresses: the control plane, the nodes (.11, .12, ...) and the
// client. 192.0.2.100-199 are free for VIPs.
var (
	Prefix    = netip.MustParsePrefix("192.0.2.0/24")
	ControlIP = netip.MustParseAddr("192.0.2.250")
	ClientIP  = netip.MustParseAddr("192.0.2.50")
)

// NodeIP is the address of the i-th node (from 0): 192.0.2.11, .12, ...
func NodeIP(i int) netip.Addr { return netip.AddrFrom4([4]byte{192, 0, 2, byte(11 + i)}) }

// tools are the commands the nodes need; lab.EnsureTools installs them.
var tools = []string{"containerd", "ctr", "runc", "iptables", "busybox", "nsenter", "unshare", "mount", "umount",
	"/usr/lib/cni/bridge", "/usr/lib/cni/host-local", "/usr/lib/cni/loopback", "etcd"}

// Options configure Start.
type Options struct {
	// Nodes is the number of nodes, named node-a, node-b, ...; default 3.
	Nodes int
	// Images are OCI image archives imported into every node.
	Images []string
	// Logf receives progress; default the lab's.
	Logf func(format string, args ...any)
}

// Cluster is a running control plane and its nodes.
type Cluster struct {
	Lab *lab.Lab
	// API is the control plane; its Kubectl runs as admin.
	API *kubetest.Cluster
	// Client is a namespace on the nodes' segment with no Kubernetes.
	Client *lab.Node
	Nodes  []*Node
	// Clientset is an admin client.
	Clientset *kubernetes.Clientset

	dir     string
	sysctls map[string]string // the host's, before the kubelets changed them
	logf    func(format string, args ...any)
	cp      *lab.Node
	apiPort string

	mu     sync.Mutex
	closed bool
}

// Node is one Kubernetes node.
type Node struct {
	// Name is the Node object's name (node-a).
	Name string
	// Lab is its network namespace.
	Lab  *lab.Node
	Addr netip.Addr

	c          *Cluster
	dir        string
	mntNS      string // the mount namespace, pinned by a bind mount on this file
	kubeconfig string // the kubelet's
	containerd *kubetest.Process
	kubelet    *kubetest.Process
}

// Start starts a control plane and opts.Nodes nodes in l, and returns when
// every node is Ready. On error, what it started is stopped.
func Start(ctx context.Context, l *lab.Lab, opts Options) (c *Cluster, err error) {
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Nodes < 1 || opts.Nodes > 26 {
		return nil, fmt.Errorf("starting nodes: %d nodes, want 1 to 26", opts.Nodes)
	}
	if opts.Logf == nil {
		opts.Logf = l.Logf
	}
	if err := lab.EnsureTools(opts.Logf, tools...); err != nil {
		return nil, fmt.Errorf("starting nodes: %w", err)
	}
	c = &Cluster{Lab: l, dir: filepath.Join(l.Dir(), "kubenodes"), logf: opts.Logf}
	defer func() {
		if err != nil {
			c.Close()
			c = nil
		}
	}()
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		return nil, err
	}
	if err := c.saveSysctls(); err != nil {
		return nil, err
	}
	t0 := time.Now()
	pause := filepath.Join(c.dir, "pause.tar")
	if err := writeBusyboxImage(pause, PauseImage, []string{"/bin/sleep", "inf"}); err != nil {
		return nil, err
	}
	if c.cp, err = l.AddNode("cp", netip.PrefixFrom(ControlIP, Prefix.Bits()), netip.Prefix{}); err != nil {
		return nil, err
	}
	var names []string
	for i := range opts.Nodes {
		names = append(names, "node-"+string(rune('a'+i)))
	}
	if c.API, err = kubetest.Start(ctx, kubetest.Options{Dir: filepath.Join(c.dir, "control-plane"), NetNS: c.cp.NS,
		BindAddress: ControlIP, Nodes: names, Logf: opts.Logf}); err != nil {
		return nil, err
	}
	u, err := url.Parse(c.API.URL())
	if err != nil {
		return nil, err
	}
	c.apiPort = u.Port()
	if c.Clientset, err = kubernetes.NewForConfig(c.API.RestConfig()); err != nil {
		return nil, err
	}
	for i, name := range names {
		n := &Node{Name: name, Addr: NodeIP(i), c: c, dir: filepath.Join(c.dir, name)}
		c.Nodes = append(c.Nodes, n)
		if err := n.start(ctx, append([]string{pause}, opts.Images...)); err != nil {
			return nil, fmt.Errorf("starting %s: %w", name, err)
		}
	}
	if c.Client, err = l.AddNode("client", netip.PrefixFrom(ClientIP, Prefix.Bits()), netip.Prefix{}); err != nil {
		return nil, err
	}
	for _, n := range c.Nodes {
		if err := n.WaitReady(ctx, readyTimeout); err != nil {
			return nil, err
		}
	}
	c.logf("kubenodes: %d nodes Ready %s after start", len(c.Nodes), time.Since(t0).Round(100*time.Millisecond))
	return c, nil
}

// Kubectl runs kubectl as admin.
func (c *Cluster) Kubectl(ctx context.Context, args ...string) ([]byte, error) {
	return c.API.Kubectl(ctx, args...)
}

// Node returns the node named name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.Nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// start brings the node up: its namespaces, containerd with the images,
// the kubelet.
func (n *Node) start(ctx context.Context, images []string) error {
	c := n.c
	var err error
	if n.Lab, err = c.Lab.AddNode(n.Name, netip.PrefixFrom(n.Addr, Prefix.Bits()), netip.Prefix{}); err != nil {
		return err
	}
	// No kube-proxy: a route and a DNAT rule stand in for the kubernetes
	// Service, so that in-cluster clients reach the API server.
	for _, cmd := range [][]string{
		{"ip", "route", "add", "default", "via", ControlIP.String()},
		{"iptables", "-t", "nat", "-A", "OUTPUT", "-d", serviceIP + "/32", "-p", "tcp", "--dport", "443",
			"-j", "DNAT", "--to-destination", ControlIP.String() + ":" + c.apiPort},
	} {
		if _, err := n.Lab.Exec(ctx, cmd...); err != nil {
			return err
		}
	}
	if err := n.mountNamespace(ctx); err != nil {
		return err
	}
	if err := n.writeConfigs(); err != nil {
		return err
	}
	if err := n.startContainerd(ctx); err != nil {
		return err
	}
	for _, img := range images {
		if _, err := n.Ctr(ctx, "images", "import", "--snapshotter="+snapshotter, img); err != nil {
			return fmt.Errorf("importing %s: %w", img, err)
		}
	}
	return n.StartKubelet()
}

// mountNamespace makes the node's mount namespace: a slave of the host's
// (so that new network namespaces and mounts of the host show), with its
// own /run, /var/lib and /var/log. It is pinned by a bind mount on
// dir/ns/mnt, inside a private mount (a namespace cannot be pinned on a
// shared one).
func (n *Node) mountNamespace(ctx context.Context) error {
	nsDir := filepath.Join(n.dir, "ns")
	root := filepath.Join(n.dir, "root")
	for _, d := range []string{nsDir, root + "/run", root + "/var/lib", root + "/var/log"} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if _, err := run(ctx, "mount", "--bind", nsDir, nsDir); err != nil {
		return err
	}
	if _, err := run(ctx, "mount", "--make-private", nsDir); err != nil {
		_, _ = run(ctx, "umount", nsDir)
		return err
	}
	n.mntNS = filepath.Join(nsDir, "mnt")
	if err := os.WriteFile(n.mntNS, nil, 0o600); err != nil {
		return err
	}
	script := fmt.Sprintf("mount --bind %[1]s/run /run && mount --bind %[1]s/var/lib /var/lib && mount --bind %[1]s/var/log /var/log", root)
	if _, err := run(ctx, "unshare", "--mount="+n.mntNS, "--propagation=slave", "--", "sh", "-c", script); err != nil {
		return fmt.Errorf("making the mount namespace: %w", err)
	}
	return nil
}

// enter is the prefix that runs a command in the node's namespaces. nsenter
// execs the command in place: its PID is the command's.
func (n *Node) enter(argv ...string) []string {
	return append([]string{"nsenter", "--net=/run/netns/" + n.Lab.NS, "--mount=" + n.mntNS, "--"}, argv...)
}

// Run runs a command in the node's network and mount namespaces.
func (n *Node) Run(ctx context.Context, argv ...string) ([]byte, error) {
	return run(ctx, n.enter(argv...)...)
}

func (n *Node) socket() string { return filepath.Join(n.dir, "containerd.sock") }

// Ctr runs containerd's ctr against the node's containerd, in the k8s.io
// namespace (the kubelet's).
func (n *Node) Ctr(ctx context.Context, args ...string) ([]byte, error) {
	return run(ctx, append([]string{"ctr", "--address=" + n.socket(), "-n", "k8s.io"}, args...)...)
}

func (n *Node) writeConfigs() error {
	c := n.c
	kc, err := c.API.NodeKubeconfig(n.Name)
	if err != nil {
		return err
	}
	containerd := fmt.Sprintf(`version = 2
# /var/lib/containerd and /run/containerd are the node's (its mount
# namespace); the socket is here, for ctr from the host.
[grpc]
  address = %[1]q
[ttrpc]
  address = %[2]q
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[3]q
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = %[4]q
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[5]q
# Its default is the host's /opt/containerd.
[plugins."io.containerd.internal.v1.opt"]
  path = %[6]q
`, n.socket(), n.socket()+".ttrpc", PauseImage, snapshotter, filepath.Join(n.dir, "cni"), filepath.Join(n.dir, "opt"))
	// A CNI network only so that the runtime reports NetworkReady and the
	// node goes Ready; hostNetwork pods do not use it.
	cni := fmt.Sprintf(`{"cniVersion":"0.4.0","name":"kubenodes","plugins":[
 {"type":"bridge","bridge":"cni0","isGateway":true,"ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.%d.0/24"}]],"routes":[{"dst":"0.0.0.0/0"}]}},
 {"type":"loopback"}]}
`, n.Addr.As4()[3])
	kubelet := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: %[1]s
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[2]s}
authorization: {mode: Webhook}
containerRuntimeEndpoint: unix://%[3]s
# cgroup v1 without systemd: no QoS tree, no node allocatable.
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failCgroupV1: false
failSwapOn: false
resolvConf: /etc/resolv.conf
serializeImagePulls: false
evictionHard: {memory.available: 100Mi, nodefs.available: 1%%, imagefs.available: 1%%, nodefs.inodesFree: 1%%}
# The imported images can never be pulled again: never collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
`, n.Addr, c.API.CAFile(), n.socket())
	if err := os.MkdirAll(filepath.Join(n.dir, "cni"), 0o755); err != nil {
		return err
	}
	for _, f := range []struct{ path, data string }{
		{filepath.Join(n.dir, "containerd.toml"), containerd},
		{filepath.Join(n.dir, "cni", "10-kubenodes.conflist"), cni},
		{filepath.Join(n.dir, "kubelet.yaml"), kubelet},
	} {
		if err := os.WriteFile(f.path, []byte(f.data), 0o644); err != nil {
			return err
		}
	}
	n.kubeconfig = kc
	return nil
}

func (n *Node) startContainerd(ctx context.Context) error {
	p, err := kubetest.StartProcess("containerd-"+n.Name, filepath.Join(n.dir, "containerd.log"),
		n.enter("containerd", "--config", filepath.Join(n.dir, "containerd.toml")))
	if err != nil {
		return err
	}
	n.containerd = p
	deadline := time.Now().Add(30 * time.Second)
	for {
		if p.Exited() {
			return fmt.Errorf("containerd exited:\n%s", p.LogTail())
		}
		if _, err := n.Ctr(ctx, "version"); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			return fmt.Errorf("containerd not answering after 30s: %w\n%s", err, p.LogTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// StartKubelet starts the node's kubelet (again, after StopKubelet).
func (n *Node) StartKubelet() error {
	if n.kubelet != nil && !n.kubelet.Exited() {
		return fmt.Errorf("%s: the kubelet is running", n.Name)
	}
	p, err := kubetest.StartProcess("kubelet-"+n.Name, filepath.Join(n.dir, "kubelet.log"), n.enter(
		n.c.API.Bins().Kubelet, "--config="+filepath.Join(n.dir, "kubelet.yaml"), "--kubeconfig="+n.kubeconfig,
		"--hostname-override="+n.Name, "--node-ip="+n.Addr.String(), "--v=1"))
	if err != nil {
		return err
	}
	n.kubelet = p
	return nil
}

// StopKubelet kills the node's kubelet (SIGKILL); its pods run on.
func (n *Node) StopKubelet() error {
	if n.kubelet == nil {
		return nil
	}
	return n.kubelet.Stop()
}

// WaitReady waits until the node is Ready.
func (n *Node) WaitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		obj, err := n.c.Clientset.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err == nil {
			for _, cond := range obj.Status.Conditions {
				if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
					return nil
				}
			}
		}
		if n.kubelet != nil && n.kubelet.Exited() {
			return fmt.Errorf("%s: the kubelet exited:\n%s", n.Name, n.kubelet.LogTail())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not Ready after %v (last: %v); kubelet log %s:\n%s", n.Name, timeout, err,
				n.kubelet.LogPath(), n.kubelet.LogTail())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// LogFiles are the paths of the node's containerd and kubelet logs.
func (n *Node) LogFiles() (containerd, kubelet string) {
	return filepath.Join(n.dir, "containerd.log"), filepath.Join(n.dir, "kubelet.log")
}

// writeBusyboxImage writes an image of Debian's static busybox with its
// applets in /bin.
func writeBusyboxImage(path, ref string, entrypoint []string) error {
	files, err := busyboxFiles()
	if err != nil {
		return err
	}
	return ociimage.WriteFile(path, ref, files, ociimage.Config{Entrypoint: entrypoint, Env: []string{"PATH=/bin"}})
}

// busyboxFiles are the host's static busybox as /bin/busybox, its applets
// as links to it in /bin, and /tmp.
func busyboxFiles() ([]ociimage.File, error) {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(bb)
	if err != nil {
		return nil, err
	}
	files := []ociimage.File{{Path: "/bin/busybox", Mode: 0o755, Data: b}}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" {
			files = append(files, ociimage.File{Path: "/bin/" + a, Mode: os.ModeSymlink, Link: "busybox"})
		}
	}
	files = append(files, ociimage.File{Path: "/tmp", Mode: os.ModeDir | os.ModeSticky | 0o777})
	return files, nil
}

// run runs a command on the host with a bound, returning its output; the
// error carries the output.
func run(ctx context.Context, argv ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, cmdTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return out, nil
}

// Describe is what to look at when something in namespace did not come up:
// the pods everywhere, the namespace's pods described, their logs, and
// the end of every kubelet's log.
func (c *Cluster) Describe(ctx context.Context, namespace string) string {
	var b strings.Builder
	for _, args := range [][]string{
		{"get", "pods", "-A", "-o", "wide"},
		{"describe", "pods", "-n", namespace},
		{"logs", "-n", namespace, "--all-containers", "--prefix", "--tail=30", "-l", "app.kubernetes.io/name"},
	} {
		out, err := c.Kubectl(ctx, args...)
		fmt.Fprintf(&b, "$ kubectl %s\n%s", strings.Join(args, " "), out)
		if err != nil {
			fmt.Fprintf(&b, "(%v)\n", err)
		}
	}
	for _, n := range c.Nodes {
		if n.kubelet != nil {
			fmt.Fprintf(&b, "--- end of %s:\n%s\n", n.kubelet.LogPath(), n.kubelet.LogTail())
		}
	}
	return b.String()
}
