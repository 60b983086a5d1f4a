package vm

import (
	"bytes"
	"debug/elf"
	"fmt"
	"sort"
	"strings"
)

// DefaultModules are loaded in every guest, in this order as far as their
// dependencies allow: IPVS with every scheduler, and what the lab needs to
// build networks (veth, bridge, dummy, ipip). crc32c_generic comes first
// because libcrc32c asks the crypto API for crc32c when it loads and the
// guest has no modprobe to find it by alias.
var DefaultModules = []string{
	"crc32c_generic", "libcrc32c",
	"nf_defrag_ipv4", "nf_defrag_ipv6", "nf_conntrack",
	"ip_vs",
	"ip_vs_rr", "ip_vs_wrr", "ip_vs_lc", "ip_vs_wlc", "ip_vs_lblc", "ip_vs_lblcr",
	"ip_vs_sh", "ip_vs_dh", "ip_vs_mh", "ip_vs_sed", "ip_vs_nq", "ip_vs_fo", "ip_vs_ovf",
	"veth", "llc", "stp", "bridge", "dummy", "ipip",
}

// userNetModules drive Options.UserNet's interface.
var userNetModules = []string{"virtio_pci", "virtio_net"}

// module is what the harness knows about one kernel module: where it is and
// what it needs, from its .modinfo section (what depmod reads too).
type module struct {
	Name    string   `json:"name"`
	Path    string   `json:"path"` // relative to /lib/modules/RELEASE
	Depends []string `json:"depends,omitempty"`
	SoftPre []string `json:"softpre,omitempty"` // softdep pre: names or aliases
	Aliases []string `json:"aliases,omitempty"` // literal aliases only
}

// modName normalises a module name as the kernel does: '-' and '_' are the
// same.
func modName(s string) string {
	s = strings.TrimSuffix(s, ".ko")
	if i := strings.LastIndexByte(s, '/'); i >= 0 {
		s = s[i+1:]
	}
	return strings.ReplaceAll(s, "-", "_")
}

// parseModinfo reads the .modinfo section of the module in data.
func parseModinfo(data []byte, path string) (module, error) {
	f, err := elf.NewFile(bytes.NewReader(data))
	if err != nil {
		return module{}, fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return module{}, fmt.Errorf("%s: no .modinfo section", path)
	}
	info, err := sec.Data()
	if err != nil {
		return module{}, fmt.Errorf("%s: .modinfo: %w", path, err)
	}
	m := module{Name: modName(path), Path: path}
	for _, kv := range bytes.Split(info, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		switch k {
		case "name":
			m.Name = modName(v)
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d != "" {
					m.Depends = append(m.Depends, modName(d))
				}
			}
		case "softdep":
			pre := false
			for _, w := range strings.Fields(v) {
				switch w {
				case "pre:":
					pre = true
				case "post:":
					pre = false
				default:
					if pre {
						m.SoftPre = append(m.SoftPre, w)
					}
				}
			}
		case "alias":
			if !strings.ContainsAny(v, "*?[") {
				m.Aliases = append(m.Aliases, v)
			}
		}
	}
	return m, nil
}

// moduleIndex finds modules by name and alias.
type moduleIndex struct {
	byName  map[string]*module
	builtin map[string]bool
}

func newModuleIndex(mods []module, builtin []string) *moduleIndex {
	ix := &moduleIndex{byName: map[string]*module{}, builtin: map[string]bool{}}
	for i := range mods {
		ix.byName[mods[i].Name] = &mods[i]
	}
	for _, b := range builtin {
		ix.builtin[modName(b)] = true
	}
	return ix
}

// provider picks the module for a softdep target, which may be a module
// name or an alias: one the caller asked for if any, else a *_generic one,
// else the first by name. It returns nil when nothing provides it.
func (ix *moduleIndex) provider(target string, wanted map[string]bool) *module {
	if m := ix.byName[modName(target)]; m != nil {
		return m
	}
	var cands []*module
	for _, m := range ix.byName {
		for _, a := range m.Aliases {
			if a == target {
				cands = append(cands, m)
				break
			}
		}
	}
	if len(cands) == 0 {
		return nil
	}
	sort.Slice(cands, func(i, j int) bool {
		ri, rj := rank(cands[i], wanted), rank(cands[j], wanted)
		if ri != rj {
			return ri < rj
		}
		return cands[i].Name < cands[j].Name
	})
	return cands[0]
}

func rank(m *module, wanted map[string]bool) int {
	switch {
	case wanted[m.Name]:
		return 0
	case strings.HasSuffix(m.Name, "_generic"):
		return 1
	}
	return 2
}

// loadOrder returns the modules to load for names, each after everything it
// depends on (hard dependencies and softdep pre targets), otherwise in the
// order given. Built-in modules are skipped.
func (ix *moduleIndex) loadOrder(names []string) ([]*module, error) {
	wanted := map[string]bool{}
	for _, n := range names {
		wanted[modName(n)] = true
	}
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var order []*module
	var visit func(name string, chain []string, soft bool) error
	visit = func(name string, chain []string, soft bool) error {
		if ix.builtin[name] {
			return nil
		}
		m := ix.byName[name]
		if m == nil {
			if soft {
				return nil
			}
			if len(chain) > 0 {
				return fmt.Errorf("module %s (needed by %s) is not in the kernel package", name, strings.Join(chain, " <- "))
			}
			return fmt.Errorf("module %s is not in the kernel package (nor built in)", name)
		}
		switch state[name] {
		case done:
			return nil
		case visiting:
			if soft {
				return nil
			}
			return fmt.Errorf("module dependency cycle: %s -> %s", strings.Join(chain, " -> "), name)
		}
		state[name] = visiting
		chain = append(chain, name)
		for _, s := range m.SoftPre {
			if p := ix.provider(s, wanted); p != nil {
				if err := visit(p.Name, chain, true); err != nil {
					return err
				}
			}
		}
		for _, d := range m.Depends {
			if err := visit(d, chain, false); err != nil {
				return err
			}
		}
		state[name] = done
		order = append(order, m)
		return nil
	}
	for _, n := range names {
		if err := visit(modName(n), nil, false); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// modulesDep renders modules.dep for mods (a load order), as depmod
// would: each module with everything it needs, the last to load first.
func (ix *moduleIndex) modulesDep(mods []*module) []byte {
	pos := map[string]int{}
	for i, m := range mods {
		pos[m.Name] = i
	}
	var b bytes.Buffer
	for _, m := range mods {
		seen := map[string]bool{}
		var deps []*module
		var walk func(*module)
		walk = func(m *module) {
			for _, d := range m.Depends {
				dm := ix.byName[d]
				if dm == nil || seen[d] {
					continue
				}
				seen[d] = true
				deps = append(deps, dm)
				walk(dm)
			}
		}
		walk(m)
		sort.SliceStable(deps, func(i, j int) bool { return pos[deps[i].Name] > pos[deps[j].Name] })
		fmt.Fprintf(&b, "%s:", m.Path)
		for _, d := range deps {
			fmt.Fprintf(&b, " %s", d.Path)
		}
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// modulesAlias renders modules.alias for mods, so that the kernel's
// request_module (through busybox modprobe) finds them by alias too.
func modulesAlias(mods []*module) []byte {
	var b bytes.Buffer
	for _, m := range mods {
		for _, a := range m.Aliases {
			fmt.Fprintf(&b, "alias %s %s\n", a, m.Name)
		}
	}
	return b.Bytes()
}
