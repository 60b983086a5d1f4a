package main

import (
	"os"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// readDaemonSet reads deploy/daemonset.yaml and its keepvip container.
func readDaemonSet(t *testing.T) (*appsv1.DaemonSet, *corev1.Container) {
	t.Helper()
	b, err := os.ReadFile("../../deploy/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(b, &ds); err != nil {
		t.Fatalf("deploy/daemonset.yaml: %v", err)
	}
	cs := ds.Spec.Template.Spec.Containers
	i := slices.IndexFunc(cs, func(c corev1.Container) bool { return c.Name == "keepvip" })
	if i < 0 {
		t.Fatal("deploy/daemonset.yaml has no container keepvip")
	}
	return &ds, &cs[i]
}

// The DaemonSet runs keepvip under the runtime's default seccomp profile.
func TestDaemonSetSeccomp(t *testing.T) {
	ds, c := readDaemonSet(t)
	var p *corev1.SeccompProfile
	if sc := c.SecurityContext; sc != nil && sc.SeccompProfile != nil {
		p = sc.SeccompProfile
	} else if psc := ds.Spec.Template.Spec.SecurityContext; psc != nil {
		p = psc.SeccompProfile
	}
	if p == nil || p.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("keepvip's seccompProfile = %+v; want {type: RuntimeDefault}", p)
	}
}

// The DaemonSet serves metrics on the node's address (the downward API's
// status.hostIP), not on every address of the host network with the VIPs
// among them, and probes it there.
func TestDaemonSetMetricsOnNodeAddress(t *testing.T) {
	_, c := readDaemonSet(t)
	for _, a := range c.Args {
		if strings.HasPrefix(a, "--metrics-addr") {
			t.Errorf("args set %s: the address comes from KEEPVIP_METRICS_ADDR ($(HOST_IP):PORT)", a)
		}
	}
	hostIP := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "HOST_IP" })
	metrics := slices.IndexFunc(c.Env, func(e corev1.EnvVar) bool { return e.Name == "KEEPVIP_METRICS_ADDR" })
	switch {
	case hostIP < 0 || c.Env[hostIP].ValueFrom == nil || c.Env[hostIP].ValueFrom.FieldRef == nil || c.Env[hostIP].ValueFrom.FieldRef.FieldPath != "status.hostIP":
		t.Fatalf("env HOST_IP is not the downward API's status.hostIP: %+v", c.Env)
	case metrics < 0 || c.Env[metrics].Value != "$(HOST_IP):9742":
		t.Fatalf("env KEEPVIP_METRICS_ADDR is not $(HOST_IP):9742: %+v", c.Env)
	case metrics < hostIP:
		t.Fatalf("KEEPVIP_METRICS_ADDR comes before HOST_IP: the kubelet would not expand $(HOST_IP)")
	}
	// hostNetwork: the pod's IP, which the kubelet probes when the probe
	// names no host, is the node's, where keepvip listens.
	for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Host != "" || p.HTTPGet.Port != intstr.FromInt32(9742) {
			t.Errorf("%s probe = %+v; want an httpGet of port 9742 on the pod's (the node's) IP", name, p)
		}
	}
	// /healthz answers 503 after 2 s: the probe waits longer than that.
	if p := c.LivenessProbe; p == nil || p.TimeoutSeconds < 3 {
		t.Errorf("liveness probe timeoutSeconds = %d; want at least 3, above /healthz's 2 s", p.TimeoutSeconds)
	}
}
