package vm

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// EnvCache, when set, is the cache directory instead of
// $XDG_CACHE_HOME/keepvip-vm.
const EnvCache = "KEEPVIP_VM_CACHE"

// kernelMeta is the Debian package that linux-image-amd64 depends on.
const kernelMeta = "linux-image-amd64"

// Image is a kernel in the cache, ready to boot.
type Image struct {
	Dir     string // this kernel's cache directory
	Package string // Debian package, e.g. linux-image-6.1.0-48-amd64
	Version string // its Debian version, e.g. 6.1.172-1
	Release string // uname -r, e.g. 6.1.0-48-amd64
	Kernel  string // what qemu boots: vmlinux (PVH entry) or the bzImage
	PVH     bool   // Kernel is the uncompressed vmlinux, booted at its PVH entry

	tools   tools
	modules *moduleIndex
}

// manifest.json in a kernel's cache directory; written last, so a
// directory with one is complete.
type manifest struct {
	Package  string   `json:"package"`
	Version  string   `json:"version"`
	Release  string   `json:"release"`
	Kernel   string   `json:"kernel"`
	PVH      bool     `json:"pvh"`
	Modules  []module `json:"modules"`
	Builtin  []string `json:"builtin"`
	Built    string   `json:"built"`
	DebBytes int64    `json:"deb_bytes"`
	// Layout is cacheLayout when the directory was built: an older one
	// lacks modules the harness now loads, and is built again.
	Layout int `json:"layout"`
}

// cacheLayout changes whenever cachedModuleDirs does.
const cacheLayout = 2

// Module directories kept in the cache (relative to kernel/): networking,
// crypto and library modules, and the virtual network devices. The rest
// of the package (390 MB of drivers and file systems) is never extracted.
var cachedModuleDirs = []string{
	"net/core/", "net/ipv4/", "net/ipv6/", "net/netfilter/", "net/bridge/",
	"net/llc/", "net/802/", "net/8021q/", "net/sched/", "net/sctp/",
	"net/xfrm/", "net/key/", "net/psample/", "net/nsh/", "net/mpls/",
	"net/packet/", "net/unix/", "net/netlink/",
	"crypto/", "lib/", "arch/x86/crypto/",
	"drivers/net/ipvlan/", "drivers/net/vxlan/",
	// virtio_net and its bus, for Options.UserNet.
	"drivers/virtio/",
}

// cachedModule reports whether the module at rel (relative to
// /lib/modules/RELEASE) is kept in the cache.
func cachedModule(rel string) bool {
	if !strings.HasSuffix(rel, ".ko") {
		return false
	}
	k, ok := strings.CutPrefix(rel, "kernel/")
	if !ok {
		return false
	}
	if d, f := filepath.Split(k); d == "drivers/net/" && f != "" {
		return true
	}
	for _, p := range cachedModuleDirs {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// CacheDir is where kernels are cached: $KEEPVIP_VM_CACHE, else
// $XDG_CACHE_HOME/keepvip-vm, else ~/.cache/keepvip-vm.
func CacheDir() (string, error) {
	if d := os.Getenv(EnvCache); d != "" {
		return d, nil
	}
	base, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("vm: no cache directory: %w", err)
	}
	return filepath.Join(base, "keepvip-vm"), nil
}

// Prepare makes sure the host has what the harness needs (installing it
// with apt-get if not) and that the kernel linux-image-amd64 currently
// points at is in the cache, downloading and unpacking it if not. A second
// call finds everything in place and downloads nothing.
func Prepare(ctx context.Context) (*Image, error) {
	t, err := ensureTools(ctx)
	if err != nil {
		return nil, err
	}
	root, err := CacheDir()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, fmt.Errorf("vm: cache: %w", err)
	}
	pkg, version, rerr := resolveKernelCached(ctx, root)
	if rerr != nil {
		// Without apt's lists (a machine that never ran apt-get update, or
		// no network), a kernel already cached still does.
		img, err := newestCached(root)
		if err != nil {
			return nil, fmt.Errorf("vm: %v; and nothing usable in the cache %s: %v", rerr, root, err)
		}
		img.tools = t
		return img, nil
	}
	dir := filepath.Join(root, pkg+"_"+version)
	if img, err := loadImage(dir); err == nil {
		img.tools = t
		return img, nil
	}

	unlock, err := lockDir(ctx, root)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if img, err := loadImage(dir); err == nil { // built while we waited
		img.tools = t
		return img, nil
	}
	if err := buildCache(ctx, t, root, dir, pkg, version); err != nil {
		return nil, err
	}
	img, err := loadImage(dir)
	if err != nil {
		return nil, fmt.Errorf("vm: the cache just built is unreadable: %w", err)
	}
	pruneCache(root, dir)
	img.tools = t
	return img, nil
}

