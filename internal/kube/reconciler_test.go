package kube

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/record"

	"github.com/keepvip/keepvip/configmap"
)

// harness runs a Reconciler against client-go's fake clientset and
// collects its updates.
type harness struct {
	t       *testing.T
	client  *fake.Clientset
	rec     *record.FakeRecorder
	updates chan Update
	r       *Reconciler
}

func startHarness(t *testing.T, objs ...any) *harness {
	t.Helper()
	h := &harness{t: t, rec: record.NewFakeRecorder(100), updates: make(chan Update, 100)}
	h.client = fake.NewClientset()
	ctx, cancel := context.WithCancel(context.Background())
	for _, o := range objs {
		h.create(ctx, o)
	}
	h.r = New(Options{
		Client: h.client, Namespace: "keepvip", ConfigMap: "vip-configmap", NodeName: "node-a",
		Defaults: configmap.DefaultDefaults(), Host: host, Registerer: prometheus.NewRegistry(), Recorder: h.rec,
	})
	done := make(chan error, 1)
	go func() { done <- h.r.Run(ctx, func(u Update) { h.updates <- u }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Run did not return")
		}
	})
	return h
}

func (h *harness) create(ctx context.Context, o any) {
	h.t.Helper()
	var err error
	switch o := o.(type) {
	case *corev1.ConfigMap:
		_, err = h.client.CoreV1().ConfigMaps(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *corev1.Service:
		_, err = h.client.CoreV1().Services(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *discoveryv1.EndpointSlice:
		_, err = h.client.DiscoveryV1().EndpointSlices(o.Namespace).Create(ctx, o, metav1.CreateOptions{})
	case *corev1.Node:
		_, err = h.client.CoreV1().Nodes().Create(ctx, o, metav1.CreateOptions{})
	default:
		h.t.Fatalf("cannot create %T", o)
	}
	if err != nil {
		h.t.Fatal(err)
	}
}

func (h *harness) next(what string) Update {
	h.t.Helper()
	select {
	case u := <-h.updates:
		return u
	case <-time.After(5 * time.Second):
		h.t.Fatalf("no update after %s", what)
	}
	return Update{}
}

func (h *harness) none(what string) {
	h.t.Helper()
	select {
	case u := <-h.updates:
		h.t.Fatalf("unexpected update after %s: %+v", what, u)
	case <-time.After(300 * time.Millisecond):
	}
}

func cmap(data map[string]string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "keepvip", Name: "vip-configmap"}, Data: data}
}

func TestReconcilerFollowsTheCluster(t *testing.T) {
	w := threeNodes()
	web := w.services["default/web"]
	sl := w.slices["default/web"][0]
	sl.Name, sl.Namespace = "web-1", "default"
	h := startHarness(t, cmap(map[string]string{"10.0.0.50": "default/web"}), web, sl, w.nodes[0], w.nodes[1], w.nodes[2])
	ctx := context.Background()

	u := h.next("start")
	if len(u.Config.Instances) != 1 || len(u.Config.VirtualServers) != 2 || len(u.Problems) != 0 {
		t.Fatalf("first update: %+v", u)
	}
	if got := reals(u.Config.VirtualServers[0]); got != "10.1.0.1:8080*1 10.1.0.2:8080*1 10.1.0.3:8080*0" {
		t.Errorf("real servers %s", got)
	}

	// An endpoint becomes unready.
	sl = sl.DeepCopy()
	sl.Endpoints[0].Conditions.Ready = b(false)
	sl.Endpoints[0].Conditions.Serving = b(false)
	if _, err := h.client.DiscoveryV1().EndpointSlices("default").Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	u = h.next("endpoint change")
	if got := reals(u.Config.VirtualServers[0]); got != "10.1.0.2:8080*1 10.1.0.3:8080*0" {
		t.Errorf("after the endpoint change: %s", got)
	}
	if u.Since.IsZero() {
		t.Errorf("update without the time of its event")
	}

	// A node heartbeat changes nothing that matters: no update.
	n := w.nodes[0].DeepCopy()
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, LastHeartbeatTime: metav1.Now()}}
	if _, err := h.client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// A Service nobody named changes: no update either.
	h.create(ctx, service("other", "x", port("", 80, 80, corev1.ProtocolTCP)))
	h.none("an unrelated change")

	// A new node moves the priorities (node-a stays first) and the peers:
	// the legacy instance is multicast, so only a node order change shows.
	h.create(ctx, node("node-0", nil, "192.168.1.9"))
	u = h.next("a node joining")
	if p := *u.Config.Instances[0].Priority; p != 101 {
		t.Errorf("priority after node-0 joined: %d", p)
	}

	// A bad entry is reported (status, Event) and the good one stays.
	cm := cmap(map[string]string{"10.0.0.50": "default/web", "10.0.0.51": "default/web:PROXY"})
	if _, err := h.client.CoreV1().ConfigMaps("keepvip").Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	u = h.next("a bad entry")
	if len(u.Problems) != 1 || !strings.Contains(u.Problems[0], `key "10.0.0.51"`) || len(u.Config.VirtualServers) != 2 {
		t.Errorf("bad entry: %+v", u)
	}
	select {
	case ev := <-h.rec.Events:
		if !strings.Contains(ev, "Warning InvalidEntry node node-a: key \"10.0.0.51\"") {
			t.Errorf("event %q", ev)
		}
	case <-time.After(5 * time.Second):
		t.Error("no Event for the bad entry")
	}

	// The Service goes away: its virtual servers go, the VIP stays, and
	// that is reported.
	if err := h.client.CoreV1().Services("default").Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	u = h.next("the Service deleted")
	if len(u.Config.VirtualServers) != 0 || len(u.Config.Instances) != 1 || !strings.Contains(strings.Join(u.Problems, "\n"), "service default/web not found") {
		t.Errorf("after deleting the Service: %+v", u)
	}
	if s := h.r.Status(); !s.Synced || s.APIServer != "ok" || s.Services != 1 {
		t.Errorf("status %+v", s)
	}
}
