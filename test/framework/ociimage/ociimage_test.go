package ociimage

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// readArchive returns the files of an image-layout tar.
func readArchive(t *testing.T, b []byte) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out[h.Name] = data
	}
}

// blob returns a blob by digest, checking that its content has that digest
// and the descriptor's size.
func blob(t *testing.T, files map[string][]byte, d descriptor) []byte {
	t.Helper()
	b, ok := files["blobs/sha256/"+strings.TrimPrefix(d.Digest, "sha256:")]
	if !ok {
		t.Fatalf("blob %s missing", d.Digest)
	}
	sum := sha256.Sum256(b)
	if "sha256:"+hex.EncodeToString(sum[:]) != d.Digest || int64(len(b)) != d.Size {
		t.Fatalf("blob %s: content does not match its descriptor (size %d, want %d)", d.Digest, len(b), d.Size)
	}
	return b
}

func TestWriteLayout(t *testing.T) {
	files := []File{
		{Path: "/bin/busybox", Mode: 0o755, Data: []byte("#!binary")},
		{Path: "/bin/sh", Mode: fs.ModeSymlink, Link: "busybox"},
		{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
		{Path: "/etc/passwd", Data: []byte("root:x:0:0:root:/:/bin/sh\n")},
	}
	cfg := Config{Entrypoint: []string{"/bin/sleep", "inf"}, Env: []string{"PATH=/bin"}}
	var a, b bytes.Buffer
	if err := Write(&a, "localhost/pause:test", files, cfg); err != nil {
		t.Fatal(err)
	}
	reversed := slices.Clone(files)
	slices.Reverse(reversed)
	if err := Write(&b, "localhost/pause:test", reversed, cfg); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("the same image written twice (files in another order) differs")
	}
	arch := readArchive(t, a.Bytes())
	if string(arch["oci-layout"]) != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout = %q", arch["oci-layout"])
	}
	var idx index
	if err := json.Unmarshal(arch["index.json"], &idx); err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("index.json %s: %v", arch["index.json"], err)
	}
	md := idx.Manifests[0]
	if md.Annotations["io.containerd.image.name"] != "localhost/pause:test" || md.Annotations["org.opencontainers.image.ref.name"] != "test" {
		t.Errorf("index annotations %v", md.Annotations)
	}
	var m manifest
	if err := json.Unmarshal(blob(t, arch, md), &m); err != nil || len(m.Layers) != 1 {
		t.Fatalf("manifest: %v", err)
	}
	var ic imageConfig
	if err := json.Unmarshal(blob(t, arch, m.Config), &ic); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(ic.Config.Entrypoint, cfg.Entrypoint) || !slices.Equal(ic.Config.Env, cfg.Env) || ic.Config.WorkingDir != "/" ||
		len(ic.RootFS.DiffIDs) != 1 || ic.RootFS.DiffIDs[0] != m.Layers[0].Digest {
		t.Errorf("config %+v, layer %s", ic, m.Layers[0].Digest)
	}
	type entry struct {
		typ  byte
		mode int64
		link string
		data string
	}
	got := map[string]entry{}
	var names []string
	tr := tar.NewReader(bytes.NewReader(blob(t, arch, m.Layers[0])))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(h.ModTime.Truncate(0)) || h.ModTime.Unix() != 0 {
			t.Errorf("%s: owner %d:%d, mtime %v", h.Name, h.Uid, h.Gid, h.ModTime)
		}
		names = append(names, h.Name)
		got[h.Name] = entry{h.Typeflag, h.Mode, h.Linkname, string(data)}
	}
	want := map[string]entry{
		"bin/":        {tar.TypeDir, 0o755, "", ""},
		"bin/busybox": {tar.TypeReg, 0o755, "", "#!binary"},
		"bin/sh":      {tar.TypeSymlink, 0o777, "busybox", ""},
		"etc/":        {tar.TypeDir, 0o755, "", ""},
		"etc/passwd":  {tar.TypeReg, 0o644, "", "root:x:0:0:root:/:/bin/sh\n"},
		"tmp/":        {tar.TypeDir, 0o1777, "", ""},
	}
	if len(got) != len(want) || !slices.IsSorted(names) {
		t.Errorf("layer entries %v, want %d sorted", names, len(want))
	}
	for n, w := range want {
		if got[n] != w {
			t.Errorf("layer %s = %+v, want %+v", n, got[n], w)
		}
	}
}

