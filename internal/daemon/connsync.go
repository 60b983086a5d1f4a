package daemon

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepvip/keepvip/config"
	"github.com/keepvip/keepvip/lvs"
	"github.com/keepvip/keepvip/vrrp"
)

// ConnSyncStatus is the IPVS connection synchronisation.
type ConnSyncStatus struct {
	// Instance is the VRRP instance whose role the daemons follow, State
	// its state, Role the daemon keepvip runs for it.
	Instance string `json:"instance"`
	State    string `json:"state"`
	Role     string `json:"role"`
	// Daemons are the kernel's sync daemons ("master on eth0, sync ID
	// 51"), with "(not keepvip's)" for one someone else runs.
	Daemons []string `json:"daemons"`
	// Local and Synced count the connections of the kernel's table: those
	// this node's IPVS made, and those a master's daemon sent.
	Local  int    `json:"localConnections"`
	Synced int    `json:"syncedConnections"`
	Error  string `json:"error,omitempty"`
}

// connSync runs the kernel's IPVS sync daemons in the role of one VRRP
// instance: its master runs the master daemon, otherwise the backup one.
// One goroutine applies what transitions and configurations ask; a
// failure is tried again every connSyncRetry.
type connSync struct {
	log     *slog.Logger
	procSys string
	syncer  *lvs.Syncer
	kick    chan struct{}

	mu    sync.Mutex
	spec  *config.ConnSync
	state vrrp.State // of spec.Instance, from its transitions
	role  lvs.SyncRole
	err   error

	roleChanges prometheus.Counter
	cancel      context.CancelFunc
	done        chan struct{}
}

const connSyncRetry = 5 * time.Second

func newConnSync(log *slog.Logger, reg prometheus.Registerer, procSys string) *connSync {
	c := &connSync{log: log, procSys: procSys, syncer: lvs.NewSyncer(log), kick: make(chan struct{}, 1), done: make(chan struct{})}
	c.roleChanges = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keepvip_ipvs_sync_role_changes_total",
		Help: "Times the IPVS sync daemon keepvip runs changed role (master, backup) with its VRRP instance.",
	})
	role := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "keepvip_ipvs_sync_master",
		Help: "1 while keepvip runs the IPVS master sync daemon, 0 while the backup one, -1 without connection sync.",
	}, func() float64 {
		c.mu.Lock()
		defer c.mu.Unlock()
		switch {
		case c.spec == nil || c.role == 0:
			return -1
		case c.role == lvs.SyncMaster:
			return 1
		}
		return 0
	})
	conns := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "keepvip_ipvs_connections",
		Help: "Connections in the kernel's IPVS table by origin: local (made here) or sync (sent by a master's sync daemon). Read at each scrape while connection sync is on.",
	}, []string{"origin"})
	reg.MustRegister(c.roleChanges, role, connCollector{c, conns})
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go c.run(ctx)
	return c
}

// connCollector reads the connection counts at each scrape.
type connCollector struct {
	c *connSync
	v *prometheus.GaugeVec
}

func (cc connCollector) Describe(ch chan<- *prometheus.Desc) { cc.v.Describe(ch) }

func (cc connCollector) Collect(ch chan<- prometheus.Metric) {
	cc.c.mu.Lock()
	on := cc.c.spec != nil
	cc.c.mu.Unlock()
	if !on {
		return
	}
	local, synced, err := countConns()
	if err != nil {
		return
	}
	cc.v.WithLabelValues("local").Set(float64(local))
	cc.v.WithLabelValues("sync").Set(float64(synced))
	cc.v.Collect(ch)
}

// transition is told of every VRRP transition (the manager's
// OnTransition): it must not block.
func (c *connSync) transition(instance string, t vrrp.Transition) {
	c.mu.Lock()
	if c.spec == nil || instance != c.spec.Instance {
		c.mu.Unlock()
		return
	}
	c.state = t.To
	c.mu.Unlock()
	c.signal()
}

