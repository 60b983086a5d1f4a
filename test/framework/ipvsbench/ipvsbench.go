// Package ipvsbench measures keepvip's IPVS programming (lvs) and health
// checking (healthcheck) and prints BENCH lines; hack/ipvsbench is its
// command. The IPVS figures need a kernel with IPVS (make bench runs them
// in the test VM); the health-check figure runs on any Linux host.
//
// Both run parts of themselves in child processes of the same program —
// IPVS trials each in a fresh network namespace, health-check targets in
// a process of their own so that the CPU measured is the checker's — so
// the program must answer `-trial WHO -rules FILE -services N -reals N
// -changes N [-quick]` with Trial and `-serve N` with ServeTargets.
package ipvsbench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/keepvip/keepvip/healthcheck"
	"github.com/keepvip/keepvip/lvs"
)

func table(n, reals int) []lvs.Service {
	out := make([]lvs.Service, n)
	for i := range out {
		s := lvs.Service{Key: lvs.Key{Addr: netip.AddrFrom4([4]byte{10, 100, byte(i >> 8), byte(i)}), Port: 80, Proto: lvs.TCP}, Scheduler: "wlc"}
		for j := range reals {
			s.Reals = append(s.Reals, lvs.RealServer{Addr: netip.AddrFrom4([4]byte{10, 200, byte(j), 1}), Port: 8080, Forward: lvs.NAT, Weight: 1})
		}
		out[i] = s
	}
	return out
}

// restoreFile writes the same table as ipvsadm -R input.
func restoreFile(svcs []lvs.Service) (string, error) {
	f, err := os.CreateTemp("", "ipvsbench-*.rules")
	if err != nil {
		return "", err
	}
	w := bufio.NewWriter(f)
	for _, s := range svcs {
		fmt.Fprintf(w, "-A -t %s:%d -s %s\n", s.Addr, s.Port, s.Scheduler)
		for _, r := range s.Reals {
			fmt.Fprintf(w, "-a -t %s:%d -r %s:%d -m -w %d\n", s.Addr, s.Port, r.Addr, r.Port, r.Weight)
		}
	}
	if err := w.Flush(); err != nil {
		return "", err
	}
	return f.Name(), f.Close()
}

func ipvsadm(stdin string, args ...string) error {
	cmd := exec.Command("ipvsadm", args...)
	if stdin != "" {
		f, err := os.Open(stdin)
		if err != nil {
			return err
		}
		defer f.Close()
		cmd.Stdin = f
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("ipvsadm %v: %w: %s", args, err, out)
	}
	return nil
}

func rssKiB() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			n, _ := strconv.Atoi(strings.Fields(l)[1])
			return n
		}
	}
	return 0
}

// IPVS compares keepvip and ipvsadm -R programming the same table
// from empty. IPVS keeps the real servers of deleted services in a trash
// list for a while and scans it on every new real server, so a table
// loaded right after a large flush loads slower: each trial therefore runs
// in a fresh network namespace (IPVS state is per namespace), keepvip and
// ipvsadm alternating.
func IPVS(n, reals, changes int) error {
	if err := lvs.Available(); err != nil {
		return err
	}
	rules, err := restoreFile(table(n, reals))
	if err != nil {
		return err
	}
	defer os.Remove(rules)
	var best [2]time.Duration
	for round := range 3 {
		for i, who := range []string{"ipvsadm", "keepvip"} {
			args := []string{"--net", "--", os.Args[0], "-trial", who, "-rules", rules,
				"-services", strconv.Itoa(n), "-reals", strconv.Itoa(reals), "-changes", strconv.Itoa(changes)}
			if round < 2 {
				args = append(args, "-quick")
			}
			cmd := exec.Command("unshare", args...)
			cmd.Stderr = os.Stderr
			out, err := cmd.Output()
			if err != nil {
				return fmt.Errorf("%s trial: %w", who, err)
			}
			var d time.Duration
			for _, line := range strings.Split(string(out), "\n") {
				if v, ok := strings.CutPrefix(line, "LOADED "); ok {
					d, _ = time.ParseDuration(v)
				} else if line != "" {
					fmt.Println(line) // BENCH lines of the last keepvip trial
				}
			}
			if d == 0 {
				return fmt.Errorf("%s trial printed no time", who)
			}
			fmt.Fprintf(os.Stderr, "ipvsbench: round %d: %s loaded %d rules in %v\n", round+1, who, n*(reals+1), d)
			if round == 0 || d < best[i] {
				best[i] = d
			}
		}
	}
	rules2 := float64(n * (reals + 1))
	fmt.Printf("BENCH ipvs_full_sync_%dx%d_ipvsadm_restore %.2f s\n", n, reals, best[0].Seconds())
	fmt.Printf("BENCH ipvs_full_sync_%dx%d_keepvip %.2f s\n", n, reals, best[1].Seconds())
	fmt.Printf("BENCH ipvs_full_sync_keepvip_vs_ipvsadm %.2f ratio\n", best[1].Seconds()/best[0].Seconds())
	fmt.Fprintf(os.Stderr, "ipvsbench: %.0f rules, best of 3: ipvsadm -R %v (%.0f us/rule), keepvip %v (%.0f us/rule)\n",
		rules2, best[0], float64(best[0].Microseconds())/rules2, best[1], float64(best[1].Microseconds())/rules2)
	return nil
}

