package kubenodes

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// kubeletSysctls are the kernel settings a kubelet sets as it starts
// (setupKernelTunables, unless protectKernelDefaults, which makes it
// refuse to start instead): not per network namespace, they are the
// host's — kernel.panic_on_oops=1 and kernel.panic=10 would make any
// later oops reboot the machine. Start saves them and Close puts them
// back.
var kubeletSysctls = []string{
	"vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
	"kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes",
}

// sysctlSaved keeps the saved values where a later run finds them if this
// one dies before Close (a tmpfs: gone, like the settings, at reboot).
const sysctlSaved = "/run/keepvip-kubenodes-sysctl.json"

func sysctlPath(name string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(name, ".", "/"))
}

// saveSysctls records the host's values of kubeletSysctls. A file left by
// a run that died first holds the values from before that run: they are
// put back first.
func (c *Cluster) saveSysctls() error {
	if b, err := os.ReadFile(sysctlSaved); err == nil {
		var old map[string]string
		if err := json.Unmarshal(b, &old); err == nil {
			c.logf("kubenodes: restoring the kernel settings an earlier run left changed (%s)", sysctlSaved)
			c.sysctls = old
			if err := c.restoreSysctls(); err != nil {
				return err
			}
		}
	}
	c.sysctls = map[string]string{}
	for _, name := range kubeletSysctls {
		b, err := os.ReadFile(sysctlPath(name))
		if err != nil {
			return fmt.Errorf("saving kernel setting %s: %w", name, err)
		}
		c.sysctls[name] = strings.TrimSpace(string(b))
	}
	b, err := json.Marshal(c.sysctls)
	if err != nil {
		return err
	}
	return os.WriteFile(sysctlSaved, b, 0o600)
}

// restoreSysctls writes the saved values back and removes the record.
func (c *Cluster) restoreSysctls() error {
	if c.sysctls == nil {
		return nil
	}
	var errs []error
	for name, v := range c.sysctls {
		if err := os.WriteFile(sysctlPath(name), []byte(v), 0o644); err != nil {
			errs = append(errs, fmt.Errorf("restoring kernel setting %s=%s: %w", name, v, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	c.sysctls = nil
	if err := os.Remove(sysctlSaved); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}