func (c *connSync) signal() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// apply takes the configuration's connection sync (nil: none).
func (c *connSync) apply(spec *config.ConnSync) {
	c.mu.Lock()
	if spec == nil || c.spec == nil || spec.Instance != c.spec.Instance {
		c.state = vrrp.StateInit // until the instance says
	}
	c.spec = spec
	c.mu.Unlock()
	c.signal()
}

// setState tells the state of the instance now, for an instance that
// runs already when sync is configured.
func (c *connSync) setState(instance string, s vrrp.State) {
	c.mu.Lock()
	changed := c.spec != nil && instance == c.spec.Instance && c.state != s
	if changed {
		c.state = s
	}
	c.mu.Unlock()
	if changed {
		c.signal()
	}
}

func (c *connSync) run(ctx context.Context) {
	defer close(c.done)
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-c.kick:
		case <-retry.C:
		}
		if err := c.sync(); err != nil {
			retry.Reset(connSyncRetry)
		}
	}
}

// sync makes the daemons those of the role asked now.
func (c *connSync) sync() error {
	c.mu.Lock()
	spec, state, was := c.spec, c.state, c.role
	c.mu.Unlock()
	var want []lvs.SyncDaemon
	var role lvs.SyncRole
	var errs []error
	if spec != nil {
		role = lvs.SyncBackup
		if state == vrrp.StateMaster {
			role = lvs.SyncMaster
		}
		d := spec.Daemon
		d.Role = role
		want = []lvs.SyncDaemon{d}
		s := spec.Settings
		s.ProcSys = c.procSys
		if err := s.Apply(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.syncer.Set(want); err != nil {
		errs = append(errs, err)
	}
	err := errors.Join(errs...)
	c.mu.Lock()
	c.role, c.err = role, err
	c.mu.Unlock()
	if role != was && role != 0 && was != 0 {
		c.roleChanges.Inc()
	}
	if err != nil {
		c.log.Error("IPVS connection sync", "role", role.String(), "err", err)
	}
	return err
}

func (c *connSync) status() *ConnSyncStatus {
	c.mu.Lock()
	spec, state, role, err := c.spec, c.state, c.role, c.err
	c.mu.Unlock()
	if spec == nil {
		return nil
	}
	s := &ConnSyncStatus{Instance: spec.Instance, State: state.String(), Role: "none", Daemons: []string{}}
	if role != 0 {
		s.Role = role.String()
	}
	if err != nil {
		s.Error = err.Error()
	}
	ds, ours, lerr := c.syncer.Running()
	for i, d := range ds {
		line := d.String()
		if !ours[i] {
			line += " (not keepvip's)"
		}
		s.Daemons = append(s.Daemons, line)
	}
	local, synced, cerr := countConns()
	s.Local, s.Synced = local, synced
	if e := errors.Join(lerr, cerr); e != nil && s.Error == "" {
		s.Error = e.Error()
	}
	return s
}

// stop ends the goroutine. The daemons stay, as the IPVS services do: a
// keepvip that takes over in place, or restarts after a crash, adopts
// them.
func (c *connSync) stop() {
	c.cancel()
	<-c.done
}

// shutdown stops the goroutine and the daemons keepvip runs: keepvip is
// going away, and a daemon left behind would go on syncing (or taking
// syncs) for a node that no longer runs keepvip.
func (c *connSync) shutdown() {
	c.stop()
	if err := c.syncer.Set(nil); err != nil {
		c.log.Error("stopping the IPVS sync daemons", "err", err)
	}
}

// countConns counts the kernel's IPVS connections by origin, from
// /proc/net/ip_vs_conn_sync (this network namespace's).
func countConns() (local, synced int, err error) {
	f, err := os.Open("/proc/net/ip_vs_conn_sync")
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 4096), 4096)
	first := true
	for sc.Scan() {
		if first { // the header
			first = false
			continue
		}
		switch line := sc.Bytes(); {
		case bytes.Contains(line, []byte(" LOCAL ")):
			local++
		case bytes.Contains(line, []byte(" SYNC ")):
			synced++
		}
	}
	return local, synced, sc.Err()
}
