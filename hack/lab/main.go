// Command keepvip-lab runs keepvip in a network-namespace lab on this
// machine (the scenarios are in test/framework/scenario): `demo` shows an
// election, a failover and a handoff as a client sees them, then the
// Kubernetes path where a kube-apiserver is built; `bench` measures
// failover and handoff of keepvip and of keepalived with the same
// settings; `bgpbench` measures routes following VRRP through FRR;
// `bfdbench` how soon routers stop routing to a failed node, with BFD and
// without. It needs root; everything it creates is removed when it exits.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/keepvip/keepvip/test/framework/scenario"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: keepvip-lab demo | bench [-runs N] [-quick] | bgpbench [-runs N] | bfdbench [-runs N]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	var err error
	switch os.Args[1] {
	case "demo":
		if err = scenario.Demo(ctx); err == nil {
			err = scenario.KubeDemo(ctx)
		}
	case "bench":
		fs := flag.NewFlagSet("bench", flag.ExitOnError)
		runs := fs.Int("runs", 10, "measured runs per case")
		quick := fs.Bool("quick", false, "only the 100 ms cases")
		fs.Parse(os.Args[2:])
		err = scenario.Bench(ctx, *runs, *quick)
	case "bgpbench":
		fs := flag.NewFlagSet("bgpbench", flag.ExitOnError)
		runs := fs.Int("runs", 10, "kill-and-restart cycles (two transitions each)")
		fs.Parse(os.Args[2:])
		err = scenario.BGPBench(ctx, *runs)
	case "bfdbench":
		fs := flag.NewFlagSet("bfdbench", flag.ExitOnError)
		runs := fs.Int("runs", 10, "link cuts, and as many hangs, of a keepvip node")
		fs.Parse(os.Args[2:])
		err = scenario.BFDBench(ctx, *runs)
	case "announce": // run by bgpbench inside a node
		err = scenario.Announce(os.Args[2:])
	default:
		err = fmt.Errorf("unknown command %q", os.Args[1])
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "keepvip-lab:", err)
		os.Exit(1)
	}
}
