package daemon

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/keepvip/keepvip/config"
	"github.com/keepvip/keepvip/internal/kube"
)

// kubeCacheFile keeps the last configuration applied in Kubernetes mode, so
// that a node restarting while the API server is unreachable brings its
// VIPs and virtual servers back at once instead of waiting for it.
const kubeCacheFile = "kubernetes-config.json"

// cachedKubeConfig returns the configuration applied last time, or an
// empty one, and where it came from.
func cachedKubeConfig(stateDir string, log *slog.Logger) (*config.Config, string) {
	empty := &config.Config{}
	if stateDir == "" {
		return empty, "vip-configmap (waiting for the API server)"
	}
	path := filepath.Join(stateDir, kubeCacheFile)
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return empty, "vip-configmap (waiting for the API server)"
	}
	if err != nil {
		log.Warn("reading the last applied configuration; starting without it", "path", path, "err", err)
		return empty, "vip-configmap (waiting for the API server)"
	}
	cfg, err := config.Parse(data)
	if err != nil {
		log.Warn("the last applied configuration is unreadable; starting without it", "path", path, "err", err)
		return empty, "vip-configmap (waiting for the API server)"
	}
	log.Info("running the last applied configuration until the API server answers", "path", path, "instances", len(cfg.Instances), "virtualServers", len(cfg.VirtualServers))
	return cfg, "last applied configuration " + path + " (waiting for the API server)"
}

// saveKubeConfig writes cfg for cachedKubeConfig, atomically.
func saveKubeConfig(stateDir string, cfg *config.Config) error {
	if stateDir == "" {
		return nil
	}
	data, err := yaml.Marshal(cfg)
	if err != nil {
		return fmt.Errorf("encoding the applied configuration: %w", err)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return fmt.Errorf("saving the applied configuration: %w", err)
	}
	path := filepath.Join(stateDir, kubeCacheFile)
	tmp, err := os.CreateTemp(stateDir, kubeCacheFile+".*")
	if err != nil {
		return fmt.Errorf("saving the applied configuration: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("saving the applied configuration: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("saving the applied configuration: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("saving the applied configuration: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("saving the applied configuration: %w", err)
	}
	return nil
}

// applyKube applies a configuration from the reconciler.
func (d *daemon) applyKube(u kube.Update) {
	if err := d.startLB(u.Config); err != nil {
		d.log.Error("the vip-configmap has virtual servers", "err", err)
	}
	d.apply(u.Config, u.Problems...)
	if !u.Since.IsZero() {
		d.toApplied.Observe(time.Since(u.Since).Seconds())
	}
	st := d.rec.Status()
	d.mu.Lock()
	d.source = fmt.Sprintf("ConfigMap %s (resourceVersion %s)", st.ConfigMap, st.ResourceVersion)
	d.mu.Unlock()
	if err := saveKubeConfig(d.opts.StateDir, u.Config); err != nil {
		d.log.Warn("the configuration applies but will not survive a restart without the API server", "err", err)
	}
}
