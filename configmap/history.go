package configmap

import (
	"encoding/json"
	"fmt"

	"github.com/keepvip/keepvip/config"
)

// A node's history is the Spec in force: what it runs of each entry,
// kept across restarts so that an entry that is bad in the live
// ConfigMap keeps, after a restart, the form that ran before it. It is
// saved with the identities of the entries, which the ConfigMap's own
// form cannot always carry (a VIP key's virtual server without its VIP,
// a selector that picks no node).

// historyVersion changes when the saved form does.
const historyVersion = 1

type savedSpec struct {
	Version        int            `json:"version"`
	Instances      []savedInst    `json:"instances,omitempty"`
	VirtualServers []savedVS      `json:"virtualServers,omitempty"`
	Kernel         *config.Kernel `json:"kernel,omitempty"`
	NodeSelector   string         `json:"nodeSelector,omitempty"`
	NoNodes        bool           `json:"noNodes,omitempty"`
	Routing        *Routing       `json:"routing,omitempty"`
}

type savedInst struct {
	ID      string   `json:"id"`
	Source  string   `json:"source"`
	KeyVIPs []string `json:"keyVIPs,omitempty"`
	Form    Instance `json:"form"`
}

type savedVS struct {
	ID     string        `json:"id"`
	Source string        `json:"source"`
	Form   VirtualServer `json:"form"`
}

// MarshalJSON saves s as history.
func (s Spec) MarshalJSON() ([]byte, error) {
	out := savedSpec{Version: historyVersion, NodeSelector: s.NodeSelector, NoNodes: s.NoNodes, Routing: s.Routing}
	if !isZero(s.Kernel) {
		k := s.Kernel
		out.Kernel = &k
	}
	for _, in := range s.Instances {
		out.Instances = append(out.Instances, savedInst{ID: in.id, Source: in.Source, KeyVIPs: in.keyVIPs, Form: in})
	}
	for _, vs := range s.VirtualServers {
		out.VirtualServers = append(out.VirtualServers, savedVS{ID: vs.id, Source: vs.Source, Form: vs})
	}
	return json.Marshal(out)
}

// UnmarshalJSON restores history saved by MarshalJSON.
func (s *Spec) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		return nil
	}
	var in savedSpec
	if err := json.Unmarshal(b, &in); err != nil {
		return fmt.Errorf("reading the saved vip-configmap entries: %w", err)
	}
	if in.Version != historyVersion {
		return fmt.Errorf("reading the saved vip-configmap entries: version %d, want %d", in.Version, historyVersion)
	}
	*s = Spec{NodeSelector: in.NodeSelector, NoNodes: in.NoNodes, Routing: in.Routing}
	if in.Kernel != nil {
		s.Kernel = *in.Kernel
	}
	for _, x := range in.Instances {
		f := x.Form
		f.id, f.Source, f.keyVIPs = x.ID, x.Source, x.KeyVIPs
		s.Instances = append(s.Instances, f)
	}
	for _, x := range in.VirtualServers {
		f := x.Form
		f.id, f.Source = x.ID, x.Source
		s.VirtualServers = append(s.VirtualServers, f)
	}
	return nil
}
