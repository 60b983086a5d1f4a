// Package daemon is the running keepvip: it takes a configuration, from
// the file (reloaded on SIGHUP) or from the reconciler of internal/kube,
// translates it once (config.Config.Desired) and gives each engine its
// part — vrrp.Manager the virtual routers, internal/balancer the virtual
// servers and their health checks, internal/announce the routes — keeping
// the last good configuration when a new one is bad. It adds only what
// the process knows (the host's /proc/sys, loggers, the metrics registry,
// preemption held while BGP sessions come up), and serves what comes back
// up: the status socket behind `keepvip status` and `keepvip health`, and
// the metrics endpoint.
//
// The drawing of the whole flow is in package config.
package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sys/unix"

	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/keepvip/keepvip/config"
	"github.com/keepvip/keepvip/configmap"
	"github.com/keepvip/keepvip/internal/handover"
	"github.com/keepvip/keepvip/internal/kube"
	"github.com/keepvip/keepvip/internal/rootonly"
	"github.com/keepvip/keepvip/vrrp"
)

// Options configures the daemon.
type Options struct {
	ConfigFile string
	// StatusSocket is the unix socket for `keepvip status` and `keepvip
	// health`; "" for none. Its directory must be writable by root only:
	// it is made so if it is root's, and refused otherwise.
	StatusSocket string
	// MetricsAddr is host:port for /metrics, /healthz, /readyz; "" for
	// none. Whatever the host (a wildcard too), connections to a VIP of
	// the configuration are closed unanswered. An address that cannot be
	// listened on (its port taken by another process) does not stop Run:
	// it is tried again every few seconds, and the status says why.
	MetricsAddr string
	// StateDir keeps what must survive a restart (the IPVS services
	// keepvip created); "" for none.
	StateDir string
	// ProcSys is where kernel settings are written; "" for /proc/sys.
	ProcSys string
	Version string
	Logger  *slog.Logger
	// Reload receives a value for each reload request (SIGHUP).
	Reload <-chan struct{}
	// Kube, when set, takes the configuration from the vip-configmap
	// instead of ConfigFile.
	Kube *KubeOptions
	// TakeOver: if another keepvip runs on this host (in this network
	// namespace), wait for it to stop and take over what it holds
	// without moving it (see package handover); it says Ready meanwhile.
	// Without it, a second keepvip refuses to start.
	TakeOver bool
}

// KubeOptions configure the Kubernetes mode.
type KubeOptions struct {
	Client kubernetes.Interface
	// Namespace and ConfigMap name the vip-configmap.
	Namespace, ConfigMap string
	NodeName             string
	// Defaults configure the "vips" instance of kube-keepalived-vip style
	// keys (the daemon's flags).
	Defaults configmap.Defaults
	// BGPSecret names the Secret (in Namespace) that BGP passwords come
	// from; "" for kube.DefaultBGPSecret.
	BGPSecret string

	cache kubeCacheRead // read from the state directory
}

// Status is what `keepvip status` shows.
type Status struct {
	Version      string        `json:"version"`
	ConfigFile   string        `json:"configFile"`
	ConfigLoaded time.Time     `json:"configLoaded"`
	ConfigErrors []string      `json:"configErrors,omitempty"`
	Instances    []vrrp.Status `json:"instances"`
	// IPVS is "ok", "not used" or why load balancing is off.
	IPVS           string                `json:"ipvs"`
	VirtualServers []VirtualServerStatus `json:"virtualServers,omitempty"`
	// IPVSWarnings name topologies that break load balancing (NAT real
	// servers that the node may redirect past IPVS).
	IPVSWarnings []string `json:"ipvsWarnings,omitempty"`
	// Kubernetes is the vip-configmap side (Kubernetes mode only).
	Kubernetes *kube.Status `json:"kubernetes,omitempty"`
	// Routing is what is announced to routers, if routing is configured.
	Routing *RoutingStatus `json:"routing,omitempty"`
	// ConnectionSync is the IPVS connection synchronisation, if
	// configured.
	ConnectionSync *ConnSyncStatus `json:"connectionSync,omitempty"`
	// Metrics is the metrics listener, if there is one.
	Metrics *MetricsStatus `json:"metrics,omitempty"`
	// Handover is keepvip's replacement in place, if one is under way
	// or this keepvip took over from another.
	Handover *HandoverStatus `json:"handover,omitempty"`
}

