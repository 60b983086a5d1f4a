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
	syncer  syncSetter
	kick    chan struct{}

	mu   sync.Mutex
	spec *config.ConnSync
	// states are the instances' last states, from every transition,
	// so that the one spec names is known whenever spec comes.
	states map[string]vrrp.State
	// role is the daemon keepvip runs now (0: none or not yet); err the
	// last failure.
	role lvs.SyncRole
	err  error
	// leaving: keepvip is stopping; transitions no longer move the
	// daemons (a master's Leave is no reason to become a backup).
	leaving bool
	// counts caches the connection counts: reading the kernel's table
	// costs in proportion to its size (quadratically before Linux 6.14).
	// Its own lock: transition must never wait for that read.
	countsMu sync.Mutex
	counts   struct {
		at            time.Time
		local, synced int
		err           error
	}

	roleChanges prometheus.Counter
	errors      prometheus.Counter
	cancel      context.CancelFunc
	done        chan struct{}
}

const connSyncRetry = 5 * time.Second

// syncSetter is what connSync needs of lvs.Syncer.
type syncSetter interface {
	Set([]lvs.SyncDaemon) error
	Running() ([]lvs.SyncDaemon, []bool, error)
}

func newConnSync(log *slog.Logger, reg prometheus.Registerer, procSys string) *connSync {
	return newConnSyncWith(log, reg, procSys, lvs.NewSyncer(log))
}

func newConnSyncWith(log *slog.Logger, reg prometheus.Registerer, procSys string, syncer syncSetter) *connSync {
	c := &connSync{log: log, procSys: procSys, syncer: syncer, kick: make(chan struct{}, 1), done: make(chan struct{}),
		states: map[string]vrrp.State{}}
	c.roleChanges = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keepvip_ipvs_sync_role_changes_total",
		Help: "Times the IPVS sync daemon keepvip runs changed role (master, backup) with its VRRP instance.",
	})
	c.errors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "keepvip_ipvs_sync_errors_total",
		Help: "Failed attempts to run the IPVS sync daemons as asked (tried again every 5 s).",
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
	reg.MustRegister(c.roleChanges, c.errors, role, connCollector{c, conns})
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
	local, synced, err := cc.c.countConns()
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
	c.states[instance] = t.To
	ours := c.spec != nil && instance == c.spec.Instance && !c.leaving
	c.mu.Unlock()
	if ours {
		c.signal()
	}
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
	c.spec = spec
	c.mu.Unlock()
	c.signal()
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
	spec, was := c.spec, c.role
	var state vrrp.State
	if spec != nil {
		state = c.states[spec.Instance] // INIT until it says
	}
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
	serr := c.syncer.Set(want)
	err := errors.Join(append(errs, serr)...)
	c.mu.Lock()
	if serr == nil {
		c.role = role // what runs, not only what was asked
	}
	logIt := err != nil && (c.err == nil || c.err.Error() != err.Error())
	c.err = err
	c.mu.Unlock()
	if serr == nil && role != was && role != 0 && was != 0 {
		c.roleChanges.Inc()
	}
	if err != nil {
		c.errors.Inc()
		if logIt {
			c.log.Error("IPVS connection sync (tried again every 5 s)", "role", role.String(), "err", err)
		}
	}
	return err
}

func (c *connSync) status() *ConnSyncStatus {
	c.mu.Lock()
	spec, role, err := c.spec, c.role, c.err
	var state vrrp.State
	if spec != nil {
		state = c.states[spec.Instance]
	}
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
	local, synced, cerr := c.countConns()
	s.Local, s.Synced = local, synced
	if e := errors.Join(lerr, cerr); e != nil && s.Error == "" {
		s.Error = e.Error()
	}
	return s
}

// stop ends the goroutine, and the transitions that follow (a leaving
// master's) no longer move the daemons. The daemons stay, as the IPVS
// services do: a keepvip that takes over in place, or restarts after a
// crash, adopts them.
func (c *connSync) stop() {
	c.mu.Lock()
	c.leaving = true
	c.mu.Unlock()
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

// countsEvery bounds how often the connection table is read.
const countsEvery = 15 * time.Second

// countConns returns the connection counts, read again when older than
// countsEvery.
func (c *connSync) countConns() (local, synced int, err error) {
	c.countsMu.Lock()
	defer c.countsMu.Unlock()
	if time.Since(c.counts.at) >= countsEvery {
		c.counts.local, c.counts.synced, c.counts.err = readConnCounts()
		c.counts.at = time.Now()
	}
	return c.counts.local, c.counts.synced, c.counts.err
}

// readConnCounts counts the kernel's IPVS connections by origin, from
// /proc/net/ip_vs_conn_sync (this network namespace's).
func readConnCounts() (local, synced int, err error) {
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
