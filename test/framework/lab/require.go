package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keepvip/keepvip/test/framework/netnstest"
)

// EnvNoInstall, when "1", stops EnsureTools from installing anything.
const EnvNoInstall = "KEEPVIP_LAB_NO_INSTALL"

// debPackages maps commands EnsureTools may install to Debian packages.
var debPackages = map[string]string{
	"keepalived": "keepalived",
	"tshark":     "tshark",
	"ping":       "iputils-ping",
	"tcpdump":    "tcpdump",
	"bridge":     "iproute2",
	"ip":         "iproute2",
	// The real nodes of test/framework/kubenodes.
	"containerd":              "containerd",
	"ctr":                     "containerd",
	"runc":                    "runc",
	"iptables":                "iptables",
	"busybox":                 "busybox-static",
	"nsenter":                 "util-linux",
	"etcd":                    "etcd-server",
	"/usr/lib/cni/bridge":     "containernetworking-plugins",
	"/usr/lib/cni/host-local": "containernetworking-plugins",
	"/usr/lib/cni/loopback":   "containernetworking-plugins",
}

var (
	netnsOnce sync.Once
	netnsErr  error
)

// Check reports why labs cannot run here (nil if they can): the process
// must be root, `ip` and `unshare` must be installed, and creating a
// network namespace must work. commands are further commands the caller
// needs; missing ones are installed with EnsureTools when possible.
func Check(commands ...string) error {
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, c := range []string{"ip", "unshare"} {
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, "command "+c)
		}
	}
	if len(missing) > 0 {
		return errors.New("needs " + strings.Join(missing, ", "))
	}
	netnsOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		defer cancel()
		if _, err := runCmd(ctx, "unshare", "--net", "--", "true"); err != nil {
			netnsErr = fmt.Errorf("cannot create a network namespace: %w", err)
		}
	})
	if netnsErr != nil {
		return netnsErr
	}
	return EnsureTools(nil, commands...)
}

// Require skips t unless labs can run here (see Check), or fails it under
// KEEPVIP_PRIVILEGED=1 (netnstest.Unavailable).
func Require(t netnstest.TB, commands ...string) {
	t.Helper()
	if err := Check(commands...); err != nil {
		netnstest.Unavailable(t, "lab: "+err.Error())
	}
}

var installMu sync.Mutex

// EnsureTools makes sure commands are on PATH, installing the Debian
// packages that provide missing ones (keepalived, tshark, ping, tcpdump)
// with apt-get when running as root and KEEPVIP_LAB_NO_INSTALL is not 1.
// logf may be nil.
func EnsureTools(logf func(format string, args ...any), commands ...string) error {
	installMu.Lock()
	defer installMu.Unlock()
	var missing, pkgs []string
	known := true
	for _, c := range commands {
		if _, err := exec.LookPath(c); err == nil {
			continue
		}
		missing = append(missing, c)
		p, ok := debPackages[c]
		known = known && ok
		if ok && !slices.Contains(pkgs, p) {
			pkgs = append(pkgs, p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	fail := func(why string) error {
		return fmt.Errorf("needs command(s) %s (%s)", strings.Join(missing, ", "), why)
	}
	if !known {
		return fail("no known Debian package")
	}
	if os.Getenv(EnvNoInstall) == "1" {
		return fail(EnvNoInstall + "=1")
	}
	if _, err := exec.LookPath("apt-get"); err != nil || os.Geteuid() != 0 {
		return fail("cannot apt-get install " + strings.Join(pkgs, " "))
	}
	if logf != nil {
		logf("lab: installing %s", strings.Join(pkgs, " "))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	install := func() error {
		args := append([]string{"env", "DEBIAN_FRONTEND=noninteractive", "apt-get",
			"-o", "DPkg::Lock::Timeout=120", "install", "-y", "--no-install-recommends"}, pkgs...)
		_, err := runCmd(ctx, args[0], args[1:]...)
		return err
	}
	if err := install(); err != nil {
		// The package lists may be missing or stale.
		if _, uerr := runCmd(ctx, "apt-get", "-o", "DPkg::Lock::Timeout=120", "update"); uerr != nil {
			return fmt.Errorf("installing %s: %w; apt-get update: %w", strings.Join(pkgs, " "), err, uerr)
		}
		if err := install(); err != nil {
			return fmt.Errorf("installing %s: %w", strings.Join(pkgs, " "), err)
		}
	}
	for _, c := range missing {
		if _, err := exec.LookPath(c); err != nil {
			return fmt.Errorf("installed %s but %s is still missing", strings.Join(pkgs, " "), c)
		}
	}
	return nil
}

// ForTest returns a new lab for t, closed when t ends (a lab that cannot
// be cleaned up fails t). Where labs cannot run here, t is skipped or
// failed as Require says.
func ForTest(t testing.TB, commands ...string) *Lab {
	t.Helper()
	Require(t, commands...)
	l, err := New(t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("closing the lab: %v", err)
		}
	})
	return l
}