type daemon struct {
	opts    Options
	log     *slog.Logger
	mgr     *vrrp.Manager
	routing *routing
	want    *config.Desired // in force; owned by Run's goroutine
	// ECMP VIPs: the devices they are put on (true: holding them
	// succeeded), and a kick when health changed what they can serve.
	heldDevs map[string]bool
	ecmpKick chan struct{}
	reg      *prometheus.Registry
	reloads  *prometheus.CounterVec
	cfgErrs  prometheus.Gauge

	mu       sync.Mutex
	loadedAt time.Time
	errs     []string
	ready    bool
	lb       *loadBalancer // nil until there are virtual servers
	// csync runs the IPVS sync daemons when the configuration asks for
	// them.
	csync   atomic.Pointer[connSync]
	ipvs    string
	metrics *metricsServer // nil without one (or until it is made)
	// handover waits for a successor (nil if it could not listen, and
	// handoverErr says why).
	handover    *handover.Listener
	handoverErr string
	// source says where the configuration in force came from.
	source string

	rec       *kube.Reconciler // Kubernetes mode
	toApplied prometheus.Histogram

	// health answers /healthz and the status socket's /v1/health.
	health *health

	// tookOver is what this keepvip took over, if it did (set before
	// the status socket serves).
	tookOver *HandoverStatus

	// vips are the addresses the metrics listener never answers on:
	// every VIP of the configuration in force (and, while it is being
	// replaced, of the one before), held or not.
	vips atomic.Pointer[map[netip.Addr]bool]
}

// Run runs the daemon until ctx is cancelled, then stops every instance
// (masters hand off with priority 0) and returns. It fails at once if the
// configuration cannot be loaded at start.
func Run(ctx context.Context, o Options) error {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	var took *takeOverState
	var preloaded *config.Config
	if o.TakeOver {
		var err error
		if preloaded, err = preflight(o); err != nil {
			return err
		}
		st, err := waitToTakeOver(ctx, o)
		if err != nil {
			if ctx.Err() != nil {
				o.Logger.Info("stopped while waiting to take over")
				return nil
			}
			return err
		}
		took = st
	}
	var p progress
	err := run(ctx, o, took, preloaded, &p)
	if err != nil && took != nil && !p.applied {
		// It took the word and cannot run what it took: never leave the
		// VIPs on this host with no keepvip (the other routers take them
		// over too). Handed off as a stopping keepvip's are.
		o.Logger.Error("cannot run what was taken over; handing it off", "err", err)
		err = errors.Join(err, handOffInherited(o.Logger, lockDirOf(o), took.VRRP, p.vrrp))
		for _, dev := range took.ECMP {
			if herr := vrrp.HoldAddrs(dev, vrrp.HeldAddrProto, nil); herr != nil {
				err = errors.Join(err, herr)
			}
		}
	}
	return err
}

// firstConfigWait bounds how long VIPs taken over wait for the cluster's
// configuration when there is no cached one (see run).
const firstConfigWait = 5 * time.Second

// progress is how far run got, for Run's fallback.
type progress struct {
	applied bool          // a configuration ran: run stops what it runs
	vrrp    []vrrp.Config // the instances it would have run
}

