// Command keepvip keeps virtual IPs highly available with VRRP.
//
//	keepvip run --config FILE        run the daemon
//	keepvip status [-o table|json|yaml]
//	keepvip validate FILE            check a configuration and exit
//	keepvip version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/keepvip/keepvip/config"
	"github.com/keepvip/keepvip/internal/daemon"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

const defaultSocket = "/run/keepvip/keepvip.sock"

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprint(w, `keepvip keeps virtual IPs highly available with VRRP (RFC 9568).

Usage:
  keepvip run --config FILE [--status-socket PATH] [--metrics-addr ADDR] [--state-dir DIR] [--log-level LEVEL]
  keepvip status [--socket PATH] [-o table|json|yaml]
  keepvip validate FILE
  keepvip version

Run 'keepvip COMMAND -h' for the flags of a command.
`)
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	var err error
	switch args[0] {
	case "run":
		err = runDaemon(args[1:], stderr)
	case "status":
		err = runStatus(args[1:], stdout)
	case "validate":
		err = runValidate(args[1:], stdout)
	case "version":
		fmt.Fprintln(stdout, "keepvip", buildVersion())
	case "-h", "--help", "help":
		usage(stdout)
	default:
		fmt.Fprintf(stderr, "keepvip: unknown command %q\n\n", args[0])
		usage(stderr)
		return 2
	}
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &ue):
		fmt.Fprintln(stderr, "keepvip:", err)
		return 2
	default:
		fmt.Fprintln(stderr, "keepvip:", err)
		return 1
	}
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "dev"
}

// envOr returns the environment variable key, or def.
func envOr(key, def string) string {
	if v, ok := os.LookupEnv(key); ok {
		return v
	}
	return def
}

func runDaemon(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("keepvip run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg := fs.String("config", envOr("KEEPVIP_CONFIG", ""), "configuration file (env KEEPVIP_CONFIG)")
	sock := fs.String("status-socket", envOr("KEEPVIP_STATUS_SOCKET", defaultSocket), "unix socket for 'keepvip status'; empty for none (env KEEPVIP_STATUS_SOCKET)")
	metrics := fs.String("metrics-addr", envOr("KEEPVIP_METRICS_ADDR", ""), "address for /metrics, /healthz and /readyz, e.g. :9742; empty for none (env KEEPVIP_METRICS_ADDR)")
	stateDir := fs.String("state-dir", envOr("KEEPVIP_STATE_DIR", "/var/lib/keepvip"), "directory for state kept across restarts (the IPVS services keepvip created); empty for none (env KEEPVIP_STATE_DIR)")
	level := fs.String("log-level", envOr("KEEPVIP_LOG_LEVEL", "info"), "debug, info, warn or error (env KEEPVIP_LOG_LEVEL)")
	format := fs.String("log-format", envOr("KEEPVIP_LOG_FORMAT", "text"), "text or json (env KEEPVIP_LOG_FORMAT)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cfg == "" {
		return usageError{"run: --config is required"}
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		return usageError{fmt.Sprintf("run: --log-level %q: want debug, info, warn or error", *level)}
	}
	hopts := &slog.HandlerOptions{Level: lv}
	var h slog.Handler
	switch *format {
	case "text":
		h = slog.NewTextHandler(stderr, hopts)
	case "json":
		h = slog.NewJSONHandler(stderr, hopts)
	default:
		return usageError{fmt.Sprintf("run: --log-format %q: want text or json", *format)}
	}
	log := slog.New(h)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reload := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default:
			}
		}
	}()
	return daemon.Run(ctx, daemon.Options{
		ConfigFile:   *cfg,
		StatusSocket: *sock,
		MetricsAddr:  *metrics,
		StateDir:     *stateDir,
		Version:      buildVersion(),
		Logger:       log,
		Reload:       reload,
	})
}

func runValidate(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("keepvip validate", flag.ContinueOnError)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{"validate: want exactly one FILE"}
	}
	path := fs.Arg(0)
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	c, err := config.Parse(data)
	if err != nil {
		msgs := strings.Split(err.Error(), "\n")
		return fmt.Errorf("%s: %d problem(s):\n  %s", path, len(msgs), strings.Join(msgs, "\n  "))
	}
	fmt.Fprintf(stdout, "%s: ok, %d VRRP instance(s)\n", path, len(c.Instances))
	return nil
}

func runStatus(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("keepvip status", flag.ContinueOnError)
	sock := fs.String("socket", envOr("KEEPVIP_STATUS_SOCKET", defaultSocket), "status socket of the daemon (env KEEPVIP_STATUS_SOCKET)")
	out := fs.String("o", "table", "output: table, json or yaml")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := daemon.GetStatus(ctx, *sock)
	if err != nil {
		return err
	}
	return printStatus(stdout, s, *out, time.Now())
}
