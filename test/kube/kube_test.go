// Package kube_test runs keepvip in Kubernetes mode against a real
// kube-apiserver (test/framework/kubetest): deploy/ applied with kubectl, keepvip
// nodes in network namespaces running with exactly the ServiceAccount's
// RBAC, the ConfigMap edited, the API server stopped. The IPVS half of the
// data plane is tested in the VM (test/kubevm); here it is VRRP and VIPs.
package kube_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/keepvip/keepvip/internal/daemon"
	"github.com/keepvip/keepvip/test/framework/kubetest"
	"github.com/keepvip/keepvip/test/framework/lab"
	"github.com/keepvip/keepvip/vrrp"
)

const (
	ns     = "keepvip"
	cmName = "vip-configmap"
)

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// node is a keepvip node: a lab namespace, a Node object, a daemon.
type node struct {
	name string
	n    *lab.Node
	dir  string
	k    *lab.Keepvip
}

func (k *node) socket() string { return k.k.Socket() }

func (k *node) start(t *testing.T, kubeconfig string) {
	t.Helper()
	var err error
	k.k, err = k.n.StartKeepvipArgs("--configmap", ns+"/"+cmName, "--node-name", k.name, "--kubeconfig", kubeconfig,
		"--state-dir", k.dir, "--advert-interval", "100ms")
	if err != nil {
		t.Fatal(err)
	}
	p := k.k.Proc()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s: keepvip (pid %d) log:\n%s", k.name, p.PID(), tail(p.Log(), 40))
		}
	})
}

func (k *node) status(ctx context.Context) (*daemon.Status, error) {
	return daemon.GetStatus(ctx, k.socket())
}

