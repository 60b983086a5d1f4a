package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"sync"
	"time"

	"io"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/keepvip/keepvip/config"
	"github.com/keepvip/keepvip/configmap"
)

// Options configures a Reconciler.
type Options struct {
	Client kubernetes.Interface
	// Namespace and ConfigMap name the vip-configmap.
	Namespace, ConfigMap string
	// NodeName is this node.
	NodeName string
	// Defaults configure the "vips" instance of kube-keepalived-vip style
	// keys.
	Defaults configmap.Defaults
	Host     Host
	Logger   *slog.Logger
	// Registerer takes the metrics; nil for none.
	Registerer prometheus.Registerer
	// ResyncEvery is how often everything is resolved again even without
	// an event. Default 5 minutes.
	ResyncEvery time.Duration
	// Recorder sends Events; nil makes one that writes to the API server.
	Recorder record.EventRecorder
	// History is the Spec in force before a restart (Update.History,
	// saved by the daemon): an entry that is bad in the live ConfigMap
	// keeps its form from there, as it did before the restart.
	History *configmap.Spec
	// LastGood is ConfigMap data saved by versions before History was;
	// it stands in for History when that is nil.
	LastGood map[string]string
	// LastApplied is the configuration applied before a restart: what an
	// entry that cannot be resolved for a moment keeps (c.Previous).
	LastApplied *config.Config
	// ProbeEvery is how often the API server's /readyz is asked, to
	// report in the status whether it can be reached. Default 5 s.
	ProbeEvery time.Duration
	// NodeGrace is how long a Node that vanished keeps its place among
	// the nodes (unicast peers, node order). Default 5 minutes.
	NodeGrace time.Duration
	// BGPSecret names the Secret, in Namespace, that BGP passwords come
	// from (passwordSecretKey in the vip-configmap). Default keepvip-bgp.
	BGPSecret string
}

// DefaultBGPSecret is the Secret BGP passwords come from by default.
const DefaultBGPSecret = "keepvip-bgp"

// Update is a configuration for the daemon to apply.
type Update struct {
	Config *config.Config
	// Problems are every entry that could not be applied, with why.
	Problems []string
	// Since is when the oldest event this update answers was seen; the
	// daemon reports the latency once it has applied the update.
	Since time.Time
	// ResourceVersion is the ConfigMap's version this update was made
	// from; "" if it does not exist.
	ResourceVersion string
	// History is the Spec in force, with the last good forms kept for
	// bad entries. The daemon saves it and gives it back as
	// Options.History after a restart.
	History *configmap.Spec
}

// Status is the Kubernetes side, for `keepvip status`.
type Status struct {
	ConfigMap string `json:"configMap"`
	Node      string `json:"node"`
	// ResourceVersion is the version of the ConfigMap last read.
	ResourceVersion string    `json:"resourceVersion,omitempty"`
	Synced          bool      `json:"synced"`
	LastApplied     time.Time `json:"lastApplied,omitempty"`
	// APIServer is "ok", or why its /readyz did not answer (probed
	// every Options.ProbeEvery), since APIServerSince.
	APIServer      string    `json:"apiServer"`
	APIServerSince time.Time `json:"apiServerSince,omitempty"`
	// WatchError is the last error of a list or watch (a permission
	// missing, say), at WatchErrorAt; the informers retry on their own.
	WatchError   string    `json:"watchError,omitempty"`
	WatchErrorAt time.Time `json:"watchErrorAt,omitempty"`
	Services     int       `json:"servicesWatched"`
}

// Reconciler follows the ConfigMap, the Services it names, their
// EndpointSlices and the Nodes, and hands the daemon a new configuration
// whenever what this node should run changes. One goroutine (Run) does all
// the work; informer callbacks only flag it.
type Reconciler struct {
	o   Options
	log *slog.Logger

	kick chan struct{}

	mu         sync.Mutex
	pending    time.Time // first event not yet answered
	wanted     map[string]bool
	status     Status
	lastWarnAt time.Time

	reconciles  *prometheus.CounterVec
	latency     prometheus.Histogram
	problemsG   prometheus.Gauge
	apiErrors   prometheus.Counter
	eventsTotal *prometheus.CounterVec
}

