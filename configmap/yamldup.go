package configmap

import (
	"fmt"

	yaml3 "go.yaml.in/yaml/v3"
)

// repeatedFields finds the fields of config.yaml given twice in one
// mapping, which a strict decoder refuses for the whole document: by the
// part of it they are in ("instances[2]", "routing"), so that only that
// entry is refused. top is a top-level field given twice (which leaves
// the entries unknown: the document is unreadable). A document that
// cannot be parsed returns an error.
func repeatedFields(raw string) (top string, parts map[string]string, err error) {
	var doc yaml3.Node
	if err := yaml3.Unmarshal([]byte(raw), &doc); err != nil {
		return "", nil, err
	}
	if doc.Kind != yaml3.DocumentNode || len(doc.Content) == 0 || doc.Content[0].Kind != yaml3.MappingNode {
		return "", nil, nil
	}
	root := doc.Content[0]
	parts = map[string]string{}
	seen := map[string]bool{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		if seen[k.Value] {
			return k.Value, nil, nil
		}
		seen[k.Value] = true
		if v.Kind == yaml3.SequenceNode && (k.Value == "instances" || k.Value == "virtualServers") {
			for j, item := range v.Content {
				if why := repeated(item); why != "" {
					parts[fmt.Sprintf("%s[%d]", k.Value, j)] = why
				}
			}
			continue
		}
		if why := repeated(v); why != "" {
			parts[k.Value] = why
		}
	}
	return "", parts, nil
}

// repeated describes the first field given twice in a mapping of n, at
// any depth, or "".
func repeated(n *yaml3.Node) string {
	switch n.Kind {
	case yaml3.MappingNode:
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if seen[k.Value] {
				return fmt.Sprintf("field %q is given twice (line %d)", k.Value, k.Line)
			}
			seen[k.Value] = true
			if why := repeated(n.Content[i+1]); why != "" {
				return why
			}
		}
	case yaml3.SequenceNode:
		for _, c := range n.Content {
			if why := repeated(c); why != "" {
				return why
			}
		}
	}
	return ""
}
