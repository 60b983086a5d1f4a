package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// keepvip validate names every problem by its full path, list indices
// included, refuses NaN durations, and refuses an empty file unless it
// says `instances: []`.
func TestValidateProblems(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name, yaml string
		code       int
		want       []string
	}{
		{"decoding problems", "instances:\n- {interface: eth0, vrid: 1, vips: [192.0.2.1]}\n- {interface: eth0, vrid: two, bogus: 1, vips: [192.0.2.2]}\n", 1, []string{
			"2 problem(s):",
			"  instances[1].bogus: unknown field",
			`  instances[1].vrid: got the string "two", want an integer`}},
		{"NaN", "instances:\n- {interface: eth0, vrid: 1, vips: [192.0.2.1], advertInterval: NaN, preemptDelay: .nan}\n", 1, []string{
			"1 problem(s):",
			"  instances[0].preemptDelay: .nan (line 2) is not a finite number"}},
		{"NaN as a string", "instances:\n- {interface: eth0, vrid: 1, vips: [192.0.2.1], advertInterval: NaN}\n", 1, []string{
			`  instances[0].advertInterval: "NaN" is not a number of seconds`}},
		{"empty", "", 1, []string{"instances: the file is empty"}},
		{"explicitly empty", "instances: []\n", 0, []string{"ok, 0 VRRP instance(s), 0 virtual server(s)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tt.name, " ", "-")+".yaml")
			if err := os.WriteFile(path, []byte(tt.yaml), 0o644); err != nil {
				t.Fatal(err)
			}
			var out, errb bytes.Buffer
			code := run([]string{"validate", path}, &out, &errb)
			got := out.String() + errb.String()
			if code != tt.code {
				t.Errorf("keepvip validate (%q) = %d; want %d\n%s", tt.yaml, code, tt.code, got)
			}
			for _, w := range tt.want {
				if !strings.Contains(got, w) {
					t.Errorf("keepvip validate (%q) says\n%s\nwant it to contain %q", tt.yaml, got, w)
				}
			}
		})
	}
}