// New makes a Reconciler.
func New(o Options) *Reconciler {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.ResyncEvery == 0 {
		o.ResyncEvery = 5 * time.Minute
	}
	if o.ProbeEvery == 0 {
		o.ProbeEvery = 5 * time.Second
	}
	if o.NodeGrace == 0 {
		o.NodeGrace = 5 * time.Minute
	}
	if o.BGPSecret == "" {
		o.BGPSecret = DefaultBGPSecret
	}
	r := &Reconciler{
		o:      o,
		log:    o.Logger.With("configmap", o.Namespace+"/"+o.ConfigMap),
		kick:   make(chan struct{}, 1),
		wanted: map[string]bool{},
		status: Status{ConfigMap: o.Namespace + "/" + o.ConfigMap, Node: o.NodeName, APIServer: "connecting"},
		reconciles: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keepvip_kube_reconciles_total",
			Help: "Reconciles of the vip-configmap with the cluster, by result (applied, unchanged).",
		}, []string{"result"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "keepvip_kube_event_to_config_seconds",
			Help:    "From a cluster event (ConfigMap, Service, EndpointSlice, Node) to the new configuration handed to the data plane.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		problemsG: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keepvip_kube_config_problems",
			Help: "Entries of the vip-configmap that cannot be applied on this node now.",
		}),
		apiErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "keepvip_kube_api_errors_total",
			Help: "Errors talking to the API server (watches are retried; the data plane keeps what it has).",
		}),
		eventsTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keepvip_kube_events_total",
			Help: "Kubernetes Events sent about the vip-configmap, by reason.",
		}, []string{"reason"}),
	}
	if o.Registerer != nil {
		o.Registerer.MustRegister(r.reconciles, r.latency, r.problemsG, r.apiErrors, r.eventsTotal)
	}
	return r
}

// Status returns the Kubernetes side's status.
func (r *Reconciler) Status() Status {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.status
	s.Services = len(r.wanted)
	return s
}

// flag records an event and wakes Run.
func (r *Reconciler) flag() {
	r.mu.Lock()
	if r.pending.IsZero() {
		r.pending = time.Now()
	}
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// watchError is called by the informers when a list or watch fails.
func (r *Reconciler) watchError(what string) cache.WatchErrorHandlerWithContext {
	return func(ctx context.Context, _ *cache.Reflector, err error) {
		if errors.Is(err, io.EOF) || apierrors.IsResourceExpired(err) || apierrors.IsGone(err) {
			return // a watch that ended normally; it is restarted
		}
		msg := fmt.Sprintf("watching %s: %v", what, err)
		r.apiErrors.Inc()
		r.mu.Lock()
		r.status.WatchError, r.status.WatchErrorAt = msg, time.Now()
		quiet := time.Since(r.lastWarnAt) < 30*time.Second
		if !quiet {
			r.lastWarnAt = time.Now()
		}
		r.mu.Unlock()
		if !quiet {
			r.log.Warn("API server: the data plane keeps what it has", "err", msg)
		}
	}
}

// apiState records the outcome of a probe of the API server: "" for
// reachable, or the error. A change is logged.
func (r *Reconciler) apiState(errMsg string) {
	if errMsg != "" {
		r.apiErrors.Inc()
	}
	state := "ok"
	if errMsg != "" {
		state = errMsg
	}
	r.mu.Lock()
	wasOK := r.status.APIServer == "ok"
	changed := wasOK != (errMsg == "") || r.status.APIServer == "connecting"
	if changed {
		r.status.APIServerSince = time.Now()
	}
	r.status.APIServer = state
	r.mu.Unlock()
	switch {
	case !changed:
	case errMsg == "":
		r.log.Info("API server reachable")
	default:
		r.log.Warn("API server unreachable: the data plane keeps what it has", "err", errMsg)
	}
}

// probeAPI asks the API server whether it is ready every interval, until
// ctx ends. The informers retry a refused watch by themselves without
// telling anyone, so this is what notices an unreachable API server.
func (r *Reconciler) probeAPI(ctx context.Context, interval time.Duration) {
	rc := r.o.Client.Discovery().RESTClient()
	if rc == nil {
		return // a fake clientset has no REST client
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, interval)
		_, err := rc.Get().AbsPath("/readyz").DoRaw(pctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			r.apiState(fmt.Sprintf("probing /readyz: %v", err))
		default:
			r.apiState("")
		}
	}
}

