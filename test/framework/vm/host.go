package vm

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"
)

// hostTool is a command the host needs and the Debian package that has it.
type hostTool struct {
	cmd, pkg string
	static   bool // the binary must be statically linked
}

var hostTools = []hostTool{
	{cmd: "qemu-system-x86_64", pkg: "qemu-system-x86"},
	{cmd: "busybox", pkg: "busybox-static", static: true},
	{cmd: "ip", pkg: "iproute2"},
	{cmd: "ipvsadm", pkg: "ipvsadm"},
	{cmd: "xz", pkg: "xz-utils"},
	{cmd: "ldd", pkg: "libc-bin"},
	{cmd: "dash", pkg: "dash"},
}

// Commands that come with Debian itself: without them this is not a host
// the harness knows how to provision.
var baseTools = []string{"apt-get", "apt-cache", "dpkg-deb"}

// tools holds the host paths of the commands the harness runs.
type tools struct {
	qemu, busybox, ip, ipvsadm, xz, ldd, dash string
}

var installMu sync.Mutex

// EnsureHost installs with apt-get what the harness needs on the host and
// is missing: qemu-system-x86, busybox-static, iproute2, ipvsadm, xz-utils.
// It does nothing when all is there; installing needs root.
func EnsureHost(ctx context.Context) error {
	_, err := ensureTools(ctx)
	return err
}

func ensureTools(ctx context.Context) (tools, error) {
	installMu.Lock()
	defer installMu.Unlock()
	for _, c := range baseTools {
		if _, err := exec.LookPath(c); err != nil {
			return tools{}, fmt.Errorf("vm: %s not found: the VM harness needs a Debian host", c)
		}
	}
	missing := missingPackages()
	if len(missing) > 0 {
		if os.Geteuid() != 0 {
			return tools{}, fmt.Errorf("vm: needs root to install %s", strings.Join(missing, " "))
		}
		if err := aptInstall(ctx, missing); err != nil {
			return tools{}, err
		}
		if still := missingPackages(); len(still) > 0 {
			return tools{}, fmt.Errorf("vm: still missing after apt-get install: %s", strings.Join(still, " "))
		}
	}
	var t tools
	for _, p := range []struct {
		dst *string
		cmd string
	}{{&t.qemu, "qemu-system-x86_64"}, {&t.busybox, "busybox"}, {&t.ip, "ip"},
		{&t.ipvsadm, "ipvsadm"}, {&t.xz, "xz"}, {&t.ldd, "ldd"}, {&t.dash, "dash"}} {
		path, err := exec.LookPath(p.cmd)
		if err != nil {
			return tools{}, fmt.Errorf("vm: %w", err)
		}
		*p.dst = path
	}
	return t, nil
}

// missingPackages lists the Debian packages of the host tools that are not
// installed (or, for busybox, not statically linked).
func missingPackages() []string {
	var pkgs []string
	for _, ht := range hostTools {
		path, err := exec.LookPath(ht.cmd)
		if err == nil && ht.static {
			if dyn, derr := isDynamic(path); derr != nil || dyn {
				err = fmt.Errorf("not static")
			}
		}
		if err != nil {
			pkgs = append(pkgs, ht.pkg)
		}
	}
	return pkgs
}

// aptInstall installs pkgs, refreshing the package lists once if the first
// attempt fails.
func aptInstall(ctx context.Context, pkgs []string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	install := append([]string{"-o", "DPkg::Lock::Timeout=120", "install", "-y", "--no-install-recommends"}, pkgs...)
	out, err := runApt(ctx, install...)
	if err == nil {
		return nil
	}
	if uout, uerr := runApt(ctx, "update"); uerr != nil {
		return fmt.Errorf("vm: apt-get install %s: %v\n%s\napt-get update: %v\n%s",
			strings.Join(pkgs, " "), err, tail(out, 20), uerr, tail(uout, 20))
	}
	if out, err = runApt(ctx, install...); err != nil {
		return fmt.Errorf("vm: apt-get install %s: %v\n%s", strings.Join(pkgs, " "), err, tail(out, 20))
	}
	return nil
}

func runApt(ctx context.Context, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "apt-get", args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	return cmd.CombinedOutput()
}

// isDynamic reports whether the ELF file at path asks for a dynamic loader.
func isDynamic(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return true, nil
		}
	}
	return false, nil
}

// tail returns the last n lines of b.
func tail(b []byte, n int) string {
	b = bytes.TrimRight(b, "\n")
	lines := bytes.Split(b, []byte("\n"))
	if len(lines) > n {
		lines = append([][]byte{[]byte(fmt.Sprintf("[... %d lines before]", len(lines)-n))}, lines[len(lines)-n:]...)
	}
	return string(bytes.Join(lines, []byte("\n")))
}
