//go:build vmtest

package ipvs

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/ipvs"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/keepvip/keepvip/test/framework/lab"
	"github.com/keepvip/keepvip/vrrp"
)

// The environment TestVM gives the guest when it runs this package: an
// API server on the host with deploy/ applied, and kubeconfigs for it.
const (
	envAdminKubeconfig = "KEEPVIP_KUBECONFIG_ADMIN"
	envSAKubeconfig    = "KEEPVIP_KUBECONFIG_SA"
	// envRounds is how many endpoint changes and ConfigMap edits are
	// timed; make bench raises it.
	envRounds = "KEEPVIP_KUBE_ROUNDS"
)

const kubeConfigYAML = `
instances:
- {name: vi, vrid: 7, priority: 150, advertInterval: 100ms, vips: [192.0.2.100/24]}
virtualServers:
- {vip: 192.0.2.100, port: 80, service: default/web, scheduler: %s, healthCheck: {type: none}}
kernel: {ipvs: required}
`

// ipvsView reads the director's IPVS table with a netlink socket opened
// in its namespace.
type ipvsView struct{ h *ipvs.Handle }

func openIPVS(t *testing.T, n *lab.Node) ipvsView {
	t.Helper()
	var h *ipvs.Handle
	err := n.Do(func() error {
		var err error
		h, err = ipvs.New("")
		return err
	})
	if err != nil {
		t.Fatalf("opening IPVS in %s: %v", n.Name, err)
	}
	t.Cleanup(h.Close)
	return ipvsView{h}
}

// service returns the scheduler and "addr:port*weight" of each real
// server of the VIP's port-80 TCP service, sorted; "" if it is absent.
func (v ipvsView) service(vip string) (sched string, reals []string) {
	svcs, err := v.h.GetServices()
	if err != nil {
		return "error: " + err.Error(), nil
	}
	for _, s := range svcs {
		if s.Address.String() != vip || s.Port != 80 || s.Protocol != 6 {
			continue
		}
		dests, err := v.h.GetDestinations(s)
		if err != nil {
			return "error: " + err.Error(), nil
		}
		for _, d := range dests {
			reals = append(reals, fmt.Sprintf("%s:%d*%d", d.Address, d.Port, d.Weight))
		}
		sort.Strings(reals)
		return s.SchedName, reals
	}
	return "", nil
}

// waitFor polls the kernel every millisecond until ok holds, and returns
// how long that took from start.
func (v ipvsView) waitFor(t *testing.T, what string, start time.Time, ok func(sched string, reals []string) bool) time.Duration {
	t.Helper()
	for {
		sched, reals := v.service("192.0.2.100")
		if ok(sched, reals) {
			return time.Since(start)
		}
		if time.Since(start) > 10*time.Second {
			t.Fatalf("IPVS: %s not reached in 10s; the kernel has %s %v", what, sched, reals)
		}
		time.Sleep(time.Millisecond)
	}
}

func endpoint(addr string, ready, serving, terminating bool) discoveryv1.Endpoint {
	return discoveryv1.Endpoint{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{
		Ready: &ready, Serving: &serving, Terminating: &terminating}}
}

