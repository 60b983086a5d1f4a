package main

import (
	"os"
	"reflect"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// deploy/cleanup/ must be able to run wherever deploy/ ran keepvip: its
// namespace admits the host network and NET_ADMIN as keepvip's does (a
// cluster that enforces the baseline Pod Security level by default would
// reject every pod, and rollout status would wait for ever), and its pods
// go to the nodes keepvip's went to.
func TestCleanupDaemonSetRunsWhereKeepvipRan(t *testing.T) {
	ns := func(path string) corev1.Namespace {
		t.Helper()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var n corev1.Namespace
		if err := yaml.UnmarshalStrict(b, &n); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		return n
	}
	const psa = "pod-security.kubernetes.io/enforce"
	main, cleanup := ns("../../deploy/namespace.yaml"), ns("../../deploy/cleanup/namespace.yaml")
	if main.Labels[psa] != "privileged" {
		t.Fatalf("deploy/namespace.yaml: %s = %q", psa, main.Labels[psa])
	}
	if cleanup.Labels[psa] != "privileged" {
		t.Errorf("deploy/cleanup/namespace.yaml: %s = %q: the cleanup pods (host network, NET_ADMIN) are refused where baseline is enforced", psa, cleanup.Labels[psa])
	}

	b, err := os.ReadFile("../../deploy/cleanup/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(b, &ds); err != nil {
		t.Fatal(err)
	}
	mds, _ := readDaemonSet(t)
	spec, mspec := ds.Spec.Template.Spec, mds.Spec.Template.Spec
	if !reflect.DeepEqual(spec.Tolerations, mspec.Tolerations) || !reflect.DeepEqual(spec.NodeSelector, mspec.NodeSelector) || !reflect.DeepEqual(spec.Affinity, mspec.Affinity) {
		t.Errorf("the cleanup pods do not go where keepvip's went: tolerations %v / %v, nodeSelector %v / %v", spec.Tolerations, mspec.Tolerations, spec.NodeSelector, mspec.NodeSelector)
	}
	c := spec.Containers[0]
	if sc := c.SecurityContext; sc == nil || sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Add, "NET_ADMIN") || !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("security context %+v", c.SecurityContext)
	}
}
