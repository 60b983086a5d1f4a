package vm

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
)

// GuestBinDir is where Options.Binaries are in the guest (on its PATH).
const GuestBinDir = "/usr/local/bin"

// guestPATH is the commands' PATH: the real ip and ipvsadm in /usr/sbin
// come before busybox's applets in /bin.
const guestPATH = GuestBinDir + ":/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"

// initramfs describes one guest's root file system.
type initramfs struct {
	img   *Image
	mods  []*module
	init  []byte            // the /init script
	bins  []string          // host paths, to GuestBinDir
	files map[string]string // guest path -> host file or directory
	sbin  []string          // host tools copied to /usr/sbin
}

// write builds the initramfs at dst.
func (r *initramfs) write(ctx context.Context, dst string) error {
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	c := newCPIOWriter(f)
	for _, d := range []string{"/bin", "/sbin", "/usr/bin", "/usr/sbin", GuestBinDir,
		"/proc", "/sys", "/dev", "/run", "/root", "/etc", "/var", "/mnt"} {
		c.Dir(d, 0o755)
	}
	c.Dir("/tmp", 0o1777)
	c.Dir("/var/tmp", 0o1777)
	c.Symlink("/var/run", "../run")
	// The kernel opens /dev/console for init before /init mounts devtmpfs.
	c.CharDev("/dev/console", 0o600, 5, 1)
	c.CharDev("/dev/null", 0o666, 1, 3)
	c.CharDev("/dev/ttyS0", 0o660, 4, 64)
	c.CharDev("/dev/ttyS1", 0o660, 4, 65)

	c.Bytes("/etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n"))
	c.Bytes("/etc/group", 0o644, []byte("root:x:0:\n"))
	c.Bytes("/etc/hosts", 0o644, []byte("127.0.0.1\tlocalhost\n::1\tlocalhost\n"))
	c.Bytes("/etc/nsswitch.conf", 0o644, []byte("hosts: files\n"))
	c.Bytes("/etc/hostname", 0o644, []byte("keepvip-vm\n"))

	// The host's ip and ipvsadm, and the caller's binaries, with the
	// shared libraries of those that are dynamically linked.
	libs := map[string]bool{}
	for _, src := range r.sbin {
		c.File(path.Join("/usr/sbin", filepath.Base(src)), src, 0o755)
		if err := r.addLibs(ctx, src, libs); err != nil {
			f.Close()
			return err
		}
	}
	// /bin/sh is dash: busybox's sh runs its own applets before looking
	// at PATH, so `ip` in a script would be busybox's, not iproute2's.
	c.File("/bin/dash", r.img.tools.dash, 0o755)
	c.Symlink("/bin/sh", "dash")
	if err := r.addLibs(ctx, r.img.tools.dash, libs); err != nil {
		f.Close()
		return err
	}
	for _, src := range r.bins {
		c.File(path.Join(GuestBinDir, filepath.Base(src)), src, 0)
		if err := r.addLibs(ctx, src, libs); err != nil {
			f.Close()
			return err
		}
	}
	for _, lib := range sortedKeys(libs) {
		c.File(lib, lib, 0o755)
	}

	// busybox and every applet, in /bin; modprobe also where the kernel
	// runs it for request_module.
	c.File("/bin/busybox", r.img.tools.busybox, 0o755)
	applets, err := busyboxApplets(ctx, r.img.tools.busybox)
	if err != nil {
		f.Close()
		return err
	}
	for _, a := range applets {
		c.Symlink("/bin/"+a, "busybox")
	}
	c.Symlink("/sbin/modprobe", "/bin/busybox")

	modRoot := "/lib/modules/" + r.img.Release
	for _, m := range r.mods {
		c.File(path.Join(modRoot, m.Path), filepath.Join(r.img.Dir, "modules", m.Path), 0o644)
	}
	c.Bytes(modRoot+"/modules.dep", 0o644, r.img.modules.modulesDep(r.mods))
	c.Bytes(modRoot+"/modules.alias", 0o644, modulesAlias(r.mods))

	for _, g := range sortedKeys(r.files) {
		if err := addTree(c, g, r.files[g]); err != nil {
			f.Close()
			return err
		}
	}
	c.Bytes("/init", 0o755, r.init)
	if err := c.Close(); err != nil {
		f.Close()
		return fmt.Errorf("initramfs: %w", err)
	}
	return f.Close()
}

// addLibs adds to libs the shared libraries (and dynamic loader) the ELF
// binary at src needs, as ldd finds them on the host. Static binaries and
// scripts need none.
func (r *initramfs) addLibs(ctx context.Context, src string, libs map[string]bool) error {
	dyn, err := isDynamic(src)
	if err != nil || !dyn {
		return nil // not ELF (a script) or static
	}
	out, err := exec.CommandContext(ctx, r.img.tools.ldd, src).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ldd %s: %v\n%s", src, err, out)
	}
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		var p string
		if i := indexOf(fields, "=>"); i >= 0 {
			if i+1 >= len(fields) || fields[i+1] == "not" {
				return fmt.Errorf("ldd %s: a library is not found: %s", src, strings.TrimSpace(line))
			}
			p = fields[i+1]
		} else {
			p = fields[0]
		}
		if strings.HasPrefix(p, "/") {
			libs[p] = true
		}
	}
	return nil
}

func indexOf(s []string, v string) int {
	for i, x := range s {
		if x == v {
			return i
		}
	}
	return -1
}

// busyboxApplets lists the applets the busybox binary has.
func busyboxApplets(ctx context.Context, busybox string) ([]string, error) {
	out, err := exec.CommandContext(ctx, busybox, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("%s --list: %w", busybox, err)
	}
	var applets []string
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" && !strings.Contains(a, "/") {
			applets = append(applets, a)
		}
	}
	if len(applets) == 0 {
		return nil, fmt.Errorf("%s --list lists no applets", busybox)
	}
	return applets, nil
}

// addTree adds the host file or directory src at guest path g.
func addTree(c *cpioWriter, g, src string) error {
	st, err := os.Stat(src)
	if err != nil {
		return err
	}
	if !st.IsDir() {
		c.File(g, src, 0)
		return nil
	}
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		gp := path.Join(g, filepath.ToSlash(rel))
		switch {
		case d.IsDir():
			c.Dir(gp, 0o755)
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			c.Symlink(gp, target)
		case d.Type().IsRegular():
			c.File(gp, p, 0)
		}
		return nil
	})
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
