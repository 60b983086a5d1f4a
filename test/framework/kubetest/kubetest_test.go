package kubetest_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/keepvip/keepvip/test/framework/kubetest"
	"github.com/keepvip/keepvip/test/framework/netnstest"
)

// rbacManifest gives ServiceAccount kvtest/reader get on one ConfigMap,
// and nothing else.
const rbacManifest = `
apiVersion: v1
kind: Namespace
metadata: {name: kvtest}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: reader, namespace: kvtest}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: kvtest}
data: {vip: 10.0.0.100}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: other, namespace: kvtest}
---
apiVersion: v1
kind: Secret
metadata: {name: hidden, namespace: kvtest}
stringData: {password: x}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: read-settings, namespace: kvtest}
rules:
- apiGroups: [""]
  resources: [configmaps]
  resourceNames: [settings]
  verbs: [get]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: reader-read-settings, namespace: kvtest}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: read-settings}
subjects:
- {kind: ServiceAccount, name: reader, namespace: kvtest}
`

func TestCluster(t *testing.T) {
	ctx := t.Context()
	c := kubetest.StartT(t, kubetest.Options{})

	start := time.Now()
	if _, err := kubetest.Binaries(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("warm Binaries: %s", time.Since(start))

	manifest := filepath.Join(t.TempDir(), "rbac.yaml")
	if err := os.WriteFile(manifest, []byte(rbacManifest), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Kubectl(ctx, "apply", "-f", manifest); err != nil {
		t.Fatal(err)
	} else {
		t.Logf("kubectl apply:\n%s", out)
	}

	kc, err := c.ServiceAccountKubeconfig(ctx, "kvtest", "reader", "")
	if err != nil {
		t.Fatal(err)
	}
	saCfg, err := clientcmd.BuildConfigFromFlags("", kc)
	if err != nil {
		t.Fatalf("loading %s: %v", kc, err)
	}
	sa := kubernetes.NewForConfigOrDie(saCfg)
	admin := kubernetes.NewForConfigOrDie(c.RestConfig())

	checkAccess := func(t *testing.T) {
		t.Helper()
		cm, err := sa.CoreV1().ConfigMaps("kvtest").Get(ctx, "settings", metav1.GetOptions{})
		if err != nil {
			t.Fatalf("serviceaccount getting its ConfigMap: %v", err)
		}
		if got := cm.Data["vip"]; got != "10.0.0.100" {
			t.Errorf("ConfigMap data vip = %q, want 10.0.0.100", got)
		}
		_, err = sa.CoreV1().ConfigMaps("kvtest").Get(ctx, "other", metav1.GetOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("serviceaccount getting another ConfigMap: err = %v, want Forbidden", err)
		}
		_, err = sa.CoreV1().Secrets("kvtest").List(ctx, metav1.ListOptions{})
		if !apierrors.IsForbidden(err) {
			t.Errorf("serviceaccount listing Secrets: err = %v, want Forbidden", err)
		}
		if _, err := admin.CoreV1().Secrets("kvtest").Get(ctx, "hidden", metav1.GetOptions{}); err != nil {
			t.Errorf("admin getting the Secret: %v", err)
		}
	}
	checkAccess(t)

	// Retarget: the same credentials through another name for the server,
	// still checked against the serving certificate.
	for _, tc := range []struct {
		serverName string
		ok         bool
	}{{"kubernetes.default", true}, {"not-in-the-certificate", false}} {
		dst := filepath.Join(t.TempDir(), "retargeted.kubeconfig")
		if err := kubetest.Retarget(kc, dst, c.URL(), tc.serverName); err != nil {
			t.Fatal(err)
		}
		rc, err := clientcmd.BuildConfigFromFlags("", dst)
		if err != nil {
			t.Fatal(err)
		}
		_, err = kubernetes.NewForConfigOrDie(rc).CoreV1().ConfigMaps("kvtest").Get(ctx, "settings", metav1.GetOptions{})
		if (err == nil) != tc.ok {
			t.Errorf("retargeted with server name %q: err = %v, want ok=%v", tc.serverName, err, tc.ok)
		}
	}

	if err := c.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	shortCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = admin.CoreV1().ConfigMaps("kvtest").Get(shortCtx, "settings", metav1.GetOptions{})
	cancel()
	if err == nil {
		t.Fatal("getting a ConfigMap with the API server stopped succeeded")
	}
	t.Logf("with the API server stopped: %v", err)
	if _, err := c.Kubectl(ctx, "get", "ns"); err == nil {
		t.Error("kubectl with the API server stopped succeeded")
	}

	start = time.Now()
	if err := c.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("API server restarted in %s", time.Since(start).Round(time.Millisecond))
	// Same port, same etcd, same signing key: the old clients, the token
	// and the objects are all still good.
	checkAccess(t)

	if err := c.StartAPIServer(ctx); err == nil {
		t.Error("StartAPIServer while running succeeded")
	}
	if err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := c.StartAPIServer(ctx); err == nil {
		t.Error("StartAPIServer after Stop succeeded")
	}
}

func TestClusterInNetNS(t *testing.T) {
	netnstest.Require(t, "ip")
	ctx := t.Context()
	name := fmt.Sprintf("kvtest-%d-%04x", os.Getpid(), rand.N(0x10000))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v\n%s", name, err, out)
	}
	// Registered before StartT, so it runs after the cluster's Stop.
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v\n%s", name, err, out)
		}
	})
	netnstest.Sh(t, "ip -n "+name+" link set lo up")

	c := kubetest.StartT(t, kubetest.Options{NetNS: name})

	out, err := c.Kubectl(ctx, "get", "--raw", "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(out)) != "ok" {
		t.Errorf("kubectl get --raw /readyz = %q, want ok", out)
	}
	if _, err := c.Kubectl(ctx, "create", "namespace", "inside"); err != nil {
		t.Fatal(err)
	}
	// client-go in this (host namespace) process, dialing into the netns.
	cs := kubernetes.NewForConfigOrDie(c.RestConfig())
	if _, err := cs.CoreV1().Namespaces().Get(ctx, "inside", metav1.GetOptions{}); err != nil {
		t.Fatalf("client-go through the netns dialer: %v", err)
	}

	// And the server really is in the namespace: nothing answers on the
	// host's 127.0.0.1 at its port.
	u, err := url.Parse(c.URL())
	if err != nil {
		t.Fatal(err)
	}
	if conn, err := net.DialTimeout("tcp", u.Host, 2*time.Second); err == nil {
		conn.Close()
		t.Errorf("%s answers in the host network namespace", u.Host)
	}

	if err := c.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	if err := c.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Namespaces().Get(ctx, "inside", metav1.GetOptions{}); err != nil {
		t.Fatalf("after restarting the API server: %v", err)
	}
}

func TestStartErrors(t *testing.T) {
	if _, err := kubetest.Start(t.Context(), kubetest.Options{}); err == nil || !strings.Contains(err.Error(), "Dir") {
		t.Errorf("Start without Dir: err = %v, want one naming Dir", err)
	}
	_, err := kubetest.Start(t.Context(), kubetest.Options{Dir: t.TempDir(), NetNS: "kvtest-does-not-exist"})
	if err == nil || !strings.Contains(err.Error(), "kvtest-does-not-exist") {
		t.Errorf("Start in a missing netns: err = %v, want one naming it", err)
	}
}