// relevant reports whether a Service event concerns a named Service.
func (r *Reconciler) relevant(ns, name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.wanted[ns+"/"+name]
}

// Run follows the cluster until ctx ends, calling apply with each new
// configuration from this goroutine. apply is called only after the
// caches have synced, so a configuration is never built from half a view.
// If the API server is down, Run keeps retrying and applies nothing: the
// data plane keeps running what it has.
func (r *Reconciler) Run(ctx context.Context, apply func(Update)) error {
	if r.o.Recorder == nil {
		// Set on r, not on a copy: reconcile sends the Events.
		b := record.NewBroadcaster(record.WithContext(ctx))
		b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: r.o.Client.CoreV1().Events(r.o.Namespace)})
		defer b.Shutdown()
		r.o.Recorder = b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "keepvip", Host: r.o.NodeName})
	}
	o := r.o
	strip := func(obj any) (any, error) {
		// Only spec and status are read: managed fields and
		// annotations are most of a large object's memory.
		if m, err := meta.Accessor(obj); err == nil {
			m.SetManagedFields(nil)
			m.SetAnnotations(nil)
		}
		return obj, nil
	}
	cmFactory := informers.NewSharedInformerFactoryWithOptions(o.Client, 0,
		informers.WithNamespace(o.Namespace),
		informers.WithTweakListOptions(func(lo *metav1.ListOptions) {
			lo.FieldSelector = fields.OneTermEqualSelector("metadata.name", o.ConfigMap).String()
		}))
	factory := informers.NewSharedInformerFactoryWithOptions(o.Client, 0, informers.WithTransform(strip))

	// The one Secret BGP passwords come from: not waited for (the
	// passwords that ran stay until it is known), so that a missing
	// permission for it holds nothing else back.
	secretFactory := informers.NewSharedInformerFactoryWithOptions(o.Client, 0,
		informers.WithNamespace(o.Namespace), informers.WithTransform(strip),
		informers.WithTweakListOptions(func(lo *metav1.ListOptions) {
			lo.FieldSelector = fields.OneTermEqualSelector("metadata.name", o.BGPSecret).String()
		}))
	secretInf := secretFactory.Core().V1().Secrets()
	cmInf := cmFactory.Core().V1().ConfigMaps()
	svcInf := factory.Core().V1().Services()
	epsInf := factory.Discovery().V1().EndpointSlices()
	nodeInf := factory.Core().V1().Nodes()
	for what, inf := range map[string]cache.SharedIndexInformer{
		"the ConfigMap " + o.Namespace + "/" + o.ConfigMap: cmInf.Informer(),
		"Services":       svcInf.Informer(),
		"EndpointSlices": epsInf.Informer(),
		"Nodes":          nodeInf.Informer(),
		"the Secret " + o.Namespace + "/" + o.BGPSecret + " (BGP passwords)": secretInf.Informer(),
	} {
		if err := inf.SetWatchErrorHandlerWithContext(r.watchError(what)); err != nil {
			return fmt.Errorf("setting up the informer of %s: %w", what, err)
		}
	}
	handlers := []struct {
		inf cache.SharedIndexInformer
		h   cache.ResourceEventHandler
	}{
		{cmInf.Informer(), r.handler(func(any) bool { return true })},
		{secretInf.Informer(), r.handler(func(any) bool { return true })},
		{svcInf.Informer(), r.handler(func(obj any) bool {
			s, ok := obj.(*corev1.Service)
			return ok && r.relevant(s.Namespace, s.Name)
		})},
		{epsInf.Informer(), r.handler(func(obj any) bool {
			s, ok := obj.(*discoveryv1.EndpointSlice)
			return ok && r.relevant(s.Namespace, s.Labels[discoveryv1.LabelServiceName])
		})},
		{nodeInf.Informer(), cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { r.flag() },
			DeleteFunc: func(any) { r.flag() },
			// Nodes change every few seconds (heartbeats, conditions);
			// only their names, labels, addresses and cordoning matter
			// here.
			UpdateFunc: func(oldObj, newObj any) {
				a, ok1 := oldObj.(*corev1.Node)
				b, ok2 := newObj.(*corev1.Node)
				if !ok1 || !ok2 || !reflect.DeepEqual(a.Labels, b.Labels) || !reflect.DeepEqual(a.Status.Addresses, b.Status.Addresses) ||
					a.Spec.Unschedulable != b.Spec.Unschedulable {
					r.flag()
				}
			},
		}},
	}
	if err := epsInf.Informer().AddIndexers(cache.Indexers{byService: serviceIndex}); err != nil {
		return fmt.Errorf("indexing EndpointSlices by Service: %w", err)
	}
	for _, h := range handlers {
		if _, err := h.inf.AddEventHandler(h.h); err != nil {
			return fmt.Errorf("adding an event handler: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(ctx)
	cmFactory.Start(ctx.Done())
	factory.Start(ctx.Done())
	secretFactory.Start(ctx.Done())
	defer cmFactory.Shutdown()
	defer factory.Shutdown()
	defer secretFactory.Shutdown()
	// Deferred last, so run first: Shutdown waits for the informers,
	// which stop with ctx, also when Run panics.
	defer cancel()

	r.log.Info("waiting for the API server's view of the cluster")
	for _, synced := range []cache.InformerSynced{cmInf.Informer().HasSynced, svcInf.Informer().HasSynced, epsInf.Informer().HasSynced, nodeInf.Informer().HasSynced} {
		if !cache.WaitForCacheSync(ctx.Done(), synced) {
			return ctx.Err()
		}
	}
	r.apiState("")
	r.mu.Lock()
	r.status.Synced = true
	r.mu.Unlock()
	r.log.Info("following the cluster")
	probed := make(chan struct{})
	defer func() { cancel(); <-probed }()
	go func() { defer close(probed); r.probeAPI(ctx, o.ProbeEvery) }()

	st := &loopState{spec: o.History, applied: o.LastApplied}
	if st.spec == nil && len(o.LastGood) > 0 {
		spec, probs := configmap.Parse(o.LastGood, o.Defaults, nil)
		st.spec = spec
		if len(probs) > 0 {
			// Written by us from entries that parsed: only a change of
			// keepvip's own rules between versions gets here.
			r.log.Warn("the saved configuration has entries this version refuses; they are not kept", "problems", len(probs))
		}
	}
	st.appliedAtStart = st.applied != nil
	st.secret = func() (map[string][]byte, bool) {
		if !secretInf.Informer().HasSynced() {
			return nil, false
		}
		sec, err := secretInf.Lister().Secrets(o.Namespace).Get(o.BGPSecret)
		if err != nil {
			return nil, true
		}
		return sec.Data, true
	}
	ticker := time.NewTicker(o.ResyncEvery)
	defer ticker.Stop()
	// A problem of this host (an interface not found) sends no event when
	// it clears: it is retried, 1 s after it is seen, doubling to 30 s.
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	grace := time.NewTimer(time.Hour)
	grace.Stop()
	defer grace.Stop()
	var backoff time.Duration
	r.flag()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.kick:
		case <-ticker.C:
			r.flag()
			<-r.kick
		case <-retry.C:
			r.flag()
			<-r.kick
		case <-grace.C:
			r.flag()
			<-r.kick
		}
		again := r.reconcile(st, cmInf.Lister().ConfigMaps(o.Namespace), svcInf.Lister(), sliceIndex{epsInf.Informer()}, nodeInf.Lister(), apply)
		// A vanished Node is let go when its grace ends.
		grace.Stop()
		if !st.nextGone.IsZero() {
			grace.Reset(max(time.Until(st.nextGone), 0))
		}
		switch {
		case !again:
			backoff = 0
			retry.Stop()
		case backoff == 0:
			backoff = time.Second
			retry.Reset(backoff)
		default:
			backoff = min(2*backoff, 30*time.Second)
			retry.Reset(backoff)
		}
	}
}