var (
	dependsRE = regexp.MustCompile(`(?m)^\s*Depends:\s*(linux-image-[^\s<>]+)\s*$`)
	versionRE = regexp.MustCompile(`(?m)^Version:\s*(\S+)\s*$`)
)

// resolveKernel asks apt which kernel package linux-image-amd64 depends
// on, and that package's candidate version. It reads apt's lists only,
// running apt-get update once if they do not know the package.
func resolveKernel(ctx context.Context) (pkg, version string, err error) {
	pkg, version, err = resolveKernelOnce(ctx)
	if err == nil {
		return pkg, version, nil
	}
	if os.Geteuid() != 0 {
		return "", "", err
	}
	if out, uerr := runApt(ctx, "update"); uerr != nil {
		return "", "", fmt.Errorf("%v; apt-get update: %v\n%s", err, uerr, tail(out, 10))
	}
	return resolveKernelOnce(ctx)
}

// resolved.json in the cache root remembers the last answer of
// resolveKernel with a fingerprint of apt's lists: apt-cache parses all of
// them each time (about 0.6 s a call here), and the answer changes only
// when they do.
type resolvedKernel struct {
	Lists   string `json:"lists"`
	Package string `json:"package"`
	Version string `json:"version"`
}

const aptLists = "/var/lib/apt/lists"

func resolveKernelCached(ctx context.Context, root string) (pkg, version string, err error) {
	file := filepath.Join(root, "resolved.json")
	fp := listsFingerprint()
	var r resolvedKernel
	if b, err := os.ReadFile(file); err == nil && fp != "" && json.Unmarshal(b, &r) == nil &&
		r.Lists == fp && r.Package != "" && r.Version != "" {
		return r.Package, r.Version, nil
	}
	if pkg, version, err = resolveKernel(ctx); err != nil {
		return "", "", err
	}
	if fp = listsFingerprint(); fp != "" {
		b, _ := json.Marshal(resolvedKernel{Lists: fp, Package: pkg, Version: version})
		tmp := file + ".tmp" + strconv.Itoa(os.Getpid())
		if os.WriteFile(tmp, b, 0o644) == nil {
			os.Rename(tmp, file)
		}
	}
	return pkg, version, nil
}

// listsFingerprint hashes the names, sizes and times of apt's lists, or
// is empty when there are none.
func listsFingerprint() string {
	entries, err := os.ReadDir(aptLists)
	if err != nil {
		return ""
	}
	h := sha256.New()
	n := 0
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() || e.Name() == "lock" {
			continue
		}
		fmt.Fprintf(h, "%s %d %d\n", e.Name(), info.Size(), info.ModTime().UnixNano())
		n++
	}
	if n == 0 {
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))
}

func resolveKernelOnce(ctx context.Context) (pkg, version string, err error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", kernelMeta).CombinedOutput()
	if err != nil {
		return "", "", fmt.Errorf("apt-cache depends %s: %v\n%s", kernelMeta, err, tail(out, 10))
	}
	m := dependsRE.FindSubmatch(out)
	if m == nil {
		return "", "", fmt.Errorf("apt-cache depends %s names no linux-image package:\n%s", kernelMeta, tail(out, 10))
	}
	pkg = string(m[1])
	out, err = exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", pkg).CombinedOutput()
	if err != nil {
		return "", "", fmt.Errorf("apt-cache show %s: %v\n%s", pkg, err, tail(out, 10))
	}
	v := versionRE.FindSubmatch(out)
	if v == nil {
		return "", "", fmt.Errorf("apt-cache show %s gives no version", pkg)
	}
	return pkg, string(v[1]), nil
}

// loadImage reads a complete cache directory.
func loadImage(dir string) (*Image, error) {
	b, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		return nil, err
	}
	var m manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%s: %w", dir, err)
	}
	if m.Layout != cacheLayout {
		return nil, fmt.Errorf("%s: cached with layout %d, not %d", dir, m.Layout, cacheLayout)
	}
	img := &Image{
		Dir: dir, Package: m.Package, Version: m.Version, Release: m.Release,
		Kernel: filepath.Join(dir, m.Kernel), PVH: m.PVH,
		modules: newModuleIndex(m.Modules, m.Builtin),
	}
	if _, err := os.Stat(img.Kernel); err != nil {
		return nil, err
	}
	return img, nil
}

