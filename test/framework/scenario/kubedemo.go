package scenario

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/keepvip/keepvip/test/framework/kubetest"
	"github.com/keepvip/keepvip/test/framework/lab"
	"github.com/keepvip/keepvip/vrrp"
)

// KubeDemo shows the Kubernetes path: a real API server, `kubectl apply
// -k deploy/`, two nodes running keepvip with the ServiceAccount of
// deploy/, the vip-configmap edited, a bad entry reported, the API
// server stopped while a failover happens. It needs the API server
// binaries (make kubebin); without them it says so and returns.
func KubeDemo(ctx context.Context) error {
	if _, err := kubetest.CachedBinaries(); err != nil {
		if errors.Is(err, kubetest.ErrNotBuilt) {
			fmt.Println("\nThe Kubernetes part of the demo needs a kube-apiserver: `make kubebin` builds one (several minutes, once).")
			return nil
		}
		return err
	}
	bin, err := lab.KeepvipBinary()
	if err != nil {
		return err
	}
	l, err := lab.New(func(string, ...any) {})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("\n   Cleaning up: the API server, etcd, the nodes and their namespaces are removed.")
		if err := l.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "cleanup:", err)
		}
	}()
	scratch, err := os.MkdirTemp("", "keepvip-kubedemo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(scratch)

	fmt.Println("\nKubernetes: a kube-apiserver with etcd, two nodes running keepvip as the DaemonSet's pods would")
	apiNode, err := l.AddNode("api", netip.MustParsePrefix("192.0.2.250/24"), netip.Prefix{})
	if err != nil {
		return err
	}
	start := time.Now()
	cl, err := kubetest.Start(ctx, kubetest.Options{Dir: filepath.Join(scratch, "cluster"), NetNS: apiNode.NS,
		BindAddress: apiNode.IPv4.Addr()})
	if err != nil {
		return err
	}
	defer cl.Stop()
	fmt.Printf("   API server ready at %s in %s\n", cl.URL(), time.Since(start).Round(100*time.Millisecond))
	wd, _ := os.Getwd()
	out, err := cl.Kubectl(ctx, "apply", "-k", filepath.Join(wd, "deploy"))
	if err != nil {
		return err
	}
	fmt.Println("\n   $ kubectl apply -k deploy/")
	indent(string(out))

	api := kubernetes.NewForConfigOrDie(cl.RestConfig())
	sa, err := cl.ServiceAccountKubeconfig(ctx, "keepvip", "keepvip", "")
	if err != nil {
		return err
	}
	type kubeNode struct {
		name, addr string
		node       *lab.Node
		k          *lab.Keepvip
	}
	nodes := []*kubeNode{{name: "node-a", addr: "192.0.2.11"}, {name: "node-b", addr: "192.0.2.12"}}
	for _, n := range nodes {
		if n.node, err = l.AddNode(n.name, netip.PrefixFrom(netip.MustParseAddr(n.addr), 24), netip.Prefix{}); err != nil {
			return err
		}
		obj, err := api.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n.name}}, metav1.CreateOptions{})
		if err != nil {
			return err
		}
		obj.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: n.addr}}
		if _, err := api.CoreV1().Nodes().UpdateStatus(ctx, obj, metav1.UpdateOptions{}); err != nil {
			return err
		}
		n.k, err = n.node.StartKeepvipArgs("--configmap", "keepvip/vip-configmap", "--node-name", n.name, "--kubeconfig", sa,
			"--state-dir", filepath.Join(scratch, n.name), "--advert-interval", "100ms")
		if err != nil {
			return err
		}
	}
	fmt.Println("   node-a 192.0.2.11, node-b 192.0.2.12: keepvip run --configmap keepvip/vip-configmap, with the ServiceAccount keepvip")

	wait, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	vip := netip.MustParseAddr("192.0.2.100")
	setData := func(data map[string]string) error {
		cm, err := api.CoreV1().ConfigMaps("keepvip").Get(wait, "vip-configmap", metav1.GetOptions{})
		if err != nil {
			return err
		}
		cm.Data = data
		_, err = api.CoreV1().ConfigMaps("keepvip").Update(wait, cm, metav1.UpdateOptions{})
		return err
	}
	holder := func() *kubeNode {
		for _, n := range nodes {
			if ok, _ := n.node.HasAddr(wait, vip); ok {
				return n
			}
		}
		return nil
	}

	fmt.Println("\n1. The vip-configmap gets a VIP (kube-keepalived-vip's form, no Service: the VIP alone)")
	fmt.Println(`   data: {"192.0.2.100": ""}`)
	edit := time.Now()
	if err := setData(map[string]string{vip.String(): ""}); err != nil {
		return err
	}
	var m *kubeNode
	for m = holder(); m == nil; m = holder() {
		if wait.Err() != nil {
			return fmt.Errorf("no node holds %s after the ConfigMap edit", vip)
		}
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Printf("   %s holds %s %s after the edit (the election included)\n", m.name, vip, ms(time.Since(edit)))

	fmt.Println("\n2. A bad entry: reported as an Event and in the status; the good VIP stays")
	fmt.Println(`   data: {"192.0.2.100": "", "192.0.2.101": "default/web:PROXY"}`)
	if err := setData(map[string]string{vip.String(): "", "192.0.2.101": "default/web:PROXY"}); err != nil {
		return err
	}
	var events []string
	for len(events) == 0 && wait.Err() == nil {
		time.Sleep(100 * time.Millisecond)
		evs, err := api.CoreV1().Events("keepvip").List(wait, metav1.ListOptions{FieldSelector: "involvedObject.name=vip-configmap"})
		if err != nil {
			return err
		}
		for _, e := range evs.Items {
			events = append(events, fmt.Sprintf("%s %s %s", e.Type, e.Reason, e.Message))
		}
	}
	fmt.Println("\n   $ kubectl get events -n keepvip --field-selector involvedObject.name=vip-configmap")
	indent(strings.Join(events, "\n"))
	if holder() != m {
		return fmt.Errorf("the good VIP moved because of a bad entry")
	}

	fmt.Printf("\n3. The API server stops; then %s dies (link cut, SIGKILL)\n", m.name)
	if err := cl.StopAPIServer(); err != nil {
		return err
	}
	other := nodes[0]
	if other == m {
		other = nodes[1]
	}
	t0 := time.Now()
	if err := l.CutLink(m.node); err != nil {
		return err
	}
	if err := m.k.Kill(); err != nil {
		return err
	}
	if err := other.k.WaitState(wait, "vips", vrrp.StateMaster); err != nil {
		return err
	}
	for ok, _ := other.node.HasAddr(wait, vip); !ok; ok, _ = other.node.HasAddr(wait, vip) {
		if wait.Err() != nil {
			return fmt.Errorf("%s did not take %s over", other.name, vip)
		}
		time.Sleep(time.Millisecond)
	}
	fmt.Printf("   %s took %s over %s later, without the API server: failover never waits on it\n", other.name, vip, ms(time.Since(t0)))
	// Let the probe of /readyz notice, for the status below.
	for wait.Err() == nil {
		st, err := other.k.Status(wait)
		if err == nil && st.Kubernetes != nil && st.Kubernetes.APIServer != "ok" {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	fmt.Printf("\n   $ kubectl exec -n keepvip keepvip-%s -- keepvip status\n", other.name)
	return showStatus(bin, other.k)
}

func indent(s string) {
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		fmt.Println("   " + line)
	}
}