func run(ctx context.Context, o Options, took *takeOverState, preloaded *config.Config, p *progress) error {
	var cfg *config.Config
	var err error
	source := o.ConfigFile
	switch {
	case preloaded != nil:
		cfg = preloaded
	case o.Kube == nil:
		if cfg, err = load(o.ConfigFile); err != nil {
			return err
		}
	default:
		o.Kube.cache = cachedKubeConfig(o.StateDir, o.Logger)
		cfg, source = o.Kube.cache.config, o.Kube.cache.source
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	d := &daemon{
		opts:     o,
		log:      o.Logger,
		reg:      reg,
		ipvs:     "not used",
		routing:  newRouting(o.Logger, reg),
		heldDevs: map[string]bool{},
		ecmpKick: make(chan struct{}, 1),
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keepvip_config_reloads_total",
			Help: "Configuration loads, by result (ok, error).",
		}, []string{"result"}),
		cfgErrs: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "keepvip_config_errors",
			Help: "Problems in the configuration last read; the last good configuration stays in force.",
		}),
	}
	reg.MustRegister(d.reloads, d.cfgErrs)
	// Before the metrics listener opens: the cached configuration of
	// Kubernetes mode may hold VIPs from the start.
	want := cfg.Desired()
	p.vrrp = want.VRRP
	d.refuseVIPs(want.VIPs())
	var inherit *vrrp.Handover
	if took != nil {
		inherit = &took.VRRP
		d.tookOver = &HandoverStatus{TookOver: time.Now(), Masters: masterNames(took.VRRP)}
		// Devices the ECMP VIPs were left on: released by the first
		// holdECMP unless the configuration has them.
		for _, dev := range took.ECMP {
			d.heldDevs[dev] = false
		}
	}
	// The lock is let go last, when everything this keepvip did is undone:
	// a keepvip waiting to take over starts when it is free.
	// Before the manager: it learns every instance's state from its first
	// transition on.
	d.csync.Store(newConnSync(o.Logger, reg, o.ProcSys))
	defer d.csync.Load().stop() // on every way out; stopping twice is harmless
	d.mgr = vrrp.NewManager(vrrp.Options{Logger: o.Logger, Registerer: reg, OnTransition: d.transition, LockDir: lockDirOf(o), Inherit: inherit, KeepLock: true})
	defer d.mgr.Unlock()
	d.health = newHealth(d.mgr, healthTimeout)
	defer d.routing.stop() // also on the error paths; stopping twice is harmless
	d.source = source
	var kubeUpdates chan kube.Update
	var kubeDone chan error
	if o.Kube != nil {
		klog.SetSlogLogger(o.Logger.With("from", "client-go"))
		d.rec = kube.New(kube.Options{
			Client: o.Kube.Client, Namespace: o.Kube.Namespace, ConfigMap: o.Kube.ConfigMap,
			NodeName: o.Kube.NodeName, Defaults: o.Kube.Defaults, Host: kube.LinuxHost{},
			History: o.Kube.cache.history, LastGood: o.Kube.cache.lastGood, LastApplied: o.Kube.cache.applied, BGPSecret: o.Kube.BGPSecret,
			Logger: o.Logger, Registerer: reg,
		})
		d.toApplied = prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "keepvip_kube_event_to_applied_seconds",
			Help:    "From a cluster event to its configuration applied to VRRP and IPVS on this node.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		})
		reg.MustRegister(d.toApplied)
		kubeUpdates = make(chan kube.Update, 1)
		kubeDone = make(chan error, 1)
	}

	var servers []shutdowner
	if o.StatusSocket != "" {
		srv, err := d.serveStatus(o.StatusSocket)
		switch {
		case errors.Is(err, errSocketInUse) && o.TakeOver:
			// The keepvip of this host it waited for, with the same path
			// (pods have one each), lets it go as it stops.
			d.log.Info("the status socket is the stopping keepvip's still; served once it lets it go", "path", o.StatusSocket)
			servers = append(servers, named{"status socket", d.serveStatusLater(o.StatusSocket)})
		case err != nil:
			return err
		default:
			servers = append(servers, named{"status socket", srv})
		}
	}
	if o.MetricsAddr != "" {
		// Only a VIP as the address is an error here: an address that
		// cannot be listened on yet is retried in the background.
		m, err := d.serveMetrics(o.MetricsAddr, reg, d.health)
		if err != nil {
			return errors.Join(err, shutdownAll(servers))
		}
		d.mu.Lock()
		d.metrics = m
		d.mu.Unlock()
		servers = append(servers, named{"metrics listener", m})
	}
	if err := d.mgr.Start(); err != nil {
		return errors.Join(fmt.Errorf("starting VRRP: %w", err), shutdownAll(servers))
	}
	// Holding the namespace's lock now: the one to wait for, for a
	// keepvip started with TakeOver.
	if hl, err := handover.Listen(handover.Name, d.log); err != nil {
		d.log.Warn("this keepvip cannot be replaced in place (keepvip run --take-over): a successor will find it hands its VIPs off as usual", "err", err)
		d.mu.Lock()
		d.handoverErr = err.Error()
		d.mu.Unlock()
	} else {
		d.mu.Lock()
		d.handover = hl
		d.mu.Unlock()
		defer hl.Close()
	}
	if err := d.startLB(&want); err != nil {
		if o.Kube == nil {
			return errors.Join(err, d.mgr.Stop(), shutdownAll(servers))
		}
		// The cached configuration needs IPVS: VRRP still runs, and the
		// cluster's configuration, when it comes, decides.
		d.log.Error("the cached configuration needs IPVS", "err", err)
	}
	// Taken over in Kubernetes mode without a cached configuration this
	// version runs: the VIPs handed over wait for the cluster's
	// configuration (an empty one would remove them without a handoff,
	// and nobody would hold them for a Master_Down_Interval), for at most
	// firstConfigWait.
	var firstConfig <-chan time.Time
	if took != nil && o.Kube != nil && len(want.VRRP) == 0 && len(want.VirtualServers) == 0 {
		d.log.Info("took over without a cached configuration: the VIPs handed over wait for the cluster's", "for", firstConfigWait)
		firstConfig = time.After(firstConfigWait)
	} else {
		d.apply(&want)
		p.applied = true
	}
	d.mu.Lock()
	// In Kubernetes mode, ready once a configuration from the cluster (or
	// the cached one from before a restart) runs: a rolling update moves
	// to the next node only then.
	d.ready = o.Kube == nil || len(want.VRRP) > 0 || len(want.VirtualServers) > 0
	d.mu.Unlock()
	d.log.Info("keepvip running", "version", o.Version, "config", source, "instances", len(want.VRRP))

	recCtx, stopRec := context.WithCancel(context.Background())
	defer stopRec()
	if o.Kube != nil {
		go func() {
			kubeDone <- d.rec.Run(recCtx, func(u kube.Update) {
				// The newest configuration replaces one not yet applied.
				for {
					select {
					case kubeUpdates <- u:
						return
					default:
					}
					select {
					case <-kubeUpdates:
					default:
					}
				}
			})
		}()
	}

	for {
		select {
		case u := <-kubeUpdates:
			d.applyKube(u)
			p.applied, firstConfig = true, nil
		case <-firstConfig:
			d.log.Warn("no configuration from the cluster in time: the VIPs handed over go", "waited", firstConfigWait)
			d.apply(&want)
			p.applied, firstConfig = true, nil
		case <-d.ecmpKick:
			if d.want != nil {
				d.announce()
			}
		case <-d.routing.retry:
			if d.want != nil {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				if err := d.routing.apply(ctx, d.want.Exporter); err != nil {
					d.log.Error("starting routing again", "err", err)
				} else if err := d.syncECMP(); err != nil {
					d.log.Error("holding ECMP VIPs", "err", err)
				}
				cancel()
			}
		case <-d.routing.ready:
			if d.want != nil {
				d.log.Info("BGP sessions up (or waited long enough): instances preempt again")
				if err := d.syncVRRP(); err != nil {
					d.log.Error("letting instances preempt", "err", err)
				}
			}
		case err := <-kubeDone:
			// Only a setup error ends the reconciler before ctx.
			d.log.Error("following the cluster stopped; the data plane keeps what it has", "err", err)
			kubeDone = nil
		case <-ctx.Done():
			stopRec()
			if kubeDone != nil {
				<-kubeDone
			}
			if s := d.handover.Claim(); s != nil {
				return d.leave(s, servers)
			}
			d.log.Info("shutting down: handing off VIPs")
			if cs := d.csync.Load(); cs != nil {
				cs.stop() // the handoff's transitions must not move the sync daemons
			}
			err := d.mgr.Stop()
			if err != nil {
				d.log.Error("stopping VRRP", "err", err)
			}
			// After the handoff: the new master announces before this
			// node's routes go; the ECMP VIPs last, once not announced.
			d.routing.stop()
			d.releaseECMP()
			if d.lb != nil {
				d.lb.stop()
			}
			if cs := d.csync.Load(); cs != nil {
				cs.shutdown()
			}
			d.log.Info("stopped")
			return errors.Join(err, shutdownAll(servers))
		case <-o.Reload:
			if o.Kube == nil {
				d.reload()
			}
		}
	}
}