// newestCached returns the most recently built kernel in the cache.
func newestCached(root string) (*Image, error) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	var best *Image
	var bestTime time.Time
	for _, e := range entries {
		if !e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			continue
		}
		dir := filepath.Join(root, e.Name())
		st, err := os.Stat(filepath.Join(dir, "manifest.json"))
		if err != nil {
			continue
		}
		img, err := loadImage(dir)
		if err != nil {
			continue
		}
		if best == nil || st.ModTime().After(bestTime) {
			best, bestTime = img, st.ModTime()
		}
	}
	if best == nil {
		return nil, errors.New("no kernel cached")
	}
	return best, nil
}

// pruneCache removes the other kernels and leftovers of interrupted
// builds, so the cache holds one kernel.
func pruneCache(root, keep string) {
	entries, err := os.ReadDir(root)
	if err != nil {
		return
	}
	for _, e := range entries {
		p := filepath.Join(root, e.Name())
		if e.IsDir() && p != keep {
			os.RemoveAll(p)
		}
	}
}

// lockDir takes an exclusive lock on root/lock, so that two processes do
// not build the same cache at once.
func lockDir(ctx context.Context, root string) (func(), error) {
	f, err := os.OpenFile(filepath.Join(root, "lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("vm: cache lock: %w", err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("vm: cache lock: %w", err)
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("vm: waiting for the cache lock: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// buildCache downloads pkg=version and unpacks what the harness needs into
// dir, through a temporary directory renamed into place at the end.
func buildCache(ctx context.Context, t tools, root, dir, pkg, version string) error {
	tmp, err := os.MkdirTemp(root, ".build-")
	if err != nil {
		return fmt.Errorf("vm: cache: %w", err)
	}
	defer os.RemoveAll(tmp)

	dctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	args := []string{"download", pkg + "=" + version}
	if os.Geteuid() == 0 {
		// Root's apt drops to _apt for downloads, which cannot write here.
		args = append([]string{"-o", "APT::Sandbox::User=root"}, args...)
	}
	dl := exec.CommandContext(dctx, "apt-get", args...)
	dl.Dir = tmp
	if out, err := dl.CombinedOutput(); err != nil {
		return fmt.Errorf("vm: apt-get download %s=%s: %v\n%s", pkg, version, err, tail(out, 10))
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("vm: apt-get download %s=%s left %d .deb files", pkg, version, len(debs))
	}
	st, err := os.Stat(debs[0])
	if err != nil {
		return fmt.Errorf("vm: %w", err)
	}

	out := filepath.Join(tmp, "out")
	m, err := unpackKernel(dctx, debs[0], out)
	if err != nil {
		return fmt.Errorf("vm: unpacking %s: %w", filepath.Base(debs[0]), err)
	}
	m.Package, m.Version, m.DebBytes = pkg, version, st.Size()
	m.Built = time.Now().UTC().Format(time.RFC3339)
	m.Layout = cacheLayout

	// Booting the bzImage spends about 4 s of TCG time decompressing it;
	// the uncompressed vmlinux boots straight at its PVH entry point.
	bz, err := os.ReadFile(filepath.Join(out, m.Kernel))
	if err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	if raw, err := extractVmlinux(dctx, bz, t.xz); err == nil && hasPVHNote(raw) {
		if err := os.WriteFile(filepath.Join(out, "vmlinux"), raw, 0o644); err != nil {
			return fmt.Errorf("vm: %w", err)
		}
		os.Remove(filepath.Join(out, m.Kernel))
		m.Kernel, m.PVH = "vmlinux", true
	}

	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(out, "manifest.json"), b, 0o644); err != nil {
		return fmt.Errorf("vm: %w", err)
	}
	// A directory of an older layout is in the way: out of the way first
	// (a machine still booting from it keeps its open files).
	if _, err := os.Stat(dir); err == nil {
		stale := fmt.Sprintf("%s.stale-%d", dir, os.Getpid())
		if err := os.Rename(dir, stale); err != nil {
			return fmt.Errorf("vm: cache: %w", err)
		}
		defer os.RemoveAll(stale)
	}
	if err := os.Rename(out, dir); err != nil {
		return fmt.Errorf("vm: cache: %w", err)
	}
	return nil
}

// unpackKernel streams the package's data archive and writes the kernel
// image and the cached modules under out.
func unpackKernel(ctx context.Context, deb, out string) (*manifest, error) {
	cmd := exec.CommandContext(ctx, "dpkg-deb", "--fsys-tarfile", deb)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	m, rerr := readKernelTar(pipe, out)
	if rerr != nil {
		io.Copy(io.Discard, pipe)
	}
	werr := cmd.Wait()
	if rerr != nil {
		return nil, rerr
	}
	if werr != nil {
		return nil, fmt.Errorf("dpkg-deb --fsys-tarfile: %v: %s", werr, stderr.String())
	}
	return m, nil
}

func readKernelTar(r io.Reader, out string) (*manifest, error) {
	m := &manifest{}
	tr := tar.NewReader(bufio.NewReaderSize(r, 1<<20))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		name := strings.TrimPrefix(h.Name, "./")
		if h.Typeflag != tar.TypeReg {
			continue
		}
		if f, ok := strings.CutPrefix(name, "boot/vmlinuz-"); ok {
			m.Release = f
			m.Kernel = "vmlinuz"
			if err := writeFrom(filepath.Join(out, "vmlinuz"), tr); err != nil {
				return nil, err
			}
			continue
		}
		rest, ok := strings.CutPrefix(name, "lib/modules/")
		if !ok {
			if rest, ok = strings.CutPrefix(name, "usr/lib/modules/"); !ok {
				continue
			}
		}
		_, rel, ok := strings.Cut(rest, "/")
		if !ok {
			continue
		}
		switch {
		case rel == "modules.builtin":
			b, err := io.ReadAll(tr)
			if err != nil {
				return nil, err
			}
			for _, l := range strings.Split(string(b), "\n") {
				if l = strings.TrimSpace(l); l != "" {
					m.Builtin = append(m.Builtin, modName(l))
				}
			}
		case cachedModule(rel):
			data, err := io.ReadAll(tr)
			if err != nil {
				return nil, err
			}
			mod, err := parseModinfo(data, rel)
			if err != nil {
				return nil, err
			}
			if err := writeFrom(filepath.Join(out, "modules", rel), bytes.NewReader(data)); err != nil {
				return nil, err
			}
			m.Modules = append(m.Modules, mod)
		}
	}
	if m.Kernel == "" {
		return nil, errors.New("no boot/vmlinuz-* in the package")
	}
	if len(m.Modules) == 0 {
		return nil, errors.New("no kernel modules in the package")
	}
	sort.Slice(m.Modules, func(i, j int) bool { return m.Modules[i].Path < m.Modules[j].Path })
	return m, nil
}

func writeFrom(path string, r io.Reader) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// extractVmlinux decompresses the kernel inside an x86 bzImage, found
// through the setup header's payload_offset and payload_length.
func extractVmlinux(ctx context.Context, bz []byte, xz string) ([]byte, error) {
	if len(bz) < 0x250 || string(bz[0x202:0x206]) != "HdrS" {
		return nil, errors.New("not a bzImage")
	}
	setupSects := int(bz[0x1f1])
	if setupSects == 0 {
		setupSects = 4
	}
	off := (setupSects+1)*512 + int(binary.LittleEndian.Uint32(bz[0x248:]))
	n := int(binary.LittleEndian.Uint32(bz[0x24c:]))
	if off < 0 || n <= 0 || off+n > len(bz) {
		return nil, errors.New("bzImage payload out of range")
	}
	payload := bz[off : off+n]
	switch {
	case bytes.HasPrefix(payload, []byte("\xfd7zXZ\x00")):
		// Needs xz-utils: busybox's unxz lacks the x86 BCJ filter.
		cmd := exec.CommandContext(ctx, xz, "-dc", "--single-stream")
		cmd.Stdin = bytes.NewReader(payload)
		var out, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("xz: %v: %s", err, stderr.String())
		}
		return out.Bytes(), nil
	case bytes.HasPrefix(payload, []byte{0x1f, 0x8b}):
		zr, err := gzip.NewReader(bytes.NewReader(payload))
		if err != nil {
			return nil, err
		}
		zr.Multistream(false)
		return io.ReadAll(zr)
	}
	return nil, fmt.Errorf("bzImage payload compression %x not supported", payload[:4])
}

// hasPVHNote reports whether the ELF kernel has the Xen PVH entry note
// (XEN_ELFNOTE_PHYS32_ENTRY), which qemu needs to boot it directly.
func hasPVHNote(kernel []byte) bool {
	f, err := elf.NewFile(bytes.NewReader(kernel))
	if err != nil {
		return false
	}
	defer f.Close()
	const xenElfnotePhys32Entry = 18
	for _, p := range f.Progs {
		if p.Type != elf.PT_NOTE {
			continue
		}
		data, err := io.ReadAll(p.Open())
		if err != nil {
			continue
		}
		for len(data) >= 12 {
			namesz := int(f.ByteOrder.Uint32(data[0:]))
			descsz := int(f.ByteOrder.Uint32(data[4:]))
			typ := f.ByteOrder.Uint32(data[8:])
			nameEnd := 12 + (namesz+3)&^3
			end := nameEnd + (descsz+3)&^3
			if end > len(data) || namesz > nameEnd-12 {
				break
			}
			name := strings.TrimRight(string(data[12:12+namesz]), "\x00")
			if name == "Xen" && typ == xenElfnotePhys32Entry {
				return true
			}
			data = data[end:]
		}
	}
	return false
}
