package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keepvip/keepvip/config"

	"github.com/keepvip/keepvip/internal/handover"
	"github.com/keepvip/keepvip/internal/rootonly"
	"github.com/keepvip/keepvip/lvs"
	"github.com/keepvip/keepvip/vrrp"
)

// HandoverStatus is keepvip's replacement in place on this host (see
// package handover and Options.TakeOver).
type HandoverStatus struct {
	// WaitingFor: this keepvip waits to take over from the keepvip of
	// that pid, which runs on this host; InPlace: that keepvip will hand
	// over in place when it stops. If not (an older keepvip, one that
	// could not listen for a successor), it hands its VIPs off to the
	// other routers as usual and this one starts on its own.
	WaitingFor int32 `json:"waitingFor,omitempty"`
	InPlace    bool  `json:"inPlace,omitempty"`
	// Successor: the keepvip of that pid waits to take over from this
	// one; when this one stops, it leaves its VIPs and virtual servers
	// in place for it.
	Successor int32 `json:"successor,omitempty"`
	// Unavailable says why this keepvip cannot be replaced in place: a
	// successor will find it stops as usual, handing its VIPs off.
	Unavailable string `json:"unavailable,omitempty"`
	// TookOver is when this keepvip took over from the one before it,
	// and Masters the instances it took over as master.
	TookOver time.Time `json:"tookOver,omitzero"`
	Masters  []string  `json:"masters,omitempty"`
}

// takeOverState is what a keepvip that leaves passes to its successor.
type takeOverState struct {
	VRRP vrrp.Handover `json:"vrrp"`
	// ECMP are the devices its ECMP VIPs are on, left in place: the
	// successor releases those its configuration does not have.
	ECMP []string `json:"ecmp,omitempty"`
}

