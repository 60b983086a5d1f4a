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

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keepvip/keepvip/test/framework/kubenodes"
	"github.com/keepvip/keepvip/test/framework/kubetest"
	"github.com/keepvip/keepvip/test/framework/lab"
)

// KubeDemo shows the Kubernetes path as a user walks it, on real nodes:
// three kubelets with their containerds on this machine (package
// kubenodes), the image make image writes, `kubectl apply -k deploy/`, the
// vip-configmap edited with kubectl, a bad entry reported, `kubectl exec
// … keepvip status`, an upgrade of keepvip measured from a client, and a
// failover with the API server down. It needs the Kubernetes binaries
// (make kubebin); without them it says so and returns.
func KubeDemo(ctx context.Context) error {
	if _, err := kubetest.CachedBinaries(); err != nil {
		if errors.Is(err, kubetest.ErrNotBuilt) {
			fmt.Println("\nThe Kubernetes part of the demo needs the Kubernetes binaries: `make kubebin` builds them (several minutes, once).")
			return nil
		}
		return err
	}
	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	deployDir := filepath.Join(wd, "deploy")
	if _, err := os.Stat(filepath.Join(deployDir, "kustomization.yaml")); err != nil {
		return fmt.Errorf("run the demo from keepvip's source tree (make demo): %w", err)
	}
	l, err := lab.New(func(string, ...any) {})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Println("\n   Cleaning up: the kubelets, containerds, control plane, namespaces and mounts are removed.")
		if err := l.Close(); err != nil {
			fmt.Fprintln(os.Stderr, "cleanup:", err)
		}
	}()
	scratch := filepath.Join(l.Dir(), "kubedemo")
	if err := os.MkdirAll(scratch, 0o755); err != nil {
		return err
	}

	fmt.Println("\nKubernetes on real nodes: three kubelets, each with its containerd in a network namespace of its own,")
	fmt.Println("a control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) and a client, on one segment")
	const ref, ref2 = "localhost/keepvip:demo", "localhost/keepvip:demo2"
	image, err := kubenodes.KeepvipImage(ctx, scratch, ref, "demo")
	if err != nil {
		return err
	}
	image2, err := kubenodes.KeepvipImage(ctx, scratch, ref2, "demo2")
	if err != nil {
		return err
	}
	t0 := time.Now()
	c, err := kubenodes.Start(ctx, l, kubenodes.Options{Images: []string{image, image2}, Logf: func(string, ...any) {}})
	if err != nil {
		return err
	}
	defer c.Close()
	var names []string
	for _, n := range c.Nodes {
		names = append(names, fmt.Sprintf("%s %s", n.Name, n.Addr))
	}
	fmt.Printf("   %s Ready in %s; the keepvip image (as make image writes it) imported into each containerd\n", strings.Join(names, ", "), time.Since(t0).Round(100*time.Millisecond))

	kubectl := func(args ...string) ([]byte, error) {
		fmt.Printf("\n   $ kubectl %s\n", strings.Join(args, " "))
		out, err := c.Kubectl(ctx, args...)
		indent(string(out))
		return out, err
	}
	overlay, err := kubenodes.Overlay(scratch, deployDir, ref)
	if err != nil {
		return err
	}
	fmt.Printf("\n   $ kubectl apply -k deploy/        # through an overlay that only sets the image to %s\n", ref)
	applied := time.Now()
	out, err := c.Kubectl(ctx, "apply", "-k", overlay)
	indent(string(out))
	if err != nil {
		return err
	}
	if _, err := kubectl("-n", "keepvip", "rollout", "status", "daemonset/keepvip", "--timeout=3m"); err != nil {
		return err
	}
	fmt.Printf("   every keepvip pod Ready %s after kubectl apply\n", time.Since(applied).Round(100*time.Millisecond))
	if _, err := kubectl("-n", "keepvip", "get", "pods", "-o", "wide"); err != nil {
		return err
	}

	wait, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	vip := netip.MustParseAddr("192.0.2.100")
	// holderBut returns the first node other than not that has the VIP.
	holderBut := func(not *kubenodes.Node) *kubenodes.Node {
		for _, n := range c.Nodes {
			if n == not {
				continue
			}
			if ok, _ := n.Lab.HasAddr(wait, vip); ok {
				return n
			}
		}
		return nil
	}
	holder := func() *kubenodes.Node { return holderBut(nil) }
	pod := func(n *kubenodes.Node) (string, error) {
		list, err := c.Clientset.CoreV1().Pods("keepvip").List(wait, metav1.ListOptions{
			LabelSelector: "app.kubernetes.io/name=keepvip", FieldSelector: "spec.nodeName=" + n.Name})
		if err != nil {
			return "", err
		}
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil {
				return p.Name, nil
			}
		}
		return "", fmt.Errorf("no keepvip pod on %s", n.Name)
	}

	fmt.Println("\n1. The vip-configmap gets a VIP (kube-keepalived-vip's form, no Service: the VIP alone)")
	edit := time.Now()
	if _, err := kubectl("-n", "keepvip", "patch", "configmap", "vip-configmap", "--type=merge", "-p", `{"data":{"192.0.2.100":""}}`); err != nil {
		return err
	}
	var m *kubenodes.Node
	for m = holder(); m == nil; m = holder() {
		if wait.Err() != nil {
			return fmt.Errorf("no node holds %s after the ConfigMap edit", vip)
		}
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Printf("   %s holds %s %s after the edit (the first election: three 1 s adverts and the skew)\n", m.Name, vip, time.Since(edit).Round(10*time.Millisecond))
	probe, err := lab.StartProber(wait, c.Client, vip, time.Millisecond)
	if err != nil {
		return err
	}
	defer probe.Stop()
	if _, err := probe.WaitReplyAfter(wait, time.Now()); err != nil {
		return fmt.Errorf("the client gets no answer from %s: %w", vip, err)
	}
	fmt.Printf("   the client (%s) pings %s every millisecond from now on\n", kubenodes.ClientIP, vip)

	fmt.Println("\n2. A bad entry: reported as an Event and in the status; the good VIP stays")
	if _, err := kubectl("-n", "keepvip", "patch", "configmap", "vip-configmap", "--type=merge", "-p", `{"data":{"192.0.2.101":"default/web:PROXY"}}`); err != nil {
		return err
	}
	for wait.Err() == nil {
		evs, err := c.Clientset.CoreV1().Events("keepvip").List(wait, metav1.ListOptions{FieldSelector: "involvedObject.name=vip-configmap"})
		if err == nil && len(evs.Items) > 0 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if _, err := kubectl("-n", "keepvip", "get", "events", "--field-selector", "involvedObject.name=vip-configmap", "-o", "custom-columns=TYPE:.type,REASON:.reason,MESSAGE:.message"); err != nil {
		return err
	}
	if holder() != m {
		return fmt.Errorf("the good VIP moved because of a bad entry")
	}
	mp, err := pod(m)
	if err != nil {
		return err
	}
	if _, err := kubectl("-n", "keepvip", "exec", mp, "--", "keepvip", "status"); err != nil {
		return err
	}

	fmt.Println("\n3. An upgrade: keepvip is replaced on each node in turn, in place (the new pod beside the old one")
	fmt.Println("   takes over its VIPs where they are), while the client pings the VIP")
	before := probe.Stats()
	up := time.Now()
	if _, err := kubectl("-n", "keepvip", "set", "image", "daemonset/keepvip", "keepvip="+ref2); err != nil {
		return err
	}
	if _, err := kubectl("-n", "keepvip", "rollout", "status", "daemonset/keepvip", "--timeout=3m"); err != nil {
		return err
	}
	rolled := time.Now()
	time.Sleep(time.Second)
	gap, _ := probe.LongestGap(up, time.Time{})
	after := probe.Stats()
	now := holder()
	where := "none"
	if now != nil {
		where = now.Name
	}
	fmt.Printf("   rolled out in %s: the client's longest gap %s, %d of %d pings lost; %s held the VIP before, %s after\n",
		rolled.Sub(up).Round(100*time.Millisecond), ms(gap.Duration), (after.Sent-after.Replied)-(before.Sent-before.Replied), after.Sent-before.Sent, m.Name, where)
	if now != m {
		return fmt.Errorf("the VIP moved in the upgrade")
	}
	if mp, err = pod(m); err != nil {
		return err
	}
	if _, err := kubectl("-n", "keepvip", "exec", mp, "--", "keepvip", "status"); err != nil {
		return err
	}

	fmt.Printf("\n4. The API server stops; then %s's link is cut\n", m.Name)
	if err := c.API.StopAPIServer(); err != nil {
		return err
	}
	time.Sleep(500 * time.Millisecond)
	cut := time.Now()
	if err := l.CutLink(m.Lab); err != nil {
		return err
	}
	// The cut node keeps the VIP (alone on its side of the cut it stays
	// master), so look for the VIP on the others only.
	var other *kubenodes.Node
	for other = holderBut(m); other == nil; other = holderBut(m) {
		if wait.Err() != nil {
			return fmt.Errorf("no node took %s over", vip)
		}
		time.Sleep(time.Millisecond)
	}
	took := time.Since(cut)
	if _, err := probe.WaitReplyAfter(wait, time.Now()); err != nil {
		return err
	}
	gap, _ = probe.LongestGap(cut, time.Time{})
	fmt.Printf("   %s took %s over %s after the cut, without the API server; the client's gap %s\n", other.Name, vip, took.Round(time.Millisecond), ms(gap.Duration))
	fmt.Println("   (1 s adverts, the DaemonSet's default: Master_Down_Interval is about 3 s; see docs/performance.md for faster)")
	return nil
}

func indent(s string) {
	for _, line := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		fmt.Println("   " + line)
	}
}
