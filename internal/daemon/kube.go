package daemon

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/keepvip/keepvip/config"
	"github.com/keepvip/keepvip/configmap"
	"github.com/keepvip/keepvip/internal/durable"
	"github.com/keepvip/keepvip/internal/kube"
)

// kubeCacheFile keeps the last configuration applied in Kubernetes mode, so
// that a node restarting while the API server is unreachable brings its
// VIPs and virtual servers back at once instead of waiting for it; and the
// vip-configmap entries in force (configmap.Spec, with the last good forms
// of bad ones), so that those survive a restart too.
const kubeCacheFile = "kubernetes-config.json"

// kubeCache is kubeCacheFile's content.
type kubeCache struct {
	Config  *config.Config  `json:"config"`
	History *configmap.Spec `json:"history,omitempty"`
}

// kubeCacheRead is what cachedKubeConfig found.
type kubeCacheRead struct {
	// config runs until the API server answers (empty without a cache);
	// applied is the same, nil without a cache.
	config, applied *config.Config
	history         *configmap.Spec
	// lastGood: the entries in force as versions before history saved
	// them.
	lastGood map[string]string
	source   string
}

const waitingSource = "vip-configmap (waiting for the API server)"

// cachedKubeConfig returns the configuration applied last time (or an
// empty one), the vip-configmap entries that were in force, and where they
// came from.
func cachedKubeConfig(stateDir string, log *slog.Logger) kubeCacheRead {
	none := kubeCacheRead{config: &config.Config{}, source: waitingSource}
	if stateDir == "" {
		return none
	}
	path := filepath.Join(stateDir, kubeCacheFile)
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return none
	}
	if err != nil {
		log.Warn("reading the last applied configuration; starting without it", "path", path, "err", err)
		return none
	}
	var c struct {
		Config        json.RawMessage   `json:"config"`
		History       json.RawMessage   `json:"history"`
		ConfigMapData map[string]string `json:"configMapData"`
	}
	if err := json.Unmarshal(data, &c); err != nil {
		log.Warn("the last applied configuration is unreadable; starting without it", "path", path, "err", err)
		return none
	}
	out := none
	out.lastGood = c.ConfigMapData
	// The configuration and the entries in force are read apart: a
	// configuration this version's rules refuse (they changed) still
	// leaves the entries' last good forms to the ConfigMap.
	if cfg, err := config.Parse(c.Config); err != nil {
		log.Warn("the last applied configuration does not pass this version's checks; starting without it", "path", path, "err", err)
	} else {
		out.config, out.applied = cfg, cfg
		out.source = "last applied configuration " + path + " (waiting for the API server)"
	}
	if len(c.History) > 0 && string(c.History) != "null" {
		var h configmap.Spec
		if err := json.Unmarshal(c.History, &h); err != nil {
			// The configuration runs; only bad entries lose their last
			// good forms.
			log.Warn("the vip-configmap entries saved are unreadable: bad entries in the live ConfigMap will not keep their last good forms", "path", path, "err", err)
		} else {
			out.history = &h
		}
	}
	if out.applied != nil {
		log.Info("running the last applied configuration until the API server answers", "path", path, "instances", len(out.applied.Instances), "virtualServers", len(out.applied.VirtualServers))
	}
	return out
}

// saveKubeConfig writes what cachedKubeConfig reads, atomically.
func saveKubeConfig(stateDir string, cfg *config.Config, history *configmap.Spec) error {
	if stateDir == "" {
		return nil
	}
	// BGP passwords are not saved: they come from the Secret again (or,
	// written in the ConfigMap, from it) once the API server answers.
	if cfg != nil && cfg.Routing != nil {
		c := *cfg
		c.Routing = cfg.Routing.WithoutPasswords()
		cfg = &c
	}
	if history != nil && history.Routing != nil {
		h := *history
		rt := *history.Routing
		rt.Routing = *rt.Routing.WithoutPasswords()
		h.Routing = &rt
		history = &h
	}
	data, err := json.Marshal(kubeCache{Config: cfg, History: history})
	if err != nil {
		return fmt.Errorf("encoding the applied configuration: %w", err)
	}
	if err := durable.WriteFile(filepath.Join(stateDir, kubeCacheFile), data, 0o600); err != nil {
		return fmt.Errorf("saving the applied configuration: %w", err)
	}
	return nil
}

// applyKube applies a configuration from the reconciler.
func (d *daemon) applyKube(u kube.Update) {
	want := u.Config.Desired()
	if err := d.startLB(&want); err != nil {
		d.log.Error("the vip-configmap has virtual servers", "err", err)
	}
	d.apply(&want, u.Problems...)
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
	if err := saveKubeConfig(d.opts.StateDir, u.Config, u.History); err != nil {
		d.log.Warn("the configuration applies but will not survive a restart without the API server", "err", err)
	}
}