// preflight does, before a keepvip that is to take over says it is ready,
// what could make it fail once it had: once the running keepvip has left
// for it, a successor that exits leaves the VIPs on the node with no
// keepvip to run them (until it is restarted; in a crash loop, for good),
// while the other routers take them over too. So the configuration is
// loaded and checked (in Kubernetes mode the cluster's is checked entry
// by entry and never stops keepvip), IPVS is asked for if it is required,
// and the lock's and the status socket's directories are made root's. A
// keepvip that fails here is never ready: a rollout waits, the running one
// keeps everything.
func preflight(o Options) (*config.Config, error) {
	var cfg *config.Config
	var vips map[netip.Addr]bool
	if o.Kube == nil {
		var err error
		if cfg, err = load(o.ConfigFile); err != nil {
			return nil, err
		}
		want := cfg.Desired()
		if want.IPVSRequired && len(want.VirtualServers) > 0 {
			if err := lvs.Available(); err != nil {
				return nil, fmt.Errorf("load balancing (kernel.ipvs: required): %w", err)
			}
		}
		vips = want.VIPs()
	}
	if o.MetricsAddr != "" {
		if err := checkMetricsAddr(o.MetricsAddr, func(a netip.Addr) bool { return vips[a.Unmap()] }); err != nil {
			return nil, err
		}
	}
	if err := rootonly.Dir(lockDirOf(o), "lock directory", "hold keepvip's lock", o.Logger); err != nil {
		return nil, fmt.Errorf("locking the network namespace: %w", err)
	}
	if o.StatusSocket != "" {
		if err := statusDir(o.StatusSocket, o.Logger); err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

// lockDirOf is where the one-keepvip-per-network-namespace lock lives.
func lockDirOf(o Options) string {
	// The state directory when there is one: on a node it outlives a pod
	// (deploy/ mounts it from the host), so that two pods on one node are
	// one too many, as two processes are.
	if o.StateDir != "" {
		return o.StateDir
	}
	return vrrp.DefaultLockDir
}

// waitToTakeOver waits, if another keepvip runs in this network namespace,
// until it is gone, and returns what it handed over (nil if it handed
// nothing over: it stopped as usual or died, and this keepvip starts as
// any does, resuming what it finds). Meanwhile the status socket, if it
// can be had (two pods on a node have one each; two processes on one host
// may share the path, and the running one has it), says whom it waits for,
// and says ready: the keepvip it waits for can be stopped now.
func waitToTakeOver(ctx context.Context, o Options) (*takeOverState, error) {
	type waiting struct {
		pid     int32
		inPlace bool
	}
	var now atomic.Pointer[waiting]
	now.Store(&waiting{})
	if o.StatusSocket != "" {
		l, err := listenStatus(o.StatusSocket, o.Logger)
		if err != nil {
			o.Logger.Info("no status socket while waiting to take over; it comes with the takeover", "err", err)
		} else {
			mux := http.NewServeMux()
			mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
				w0 := now.Load()
				writeStatus(w, Status{Version: o.Version, ConfigFile: o.ConfigFile, IPVS: "not used yet",
					Handover: &HandoverStatus{WaitingFor: w0.pid, InPlace: w0.inPlace}})
			})
			mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
			mux.HandleFunc("GET /v1/ready", func(w http.ResponseWriter, _ *http.Request) {
				switch w0 := now.Load(); {
				case w0.pid == 0:
					http.Error(w, "starting", http.StatusServiceUnavailable)
				case w0.inPlace:
					fmt.Fprintf(w, "ok: waiting to take over from keepvip pid %d in place\n", w0.pid)
				default:
					fmt.Fprintf(w, "ok: waiting for keepvip pid %d to stop (it hands its VIPs off: it cannot hand over in place)\n", w0.pid)
				}
			})
			srv := serveHTTP(l, mux, o.Logger)
			defer func() {
				// The listener too, at once: Close alone leaves it to
				// Serve, which may not have begun, and the socket would
				// still take connections when keepvip listens again.
				srv.Close()
				l.Close()
			}()
		}
	}
	raw, err := handover.Wait(ctx, handover.WaitOptions{
		Name:      handover.Name,
		Running:   vrrp.Running,
		OnWaiting: func(pid int32, inPlace bool) { now.Store(&waiting{pid, inPlace}) },
		Logger:    o.Logger,
	})
	if err != nil {
		return nil, err
	}
	if raw == nil {
		o.Logger.Info("no keepvip to take over from: starting on its own")
		return nil, nil
	}
	var st takeOverState
	if err := json.Unmarshal(raw, &st); err != nil {
		// Whatever it left is found as a crashed keepvip's would be.
		o.Logger.Error("the keepvip before this one handed over something unreadable; starting as after a crash", "err", err)
		return nil, nil
	}
	o.Logger.Info("taking over from the keepvip before this one on this host", "masters", masterNames(st.VRRP))
	return &st, nil
}

func masterNames(h vrrp.Handover) []string {
	var names []string
	for _, m := range h.Masters {
		names = append(names, m.Name)
	}
	return names
}

