package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"github.com/vishvananda/netlink"

	"github.com/keepvip/keepvip/config"
	"github.com/keepvip/keepvip/healthcheck"
	"github.com/keepvip/keepvip/internal/balancer"
	"github.com/keepvip/keepvip/lvs"
)

// resyncEvery is how often the IPVS table is read again and repaired, in
// case something changed keepvip's services behind its back.
const resyncEvery = 5 * time.Minute

// VirtualServerStatus is a virtual service as the kernel has it, with the
// health of its real servers.
type VirtualServerStatus struct {
	Name        string             `json:"name"`
	Service     string             `json:"service"`
	Scheduler   string             `json:"scheduler"`
	Persistence string             `json:"persistence,omitempty"`
	Unhealthy   string             `json:"unhealthy"`
	RealServers []RealServerStatus `json:"realServers"`
}

// RealServerStatus is one real server.
type RealServerStatus struct {
	Address string `json:"address"`
	Forward string `json:"forwarding"`
	// Weight is what IPVS has now; ConfiguredWeight what the configuration
	// says (they differ while the real server is drained).
	Weight           int  `json:"weight"`
	ConfiguredWeight int  `json:"configuredWeight"`
	InKernel         bool `json:"inKernel"`
	Active           int  `json:"activeConnections"`
	Inactive         int  `json:"inactiveConnections"`
	// Health is healthy, unhealthy or unchecked.
	Health     string    `json:"health"`
	LastCheck  time.Time `json:"lastCheck,omitempty"`
	LastChange time.Time `json:"lastChange,omitempty"`
	Reason     string    `json:"reason,omitempty"`
}