// loopState is what Run's goroutine keeps between reconciles.
type loopState struct {
	cmVersion    string
	cmExists     bool
	cmData       map[string]string
	spec         *configmap.Spec
	parseProbs   []string
	applied      *config.Config
	appliedSpec  *configmap.Spec
	appliedProbs []string
	emitted      map[string]bool
	// appliedAtStart: applied is the configuration saved before a
	// restart, not yet handed to the daemon by this process.
	appliedAtStart bool
	// nodes are the Nodes last seen, by name; goneAt, since when one is
	// no longer there; nextGone, when the next one's grace ends.
	nodes    map[string]*corev1.Node
	goneAt   map[string]time.Time
	nextGone time.Time
	// secret reads the BGP passwords' Secret: its data (nil if it does
	// not exist) and whether it is known.
	secret func() (map[string][]byte, bool)
}

// withVanished adds to the Nodes listed those that vanished less than
// grace ago, as they were last seen: a Node deleted and registered again
// (or missing from a relist for a moment) must not shrink the others'
// unicast peers or shift their node order, which would leave it unheard,
// and master alongside another. It returns a line for each.
func (st *loopState) withVanished(list []*corev1.Node, now time.Time, grace time.Duration) ([]*corev1.Node, []string) {
	if st.nodes == nil {
		st.nodes, st.goneAt = map[string]*corev1.Node{}, map[string]time.Time{}
	}
	present := make(map[string]bool, len(list))
	for _, n := range list {
		present[n.Name] = true
		st.nodes[n.Name] = n
		delete(st.goneAt, n.Name)
	}
	st.nextGone = time.Time{}
	var lines []string
	for name, n := range st.nodes {
		if present[name] {
			continue
		}
		since, ok := st.goneAt[name]
		if !ok {
			since = now
			st.goneAt[name] = now
		}
		until := since.Add(grace)
		if !now.Before(until) {
			delete(st.nodes, name)
			delete(st.goneAt, name)
			continue
		}
		list = append(list, n)
		if st.nextGone.IsZero() || until.Before(st.nextGone) {
			st.nextGone = until
		}
		lines = append(lines, fmt.Sprintf("node %s: not in the cluster since %s; it keeps its place (unicast peer, node order) until %s", name, since.UTC().Format(time.RFC3339), until.UTC().Format(time.RFC3339)))
	}
	slices.Sort(lines)
	return list, lines
}

