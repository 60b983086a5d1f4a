// Command kubebin builds (or finds in the cache) the kube-apiserver and
// kubectl binaries that package kubetest runs, and prints their directory.
// `make test` runs it first so that the build, several minutes when cold,
// is not charged to a test's timeout:
//
//	go run ./test/framework/kubetest/cmd/kubebin
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/keepvip/keepvip/test/framework/kubetest"
)

func main() {
	timeout := flag.Duration("timeout", 30*time.Minute, "give up building after this long")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("kubebin: ")

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()

	start := time.Now()
	bins, err := kubetest.Binaries(ctx)
	if err != nil {
		log.Fatal(err)
	}
	if d := time.Since(start); d > time.Second {
		log.Printf("built in %s", d.Round(time.Second))
	}
	fmt.Println(filepath.Dir(bins.APIServer))
}
