package kubetest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Bins are the paths of the programs a Cluster runs.
type Bins struct {
	APIServer string // kube-apiserver, built from hack/kubebin
	Kubectl   string // kubectl, built from hack/kubebin
	Etcd      string // etcd, from PATH (Debian package etcd-server)
	// The real nodes' (Nodes): built from hack/kubebin with the two
	// above, in the same go build.
	Kubelet           string
	ControllerManager string // kube-controller-manager
	Scheduler         string // kube-scheduler
}

const (
	// kubebinDir is the nested module, relative to the repository root,
	// that pins the Kubernetes version the binaries are built from.
	kubebinDir = "hack/kubebin"
	// EnvCacheDir overrides where built binaries are cached; by default
	// $XDG_CACHE_HOME/keepvip-kube or ~/.cache/keepvip-kube.
	EnvCacheDir = "KEEPVIP_KUBE_CACHE"
)

// buildFlags are part of the cache key: changing them must rebuild.
// CGO_ENABLED=0 makes static binaries that run the same inside any network
// or mount namespace; -s -w roughly halves their size. The version stamps
// are what Kubernetes' own build sets (hack/lib/version.sh): without them
// the binaries call themselves v0.0.0-master, which kubectl version and
// clients that check the server version would see.
func buildFlags(kubeVersion string) []string {
	ldflags := "-s -w"
	if major, minor, ok := majorMinor(kubeVersion); ok {
		for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
			ldflags += fmt.Sprintf(" -X %[1]s.gitVersion=%[2]s -X %[1]s.gitMajor=%[3]s -X %[1]s.gitMinor=%[4]s -X %[1]s.gitTreeState=clean",
				pkg, kubeVersion, major, minor)
		}
	}
	return []string{"-trimpath", "-ldflags=" + ldflags}
}

// majorMinor splits "v1.34.4" into "1" and "34".
func majorMinor(v string) (major, minor string, ok bool) {
	parts := strings.SplitN(strings.TrimPrefix(v, "v"), ".", 3)
	if len(parts) < 3 || !strings.HasPrefix(v, "v") {
		return "", "", false
	}
	return parts[0], parts[1], true
}

// kubeVersion is the k8s.io/kubernetes version go.mod requires, e.g.
// "v1.34.4", or "" if it cannot be found (the build then goes unstamped).
func kubeVersion(gomod []byte) string {
	for line := range strings.Lines(string(gomod)) {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "require" {
			f = f[1:]
		}
		if len(f) >= 2 && f[0] == "k8s.io/kubernetes" && strings.HasPrefix(f[1], "v") {
			return f[1]
		}
	}
	return ""
}

var buildPkgs = []string{
	"k8s.io/kubernetes/cmd/kube-apiserver", "k8s.io/kubernetes/cmd/kubectl",
	"k8s.io/kubernetes/cmd/kubelet", "k8s.io/kubernetes/cmd/kube-controller-manager", "k8s.io/kubernetes/cmd/kube-scheduler",
}

// Binaries returns the Kubernetes binaries, building them from
// hack/kubebin into a per-version cache directory the first time (several
// minutes cold), and etcd from PATH. A cached call costs a hash of
// hack/kubebin's go.mod and go.sum and two stats. Concurrent callers, in
// this process or others (go test runs packages in parallel), build once:
// the build holds a file lock and is renamed into place when complete, so
// a reader never sees half a directory.
func Binaries(ctx context.Context) (Bins, error) {
	return binaries(ctx, nil)
}

// ErrNotBuilt is CachedBinaries' error when the binaries are not in the
// cache yet (make kubebin builds them).
var ErrNotBuilt = errors.New("the Kubernetes binaries are not built yet (make kubebin)")

// CachedBinaries returns the binaries if they are in the cache, without
// building them: for callers that show the Kubernetes side only where it
// is ready (make demo).
func CachedBinaries() (Bins, error) {
	l, err := locate()
	if err != nil {
		return Bins{}, err
	}
	if !built(l.bins) {
		return Bins{}, ErrNotBuilt
	}
	return l.bins, nil
}