// sliceIndex finds the EndpointSlices of a Service.
type sliceIndex struct{ inf cache.SharedIndexInformer }

const byService = "service"

func serviceIndex(obj any) ([]string, error) {
	s, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok {
		return nil, nil
	}
	name := s.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return nil, nil
	}
	return []string{s.Namespace + "/" + name}, nil
}

func (x sliceIndex) ForService(ns, name string) []*discoveryv1.EndpointSlice {
	objs, err := x.inf.GetIndexer().ByIndex(byService, ns+"/"+name)
	if err != nil {
		return nil
	}
	out := make([]*discoveryv1.EndpointSlice, 0, len(objs))
	for _, o := range objs {
		if s, ok := o.(*discoveryv1.EndpointSlice); ok {
			out = append(out, s)
		}
	}
	// The store's order is random; a stable order keeps the resolved
	// configuration the same when nothing changed.
	slices.SortFunc(out, func(a, b *discoveryv1.EndpointSlice) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// reconcile resolves the cluster and hands the daemon what changed. It
// reports whether a problem of this host asks to be tried again soon.
func (r *Reconciler) reconcile(st *loopState, cms corelisters.ConfigMapNamespaceLister, svcs corelisters.ServiceLister, eps sliceIndex, nodes corelisters.NodeLister, apply func(Update)) (retry bool) {
	r.mu.Lock()
	since := r.pending
	r.pending = time.Time{}
	r.mu.Unlock()

	cm, err := cms.Get(r.o.ConfigMap)
	var empty *configmap.Spec // resolved instead of a Spec, and not kept as one
	switch {
	case apierrors.IsNotFound(err):
		// Deleted and created again (kubectl replace --force, GitOps):
		// dropping every VIP on every node at once in between would be
		// an outage. What runs stays; emptying the data removes it.
		if st.cmExists || st.spec == nil {
			r.log.Warn("the ConfigMap does not exist: keeping the configuration in force; empty its data to remove every VIP")
		}
		st.cmExists, st.cmVersion, st.cmData = false, "", nil
		st.parseProbs = []string{fmt.Sprintf("ConfigMap %s/%s not found: the configuration in force stays", r.o.Namespace, r.o.ConfigMap)}
		if st.spec == nil && st.applied != nil {
			// Restarted without the entries in force saved, or unable to
			// read them: what ran before the restart stays as it is.
			if st.appliedAtStart {
				apply(Update{Config: st.applied, Problems: st.parseProbs, Since: since})
				st.appliedAtStart, st.appliedProbs = false, st.parseProbs
				r.reconciles.WithLabelValues("applied").Inc()
			}
			return false
		}
		if st.spec == nil {
			// Nothing to keep, and no history: the node has seen no
			// version of the ConfigMap, and remembers none.
			empty = &configmap.Spec{}
		}
	case err != nil:
		r.log.Error("reading the ConfigMap from the cache", "err", err)
		return false
	case !st.cmExists || cm.ResourceVersion != st.cmVersion || !maps.Equal(cm.Data, st.cmData):
		spec, probs := configmap.Parse(cm.Data, r.o.Defaults, st.spec)
		st.cmExists, st.cmVersion, st.cmData, st.spec = true, cm.ResourceVersion, cm.Data, spec
		st.parseProbs = st.parseProbs[:0]
		for _, p := range probs {
			st.parseProbs = append(st.parseProbs, p.Error())
		}
		if len(probs) > 0 {
			r.log.Warn("the ConfigMap has bad entries; the good ones apply", "version", cm.ResourceVersion, "problems", len(probs))
		}
	}

	spec := st.spec
	if spec == nil {
		spec = empty
	}
	wanted := map[string]bool{}
	for _, vs := range spec.VirtualServers {
		if vs.Service != "" {
			wanted[vs.Service] = true
		}
	}
	// Published before the caches are read: an event for a Service this
	// version names that arrives from now on wakes the next reconcile,
	// and one before is in the caches read below.
	r.mu.Lock()
	r.wanted = wanted
	r.status.ResourceVersion = st.cmVersion
	r.mu.Unlock()
	nodeList, err := nodes.List(labels.Everything())
	if err != nil {
		r.log.Error("listing nodes from the cache", "err", err)
		return false
	}
	nodeList, gone := st.withVanished(nodeList, time.Now(), r.o.NodeGrace)
	c := Cluster{
		NodeName: r.o.NodeName,
		Nodes:    nodeList,
		Service: func(ns, name string) *corev1.Service {
			s, err := svcs.Services(ns).Get(name)
			if err != nil {
				return nil
			}
			return s
		},
		EndpointSlices: func(ns, name string) []*discoveryv1.EndpointSlice {
			return eps.ForService(ns, name)
		},
		ClusterIPs: func() map[netip.Addr]string {
			all, err := svcs.List(labels.Everything())
			if err != nil {
				return nil
			}
			out := make(map[netip.Addr]string, len(all))
			for _, s := range all {
				for _, ip := range s.Spec.ClusterIPs {
					if a, err := netip.ParseAddr(ip); err == nil {
						out[a.Unmap()] = "the ClusterIP of Service " + s.Namespace + "/" + s.Name
					}
				}
			}
			return out
		},
	}
	c.Previous = st.applied
	c.BGPSecretName = r.o.Namespace + "/" + r.o.BGPSecret
	if st.secret != nil {
		c.BGPSecret, c.BGPSecretKnown = st.secret()
	}
	cfg, probs := Resolve(spec, c, r.o.Host)
	all := slices.Clone(st.parseProbs)
	all = append(all, gone...)
	for _, p := range probs {
		all = append(all, p.Error())
		retry = retry || p.Retry
	}
	// An Event for each problem that was not there at the last
	// reconcile: one that goes away and comes back is reported again.
	now := map[string]bool{}
	if cm != nil && st.cmExists {
		for i, msg := range all {
			reason := "InvalidEntry"
			if i >= len(st.parseProbs) {
				reason = "UnresolvedEntry"
			}
			now[msg] = true
			if !st.emitted[msg] {
				r.event(cm, reason, msg)
			}
		}
	}
	st.emitted = now
	r.problemsG.Set(float64(len(all)))

	if cfg == nil {
		// A bug in the translation: keep what runs.
		r.log.Error("the resolved configuration is invalid; keeping the one in force", "problems", all)
		r.reconciles.WithLabelValues("invalid").Inc()
		return retry
	}
	// A new Spec is handed over even when it resolves the same, so that
	// the history the daemon saves is the one in force.
	if st.applied != nil && !st.appliedAtStart && st.spec == st.appliedSpec && reflect.DeepEqual(cfg, st.applied) && slices.Equal(all, st.appliedProbs) {
		r.reconciles.WithLabelValues("unchanged").Inc()
		return retry
	}
	apply(Update{Config: cfg, Problems: all, Since: since, ResourceVersion: st.cmVersion, History: st.spec})
	st.applied, st.appliedProbs, st.appliedAtStart, st.appliedSpec = cfg, all, false, st.spec
	r.reconciles.WithLabelValues("applied").Inc()
	if !since.IsZero() {
		r.latency.Observe(time.Since(since).Seconds())
	}
	r.mu.Lock()
	r.status.LastApplied = time.Now()
	r.mu.Unlock()
	return retry
}

// event sends a Warning Event on the ConfigMap. Each node reports what it
// sees; the API server aggregates repeats.
func (r *Reconciler) event(cm *corev1.ConfigMap, reason, msg string) {
	r.o.Recorder.Event(cm, corev1.EventTypeWarning, reason, fmt.Sprintf("node %s: %s", r.o.NodeName, msg))
	r.eventsTotal.WithLabelValues(reason).Inc()
}

func (r *Reconciler) handler(match func(any) bool) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if match(obj) {
				r.flag()
			}
		},
		UpdateFunc: func(oldObj, obj any) {
			// Either: a slice relabelled away from a Service still
			// concerns it.
			if match(obj) || match(oldObj) {
				r.flag()
			}
		},
		DeleteFunc: func(obj any) {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				obj = d.Obj
			}
			if match(obj) {
				r.flag()
			}
		},
	}
}