func load(path string) (*config.Config, error) {
	data, err := config.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := config.ParseFile(data)
	if err != nil {
		return nil, fmt.Errorf("configuration %s:\n%w", path, indent(err))
	}
	// The guardrails this host knows of: its gateways. (A file is this
	// node's own: its addresses are the operator's to know.)
	if gws, err := (kube.LinuxHost{}).Gateways(); err == nil {
		if errs := c.Guard(config.Surroundings{Gateways: gws}); len(errs) > 0 {
			return nil, fmt.Errorf("configuration %s:\n%w", path, indent(errors.Join(errs...)))
		}
	}
	return c, nil
}

// indent puts each joined error on its own indented line.
func indent(err error) error {
	lines := strings.Split(err.Error(), "\n")
	for i, l := range lines {
		lines[i] = "  " + l
	}
	return errors.New(strings.Join(lines, "\n"))
}

// reload reads the file again. A bad file changes nothing that runs: the
// error is logged, counted and shown by `keepvip status`.
func (d *daemon) reload() {
	cfg, err := load(d.opts.ConfigFile)
	if err != nil {
		d.reloads.WithLabelValues("error").Inc()
		errs := strings.Split(err.Error(), "\n")
		// The first line names the file; an unreadable file is one error.
		d.cfgErrs.Set(float64(max(1, len(errs)-1)))
		d.mu.Lock()
		d.errs = errs
		d.mu.Unlock()
		d.log.Error("configuration rejected; the last good configuration stays in force", "err", err)
		return
	}
	d.log.Info("configuration reloaded", "instances", len(cfg.Instances), "virtualServers", len(cfg.VirtualServers))
	want := cfg.Desired()
	if err := d.startLB(&want); err != nil {
		// IPVS is required by the new configuration and missing: the
		// VRRP part applies, the virtual servers cannot.
		d.log.Error("configuration needs IPVS", "err", err)
	}
	d.apply(&want)
}

// startLB opens IPVS the first time a configuration has virtual servers.
// Without IPVS that is an error if the configuration requires it, and
// otherwise load balancing is reported off.
func (d *daemon) startLB(want *config.Desired) error {
	if d.lb != nil || len(want.VirtualServers) == 0 {
		return nil
	}
	lb, err := startLB(d.log, d.reg, d.opts.StateDir, d.opts.ProcSys, d.kickECMP)
	if err != nil {
		d.mu.Lock()
		d.ipvs = ipvsUnavailable(err)
		d.mu.Unlock()
		if want.IPVSRequired {
			return fmt.Errorf("load balancing (kernel.ipvs: required): %w", err)
		}
		d.log.Warn(ipvsUnavailable(err) + " (kernel.ipvs: optional)")
		return nil
	}
	d.mu.Lock()
	d.lb, d.ipvs = lb, "ok"
	d.mu.Unlock()
	return nil
}