func TestWriteRefusesBadInput(t *testing.T) {
	for _, c := range []struct {
		ref   string
		files []File
		want  string
	}{
		{"", nil, "not an image reference"},
		{"a b", nil, "not an image reference"},
		{"x:1", []File{{Path: "bin/x"}}, "absolute path"},
		{"x:1", []File{{Path: "/"}}, "absolute path"},
		{"x:1", []File{{Path: "/x"}, {Path: "/x/"}}, "given twice"},
		{"x:1", []File{{Path: "/x", Data: []byte("f")}, {Path: "/x/y"}}, "/x is not a directory"},
	} {
		err := Write(io.Discard, c.ref, c.files, Config{})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("Write(%q, %v) = %v, want an error saying %q", c.ref, c.files, err, c.want)
		}
	}
}

// The image make image writes has what the Dockerfile's has: the binary
// at the place it copies it to, built with the same flags as make build,
// and the same ENV, ENTRYPOINT and CMD.
func TestKeepvipMatchesDockerfile(t *testing.T) {
	f, err := os.Open("../../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var stage int
	var copyDst, env, entry, cmd, build string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		switch fields := strings.Fields(l); {
		case len(fields) == 0 || strings.HasPrefix(l, "#"):
		case fields[0] == "FROM":
			stage++
		case fields[0] == "RUN" && strings.Contains(l, "go build"):
			build = l
		case stage == 2 && fields[0] == "COPY":
			copyDst = fields[len(fields)-1]
		case stage == 2 && fields[0] == "ENV":
			env = strings.TrimPrefix(l, "ENV ")
		case stage == 2 && fields[0] == "ENTRYPOINT":
			entry = strings.TrimPrefix(l, "ENTRYPOINT ")
		case stage == 2 && fields[0] == "CMD":
			cmd = strings.TrimPrefix(l, "CMD ")
		}
	}
	files, cfg := Keepvip([]byte("bin"))
	js := func(s []string) string { b, _ := json.Marshal(s); return strings.ReplaceAll(string(b), ",", ", ") }
	if stage != 2 || len(files) != 1 || files[0].Path != copyDst || files[0].Mode != 0o755 ||
		len(cfg.Env) != 1 || cfg.Env[0] != env || js(cfg.Entrypoint) != entry || js(cfg.Cmd) != cmd {
		t.Errorf("Dockerfile: %d stages, COPY to %s, ENV %s, ENTRYPOINT %s, CMD %s;\nimage: %+v %+v", stage, copyDst, env, entry, cmd, files[0].Path, cfg)
	}
	// make build and the Dockerfile build the binary alike.
	mk, err := os.ReadFile("../../../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	ld := regexp.MustCompile(`(?m)^LDFLAGS := (.*)$`).FindSubmatch(mk)
	mkBuild := regexp.MustCompile(`(?m)^build:\n\t@(.*)$`).FindSubmatch(mk)
	if ld == nil || mkBuild == nil {
		t.Fatal("Makefile: no LDFLAGS or build target")
	}
	want := strings.ReplaceAll(string(ld[1]), "$(VERSION)", "${VERSION}")
	if !strings.Contains(build, "CGO_ENABLED=0 go build -trimpath") || !strings.Contains(build, `-ldflags "`+want+`"`) ||
		!strings.Contains(string(mkBuild[1]), "CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)'") {
		t.Errorf("the Dockerfile builds with\n  %s\nmake build with\n  %s\n  LDFLAGS := %s", build, mkBuild[1], ld[1])
	}
}
