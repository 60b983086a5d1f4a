// Package nodes_test runs keepvip the way users do: the shipped deploy/
// applied with kubectl to real kubelets (test/framework/kubenodes), the
// vip-configmap edited, `kubectl exec … -- keepvip status`, and the faults
// and upgrades of a running cluster, measured from a client on the
// nodes' segment.
//
// One cluster serves the whole package (starting one costs 40 s on two
// cores); each test leaves it as it found it: keepvip deployed on every
// node, the vip-configmap empty.
package nodes_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/keepvip/keepvip/internal/daemon"
	"github.com/keepvip/keepvip/test/framework/kubenodes"
	"github.com/keepvip/keepvip/test/framework/lab"
)

const (
	namespace = "keepvip"
	imageRef  = "localhost/keepvip:test"
	// imageRef2 is another build (version test2), for an upgrade.
	imageRef2 = "localhost/keepvip:test2"
	// keepalivedRef is Debian's keepalived, for reference figures.
	keepalivedRef = "localhost/keepalived:ref"
)

var shared struct {
	once sync.Once
	err  error
	lab  *lab.Lab
	c    *kubenodes.Cluster
	dir  string // scratch: images, the kustomize overlay
	// overlay is deploy/ with the test image: what `kubectl apply -k`
	// applies.
	overlay string
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.c != nil {
		if err := shared.c.Close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	if shared.lab != nil {
		if err := shared.lab.Close(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// cluster returns the package's cluster with keepvip deployed, starting it
// on first use.
func cluster(t *testing.T) *kubenodes.Cluster {
	t.Helper()
	lab.Require(t)
	shared.once.Do(func() { shared.err = startShared() })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
	return shared.c
}

func logf(format string, args ...any) {
	if testing.Verbose() {
		log.Printf(format, args...)
	}
}

func startShared() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	l, err := lab.New(logf)
	if err != nil {
		return err
	}
	shared.lab = l
	shared.dir = filepath.Join(l.Dir(), "nodes-test")
	if err := os.MkdirAll(shared.dir, 0o755); err != nil {
		return err
	}
	image, err := kubenodes.KeepvipImage(ctx, shared.dir, imageRef, "test")
	if err != nil {
		return err
	}
	image2, err := kubenodes.KeepvipImage(ctx, shared.dir, imageRef2, "test2")
	if err != nil {
		return err
	}
	if err := lab.EnsureTools(logf, "keepalived"); err != nil {
		return err
	}
	keepalived := filepath.Join(shared.dir, "keepalived.tar")
	if err := kubenodes.KeepalivedImage(keepalived, keepalivedRef); err != nil {
		return err
	}
	if shared.c, err = kubenodes.Start(ctx, l, kubenodes.Options{Images: []string{image, image2, keepalived}, Logf: logf}); err != nil {
		return err
	}
	return deploy(ctx, shared.c)
}

// deploy applies the shipped deploy/ with only the image overridden, by a
// kustomize overlay, and waits for the rollout.
func deploy(ctx context.Context, c *kubenodes.Cluster) error {
	wd, err := os.Getwd()
	if err != nil {
		return err
	}
	overlay, err := kubenodes.Overlay(shared.dir, filepath.Join(wd, "..", "..", "deploy"), imageRef)
	if err != nil {
		return err
	}
	shared.overlay = overlay
	t0 := time.Now()
	if _, err := c.Kubectl(ctx, "apply", "-k", overlay); err != nil {
		return err
	}
	if _, err := c.Kubectl(ctx, "rollout", "status", "-n", namespace, "daemonset/keepvip", "--timeout=3m"); err != nil {
		return fmt.Errorf("%w\n%s", err, c.Describe(ctx, namespace))
	}
	logf("keepvip rolled out %v after kubectl apply", time.Since(t0).Round(100*time.Millisecond))
	return nil
}

// pods returns keepvip's pods by node name.
func pods(t *testing.T, c *kubenodes.Cluster) map[string]corev1.Pod {
	t.Helper()
	list, err := c.Clientset.CoreV1().Pods(namespace).List(t.Context(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=keepvip"})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]corev1.Pod{}
	for _, p := range list.Items {
		if p.DeletionTimestamp == nil {
			out[p.Spec.NodeName] = p
		}
	}
	return out
}

// status runs `kubectl exec POD -- keepvip status -o json` and parses it.
func status(ctx context.Context, c *kubenodes.Cluster, pod string) (daemon.Status, error) {
	var st daemon.Status
	out, err := c.Kubectl(ctx, "exec", "-n", namespace, pod, "--", "keepvip", "status", "-o", "json")
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(out, &st); err != nil {
		return st, fmt.Errorf("keepvip status -o json in %s: %w\n%s", pod, err, out)
	}
	return st, nil
}

// setVIPs replaces the vip-configmap's data.
func setVIPs(ctx context.Context, c *kubenodes.Cluster, data map[string]string) error {
	cms := c.Clientset.CoreV1().ConfigMaps(namespace)
	cm, err := cms.Get(ctx, "vip-configmap", metav1.GetOptions{})
	if err != nil {
		return err
	}
	cm.Data = data
	_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	return err
}

// holders returns the nodes that have addr on eth0.
func holders(ctx context.Context, c *kubenodes.Cluster, addr string) []string {
	var out []string
	for _, n := range c.Nodes {
		if ok, err := n.Lab.HasAddr(ctx, mustAddr(addr)); err == nil && ok {
			out = append(out, n.Name)
		}
	}
	return out
}