// Trial loads the table once in this (fresh) network namespace and prints
// "LOADED <duration>"; the keepvip trial, unless quick, then measures a
// single change with the table present and the memory it holds.
func Trial(who, rules string, n, reals, changes int, quick bool) error {
	if out, err := exec.Command("ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("lo up: %v: %s", err, out)
	}
	if who == "ipvsadm" {
		start := time.Now()
		if err := ipvsadm(rules, "-R"); err != nil {
			return err
		}
		fmt.Printf("LOADED %v\n", time.Since(start))
		return nil
	}
	ctx := context.Background()
	svcs := table(n, reals)
	runtime.GC()
	dir, err := lvs.New(lvs.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	start := time.Now()
	if err := dir.Sync(ctx, svcs); err != nil {
		return err
	}
	fmt.Printf("LOADED %v\n", time.Since(start))
	if quick {
		return nil
	}
	// Memory with the table in place (the Director's image of it).
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	fmt.Printf("BENCH ipvs_memory_%dx%d_rss %.1f MiB\n", n, reals, float64(rssKiB())/1024)
	fmt.Printf("BENCH ipvs_memory_%dx%d_heap %.1f MiB\n", n, reals, float64(ms.HeapInuse)/(1<<20))
	// One real-server change with the table present: Update, as an
	// endpoint change or a health result does; and a full Sync of the
	// table with one change, as a periodic resync does.
	one := func(i int, full bool) (time.Duration, error) {
		s := svcs[(i*7919)%n]
		s.Reals = slices.Clone(s.Reals)
		s.Reals[i%reals].Weight ^= 1
		svcs[(i*7919)%n] = s
		start := time.Now()
		var err error
		if full {
			err = dir.Sync(ctx, svcs)
		} else {
			err = dir.Update(ctx, []lvs.Service{s}, nil)
		}
		return time.Since(start), err
	}
	for _, full := range []bool{false, true} {
		var ds []time.Duration
		count := changes
		if full {
			count = min(changes, 21)
		}
		for i := range count {
			d, err := one(i, full)
			if err != nil {
				return err
			}
			ds = append(ds, d)
		}
		slices.Sort(ds)
		name := "update"
		if full {
			name = "full_sync"
		}
		fmt.Printf("BENCH ipvs_one_change_%s_with_%d_services_median %.3f ms\n", name, n, float64(ds[len(ds)/2].Microseconds())/1000)
		fmt.Fprintf(os.Stderr, "ipvsbench: one change by %s: median %v, max %v over %d\n", name, ds[len(ds)/2], ds[len(ds)-1], len(ds))
	}
	return nil
}

// Health checks n targets every second for the given time and
// reports the CPU the checker used per second. The targets are TCP
// listeners on loopback addresses (127.0.0.0/8 answers on every address).
func Health(n int, measure time.Duration, profile string) error {
	// The targets listen in a child process, so that the CPU measured
	// here is the checker's alone.
	const ports = 50
	child := exec.Command(os.Args[0], "-serve", strconv.Itoa(ports))
	stdin, err := child.StdinPipe()
	if err != nil {
		return err
	}
	out, err := child.StdoutPipe()
	if err != nil {
		return err
	}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		return err
	}
	defer func() { stdin.Close(); child.Wait() }()
	var portList []int
	sc := bufio.NewScanner(out)
	for len(portList) < ports && sc.Scan() {
		p, err := strconv.Atoi(sc.Text())
		if err != nil {
			return fmt.Errorf("target server said %q", sc.Text())
		}
		portList = append(portList, p)
	}
	if len(portList) < ports {
		return fmt.Errorf("target server gave %d ports", len(portList))
	}
	// n targets over the listeners: each target is its own key, checked
	// on its own schedule, as n real servers would be.
	var targets []healthcheck.Target
	chk := healthcheck.DefaultCheck()
	chk.Interval, chk.Timeout = time.Second, 500*time.Millisecond
	for i := range n {
		targets = append(targets, healthcheck.Target{
			Key:   fmt.Sprintf("t%d", i),
			Addr:  netip.AddrPortFrom(netip.AddrFrom4([4]byte{127, 0, 0, 1}), uint16(portList[i%ports])),
			Check: chk,
		})
	}
	var failed atomic.Int64
	c := healthcheck.New(healthcheck.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnChange: func(r healthcheck.Result) {
			if !r.Healthy {
				failed.Add(1)
			}
		}})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx)
	if err := c.Sync(ctx, targets); err != nil {
		return err
	}
	time.Sleep(2 * time.Second) // every target into its cadence
	if profile != "" {
		f, err := os.Create(profile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	var r0, r1 syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &r0)
	t0 := time.Now()
	time.Sleep(measure)
	syscall.Getrusage(syscall.RUSAGE_SELF, &r1)
	wall := time.Since(t0)
	cpu := time.Duration(r1.Utime.Nano()-r0.Utime.Nano()+r1.Stime.Nano()-r0.Stime.Nano()) * time.Nanosecond
	results, err := c.Results(ctx)
	if err != nil {
		return err
	}
	checked := 0
	for _, r := range results {
		if !r.Checked.IsZero() {
			checked++
		}
	}
	fmt.Printf("BENCH healthcheck_%d_targets_1s_cpu %.3f cpu-s/s\n", n, cpu.Seconds()/wall.Seconds())
	fmt.Fprintf(os.Stderr, "ipvsbench: %d targets at 1 s: %v CPU over %v (the checker's process only); %d checked, %d went down\n",
		n, cpu.Round(time.Millisecond), wall.Round(time.Millisecond), checked, failed.Load())
	if checked != n || failed.Load() != 0 {
		return fmt.Errorf("%d of %d targets checked, %d went down", checked, n, failed.Load())
	}
	return nil
}

// ServeTargets listens on n loopback ports, prints them, and accepts and
// closes connections until stdin is closed.
func ServeTargets(n int) error {
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		fmt.Println(l.Addr().(*net.TCPAddr).Port)
		go func() {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				c.Close()
			}
		}()
	}
	io.Copy(io.Discard, os.Stdin)
	return nil
}