// apply runs want: each engine is given its part. problems are the parts
// of the configuration that were left out before it got here (Kubernetes
// mode); they are reported with the errors of applying the rest.
func (d *daemon) apply(want *config.Desired, problems ...string) {
	d.reloads.WithLabelValues("ok").Inc()
	// The VIPs that go stay refused until they are released.
	next := want.VIPs()
	d.refuseVIPs(*d.vips.Load(), next)
	defer d.refuseVIPs(next)
	d.want = want
	err := d.syncVRRP()
	errs := slices.Clone(problems)
	if err != nil {
		// The file was valid but an instance could not start (for
		// example its interface is missing); the others run.
		errs = append(errs, strings.Split(err.Error(), "\n")...)
		d.log.Error("some instances could not start", "err", err)
	}
	switch {
	case d.lb != nil:
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := d.lb.apply(ctx, want); err != nil {
			errs = append(errs, strings.Split(err.Error(), "\n")...)
			d.log.Error("applying virtual servers", "err", err)
		}
		cancel()
	case len(want.VirtualServers) > 0:
		d.mu.Lock()
		errs = append(errs, d.ipvs)
		d.mu.Unlock()
	}
	d.applyConnSync(want.ConnSync)
	rctx, rcancel := context.WithTimeout(context.Background(), 30*time.Second)
	if err := d.routing.apply(rctx, want.Exporter); err != nil {
		errs = append(errs, strings.Split(err.Error(), "\n")...)
		d.log.Error("applying routing", "err", err)
	}
	rcancel()
	if err := d.syncECMP(); err != nil {
		errs = append(errs, strings.Split(err.Error(), "\n")...)
		d.log.Error("holding ECMP VIPs", "err", err)
	}
	d.cfgErrs.Set(float64(len(errs)))
	d.mu.Lock()
	d.loadedAt = time.Now()
	d.errs = errs
	d.mu.Unlock()
}

// kickECMP asks Run to look at the ECMP VIPs again (health changed); it
// never blocks.
func (d *daemon) kickECMP() {
	select {
	case d.ecmpKick <- struct{}{}:
	default:
	}
}

// syncECMP holds the ECMP VIPs of the configuration in force and
// announces what this node should.
func (d *daemon) syncECMP() error {
	err := d.holdECMP()
	d.announce()
	return err
}

// holdECMP holds the ECMP VIPs on their devices, releases them from
// devices no longer used, and records where holding succeeded.
func (d *daemon) holdECMP() error {
	var errs []error
	byDev := map[string][]netip.Prefix{}
	for _, e := range d.want.ECMP {
		byDev[e.Device] = append(byDev[e.Device], e.Addr)
	}
	for dev := range d.heldDevs {
		if _, ok := byDev[dev]; !ok {
			byDev[dev] = nil // release
		}
	}
	for dev, addrs := range byDev {
		err := vrrp.HoldAddrs(dev, vrrp.HeldAddrProto, addrs)
		if err != nil {
			errs = append(errs, err)
		}
		if len(addrs) == 0 {
			delete(d.heldDevs, dev)
		} else {
			d.heldDevs[dev] = err == nil
		}
	}
	return errors.Join(errs...)
}

// announce gives the route controller the VIPs that follow VRRP, the
// static routes, and the ECMP VIPs this node can serve: held (a node that
// could not add the VIP would attract traffic it drops) and, if virtual
// servers have the VIP, with a real server taking connections. Health
// changes call only this: the addresses do not change with them.
func (d *daemon) announce() {
	hasVS := map[netip.Addr]bool{}
	for _, vs := range d.want.VirtualServers {
		if vs.FWMark == 0 {
			hasVS[vs.Addr.Unmap()] = true
		}
	}
	static := slices.Clone(d.want.StaticRoutes)
	for _, e := range d.want.ECMP {
		serving := !hasVS[e.Addr.Addr()] || (d.lb != nil && d.lb.bal.Serving(e.Addr.Addr()))
		if d.heldDevs[e.Device] && serving {
			static = append(static, e.Route)
		}
	}
	d.routing.ctl.Set(d.want.Announcements, static)
}

// releaseECMP removes the ECMP VIPs from their devices.
func (d *daemon) releaseECMP() {
	for dev := range d.heldDevs {
		if err := vrrp.HoldAddrs(dev, vrrp.HeldAddrProto, nil); err != nil {
			d.log.Error("releasing ECMP VIPs", "err", err)
		}
	}
	clear(d.heldDevs)
}