// location is where the binaries of this checkout's hack/kubebin are, or
// will be once built.
type location struct {
	bins      Bins
	modDir    string   // hack/kubebin
	base, key string   // cache directory, and the build's name in it
	flags     []string // go build flags
}

func locate() (location, error) {
	etcd, err := exec.LookPath("etcd")
	if err != nil {
		return location{}, fmt.Errorf("finding etcd: %w (install the Debian package etcd-server: apt-get install etcd-server)", err)
	}
	root, err := repoRoot()
	if err != nil {
		return location{}, err
	}
	modDir := filepath.Join(root, kubebinDir)
	key, flags, err := cacheKey(modDir)
	if err != nil {
		return location{}, err
	}
	base, err := cacheBase()
	if err != nil {
		return location{}, err
	}
	dir := filepath.Join(base, key)
	return location{
		bins: Bins{APIServer: filepath.Join(dir, "kube-apiserver"), Kubectl: filepath.Join(dir, "kubectl"), Etcd: etcd,
			Kubelet: filepath.Join(dir, "kubelet"), ControllerManager: filepath.Join(dir, "kube-controller-manager"),
			Scheduler: filepath.Join(dir, "kube-scheduler")},
		modDir: modDir, base: base, key: key, flags: flags,
	}, nil
}

// binaries is Binaries with a logger, so that Start can say why it is
// about to take minutes.
func binaries(ctx context.Context, logf func(string, ...any)) (Bins, error) {
	l, err := locate()
	if err != nil {
		return Bins{}, err
	}
	bins, modDir, base, key, flags := l.bins, l.modDir, l.base, l.key, l.flags
	dir := filepath.Dir(bins.APIServer)
	if built(bins) {
		return bins, nil
	}

	if err := os.MkdirAll(base, 0o755); err != nil {
		return Bins{}, fmt.Errorf("creating the kube binaries cache: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(base, key+".lock"))
	if err != nil {
		return Bins{}, err
	}
	defer unlock()
	// Another process may have finished the build while we waited.
	if built(bins) {
		return bins, nil
	}
	// Leftovers of an interrupted build: safe to remove, we hold the lock.
	if old, _ := filepath.Glob(filepath.Join(base, key+".tmp-*")); len(old) > 0 {
		for _, o := range old {
			_ = os.RemoveAll(o)
		}
	}
	// A final directory without both binaries cannot come from us (the
	// rename is atomic), but clear it rather than fail forever.
	_ = os.RemoveAll(dir)

	if logf != nil {
		logf("building the Kubernetes binaries from %s into %s (a cold build takes several minutes)", modDir, dir)
	}
	start := time.Now()
	tmp, err := os.MkdirTemp(base, key+".tmp-")
	if err != nil {
		return Bins{}, fmt.Errorf("building kube binaries: %w", err)
	}
	if err := goBuild(ctx, modDir, tmp, flags); err != nil {
		_ = os.RemoveAll(tmp)
		return Bins{}, err
	}
	// MkdirTemp makes it private; the binaries are not secret.
	if err := os.Chmod(tmp, 0o755); err != nil {
		_ = os.RemoveAll(tmp)
		return Bins{}, fmt.Errorf("building kube binaries: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		_ = os.RemoveAll(tmp)
		return Bins{}, fmt.Errorf("building kube binaries: moving them into the cache: %w", err)
	}
	if logf != nil {
		logf("built the Kubernetes binaries in %s", time.Since(start).Round(100*time.Millisecond))
	}
	return bins, nil
}

func built(b Bins) bool {
	for _, p := range []string{b.APIServer, b.Kubectl, b.Kubelet, b.ControllerManager, b.Scheduler} {
		if fi, err := os.Stat(p); err != nil || !fi.Mode().IsRegular() || fi.Mode()&0o111 == 0 {
			return false
		}
	}
	return true
}

func goBuild(ctx context.Context, modDir, out string, flags []string) error {
	gocmd, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("building kube binaries: %w", err)
	}
	args := append([]string{"build"}, flags...)
	args = append(args, "-o", out+string(filepath.Separator))
	args = append(args, buildPkgs...)
	cmd := exec.CommandContext(ctx, gocmd, args...)
	cmd.Dir = modDir
	// GOWORK=off: a go.work in a parent directory must not pull the
	// nested module into another build list. GOOS/GOARCH: the binaries
	// run here, whatever the caller cross-compiles.
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOWORK=off",
		"GOOS="+runtime.GOOS, "GOARCH="+runtime.GOARCH)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building kube binaries (cd %s && go %s): %w\n%s",
			modDir, strings.Join(args, " "), err, tailLines(out, 40))
	}
	return nil
}

