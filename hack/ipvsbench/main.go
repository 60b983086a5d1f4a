// Command ipvsbench measures keepvip's IPVS programming and health checking
// and prints BENCH lines (test/framework/ipvsbench). The IPVS figures need
// a kernel with IPVS (make bench runs this in the test VM); -health runs
// only the health-check figure, which any Linux host can measure.
//
//	ipvsbench [-services N] [-reals N] [-changes N]   IPVS figures
//	ipvsbench -health [-targets N] [-seconds N]       health checks
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/keepvip/keepvip/test/framework/ipvsbench"
)

func main() {
	services := flag.Int("services", 10000, "virtual services")
	reals := flag.Int("reals", 10, "real servers per service")
	changes := flag.Int("changes", 101, "single changes measured (median)")
	health := flag.Bool("health", false, "measure health checking instead")
	cpuprofile := flag.String("cpuprofile", "", "write a CPU profile of the measured part")
	trialWho := flag.String("trial", "", "internal: run one trial (ipvsadm or keepvip) here")
	rulesFile := flag.String("rules", "", "internal: the ipvsadm -R file of the trial")
	quick := flag.Bool("quick", false, "internal: load only")
	serve := flag.Int("serve", 0, "internal: listen on this many loopback ports, print them, accept until stdin closes")
	targets := flag.Int("targets", 10000, "health-check targets")
	seconds := flag.Int("seconds", 10, "seconds of health checking measured")
	flag.Parse()
	var err error
	if *trialWho != "" {
		err = ipvsbench.Trial(*trialWho, *rulesFile, *services, *reals, *changes, *quick)
	} else if *serve > 0 {
		err = ipvsbench.ServeTargets(*serve)
	} else if *health {
		err = ipvsbench.Health(*targets, time.Duration(*seconds)*time.Second, *cpuprofile)
	} else {
		err = ipvsbench.IPVS(*services, *reals, *changes)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "ipvsbench:", err)
		os.Exit(1)
	}
}