// syncVRRP runs the instances of the configuration in force. Until the
// BGP sessions are up, they do not preempt (see routing.holdPreemption).
func (d *daemon) syncVRRP() error {
	cfgs := slices.Clone(d.want.VRRP)
	if d.routing.holdPreemption(d.want.Exporter) {
		held := false
		for i := range cfgs {
			held = held || cfgs[i].Preempt
			cfgs[i].Preempt = false
		}
		if held {
			d.log.Info("not every BGP session is up yet: not preempting until they are (at most 30s)")
		}
	}
	return d.mgr.Sync(cfgs)
}

func (d *daemon) status() Status {
	d.mu.Lock()
	s := Status{Version: d.opts.Version, ConfigFile: d.source, ConfigLoaded: d.loadedAt, ConfigErrors: d.errs, IPVS: d.ipvs}
	lb, metrics, hl, hlErr := d.lb, d.metrics, d.handover, d.handoverErr
	d.mu.Unlock()
	if pid := hl.Waiting(); pid != 0 || d.tookOver != nil || hlErr != "" {
		s.Handover = &HandoverStatus{Successor: pid, Unavailable: hlErr}
		if d.tookOver != nil {
			s.Handover.TookOver, s.Handover.Masters = d.tookOver.TookOver, d.tookOver.Masters
		}
	}
	if metrics != nil {
		s.Metrics = metrics.status()
	}
	if d.rec != nil {
		ks := d.rec.Status()
		s.Kubernetes = &ks
	}
	s.Instances = d.mgr.Status()
	if cs := d.csync.Load(); cs != nil {
		s.ConnectionSync = cs.status()
	}
	rctx, rcancel := context.WithTimeout(context.Background(), 5*time.Second)
	s.Routing = d.routing.status(rctx)
	rcancel()
	if lb != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		vs, err := lb.status(ctx)
		if err != nil {
			s.IPVS = "error reading IPVS: " + err.Error()
		}
		s.VirtualServers = vs
		s.IPVSWarnings = lb.Warnings()
	}
	return s
}

// serveStatus listens on a unix socket only root can use, in a directory
// only root can write to: whoever could would replace the socket with one
// of their own, and `keepvip status` and `keepvip health` (the
// DaemonSet's probes) would read their answers. The directory is made so
// if it is root's (an emptyDir volume is made 0777), and refused if it is
// shared (sticky, as /tmp) or someone else's.
func (d *daemon) serveStatus(path string) (*http.Server, error) {
	l, err := listenStatus(path, d.log)
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) { writeStatus(w, d.status()) })
	// What /healthz and /readyz say, for `keepvip health`: probes that
	// no other user of the node can answer in keepvip's place, as they
	// can on a port they took first.
	mux.HandleFunc("GET /v1/health", d.health.ServeHTTP)
	mux.HandleFunc("GET /v1/ready", d.serveReady)
	return serveHTTP(l, mux, d.log), nil
}

func writeStatus(w http.ResponseWriter, s Status) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(s)
}

// serveHTTP serves h on the status socket l.
func serveHTTP(l net.Listener, h http.Handler, log *slog.Logger) *http.Server {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, IdleTimeout: 30 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("status socket", "err", err)
		}
	}()
	return srv
}

// errSocketInUse: a process of root's listens on the status socket.
var errSocketInUse = errors.New("in use")

// statusDir makes the status socket's directory root's (see serveStatus).
func statusDir(path string, log *slog.Logger) error {
	if err := rootonly.Dir(filepath.Dir(path), "status socket directory", "replace keepvip's status socket with theirs, or take its path before keepvip starts", log); err != nil {
		return fmt.Errorf("status socket %s: %w", path, err)
	}
	return nil
}

// listenStatus listens on the status socket path (see serveStatus).
func listenStatus(path string, log *slog.Logger) (net.Listener, error) {
	if err := statusDir(path, log); err != nil {
		return nil, err
	}
	switch cred, err := socketHolder(path); {
	case err != nil:
		return nil, fmt.Errorf("status socket %s: %w", path, err)
	case cred != nil && cred.Uid == 0:
		return nil, fmt.Errorf("status socket %s is %w (by pid %d): is another keepvip running?", path, errSocketInUse, cred.Pid)
	case cred != nil:
		// Put there while the directory was open to others: not
		// keepvip's, and no longer possible now.
		log.Warn("a process that is not root was listening on the status socket's path; replaced", "path", path, "uid", cred.Uid, "pid", cred.Pid)
	}
	// Only a stale socket (nobody answers on it, or someone who is not
	// root) is removed: anything else at the path is someone's file,
	// which a typo in --status-socket must not cost them.
	switch fi, err := os.Lstat(path); {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("status socket %s: %w", path, err)
	case fi.Mode().Type() != os.ModeSocket:
		return nil, fmt.Errorf("status socket %s: a %s is there, not a socket: not removing it (remove it, or choose another --status-socket)", path, fileKind(fi.Mode()))
	default:
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing the stale status socket %s: %w", path, err)
		}
	}
	l, err := listenUnixPrivate(path)
	if err != nil {
		return nil, fmt.Errorf("listening on status socket: %w", err)
	}
	return l, nil
}

