package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/kubernetes"
)

// A DaemonSet's args for kube-keepalived-vip (github.com/aledbf/kube-keepalived-vip,
// pkg/cmd/main.go and its glog flags) carry over to `keepvip run`: each
// flag given is logged with what replaces it, and run goes on, here to
// reading a configuration file that is missing. A flag neither keepvip's
// nor kube-keepalived-vip's is still an error.
func TestRunTakesKubeKeepalivedVIPFlags(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	const reached = "reading configuration: open " // the daemon started
	for _, tt := range []struct {
		args []string
		// warning is the line logged, from flag= on; "" for none.
		warning string
	}{
		{[]string{"--iface=eth1"}, `flag=--iface value=eth1 now="used as --interface, its name in keepvip"`},
		{[]string{"--apiserver-host", "http://10.0.0.1:8080"}, `flag=--apiserver-host value=http://10.0.0.1:8080 now="used as the API server's address in Kubernetes mode`},
		{[]string{"--watch-namespace=default"}, `flag=--watch-namespace value=default now="ignored: keepvip follows the Services the vip-configmap names`},
		{[]string{"--proxy-protocol-mode=true"}, `flag=--proxy-protocol-mode value=true now="ignored: keepvip has no HAProxy and no PROXY protocol mode`},
		{[]string{"--proxy-protocol-mode"}, `flag=--proxy-protocol-mode value=true now="ignored: keepvip has no HAProxy`},
		{[]string{"--http-port=8080"}, `flag=--http-port value=8080 now="ignored: keepvip serves /healthz, /readyz and /metrics on --metrics-addr; point the livenessProbe (kube-keepalived-vip's /health) at /healthz there"`},
		{[]string{"--release-vips=false"}, `flag=--release-vips value=false now="ignored: keepvip always removes its VIPs when it stops`},
		{[]string{"--use-kubernetes-cluster-service=true"}, `flag=--use-kubernetes-cluster-service value=true now="ignored: keepvip uses the pod's ServiceAccount unless --kubeconfig is given"`},
		{[]string{"--v=2"}, `flag=--v value=2 now="ignored: use --log-level (debug, info, warn or error)"`},
		{[]string{"-v", "3"}, `flag=--v value=3 now="ignored: use --log-level`},
		{[]string{"--logtostderr"}, `flag=--logtostderr value=true now="ignored: keepvip always logs to standard error (--log-format text or json)"`},
		{[]string{"--alsologtostderr=true"}, `flag=--alsologtostderr value=true now="ignored: keepvip always logs to standard error`},
		{[]string{"--stderrthreshold=INFO"}, `flag=--stderrthreshold value=INFO now="ignored: use --log-level`},
		{[]string{"--vmodule=controller=4"}, `flag=--vmodule value="controller=4" now="ignored: use --log-level`},
		{[]string{"--log_backtrace_at=main.go:10"}, `flag=--log_backtrace_at value=main.go:10 now="ignored: keepvip has no stack traces on log lines"`},
		{[]string{"--log_dir=/var/log"}, `flag=--log_dir value=/var/log now="ignored: keepvip logs to standard error only"`},
		// kube-keepalived-vip's flags that are keepvip's own: taken
		// as they are, without a warning.
		{[]string{"--use-unicast=true", "--vrid=51", "--interface=eth1", "--kubeconfig=/dev/null"}, ""},
	} {
		var out, errb bytes.Buffer
		args := append([]string{"run", "--config", missing, "--status-socket="}, tt.args...)
		code := run(args, &out, &errb)
		got := errb.String()
		if code != 1 || !strings.Contains(got, reached) {
			t.Errorf("keepvip %q = %d:\n%s\nwant 1, after %q", args, code, got, reached)
			continue
		}
		warned := strings.Contains(got, "kube-keepalived-vip flag")
		switch {
		case tt.warning == "" && warned:
			t.Errorf("keepvip %q warned of kube-keepalived-vip flags; want no warning:\n%s", args, got)
		case tt.warning != "" && !strings.Contains(got, `level=WARN msg="kube-keepalived-vip flag" `+tt.warning):
			t.Errorf("keepvip %q logged:\n%s\nwant a warning with %s", args, got, tt.warning)
		}
	}

	// kube-keepalived-vip's helm chart args, in one: a warning for each
	// old flag, before run fails on a missing configuration file.
	var out, errb bytes.Buffer
	args := []string{"run", "--config", missing, "--status-socket=", "--use-unicast=true", "--vrid=51",
		"--logtostderr", "--http-port=8080", "--proxy-protocol-mode=true"}
	if code := run(args, &out, &errb); code != 1 || strings.Count(errb.String(), "kube-keepalived-vip flag") != 3 {
		t.Errorf("keepvip %q = %d:\n%s\nwant 1 and 3 warnings", args, code, errb.String())
	}

	// Unknown flags still fail.
	for _, bad := range []string{"--no-such-flag", "--watch-namespaces=default", "--services-config-map=a/b"} {
		var out, errb bytes.Buffer
		args := []string{"run", "--config", missing, bad}
		code := run(args, &out, &errb)
		want := "flag provided but not defined: -" + strings.TrimLeft(strings.SplitN(bad, "=", 2)[0], "-")
		if code == 0 || !strings.Contains(errb.String(), want) {
			t.Errorf("keepvip %q = %d:\n%s\nwant a failure and %q", args, code, errb.String(), want)
		}
	}
}

// --iface is --interface, and is logged before run fails on it.
func TestRunIfaceIsInterface(t *testing.T) {
	t.Setenv("NODE_NAME", "")
	var out, errb bytes.Buffer
	args := []string{"run", "--configmap", "ns/vip-configmap", "--node-name", "node-a", "--iface", "bad/name"}
	code := run(args, &out, &errb)
	for _, want := range []string{`flag=--iface value=bad/name now="used as --interface`, `flags.interface: "bad/name" is not an interface name`} {
		if code == 0 || !strings.Contains(errb.String(), want) {
			t.Errorf("keepvip %q = %d:\n%s\nwant a failure and %q", args, code, errb.String(), want)
		}
	}
}

// --apiserver-host is the API server, as in kube-keepalived-vip.
func TestKubeClientAPIServerHost(t *testing.T) {
	t.Setenv("KUBERNETES_SERVICE_HOST", "") // not in a pod
	t.Setenv("KUBECONFIG", filepath.Join(t.TempDir(), "none"))
	c, err := kubeClient("", "http://192.0.2.10:8080")
	if err != nil {
		t.Fatal(err)
	}
	u := c.(*kubernetes.Clientset).CoreV1().RESTClient().Get().URL()
	if u.Scheme != "http" || u.Host != "192.0.2.10:8080" {
		t.Errorf("client with --apiserver-host http://192.0.2.10:8080 goes to %v", u)
	}
}
