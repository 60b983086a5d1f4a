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