// leave stops this keepvip for the successor s, which waits on this host
// to take over: the VIPs stay on their interfaces (masters send a last
// advert, see vrrp.Manager.Leave), as do the IPVS services and the ECMP
// VIPs, and the successor is told to go at once, with what it needs; the
// rest (BGP sessions, health checks, the servers) stops after, so that
// nothing a client could hold open delays the successor's first advert.
// If the word does not get through (the successor died since it said it
// was ready), this keepvip takes the VIPs back and hands them off as a
// stopping keepvip does. BGP sessions and routes in a kernel table end
// with this process: the successor announces again once its sessions are
// up.
func (d *daemon) leave(s *handover.Successor, servers []shutdowner) error {
	d.log.Info("shutting down: a keepvip waits to take over on this host; leaving the VIPs and virtual servers in place for it", "successor", s.Pid)
	if cs := d.csync.Load(); cs != nil {
		// Before Leave: its masters' transitions must not swap the
		// master sync daemon for a backup one. The daemons stay: the
		// successor adopts them.
		cs.stop()
	}
	h := d.mgr.Leave()
	// What this process alone runs stops before the successor starts its
	// own: routes in a kernel table are this process's to withdraw, not
	// the successor's fresh ones; health checks do not change weights
	// under it.
	d.routing.stop()
	if d.lb != nil {
		d.lb.stop()
	}
	st := takeOverState{VRRP: h, ECMP: slices.Sorted(maps.Keys(d.heldDevs))}
	var errs []error
	if err := s.Go(st); err != nil {
		d.log.Error("the successor did not take the word; taking the VIPs back to hand them off", "err", err)
		errs = append(errs, err, d.reclaim(h))
		if cs := d.csync.Load(); cs != nil {
			cs.shutdown() // nobody adopts them now
		}
	} else {
		d.log.Info("handed over", "successor", s.Pid, "masters", masterNames(h))
	}
	errs = append(errs, shutdownAll(servers))
	d.log.Info("stopped")
	return errors.Join(errs...)
}

// reclaim takes back what Leave left for a successor that did not get the
// word, and hands it off as a stopping keepvip does: a Manager inherits it
// (its masters are master again at once, their VIPs in place) and stops
// (priority 0, the VIPs kept until a new master advertises). The ECMP VIPs
// go too.
func (d *daemon) reclaim(h vrrp.Handover) error {
	var cfgs []vrrp.Config
	if d.want != nil {
		cfgs = slices.Clone(d.want.VRRP)
	}
	err := handOffInherited(d.log, lockDirOf(d.opts), h, cfgs)
	d.releaseECMP()
	return err
}

// handOffInherited hands off, as a stopping keepvip does, VIPs left on
// this host by a keepvip that handed over: a Manager inherits them (the
// masters among cfgs are master again at once, their VIPs in place), then
// stops (priority 0, the VIPs kept until a new master advertises). With
// no configuration for them, or no Manager, they are only removed.
func handOffInherited(log *slog.Logger, lockDir string, h vrrp.Handover, cfgs []vrrp.Config) error {
	m := vrrp.NewManager(vrrp.Options{Logger: log, LockDir: lockDir, Inherit: &h})
	if err := m.Start(); err != nil {
		// Not even that: remove them, as keepvip cleanup does. The
		// other routers take over after their Master_Down_Interval;
		// never two hosts answering for a VIP.
		_, rerr := vrrp.RemoveLeftovers(log)
		return errors.Join(fmt.Errorf("handing off the VIPs left for a keepvip that did not run them: %w; removed them instead", err), rerr)
	}
	return errors.Join(m.Sync(cfgs), m.Stop())
}

// lateStatus is the status socket of a keepvip that took over from one on
// this host with the same path: served as soon as that one has let it go.
type lateStatus struct {
	stop chan struct{}
	done chan struct{}
	mu   sync.Mutex
	srv  *http.Server
}

func (d *daemon) serveStatusLater(path string) *lateStatus {
	ls := &lateStatus{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(ls.done)
		deadline := time.Now().Add(30 * time.Second)
		for {
			srv, err := d.serveStatus(path)
			if err == nil {
				ls.mu.Lock()
				ls.srv = srv
				ls.mu.Unlock()
				d.log.Info("status socket served", "path", path)
				return
			}
			if !errors.Is(err, errSocketInUse) || time.Now().After(deadline) {
				d.log.Error("no status socket: keepvip status and the probes cannot reach this keepvip", "err", err)
				return
			}
			select {
			case <-ls.stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
		}
	}()
	return ls
}

func (ls *lateStatus) Shutdown(ctx context.Context) error {
	close(ls.stop)
	<-ls.done
	ls.mu.Lock()
	srv := ls.srv
	ls.mu.Unlock()
	if srv == nil {
		return nil
	}
	return srv.Shutdown(ctx)
}
