// Command vm runs programs in keepvip's IPVS test machine (test/framework/vm):
//
//	go run ./hack/vm prepare
//	go run ./hack/vm [flags] run -- PROGRAM [ARGS...]
//	go run ./hack/vm [flags] sh 'SHELL COMMANDS'
//
// prepare installs what the host needs and caches the kernel, and prints
// where. run copies PROGRAM into the machine if it is a host file (else it
// is a command of the guest's, like ipvsadm), runs it there and passes on
// its stdout, stderr and exit status. sh runs a busybox sh script there.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/keepvip/keepvip/test/framework/vm"
)

func main() {
	fl := flag.NewFlagSet("vm", flag.ExitOnError)
	timeout := fl.Duration("timeout", 10*time.Minute, "bound on the whole run, boot included")
	cmdTimeout := fl.Duration("cmd-timeout", 0, "bound on the command in the guest (0: -timeout only)")
	mem := fl.Int("mem", 1024, "guest memory in MiB")
	cpus := fl.Int("cpus", 0, "guest CPUs (0: the host's, at most 2)")
	console := fl.Bool("console", false, "copy the guest console to stderr as it comes")
	verbose := fl.Bool("v", false, "report boot and run times on stderr")
	modules := fl.String("modules", "", "comma-separated kernel modules to load besides the default ones")
	var env multi
	fl.Var(&env, "env", "KEY=VALUE for the guest command (repeatable)")
	var files multi
	fl.Var(&files, "file", "GUEST_PATH=HOST_PATH to copy into the guest (repeatable)")
	fl.Usage = func() {
		fmt.Fprintf(fl.Output(), "usage: vm [flags] prepare | run -- PROGRAM [ARGS...] | sh 'COMMANDS'\n")
		fl.PrintDefaults()
	}
	fl.Parse(os.Args[1:])
	args := fl.Args()
	if len(args) == 0 {
		fl.Usage()
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	switch args[0] {
	case "prepare":
		img, err := vm.Prepare(ctx)
		if err != nil {
			fatal(err)
		}
		fmt.Printf("kernel %s %s (%s)\n%s\n", img.Package, img.Version, img.Release, img.Kernel)
		return
	case "run", "sh":
	default:
		fl.Usage()
		os.Exit(2)
	}

	opts := vm.Options{
		Env: env, Timeout: *timeout, CommandTimeout: *cmdTimeout,
		MemoryMB: *mem, CPUs: *cpus, Files: map[string]string{},
	}
	if *modules != "" {
		opts.Modules = strings.Split(*modules, ",")
	}
	for _, f := range files {
		g, h, ok := strings.Cut(f, "=")
		if !ok {
			fatal(fmt.Errorf("-file %q: want GUEST_PATH=HOST_PATH", f))
		}
		opts.Files[g] = h
	}
	if *console {
		opts.Console = os.Stderr
	}
	rest := args[1:]
	if len(rest) > 0 && rest[0] == "--" {
		rest = rest[1:]
	}
	if len(rest) == 0 {
		fl.Usage()
		os.Exit(2)
	}
	if args[0] == "sh" {
		opts.Commands = [][]string{{"sh", "-c", strings.Join(rest, " ")}}
	} else {
		argv := append([]string(nil), rest...)
		if st, err := os.Stat(argv[0]); err == nil && st.Mode().IsRegular() {
			abs, err := filepath.Abs(argv[0])
			if err != nil {
				fatal(err)
			}
			opts.Binaries = []string{abs}
			argv[0] = vm.GuestBinDir + "/" + filepath.Base(abs)
		}
		opts.Commands = [][]string{argv}
	}

	res, err := vm.Run(ctx, opts)
	for _, c := range res.Commands {
		os.Stdout.Write(c.Stdout)
		os.Stderr.Write(c.Stderr)
	}
	if *verbose && res.Image != nil {
		fmt.Fprintf(os.Stderr, "vm: %s: boot %v, total %v\n", res.Image.Release,
			res.Boot.Round(time.Millisecond), res.Elapsed.Round(time.Millisecond))
	}
	if err != nil {
		fatal(err)
	}
	c := res.Commands[0]
	if c.TimedOut {
		fmt.Fprintf(os.Stderr, "vm: %v\n", c.Err())
	}
	os.Exit(min(c.ExitCode, 255))
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(s string) error { *m = append(*m, s); return nil }

func fatal(err error) {
	fmt.Fprintln(os.Stderr, err)
	os.Exit(1)
}