// TestKubernetes runs keepvip in Kubernetes mode on a director with IPVS:
// the Service's endpoints become real servers carrying real traffic, and
// endpoint changes and ConfigMap edits reach the kernel, timed from the
// API call to the change seen in the IPVS table. keepvip runs with its
// ServiceAccount's RBAC from deploy/.
func TestKubernetes(t *testing.T) {
	adminKC, saKC := os.Getenv(envAdminKubeconfig), os.Getenv(envSAKubeconfig)
	if adminKC == "" || saKC == "" {
		t.Fatalf("no API server: TestVM (make test-vm) starts one on the host and sets %s and %s", envAdminKubeconfig, envSAKubeconfig)
	}
	rounds := 10
	if s := os.Getenv(envRounds); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number", envRounds, s)
		}
		rounds = n
	}
	l := lab.ForTest(t)
	add := func(name, v4 string) *lab.Node { return addNode(t, l, name, v4) }
	dir := add("director", "192.0.2.10/24") // the name diagnose knows
	cli := add("client", "192.0.2.50/24")
	sh(t, dir, "ip addr add 10.0.0.1/24 dev eth0 && sysctl -qw net.ipv4.ip_forward=1")
	var backends []*backend
	for i := 1; i <= 3; i++ {
		n := add(fmt.Sprintf("b%d", i), fmt.Sprintf("10.0.0.1%d/24", i))
		sh(t, n, "ip route add 192.0.2.0/24 via 10.0.0.1")
		b := &backend{t: t, name: n.Name, node: n, addr: ":8080"}
		b.start()
		backends = append(backends, b)
	}
	// The director's way to the API server: the VM's own interface on
	// qemu's user network, moved into the director's namespace.
	for _, args := range [][]string{{"link", "set", "eth0", "name", "api0"}, {"link", "set", "api0", "netns", dir.NS}} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("moving the VM's interface into %s: ip %v: %v\n%s", dir.NS, args, err, out)
		}
	}
	sh(t, dir, "ip link set api0 up && ip addr add 10.0.2.15/24 dev api0")

	rc, err := clientcmd.BuildConfigFromFlags("", adminKC)
	if err != nil {
		t.Fatal(err)
	}
	rc.QPS, rc.Burst = 1000, 1000
	// The API server is reached through the director's uplink, as the
	// cluster's own clients would: dial from its namespace.
	rc.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		var conn net.Conn
		err := dir.Do(func() error {
			var err error
			conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return conn, err
	}
	api := kubernetes.NewForConfigOrDie(rc)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "lb"}}
	if node, err = api.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	node.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.0.2.10"}}
	if _, err := api.CoreV1().Nodes().UpdateStatus(ctx, node, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "web"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP}}}}
	if _, err := api.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	portName, port, tcp := "http", int32(8080), corev1.ProtocolTCP
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "default", Name: "web-1", Labels: map[string]string{discoveryv1.LabelServiceName: "web"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Port: &port, Protocol: &tcp}},
		Endpoints: []discoveryv1.Endpoint{endpoint("10.0.0.11", true, true, false), endpoint("10.0.0.12", true, true, false),
			endpoint("10.0.0.13", true, true, false)},
	}
	if slice, err = api.DiscoveryV1().EndpointSlices("default").Create(ctx, slice, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	setConfig := func(sched string) {
		t.Helper()
		cm, err := api.CoreV1().ConfigMaps("keepvip").Get(ctx, "vip-configmap", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		cm.Data = map[string]string{"config.yaml": fmt.Sprintf(kubeConfigYAML, sched)}
		if _, err := api.CoreV1().ConfigMaps("keepvip").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	setEndpoints := func(eps ...discoveryv1.Endpoint) {
		t.Helper()
		s := slice.DeepCopy()
		s.Endpoints = eps
		var err error
		if slice, err = api.DiscoveryV1().EndpointSlices("default").Update(ctx, s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	setConfig("rr")

	k, err := dir.StartKeepvipArgs("--configmap", "keepvip/vip-configmap", "--node-name", "lb", "--kubeconfig", saKC,
		"--state-dir", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("keepvip log:\n%s", tail(k.Log(), 60))
		}
	})
	if err := k.WaitState(ctx, "vi", vrrp.StateMaster); err != nil {
		t.Fatal(err)
	}
	v := openIPVS(t, dir)
	all := []string{"10.0.0.11:8080*1", "10.0.0.12:8080*1", "10.0.0.13:8080*1"}
	v.waitFor(t, "the Service's three endpoints", time.Now(), func(sched string, reals []string) bool {
		return sched == "rr" && slices.Equal(reals, all)
	})
	c := client{cli}
	src := netip.MustParseAddr("192.0.2.50")
	if got := c.counts(t, src, "http://192.0.2.100/", 30); got["b1"] != 10 || got["b2"] != 10 || got["b3"] != 10 {
		t.Errorf("30 requests by rr to the Service's endpoints: %v; want 10 each", got)
	}

	// Endpoint changes: b3 leaves and comes back, each change timed from
	// the API call to the kernel.
	var epLat, cmLat []time.Duration
	two := all[:2]
	for i := range rounds {
		start := time.Now()
		if i%2 == 0 {
			setEndpoints(endpoint("10.0.0.11", true, true, false), endpoint("10.0.0.12", true, true, false))
			epLat = append(epLat, v.waitFor(t, "b3 removed", start, func(_ string, r []string) bool { return slices.Equal(r, two) }))
		} else {
			setEndpoints(endpoint("10.0.0.11", true, true, false), endpoint("10.0.0.12", true, true, false), endpoint("10.0.0.13", true, true, false))
			epLat = append(epLat, v.waitFor(t, "b3 back", start, func(_ string, r []string) bool { return slices.Equal(r, all) }))
		}
	}
	setEndpoints(endpoint("10.0.0.11", true, true, false), endpoint("10.0.0.12", true, true, false))
	v.waitFor(t, "b3 removed", time.Now(), func(_ string, r []string) bool { return slices.Equal(r, two) })
	if got := c.counts(t, src, "http://192.0.2.100/", 20); got["b3"] != 0 || got["b1"] != 10 || got["b2"] != 10 {
		t.Errorf("with b3 out of the Service: %v; want b1 and b2 only", got)
	}

	// A terminating endpoint that still serves drains: weight 0, kept.
	setEndpoints(endpoint("10.0.0.11", true, true, false), endpoint("10.0.0.12", false, true, true))
	v.waitFor(t, "b2 draining", time.Now(), func(_ string, r []string) bool {
		return slices.Equal(r, []string{"10.0.0.11:8080*1", "10.0.0.12:8080*0"})
	})
	if got := c.counts(t, src, "http://192.0.2.100/", 10); got["b1"] != 10 {
		t.Errorf("with b2 terminating: %v; want b1 only", got)
	}
	setEndpoints(endpoint("10.0.0.11", true, true, false), endpoint("10.0.0.12", true, true, false), endpoint("10.0.0.13", true, true, false))
	v.waitFor(t, "all three back", time.Now(), func(_ string, r []string) bool { return slices.Equal(r, all) })

	// ConfigMap edits: the scheduler changes in place.
	for i := range rounds {
		sched := []string{"wrr", "rr"}[i%2]
		start := time.Now()
		setConfig(sched)
		cmLat = append(cmLat, v.waitFor(t, "scheduler "+sched, start, func(s string, r []string) bool { return s == sched && slices.Equal(r, all) }))
	}

	// The API server out of reach (the director's uplink down): IPVS and
	// the traffic stay; an endpoint change once it is back applies.
	before := sh(t, dir, "ipvsadm -Sn | sort")
	sh(t, dir, "ip link set api0 down")
	deadline := time.Now().Add(20 * time.Second)
	for {
		st, err := k.Status(ctx)
		if err == nil && st.Kubernetes != nil && st.Kubernetes.APIServer != "ok" {
			t.Logf("status with the API server out of reach: %s", st.Kubernetes.APIServer)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the API server out of reach is not reported in 20s: %+v", st)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := c.counts(t, src, "http://192.0.2.100/", 30); got["b1"] != 10 || got["b2"] != 10 || got["b3"] != 10 {
		t.Errorf("without the API server: %v; want 10 each", got)
	}
	if after := sh(t, dir, "ipvsadm -Sn | sort"); after != before {
		t.Errorf("IPVS changed while the API server was out of reach:\n%s\nwas\n%s", after, before)
	}
	sh(t, dir, "ip link set api0 up")
	start := time.Now()
	setEndpoints(endpoint("10.0.0.11", true, true, false), endpoint("10.0.0.12", true, true, false))
	took := v.waitFor(t, "b3 removed after the API server came back", start, func(_ string, r []string) bool { return slices.Equal(r, two) })
	t.Logf("first endpoint change after the API server came back: %s", took.Round(time.Millisecond))

	// The status command shows the virtual server as the kernel has it.
	st, err := k.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.VirtualServers) != 1 || st.VirtualServers[0].Service != "192.0.2.100:80/tcp" || len(st.VirtualServers[0].RealServers) != 2 {
		t.Errorf("status virtual servers: %+v", st.VirtualServers)
	}

	ep, cm := summarize(epLat), summarize(cmLat)
	t.Logf("endpoint change -> IPVS over %d: %s", len(epLat), ep)
	t.Logf("ConfigMap edit -> IPVS over %d: %s", len(cmLat), cm)
	if os.Getenv(envRounds) != "" {
		fmt.Printf("BENCH kube_endpoint_to_ipvs_p50 %.1f ms\n", ms(ep.p50))
		fmt.Printf("BENCH kube_endpoint_to_ipvs_p99 %.1f ms\n", ms(ep.p99))
		fmt.Printf("BENCH kube_configmap_to_ipvs_p50 %.1f ms\n", ms(cm.p50))
		fmt.Printf("BENCH kube_configmap_to_ipvs_p99 %.1f ms\n", ms(cm.p99))
	}
}

type latencies struct{ p50, p99, max time.Duration }

func (l latencies) String() string {
	return fmt.Sprintf("p50 %s, p99 %s, max %s", l.p50.Round(100*time.Microsecond), l.p99.Round(100*time.Microsecond), l.max.Round(100*time.Microsecond))
}

// summarize returns the median, the 99th percentile (nearest rank) and
// the maximum.
func summarize(d []time.Duration) latencies {
	s := slices.Clone(d)
	slices.Sort(s)
	rank := func(p float64) time.Duration {
		i := int(p*float64(len(s))+0.999999) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return latencies{p50: rank(0.50), p99: rank(0.99), max: s[len(s)-1]}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
