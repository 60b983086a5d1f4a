package kubenodes

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/keepvip/keepvip/test/framework/ociimage"
)

// KeepvipImage builds keepvip as make build does (static, -trimpath,
// version stamped) and writes its image (ociimage.Keepvip) as ref into
// dir. The race-enabled binary of the other suites cannot be used: it is
// linked against the C library, which the image does not have.
func KeepvipImage(ctx context.Context, dir, ref, version string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("building the keepvip image: finding the module: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("building the keepvip image: not inside keepvip's module")
	}
	bin := filepath.Join(dir, "keepvip-"+version)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w -X main.version="+version, "-o", bin, "./cmd/keepvip")
	cmd.Dir = filepath.Dir(gomod)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building the keepvip image: go build: %w\n%s", err, out)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		return "", err
	}
	files, cfg := ociimage.Keepvip(b)
	path := filepath.Join(dir, "keepvip-"+version+".tar")
	if err := ociimage.WriteFile(path, ref, files, cfg); err != nil {
		return "", fmt.Errorf("building the keepvip image: %w", err)
	}
	return path, nil
}

// Overlay writes, in dir, a kustomize overlay of deployDir (the shipped
// deploy/) that changes one thing: the image, to ref. It returns the
// overlay's directory, for `kubectl apply -k`.
func Overlay(dir, deployDir, ref string) (string, error) {
	overlay := filepath.Join(dir, "overlay")
	if err := os.MkdirAll(overlay, 0o755); err != nil {
		return "", err
	}
	base, err := filepath.Rel(overlay, deployDir)
	if err != nil {
		return "", err
	}
	// The base already renames the image "keepvip" to the published one:
	// the overlay renames that.
	b, err := os.ReadFile(filepath.Join(deployDir, "kustomization.yaml"))
	if err != nil {
		return "", err
	}
	var kz struct {
		Images []struct {
			Name    string `json:"name"`
			NewName string `json:"newName"`
		} `json:"images"`
	}
	if err := yaml.Unmarshal(b, &kz); err != nil || len(kz.Images) != 1 || kz.Images[0].NewName == "" {
		return "", fmt.Errorf("%s/kustomization.yaml: want one image: %v", deployDir, err)
	}
	name, tag, _ := strings.Cut(ref, ":")
	k := fmt.Sprintf("resources: [%s]\nimages: [{name: %s, newName: %s, newTag: %s}]\n", base, kz.Images[0].NewName, name, tag)
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(k), 0o644); err != nil {
		return "", err
	}
	return overlay, nil
}

// KeepalivedImage writes, at path, an image of the host's keepalived (the
// binary and every shared library ldd names, at the paths it names) with
// busybox for a shell: keepalived run the way kube-keepalived-vip ran it,
// for reference figures on the same nodes.
func KeepalivedImage(path, ref string) error {
	bin, err := exec.LookPath("keepalived")
	if err != nil {
		return fmt.Errorf("keepalived image: %w", err)
	}
	files, err := busyboxFiles()
	if err != nil {
		return fmt.Errorf("keepalived image: %w", err)
	}
	out, err := exec.Command("ldd", bin).Output()
	if err != nil {
		return fmt.Errorf("keepalived image: ldd %s: %w", bin, err)
	}
	paths := []string{bin}
	for _, line := range strings.Split(string(out), "\n") {
		// "libssl.so.3 => /lib/x86_64-linux-gnu/libssl.so.3 (0x...)"
		// or "/lib64/ld-linux-x86-64.so.2 (0x...)"; linux-vdso has no file.
		f := strings.Fields(line)
		switch {
		case len(f) >= 3 && f[1] == "=>" && strings.HasPrefix(f[2], "/"):
			paths = append(paths, f[2])
		case len(f) >= 1 && strings.HasPrefix(f[0], "/"):
			paths = append(paths, f[0])
		}
	}
	for _, p := range paths {
		b, err := os.ReadFile(p) // through links: the library itself
		if err != nil {
			return fmt.Errorf("keepalived image: %w", err)
		}
		files = append(files, ociimage.File{Path: p, Mode: 0o755, Data: b})
	}
	files = append(files,
		ociimage.File{Path: "/etc/keepalived", Mode: os.ModeDir | 0o755},
		ociimage.File{Path: "/run", Mode: os.ModeDir | 0o755})
	return ociimage.WriteFile(path, ref, files, ociimage.Config{Entrypoint: []string{"/bin/sh", "-c"}, Env: []string{"PATH=/bin:/usr/sbin"}})
}