// socketHolder returns the credentials of the process listening on the
// unix socket path (as it were when it listened), or nil if none is.
func socketHolder(path string) (*unix.Ucred, error) {
	cred, err := rootonly.Peer(path)
	if errors.Is(err, rootonly.ErrNoListener) {
		return nil, nil // nothing there, or nobody listening: stale
	}
	return cred, err
}

// listenUnixPrivate listens on the unix socket path, created with mode
// 0600 (see bindUnix). Kernels that would not honour that get a Chmod,
// which leaves a moment to connect.
func listenUnixPrivate(path string) (net.Listener, error) {
	l, err := bindUnix(path, 0o600)
	if err != nil {
		return nil, err
	}
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o600 {
		if err := os.Chmod(path, 0o600); err != nil {
			l.Close()
			return nil, fmt.Errorf("restricting status socket: %w", err)
		}
	}
	return l, nil
}

// bindUnix listens on the unix socket path, whose file is created with
// mode perm (less the umask): set on the socket before it is bound, as
// the kernel creates the file with the socket's mode, so that there is no
// moment when others could connect. (A Chmod after the bind would leave
// one, and a connection made then stays.)
func bindUnix(path string, perm os.FileMode) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) { err = unix.Fchmod(int(fd), uint32(perm.Perm())) }); cerr != nil {
			return cerr
		}
		return err
	}}
	return lc.Listen(context.Background(), "unix", path)
}

// serveReady answers /readyz: ready once the configuration runs and every
// VRRP instance has joined the election (joined). A DaemonSet rolling out
// waits for that before it replaces the next node's keepvip, so that the
// node just replaced can take the VIPs over when the next one hands off.
func (d *daemon) serveReady(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	ready := d.ready
	d.mu.Unlock()
	if !ready {
		http.Error(w, "starting", http.StatusServiceUnavailable)
		return
	}
	sts, err := d.health.check(r.Context())
	if err != nil {
		http.Error(w, err.Error(), http.StatusServiceUnavailable)
		return
	}
	var waiting []string
	for _, st := range sts {
		if !joined(st) {
			waiting = append(waiting, st.Name)
		}
	}
	if len(waiting) > 0 {
		http.Error(w, fmt.Sprintf("instances not in the election yet (no master heard, not master): %s", strings.Join(waiting, ", ")), http.StatusServiceUnavailable)
		return
	}
	fmt.Fprintln(w, "ok")
}

// joined reports whether an instance takes part in the election: master,
// a backup that follows a master (and would take over from it), or in
// fault (a settled state, reported as such; waiting for it would stop a
// rollout). A backup that has heard no master yet becomes master within
// Master_Down_Interval, or hears one.
func joined(st vrrp.Status) bool {
	switch st.State {
	case vrrp.StateMaster, vrrp.StateFault:
		return true
	case vrrp.StateBackup:
		return st.Master.IsValid()
	}
	return false
}

// fileKind names what a non-socket file is, for an error.
func fileKind(m os.FileMode) string {
	switch {
	case m.IsRegular():
		return "regular file"
	case m.IsDir():
		return "directory"
	case m&os.ModeSymlink != 0:
		return "symbolic link"
	}
	return "file of mode " + m.Type().String()
}

// refuseVIPs makes the union of sets the addresses the metrics listener
// refuses.
func (d *daemon) refuseVIPs(sets ...map[netip.Addr]bool) {
	vips := map[netip.Addr]bool{}
	for _, s := range sets {
		maps.Copy(vips, s)
	}
	d.vips.Store(&vips)
}

// onVIP reports whether a is a VIP the metrics listener refuses.
func (d *daemon) onVIP(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		return false
	}
	vips := d.vips.Load()
	return vips != nil && (*vips)[ta.AddrPort().Addr().Unmap()]
}

// healthTimeout is how long /healthz waits for the VRRP instances:
// under the livenessProbe's timeoutSeconds (3 in deploy/), so that the
// probe reads the 503 and its reason.
const healthTimeout = 2 * time.Second

// instanceStatus is what /healthz asks: every instance goroutine
// answering is the liveness signal.
type instanceStatus interface {
	Status() []vrrp.Status
}

// health answers /healthz with one check of the instances at a time: a
// request that comes while a check is running waits for that one (until
// timeout after it started) instead of starting another, so that a
// stuck manager costs one goroutine, not one per probe.
type health struct {
	inst    instanceStatus
	timeout time.Duration

	mu      sync.Mutex
	running *healthCheck // nil when no check is running
}

type healthCheck struct {
	started time.Time
	done    chan struct{}
	result  []vrrp.Status // once done
}

func newHealth(inst instanceStatus, timeout time.Duration) *health {
	return &health{inst: inst, timeout: timeout}
}