// cacheKey names a build by everything that changes its output: the
// module's requirements, the Go version (runtime.Version: the toolchain
// that compiled the caller, which is the one `go` in PATH in every normal
// setup), the platform and the build flags, which it also returns.
func cacheKey(modDir string) (key string, flags []string, err error) {
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum"} {
		b, err := os.ReadFile(filepath.Join(modDir, f))
		if err != nil {
			return "", nil, fmt.Errorf("hashing kube binaries module: %w", err)
		}
		if f == "go.mod" {
			flags = buildFlags(kubeVersion(b))
		}
		fmt.Fprintf(h, "%s %d\n", f, len(b))
		h.Write(b)
	}
	fmt.Fprintf(h, "%s %s/%s %q %q\n", runtime.Version(), runtime.GOOS, runtime.GOARCH, flags, buildPkgs)
	return hex.EncodeToString(h.Sum(nil))[:16], flags, nil
}

func cacheBase() (string, error) {
	if d := os.Getenv(EnvCacheDir); d != "" {
		return d, nil
	}
	// os.UserCacheDir is $XDG_CACHE_HOME, else $HOME/.cache, on Linux.
	d, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("finding the cache directory for kube binaries: %w (set %s)", err, EnvCacheDir)
	}
	return filepath.Join(d, "keepvip-kube"), nil
}

// repoRoot finds the directory holding hack/kubebin/go.mod, walking up
// from this source file (absolute unless built with -trimpath) and then
// from the working directory (the package directory under go test).
func repoRoot() (string, error) {
	var starts []string
	if _, file, _, ok := runtime.Caller(0); ok && filepath.IsAbs(file) {
		starts = append(starts, filepath.Dir(file))
	}
	if wd, err := os.Getwd(); err == nil {
		starts = append(starts, wd)
	}
	for _, d := range starts {
		for {
			if _, err := os.Stat(filepath.Join(d, kubebinDir, "go.mod")); err == nil {
				return d, nil
			}
			parent := filepath.Dir(d)
			if parent == d {
				break
			}
			d = parent
		}
	}
	return "", fmt.Errorf("finding the keepvip repository: no %s/go.mod above %s", kubebinDir, strings.Join(starts, " or "))
}

// lockFile takes an exclusive flock on path, polling so that ctx can
// cancel the wait (flock itself cannot be interrupted).
func lockFile(ctx context.Context, path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("locking the kube binaries cache: %w", err)
	}
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { _ = f.Close() }, nil // closing releases the lock
		}
		if !errors.Is(err, unix.EWOULDBLOCK) && !errors.Is(err, unix.EINTR) {
			_ = f.Close()
			return nil, fmt.Errorf("locking the kube binaries cache %s: %w", path, err)
		}
		select {
		case <-ctx.Done():
			_ = f.Close()
			return nil, fmt.Errorf("waiting for another process building kube binaries (lock %s): %w", path, context.Cause(ctx))
		case <-time.After(250 * time.Millisecond):
		}
	}
}