// loadBalancer is the IPVS side of the daemon.
type loadBalancer struct {
	log *slog.Logger
	dir *lvs.Director
	hc  *healthcheck.Checker
	bal *balancer.Balancer

	procSys string // where kernel settings are written

	mu       sync.Mutex
	warnings []string // see natWarnings

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// startLB opens IPVS and starts the health checker and the balancer.
func startLB(log *slog.Logger, reg prometheus.Registerer, stateDir, procSys string, onApplied func()) (*loadBalancer, error) {
	// moby/ipvs logs through logrus; send that to our log.
	logrus.SetOutput(slogWriter{log.With("from", "moby/ipvs")})
	logrus.SetFormatter(&logrus.TextFormatter{DisableTimestamp: true, DisableColors: true})
	state := ""
	if stateDir != "" {
		state = filepath.Join(stateDir, "ipvs.json")
	}
	dir, err := lvs.New(lvs.Options{Logger: log, StateFile: state})
	if err != nil {
		return nil, err
	}
	lb := &loadBalancer{log: log, dir: dir, procSys: procSys}
	lb.hc = healthcheck.New(healthcheck.Options{Logger: log, Registerer: reg, OnChange: func(r healthcheck.Result) { lb.bal.HealthChanged(r) }})
	lb.bal = balancer.New(dir, lb.hc, balancer.Options{Logger: log, Registerer: reg, OnApplied: onApplied})
	ctx, cancel := context.WithCancel(context.Background())
	lb.cancel = cancel
	lb.wg.Add(3)
	go func() { defer lb.wg.Done(); lb.hc.Run(ctx) }()
	go func() { defer lb.wg.Done(); lb.bal.Run(ctx) }()
	go func() { defer lb.wg.Done(); lb.resync(ctx) }()
	return lb, nil
}

// apply sets the kernel settings and the virtual services of want.
func (lb *loadBalancer) apply(ctx context.Context, want *config.Desired) error {
	ks := want.Kernel
	ks.ProcSys = lb.procSys
	if reals := want.NATReals4; len(reals) > 0 && !want.RedirectsKept {
		ifaces, err := connectedTo(reals, false)
		if err != nil {
			lb.log.Warn("finding the interfaces of NAT real servers, to turn ICMP redirects off there", "err", err)
		}
		ks.NoRedirects = ifaces
	}
	lb.setWarnings(natWarnings(want, connectedTo))
	return errors.Join(ks.Apply(), lb.bal.Sync(ctx, want.VirtualServers))
}

// natWarnings says where NAT real servers share a segment with this node
// and nothing keeps the node from redirecting them past IPVS: IPv4 with
// kernel.sendRedirects: true, and IPv6, which has no such switch. If the
// clients are on that segment too, the real servers learn from an ICMP
// redirect to answer them directly, and their connections hang.
func natWarnings(want *config.Desired, connected func([]netip.Addr, bool) ([]string, error)) []string {
	var out []string
	if want.RedirectsKept {
		if ifaces, _ := connected(want.NATReals4, false); len(ifaces) > 0 {
			out = append(out, fmt.Sprintf("kernel.sendRedirects is true and IPv4 NAT real servers are on the segment of %s: "+
				"clients on that segment too get answers that bypass IPVS and their connections hang (leave sendRedirects unset, or use DR)", strings.Join(ifaces, ", ")))
		}
	}
	if ifaces, _ := connected(want.NATReals6, true); len(ifaces) > 0 {
		out = append(out, fmt.Sprintf("IPv6 NAT real servers are on the segment of %s, and IPv6 has no switch for ICMP redirects: "+
			"clients on that segment too get answers that bypass IPVS and their connections hang (put clients and real servers on different segments, or use DR)", strings.Join(ifaces, ", ")))
	}
	return out
}

// setWarnings keeps the topology warnings for status, logging each new one.
func (lb *loadBalancer) setWarnings(w []string) {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	for _, s := range w {
		if !slices.Contains(lb.warnings, s) {
			lb.log.Warn(s)
		}
	}
	lb.warnings = w
}

// Warnings returns the topology warnings of the configuration in force.
func (lb *loadBalancer) Warnings() []string {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	return slices.Clone(lb.warnings)
}

// resync reads the IPVS table again now and then and repairs it. It
// writes the balancer's own last desired state, not a configuration read
// before: a resync racing with apply cannot put an older one back.
func (lb *loadBalancer) resync(ctx context.Context) {
	t := time.NewTicker(resyncEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		lb.dir.Resync()
		if err := lb.bal.Resync(ctx); err != nil {
			lb.log.Error("periodic IPVS resync", "err", err)
		}
	}
}

// stop ends the checks. The IPVS services stay: a restarted keepvip adopts
// them and established connections survive.
func (lb *loadBalancer) stop() {
	lb.cancel()
	lb.wg.Wait()
}

func (lb *loadBalancer) status(ctx context.Context) ([]VirtualServerStatus, error) {
	kernel, err := lb.dir.Status()
	if err != nil {
		return nil, err
	}
	byKey := make(map[lvs.Key]lvs.ServiceStatus, len(kernel))
	for _, s := range kernel {
		byKey[s.Key] = s
	}
	results, err := lb.bal.Health(ctx)
	if err != nil {
		return nil, err
	}
	health := make(map[string]healthcheck.Result, len(results))
	for _, r := range results {
		health[r.Key] = r
	}
	var out []VirtualServerStatus
	for _, s := range lb.bal.Services() {
		vs := VirtualServerStatus{Name: s.Name, Service: s.Key.String(), Scheduler: s.Scheduler, Unhealthy: s.OnUnhealthy.String()}
		if s.Persistence > 0 {
			vs.Persistence = s.Persistence.String()
		}
		ks := byKey[s.Key]
		inKernel := map[lvs.RealKey]lvs.RealServer{}
		for _, r := range ks.Reals {
			inKernel[lvs.RealKey{Addr: r.Addr, Port: r.Port}] = r
		}
		for _, r := range s.Reals {
			port := r.Port
			if port == 0 && r.Forward != lvs.NAT {
				port = s.Port
			}
			rk := lvs.RealKey{Addr: r.Addr, Port: port}
			rs := RealServerStatus{Address: netip.AddrPortFrom(r.Addr, port).String(), Forward: r.Forward.String(),
				ConfiguredWeight: r.Weight, Health: "unchecked"}
			if k, ok := inKernel[rk]; ok {
				rs.InKernel, rs.Weight = true, k.Weight
				c := ks.Conns[rk]
				rs.Active, rs.Inactive = c.Active, c.Inactive
			}
			if h, ok := health[balancer.TargetKey(s.Key, r)]; ok {
				rs.Health = "unhealthy"
				if h.Healthy {
					rs.Health = "healthy"
				}
				rs.LastCheck, rs.LastChange, rs.Reason = h.Checked, h.Changed, h.Reason
			}
			vs.RealServers = append(vs.RealServers, rs)
		}
		out = append(out, vs)
	}
	return out, nil
}

// slogWriter turns lines written by another logger into slog warnings.
type slogWriter struct{ log *slog.Logger }

func (w slogWriter) Write(p []byte) (int, error) {
	for _, line := range strings.Split(strings.TrimSpace(string(p)), "\n") {
		if line != "" {
			w.log.Warn(line)
		}
	}
	return len(p), nil
}

// ipvsUnavailable explains why load balancing does not run.
func ipvsUnavailable(err error) string {
	return fmt.Sprintf("IPVS unavailable, load balancing off: %v", err)
}

// connectedTo returns the interfaces with an IPv4 subnet that holds one of
// addrs: those a NAT director forwards real servers' replies out of, in
// through the same interface when its clients are on that segment too.
func connectedTo(addrs []netip.Addr, v6 bool) ([]string, error) {
	if len(addrs) == 0 {
		return nil, nil
	}
	fam := netlink.FAMILY_V4
	if v6 {
		fam = netlink.FAMILY_V6
	}
	list, err := netlink.AddrList(nil, fam)
	if err != nil {
		return nil, fmt.Errorf("listing addresses: %w", err)
	}
	var out []string
	names := map[int]string{}
	for _, a := range list {
		ones, bits := a.Mask.Size()
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok || ones == bits {
			continue // a host address (a VIP): no subnet
		}
		p := netip.PrefixFrom(ip.Unmap(), ones).Masked()
		if !slices.ContainsFunc(addrs, p.Contains) {
			continue
		}
		name, ok := names[a.LinkIndex]
		if !ok {
			l, err := netlink.LinkByIndex(a.LinkIndex)
			if err != nil {
				continue // gone since
			}
			name = l.Attrs().Name
			names[a.LinkIndex] = name
		}
		if !slices.Contains(out, name) {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out, nil
}
