package kube

import (
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
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

// blockingRecorder blocks the first UnresolvedEntry Event until released:
// reconcile sends it after Resolve has read the caches.
type blockingRecorder struct {
	once             sync.Once
	blocked, release chan struct{}
}

func (b *blockingRecorder) Event(_ runtime.Object, _, reason, _ string) {
	if reason == "UnresolvedEntry" {
		b.once.Do(func() { close(b.blocked); <-b.release })
	}
}
func (b *blockingRecorder) Eventf(o runtime.Object, t, r, f string, a ...any) { b.Event(o, t, r, f) }
func (b *blockingRecorder) AnnotatedEventf(o runtime.Object, _ map[string]string, t, r, f string, a ...any) {
	b.Event(o, t, r, f)
}

// An EndpointSlice event for a Service that the new ConfigMap version names,
// arriving while that version is being reconciled, is not dropped.
func TestEventsOfANewlyNamedServiceAreNotDropped(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	client := fake.NewClientset()
	w := threeNodes()
	for _, n := range w.nodes {
		client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	}
	client.CoreV1().Services("default").Create(ctx, w.services["default/web"], metav1.CreateOptions{})
	// Initially the ConfigMap names no Service.
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "keepvip", Name: "vip-configmap"}, Data: map[string]string{"10.0.0.50": ""}}
	client.CoreV1().ConfigMaps("keepvip").Create(ctx, cm, metav1.CreateOptions{})

	rec := &blockingRecorder{blocked: make(chan struct{}), release: make(chan struct{})}
	r := New(Options{Client: client, Namespace: "keepvip", ConfigMap: "vip-configmap", NodeName: "node-a",
		Defaults: configmap.DefaultDefaults(), Host: host, Registerer: prometheus.NewRegistry(), Recorder: rec, ResyncEvery: time.Hour})
	updates := make(chan Update, 10)
	go r.Run(ctx, func(u Update) { updates <- u })
	<-updates // start

	// The ConfigMap now names default/web (and a missing Service, to get
	// an UnresolvedEntry Event, which is where reconcile pauses).
	cm = cm.DeepCopy()
	cm.Data = map[string]string{"10.0.0.50": "default/web", "10.0.0.51": "default/missing"}
	client.CoreV1().ConfigMaps("keepvip").Update(ctx, cm, metav1.UpdateOptions{})
	select {
	case <-rec.blocked:
	case <-time.After(5 * time.Second):
		t.Fatal("reconcile did not reach the Event")
	}
	// While reconcile is between Resolve and r.wanted = wanted, web gets
	// its endpoints.
	sl := w.slices["default/web"][0].DeepCopy()
	sl.Name, sl.Namespace = "web-1", "default"
	client.DiscoveryV1().EndpointSlices("default").Create(ctx, sl, metav1.CreateOptions{})
	time.Sleep(500 * time.Millisecond) // the informer delivers it; the handler drops it
	close(rec.release)
	u := <-updates
	t.Logf("first: %s", reals(u.Config.VirtualServers[0]))
	select {
	case u = <-updates:
		if got := reals(u.Config.VirtualServers[0]); !strings.Contains(got, "10.1.0.1") {
			t.Errorf("second update without the endpoints: %s", got)
		}
	case <-time.After(3 * time.Second):
		t.Errorf("the EndpointSlice of default/web was dropped: no update; the VS has no real servers until the next resync")
	}
}

// A deleted ConfigMap (kubectl replace --force) keeps what runs; the data
// emptied removes it.
func TestDeletedConfigMapKeepsWhatRuns(t *testing.T) {
	w := threeNodes()
	h := startHarness(t, cmap(map[string]string{"10.0.0.50": ""}), w.nodes[0], w.nodes[1])
	ctx := context.Background()
	if u := h.next("start"); len(u.Config.Instances) != 1 {
		t.Fatalf("start: %+v", u.Config)
	}
	if err := h.client.CoreV1().ConfigMaps("keepvip").Delete(ctx, "vip-configmap", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	u := h.next("the ConfigMap deleted")
	if len(u.Config.Instances) != 1 || u.ResourceVersion != "" || !strings.Contains(strings.Join(u.Problems, " "), "not found: the configuration in force stays") {
		t.Errorf("after the delete: %+v, problems %v", u.Config, u.Problems)
	}
	h.create(ctx, cmap(map[string]string{}))
	if u := h.next("an empty ConfigMap"); len(u.Config.Instances) != 0 {
		t.Errorf("an empty ConfigMap left %+v", u.Config.Instances)
	}
}

// The entries that ran before a restart (Options.History, or LastGood as
// older versions saved it) keep their form while the live ConfigMap has
// them bad; and what the update gives to save keeps it for the restart
// after.
func TestHistorySeedsTheFirstParse(t *testing.T) {
	w := threeNodes()
	good := map[string]string{configmap.StructuredKey: "instances:\n- {name: web, vrid: 61, vips: [10.0.0.60]}\n"}
	bad := map[string]string{configmap.StructuredKey: "instances:\n- {name: web, vrid: 61, vips: [10.0.0.60]}\n\tbroken\n"}
	goodSpec, _ := configmap.Parse(good, configmap.DefaultDefaults(), nil)
	for _, tc := range []struct {
		name string
		o    Options
	}{{"history", Options{History: goodSpec}}, {"last good data", Options{LastGood: good}}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			client := fake.NewClientset()
			for _, n := range w.nodes {
				client.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
			}
			client.CoreV1().ConfigMaps("keepvip").Create(ctx, cmap(bad), metav1.CreateOptions{})
			o := tc.o
			o.Client, o.Namespace, o.ConfigMap, o.NodeName = client, "keepvip", "vip-configmap", "node-a"
			o.Defaults, o.Host, o.Registerer, o.Recorder = configmap.DefaultDefaults(), host, prometheus.NewRegistry(), record.NewFakeRecorder(10)
			r := New(o)
			updates := make(chan Update, 10)
			go r.Run(ctx, func(u Update) { updates <- u })
			select {
			case u := <-updates:
				if len(u.Config.Instances) != 1 || len(u.Problems) != 1 {
					t.Errorf("first update after a restart: %+v, problems %v", u.Config.Instances, u.Problems)
				}
				saved, err := json.Marshal(u.History)
				if err != nil {
					t.Fatal(err)
				}
				var back configmap.Spec
				if err := json.Unmarshal(saved, &back); err != nil {
					t.Fatal(err)
				}
				if spec, _ := configmap.Parse(bad, configmap.DefaultDefaults(), &back); len(spec.Instances) != 1 {
					t.Errorf("the saved history %s does not keep the instance: %+v", saved, spec.Instances)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no update")
			}
		})
	}
}