func (h *health) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if _, err := h.check(r.Context()); err != nil {
		if r.Context().Err() == nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		}
		return
	}
	fmt.Fprintln(w, "ok")
}

// check asks the instances for their status, joining the check under way
// if there is one, and gives up when it has taken timeout.
func (h *health) check(ctx context.Context) ([]vrrp.Status, error) {
	h.mu.Lock()
	c := h.running
	if c == nil {
		c = &healthCheck{started: time.Now(), done: make(chan struct{})}
		h.running = c
		// The one goroutine a stuck manager keeps; its owner is h,
		// which starts no other until it returns.
		go func() {
			c.result = h.inst.Status()
			h.mu.Lock()
			h.running = nil
			h.mu.Unlock()
			close(c.done)
		}()
	}
	h.mu.Unlock()
	wait := time.NewTimer(time.Until(c.started.Add(h.timeout)))
	defer wait.Stop()
	select {
	case <-c.done:
		return c.result, nil
	case <-wait.C:
		select {
		case <-c.done: // answered as the time ran out
			return c.result, nil
		default:
			return nil, fmt.Errorf("VRRP instances have not answered for %s", time.Since(c.started).Round(time.Millisecond))
		}
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// vipListener closes, before reading anything, the connections made to
// a VIP: with a wildcard address, the clients of the load balancer
// could otherwise read /metrics and probe /healthz through the VIP.
// Closing says nothing to them, not even that keepvip listens there.
type vipListener struct {
	net.Listener
	onVIP   func(net.Addr) bool
	refused prometheus.Counter
}

func (l vipListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil || !l.onVIP(c.LocalAddr()) {
			return c, err
		}
		c.Close()
		l.refused.Inc()
	}
}

// shutdowner is a server that Run stops as it returns.
type shutdowner interface {
	Shutdown(context.Context) error
}

func shutdownAll(servers []shutdowner) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	var errs []error
	for _, s := range servers {
		errs = append(errs, s.Shutdown(ctx))
	}
	return errors.Join(errs...)
}

// named is a server with a name for its shutdown error.
type named struct {
	name string
	s    shutdowner
}

func (n named) Shutdown(ctx context.Context) error {
	err := n.s.Shutdown(ctx)
	if errors.Is(err, context.DeadlineExceeded) {
		if c, ok := n.s.(interface{ Close() error }); ok {
			c.Close()
		}
		return fmt.Errorf("closing the %s: clients kept connections open past 2s; cut", n.name)
	}
	if err != nil {
		return fmt.Errorf("closing the %s: %w", n.name, err)
	}
	return nil
}

// GetStatus asks the daemon on socket for its status. Each call uses one
// connection and closes it.
func GetStatus(ctx context.Context, socket string) (*Status, error) {
	resp, err := get(ctx, socket, "/v1/status")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("keepvip on %s answered %s", socket, resp.Status)
	}
	var s Status
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return nil, fmt.Errorf("decoding status from %s: %w", socket, err)
	}
	return &s, nil
}

// ErrNotHealthy and ErrNotReady are returned by GetHealth, wrapped with
// the daemon's reason, when it answers that it is not healthy or not
// ready.
var (
	ErrNotHealthy = errors.New("not healthy")
	ErrNotReady   = errors.New("not ready")
)

// GetHealth asks the daemon on socket whether it is healthy (its VRRP
// instances answer, as /healthz says) or, with ready, ready (as /readyz
// says). It returns nil if so; otherwise ErrNotHealthy or ErrNotReady
// with the daemon's reason, or why it could not be asked.
func GetHealth(ctx context.Context, socket string, ready bool) error {
	path, not := "/v1/health", ErrNotHealthy
	if ready {
		path, not = "/v1/ready", ErrNotReady
	}
	resp, err := get(ctx, socket, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	switch {
	case err != nil:
		return fmt.Errorf("reading keepvip's answer on %s: %w", socket, err)
	case resp.StatusCode == http.StatusServiceUnavailable:
		return fmt.Errorf("%w: %s", not, strings.TrimSpace(string(body)))
	case resp.StatusCode != http.StatusOK:
		return fmt.Errorf("keepvip on %s answered %s", socket, resp.Status)
	}
	return nil
}

// get makes one GET request to the daemon on socket, on a connection of
// its own.
func get(ctx context.Context, socket, path string) (*http.Response, error) {
	client := &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://keepvip"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("asking keepvip on %s: %w", socket, err)
	}
	return resp, nil
}

// transition is the VRRP manager's OnTransition: routes and the IPVS sync
// daemons follow the instances.
func (d *daemon) transition(instance string, t vrrp.Transition) {
	d.routing.transition(instance, t)
	if cs := d.csync.Load(); cs != nil {
		cs.transition(instance, t)
	}
}

// applyConnSync gives the connection sync its configuration.
func (d *daemon) applyConnSync(spec *config.ConnSync) {
	if cs := d.csync.Load(); cs != nil {
		cs.apply(spec)
	}
}
