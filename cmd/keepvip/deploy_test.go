package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
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
// among them.
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
}

// The DaemonSet's probes ask keepvip on its status socket (`keepvip
// health`), which only root can use, not on the metrics port, which any
// local user can take first and answer in keepvip's place. The command
// they run exists, names the socket the daemon listens on, and waits
// for keepvip's answer longer than keepvip takes to say its VRRP
// instances do not answer (2 s), and the probe longer still.
func TestDaemonSetProbesOnStatusSocket(t *testing.T) {
	_, c := readDaemonSet(t)
	sock := ""
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--status-socket="); ok {
			sock = v
		}
	}
	if sock == "" {
		t.Fatalf("args %v do not set --status-socket", c.Args)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		want  []string
	}{
		{"liveness", c.LivenessProbe, []string{"keepvip", "health", "--socket=" + sock}},
		{"readiness", c.ReadinessProbe, []string{"keepvip", "health", "--ready", "--socket=" + sock}},
	} {
		if p.probe == nil || p.probe.Exec == nil || p.probe.HTTPGet != nil || p.probe.TCPSocket != nil {
			t.Errorf("%s probe = %+v; want an exec of `keepvip health` on the status socket", p.name, p.probe)
			continue
		}
		if !slices.Equal(p.probe.Exec.Command, p.want) {
			t.Errorf("%s probe runs %q; want %q", p.name, p.probe.Exec.Command, p.want)
		}
		// The flags exist and the command says why it fails: here,
		// no keepvip on the socket.
		args := append(slices.Clone(p.probe.Exec.Command[1:len(p.probe.Exec.Command)-1]), "--socket="+t.TempDir()+"/none.sock")
		var out, errb strings.Builder
		if code := run(args, &out, &errb); code != 1 || !strings.Contains(errb.String(), "asking keepvip on") {
			t.Errorf("%s probe's command with no keepvip = exit %d, %q; want 1 and why", p.name, code, errb.String())
		}
		// `keepvip health` waits 4 s, above the 2 s of the health check.
		if p.probe.TimeoutSeconds <= 4 {
			t.Errorf("%s probe timeoutSeconds = %d; want above the 4 s `keepvip health` waits", p.name, p.probe.TimeoutSeconds)
		}
	}
}

// deploy/cleanup runs `keepvip cleanup --wait` on every node, with the
// state directory of deploy/ and what the cleanup needs, and is Ready
// when `keepvip cleanup --done` says so: the flags it uses exist.
func TestCleanupDaemonSet(t *testing.T) {
	b, err := os.ReadFile("../../deploy/cleanup/daemonset.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var ds appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(b, &ds); err != nil {
		t.Fatalf("deploy/cleanup/daemonset.yaml: %v", err)
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || len(spec.Containers) != 1 {
		t.Fatalf("want one container on the host network: %+v", spec)
	}
	c := spec.Containers[0]
	if strings.Join(c.Args, " ") != "cleanup --state-dir=/var/lib/keepvip --wait" {
		t.Errorf("args %v", c.Args)
	}
	if p := c.ReadinessProbe; p == nil || p.Exec == nil || strings.Join(p.Exec.Command, " ") != "keepvip cleanup --done" {
		t.Errorf("readiness probe %+v", c.ReadinessProbe)
	}
	_, main := readDaemonSet(t)
	if i := slices.IndexFunc(spec.Volumes, func(v corev1.Volume) bool { return v.Name == "state" }); i < 0 || spec.Volumes[i].HostPath == nil || spec.Volumes[i].HostPath.Path != "/var/lib/keepvip" {
		t.Errorf("the state directory is not deploy/'s: %+v", spec.Volumes)
	}
	if !slices.Contains(main.Args, "--state-dir=/var/lib/keepvip") {
		t.Errorf("deploy/'s state directory moved: %v", main.Args)
	}
	// The flags exist: --done without a marker says not done, exit 1.
	var out, errb strings.Builder
	if code := run([]string{"cleanup", "--done", "--marker", t.TempDir() + "/none"}, &out, &errb); code != 1 || !strings.Contains(errb.String(), "cleanup not done yet") {
		t.Errorf("cleanup --done = %d: %s", code, errb.String())
	}
}

// What the real nodes showed (test/nodes) the DaemonSet needs: the status
// socket's directory an emptyDir on disk (0777, which keepvip makes
// root's; medium Memory is a tmpfs of mode 1777, a shared directory,
// refused: every pod crash-looped), the state directory the host's (a
// restarted pod resumes with its VIPs only from the configuration it
// kept there), and a rolling update that waits for each node to be back
// in the election (readiness probed often, minReadySeconds).
func TestDaemonSetForRealNodes(t *testing.T) {
	ds, c := readDaemonSet(t)
	vol := func(mountPath string) *corev1.Volume {
		for _, m := range c.VolumeMounts {
			if m.MountPath == mountPath {
				for i, v := range ds.Spec.Template.Spec.Volumes {
					if v.Name == m.Name {
						return &ds.Spec.Template.Spec.Volumes[i]
					}
				}
			}
		}
		return nil
	}
	sockDir := ""
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--status-socket="); ok {
			sockDir = filepath.Dir(v)
		}
	}
	if v := vol(sockDir); v == nil || v.EmptyDir == nil || v.EmptyDir.Medium != corev1.StorageMediumDefault {
		t.Errorf("the status socket's directory %s is %+v; want an emptyDir on disk", sockDir, v)
	}
	if v := vol("/var/lib/keepvip"); v == nil || v.HostPath == nil || v.HostPath.Path != "/var/lib/keepvip" {
		t.Errorf("the state directory is %+v; want the host's /var/lib/keepvip", v)
	}
	if ds.Spec.MinReadySeconds < 1 || c.ReadinessProbe == nil || c.ReadinessProbe.PeriodSeconds > 2 {
		t.Errorf("minReadySeconds %d, readiness probed every %v s; want a rolling update that waits for the election", ds.Spec.MinReadySeconds, c.ReadinessProbe)
	}
	// Upgrades replace keepvip in place: the new pod beside the old one
	// (which its host port, if it declared one, would forbid), taking
	// over from it.
	ru := ds.Spec.UpdateStrategy.RollingUpdate
	if ds.Spec.UpdateStrategy.Type != appsv1.RollingUpdateDaemonSetStrategyType || ru == nil || ru.MaxSurge == nil || ru.MaxSurge.IntValue() != 1 ||
		ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 {
		t.Errorf("update strategy %+v; want a rolling update with maxSurge 1, maxUnavailable 0", ds.Spec.UpdateStrategy)
	}
	if !slices.Contains(c.Args, "--take-over") {
		t.Errorf("args %v; want --take-over, for the new pod of an upgrade to take over from the old", c.Args)
	}
	for _, p := range c.Ports {
		t.Errorf("port %+v declared: on the host network it is a host port, and the new pod of an upgrade cannot be scheduled beside the old", p)
	}
}
