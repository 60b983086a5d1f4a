package daemon

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/keepvip/keepvip/config"
	"github.com/keepvip/keepvip/internal/kube"
)

// kubeCacheFile keeps the last configuration applied in Kubernetes mode, so
// that a node restarting while the API server is unreachable brings its
// VIPs and virtual servers back at once instead of waiting for it; and the
// ConfigMap entries in force, with the last good forms of bad ones, so that
// those survive a restart too.
const kubeCacheFile = "kubernetes-config.json"

// kubeCache is kubeCacheFile's content.
type kubeCache struct {
	Config        *config.Config    `json:"config"`
	ConfigMapData map[string]string `json:"configMapData,omitempty"`
}

const waitingSource = "vip-configmap (waiting for the API server)"

// cachedKubeConfig returns the configuration applied last time (or an
// empty one), the ConfigMap entries that were in force, and where they
// came from.
func cachedKubeConfig(stateDir string, log *slog.Logger) (*config.Config, map[string]string, string) {
	empty := &config.Config{}
	if stateDir == "" {
		return empty, nil, waitingSource
	}
	path := filepath.Join(stateDir, kubeCacheFile)
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return empty, nil, waitingSource
	}
	if err != nil {
		log.Warn("reading the last applied configuration; starting without it", "path", path, "err", err)
		return empty, nil, waitingSource
	}
	var c struct {
		Config        json.RawMessage   `json:"config"`
		ConfigMapData map[string]string `json:"configMapData"`
	}
	var cfg *config.Config
	if err = json.Unmarshal(data, &c); err == nil {
		cfg, err = config.Parse(c.Config)
	}
	if err != nil {
		log.Warn("the last applied configuration is unreadable; starting without it", "path", path, "err", err)
		return empty, nil, waitingSource
	}
	log.Info("running the last applied configuration until the API server answers", "path", path, "instances", len(cfg.Instances), "virtualServers", len(cfg.VirtualServers))
	return cfg, c.ConfigMapData, "last applied configuration " + path + " (waiting for the API server)"
}

// saveKubeConfig writes what cachedKubeConfig reads, atomically.
func saveKubeConfig(stateDir string, cfg *config.Config, cmData map[string]string) error {
	if stateDir == "" {
		return nil
	}
	data, err := json.Marshal(kubeCache{Config: cfg, ConfigMapData: cmData})
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
	d.mu.Lock()
	if u.ResourceVersion == "" {
		d.source = fmt.Sprintf("ConfigMap %s/%s (not found: the configuration in force stays)", d.opts.Kube.Namespace, d.opts.Kube.ConfigMap)
	} else {
		d.source = fmt.Sprintf("ConfigMap %s/%s (resourceVersion %s)", d.opts.Kube.Namespace, d.opts.Kube.ConfigMap, u.ResourceVersion)
	}
	d.ready = true
	d.mu.Unlock()
	if err := saveKubeConfig(d.opts.StateDir, u.Config, u.ConfigMapData); err != nil {
		d.log.Warn("the configuration applies but will not survive a restart without the API server", "err", err)
	}
}