// waitStatus polls the node's status until ok accepts it.
func (k *node) waitStatus(t *testing.T, what string, timeout time.Duration, ok func(*daemon.Status) bool) *daemon.Status {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last *daemon.Status
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		s, err := k.status(ctx)
		cancel()
		if err == nil {
			last = s
			if ok(s) {
				return s
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := json.MarshalIndent(last, "", "  ")
	t.Fatalf("%s: %s not reached in %s; last status:\n%s\nlog:\n%s", k.name, what, timeout, b, tail(k.k.Log(), 30))
	return nil
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func instance(s *daemon.Status, name string) (vrrp.Status, bool) {
	for _, in := range s.Instances {
		if in.Name == name {
			return in, true
		}
	}
	return vrrp.Status{}, false
}

func hasAddr(t *testing.T, n *lab.Node, a netip.Addr) bool {
	t.Helper()
	ok, err := n.HasAddr(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}

func waitAddr(t *testing.T, n *lab.Node, a netip.Addr, want bool, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for time.Since(start) < timeout {
		if hasAddr(t, n, a) == want {
			return time.Since(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s: %s present=%v not reached in %s", n.Name, a, want, timeout)
	return 0
}

func TestKubernetesMode(t *testing.T) {
	l := lab.ForTest(t, "ip")
	apiNode, err := l.AddNode("api", netip.MustParsePrefix("10.77.0.250/24"), netip.Prefix{})
	if err != nil {
		t.Fatal(err)
	}
	cl := kubetest.StartT(t, kubetest.Options{NetNS: apiNode.NS, BindAddress: netip.MustParseAddr("10.77.0.250")})
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	// The install is `kubectl apply -k deploy/`. No kubelet runs the
	// DaemonSet: the nodes below stand in for its pods.
	// The uninstall's objects are valid too (no kubelet runs them here,
	// and no namespace controller finishes a delete: do not wait for it).
	for _, args := range [][]string{{"apply"}, {"delete", "--wait=false"}} {
		args = append(args, "-k", filepath.Join(repoRoot(), "deploy", "cleanup"))
		if out, err := cl.Kubectl(ctx, args...); err != nil {
			t.Fatalf("kubectl %v: %v\n%s", args, err, out)
		}
	}
	if out, err := cl.Kubectl(ctx, "apply", "-k", filepath.Join(repoRoot(), "deploy")); err != nil {
		t.Fatalf("kubectl apply -k deploy/: %v\n%s", err, out)
	}
	admin := kubernetes.NewForConfigOrDie(cl.RestConfig())

	// RBAC: what the ServiceAccount may do, and what it may not.
	as := "--as=system:serviceaccount:keepvip:keepvip"
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"watch", "configmaps/vip-configmap", "-n", ns}, "yes"},
		{[]string{"list", "endpointslices.discovery.k8s.io", "-A"}, "yes"},
		{[]string{"watch", "nodes"}, "yes"},
		{[]string{"create", "events", "-n", ns}, "yes"},
		{[]string{"get", "configmaps/other", "-n", ns}, "no"},
		{[]string{"update", "configmaps/vip-configmap", "-n", ns}, "no"},
		{[]string{"get", "secrets", "-n", ns}, "no"},
		{[]string{"watch", "secrets/keepvip-bgp", "-n", ns}, "yes"},
		{[]string{"list", "secrets", "-n", ns}, "no"},
		{[]string{"get", "secrets/keepvip-bgp", "-n", ns}, "no"},
		{[]string{"watch", "secrets/other", "-n", ns}, "no"},
		{[]string{"list", "pods", "-A"}, "no"},
		{[]string{"create", "events", "-n", "default"}, "no"},
		{[]string{"patch", "nodes"}, "no"},
	} {
		out, _ := cl.Kubectl(ctx, append([]string{"auth", "can-i", as}, c.args...)...)
		// kubectl may warn first (nodes are not namespaced): the answer
		// is the last line.
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		if got := strings.TrimSpace(lines[len(lines)-1]); got != c.want {
			t.Errorf("can-i %v: %q, want %s", c.args, got, c.want)
		}
	}

	// The cluster: two nodes, a Service without selector and its slice.
	addrs := map[string]string{"node-a": "10.77.0.1", "node-b": "10.77.0.2"}
	var nodes []*node
	for _, name := range []string{"node-a", "node-b"} {
		ln, err := l.AddNode(name, netip.PrefixFrom(netip.MustParseAddr(addrs[name]), 24), netip.Prefix{})
		if err != nil {
			t.Fatal(err)
		}
		createNode(t, ctx, admin, name, addrs[name])
		nodes = append(nodes, &node{name: name, n: ln, dir: t.TempDir()})
	}
	a, b := nodes[0], nodes[1]
	createWeb(t, ctx, admin)

	sa, err := cl.ServiceAccountKubeconfig(ctx, ns, "keepvip", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range nodes {
		k.start(t, sa)
	}
	for _, k := range nodes {
		k.waitStatus(t, "synced with the API server", 30*time.Second, func(s *daemon.Status) bool {
			return s.Kubernetes != nil && s.Kubernetes.Synced && s.Kubernetes.APIServer == "ok"
		})
	}

	// A VIP in kube-keepalived-vip's form, plus kernel.ipvs optional: this
	// host has no IPVS (the VM tests cover it).
	vip := netip.MustParseAddr("10.77.0.100")
	setData(t, ctx, admin, map[string]string{vip.String(): "default/web", "config.yaml": "kernel: {ipvs: optional}\n"})
	edit := time.Now()
	// kube-keepalived-vip's instance does not preempt: the first node to
	// time out is master, whichever it is. Priorities follow node order.
	var m, o *node
	for m == nil && time.Since(edit) < 5*time.Second {
		for i, k := range nodes {
			if hasAddr(t, k.n, vip) {
				m, o = k, nodes[1-i]
			}
		}
		time.Sleep(5 * time.Millisecond)
	}
	if m == nil {
		t.Fatalf("no node holds %s 5s after the ConfigMap edit", vip)
	}
	t.Logf("ConfigMap edit to the VIP on the master (%s): %s", m.name, time.Since(edit).Round(time.Millisecond))
	for _, k := range nodes {
		want, prio := vrrp.StateBackup, uint8(100)
		if k == m {
			want = vrrp.StateMaster
		}
		if k == b {
			prio = 101
		}
		sk := k.waitStatus(t, fmt.Sprintf("%s of vips with priority %d", want, prio), 5*time.Second, func(s *daemon.Status) bool {
			in, ok := instance(s, "vips")
			return ok && in.State == want && in.Priority == prio && !in.Preempt
		})
		if !strings.Contains(sk.ConfigFile, "ConfigMap keepvip/vip-configmap") {
			t.Errorf("%s: status names its configuration %q", k.name, sk.ConfigFile)
		}
	}
	if hasAddr(t, o.n, vip) {
		t.Errorf("the backup holds the VIP too")
	}

	// A bad entry: an Event on the ConfigMap, a status error, the good
	// entry untouched.
	setData(t, ctx, admin, map[string]string{vip.String(): "default/web", "10.77.0.101": "default/web:PROXY", "config.yaml": "kernel: {ipvs: optional}\n"})
	m.waitStatus(t, "the bad entry reported", 5*time.Second, func(s *daemon.Status) bool {
		return slices.ContainsFunc(s.ConfigErrors, func(e string) bool { return strings.Contains(e, `key "10.77.0.101"`) && strings.Contains(e, "PROXY") })
	})
	waitEvent(t, ctx, admin, "InvalidEntry", `key "10.77.0.101"`)
	if !hasAddr(t, m.n, vip) {
		t.Errorf("the good VIP was lost because of a bad entry")
	}

	// Unicast peers follow the Nodes.
	setData(t, ctx, admin, map[string]string{"config.yaml": `
kernel: {ipvs: optional}
instances:
- {name: uni, vrid: 61, advertInterval: 100ms, priorityFrom: nodeOrder, unicastPeersFrom: nodes, vips: [10.77.0.110]}
`})
	waitAddr(t, b.n, netip.MustParseAddr("10.77.0.110"), true, 5*time.Second)
	waitAddr(t, m.n, vip, false, 5*time.Second) // the key is gone: so is its VIP
	a.waitStatus(t, "peer node-b", 5*time.Second, func(s *daemon.Status) bool {
		in, ok := instance(s, "uni")
		return ok && fmt.Sprint(in.Peers) == "[10.77.0.2]"
	})
	createNode(t, ctx, admin, "node-c", "10.77.0.3")
	a.waitStatus(t, "peers node-b and node-c", 5*time.Second, func(s *daemon.Status) bool {
		in, ok := instance(s, "uni")
		return ok && fmt.Sprint(in.Peers) == "[10.77.0.2 10.77.0.3]"
	})

	// The API server goes away: nothing changes on the data plane, and a
	// failover still happens.
	if err := cl.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	b.waitStatus(t, "the API server reported unreachable", 30*time.Second, func(s *daemon.Status) bool {
		return s.Kubernetes != nil && s.Kubernetes.APIServer != "ok"
	})
	if !hasAddr(t, b.n, netip.MustParseAddr("10.77.0.110")) {
		t.Fatal("the master lost its VIP when the API server stopped")
	}
	if err := b.k.Kill(); err != nil {
		t.Fatal(err)
	}
	took := waitAddr(t, a.n, netip.MustParseAddr("10.77.0.110"), true, 3*time.Second)
	t.Logf("failover with the API server down: %s", took.Round(time.Millisecond))
	// node-b comes back while the API server is still down: it runs its
	// last applied configuration from its state directory.
	b.start(t, sa)
	b.waitStatus(t, "the cached configuration running", 10*time.Second, func(s *daemon.Status) bool {
		_, ok := instance(s, "uni")
		return ok && strings.Contains(s.ConfigFile, "last applied configuration")
	})
	if err := cl.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	b.waitStatus(t, "synced again", 60*time.Second, func(s *daemon.Status) bool {
		return s.Kubernetes != nil && s.Kubernetes.Synced && s.Kubernetes.APIServer == "ok" && strings.Contains(s.ConfigFile, "ConfigMap")
	})

	// The status command, as `kubectl exec ... -- keepvip status -o json`.
	bin, _ := lab.KeepvipBinary()
	out, err := exec.CommandContext(ctx, bin, "status", "--socket", a.socket(), "-o", "json").CombinedOutput()
	if err != nil {
		t.Fatalf("keepvip status: %v\n%s", err, out)
	}
	var js daemon.Status
	if err := json.Unmarshal(out, &js); err != nil {
		t.Fatalf("status -o json: %v\n%s", err, out)
	}
	if js.Kubernetes == nil || js.Kubernetes.ConfigMap != "keepvip/vip-configmap" || js.Kubernetes.Node != "node-a" || len(js.Instances) != 1 {
		t.Errorf("status -o json: %s", out)
	}
	out, err = exec.CommandContext(ctx, bin, "status", "--socket", a.socket()).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "uni") {
		t.Errorf("keepvip status: %v\n%s", err, out)
	}
}

func createNode(t *testing.T, ctx context.Context, c kubernetes.Interface, name, addr string) {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	n, err := c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr}}
	if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func createWeb(t *testing.T, ctx context.Context, c kubernetes.Interface) {
	t.Helper()
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP}}}}
	if _, err := c.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	name, port, tcp := "http", int32(8080), corev1.ProtocolTCP
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &tcp}},
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.78.0.1"}}, {Addresses: []string{"10.78.0.2"}}},
	}
	if _, err := c.DiscoveryV1().EndpointSlices("default").Create(ctx, sl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func setData(t *testing.T, ctx context.Context, c kubernetes.Interface, data map[string]string) {
	t.Helper()
	cm, err := c.CoreV1().ConfigMaps(ns).Get(ctx, cmName, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cm.Data = data
	if _, err := c.CoreV1().ConfigMaps(ns).Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
}

func waitEvent(t *testing.T, ctx context.Context, c kubernetes.Interface, reason, fragment string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		evs, err := c.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + cmName})
		if err == nil {
			for _, e := range evs.Items {
				if e.Reason == reason && strings.Contains(e.Message, fragment) && e.Type == corev1.EventTypeWarning {
					return
				}
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("no %s Event mentioning %q on the ConfigMap", reason, fragment)
}
