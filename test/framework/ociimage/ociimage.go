// Package ociimage writes container images as OCI image-layout archives
// (image-spec v1.1 "image layout", in one tar), the form containerd's
// `ctr images import` loads, without a registry or a container engine.
// The archive is reproducible: the same files and config give the same
// bytes, digests included (no timestamps, owners root, names sorted).
//
// make image writes keepvip's image with it (hack/image), and the real
// nodes of test/framework/kubetest their sandbox image.
package ociimage

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"path"
	"runtime"
	"slices"
	"strings"

	"github.com/keepvip/keepvip/internal/durable"
)

// File is one entry of the image's single layer.
type File struct {
	// Path is absolute ("/usr/local/bin/keepvip"). Parent directories are
	// added as needed (0755).
	Path string
	// Mode is the permission bits (and fs.ModeDir, fs.ModeSymlink or
	// fs.ModeSticky where they apply); 0 means 0644 for a file, 0755 for
	// a directory.
	Mode fs.FileMode
	// Data is a regular file's content; Link a symlink's target.
	Data []byte
	Link string
}

// Config is what the runtime takes from the image config.
type Config struct {
	Entrypoint []string
	Cmd        []string
	Env        []string
	WorkingDir string // default "/"
	// Labels are the image's labels (org.opencontainers.image.*, ...).
	Labels map[string]string
}

// Media types of image-spec v1.1.
const (
	mediaIndex    = "application/vnd.oci.image.index.v1+json"
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar"
)

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Platform    *platform         `json:"platform,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
}

type imageConfig struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Config       struct {
		Entrypoint []string          `json:"Entrypoint,omitempty"`
		Cmd        []string          `json:"Cmd,omitempty"`
		Env        []string          `json:"Env,omitempty"`
		WorkingDir string            `json:"WorkingDir,omitempty"`
		Labels     map[string]string `json:"Labels,omitempty"`
	} `json:"config"`
	RootFS struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	} `json:"rootfs"`
}

type manifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}

type index struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []descriptor `json:"manifests"`
}

// Write writes the image ref ("keepvip:dev", "localhost/pause:test") with
// files as its one layer to w, for this machine's architecture.
func Write(w io.Writer, ref string, files []File, cfg Config) error {
	if ref == "" || strings.ContainsAny(ref, " \t\n") {
		return fmt.Errorf("writing image: %q is not an image reference", ref)
	}
	layer, err := layerTar(files)
	if err != nil {
		return fmt.Errorf("writing image %s: %w", ref, err)
	}
	blobs := map[string][]byte{}
	add := func(b []byte) (string, int64) {
		sum := sha256.Sum256(b)
		d := "sha256:" + hex.EncodeToString(sum[:])
		blobs[d] = b
		return d, int64(len(b))
	}
	layerDigest, layerSize := add(layer)

	var ic imageConfig
	ic.Architecture, ic.OS = runtime.GOARCH, "linux"
	ic.Config.Entrypoint, ic.Config.Cmd, ic.Config.Env = cfg.Entrypoint, cfg.Cmd, cfg.Env
	ic.Config.WorkingDir, ic.Config.Labels = cfg.WorkingDir, cfg.Labels
	if ic.Config.WorkingDir == "" {
		ic.Config.WorkingDir = "/"
	}
	ic.RootFS.Type = "layers"
	ic.RootFS.DiffIDs = []string{layerDigest} // uncompressed: the diff ID is the blob's digest
	cj, err := json.Marshal(ic)
	if err != nil {
		return fmt.Errorf("writing image %s: %w", ref, err)
	}
	configDigest, configSize := add(cj)

	mj, err := json.Marshal(manifest{
		SchemaVersion: 2, MediaType: mediaManifest,
		Config: descriptor{MediaType: mediaConfig, Digest: configDigest, Size: configSize},
		Layers: []descriptor{{MediaType: mediaLayer, Digest: layerDigest, Size: layerSize}},
	})
	if err != nil {
		return fmt.Errorf("writing image %s: %w", ref, err)
	}
	manifestDigest, manifestSize := add(mj)

	tag := ref
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		tag = ref[i+1:]
	}
	ij, err := json.Marshal(index{SchemaVersion: 2, MediaType: mediaIndex, Manifests: []descriptor{{
		MediaType: mediaManifest, Digest: manifestDigest, Size: manifestSize,
		Platform: &platform{Architecture: runtime.GOARCH, OS: "linux"},
		// containerd names the imported image by the first annotation;
		// the second is the layout's own tag.
		Annotations: map[string]string{"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": tag},
	}}})
	if err != nil {
		return fmt.Errorf("writing image %s: %w", ref, err)
	}

	tw := tar.NewWriter(w)
	put := func(name string, b []byte) error {
		if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Format: tar.FormatPAX}); err != nil {
			return err
		}
		_, err := tw.Write(b)
		return err
	}
	err = errors.Join(put("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)), put("index.json", ij))
	for _, d := range slices.Sorted(maps.Keys(blobs)) {
		if err == nil {
			err = put("blobs/sha256/"+strings.TrimPrefix(d, "sha256:"), blobs[d])
		}
	}
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		return fmt.Errorf("writing image %s: %w", ref, err)
	}
	return nil
}

// layerTar is the layer: files and their parent directories, sorted by
// name, owned by root, timestamps zero.
func layerTar(files []File) ([]byte, error) {
	entries := map[string]File{}
	for _, f := range files {
		p := path.Clean(f.Path)
		if !path.IsAbs(f.Path) || p == "/" {
			return nil, fmt.Errorf("file %q: want an absolute path below /", f.Path)
		}
		if _, dup := entries[p]; dup {
			return nil, fmt.Errorf("file %s: given twice", p)
		}
		f.Path = p
		entries[p] = f
		for d := path.Dir(p); d != "/"; d = path.Dir(d) {
			if e, ok := entries[d]; ok {
				if !e.Mode.IsDir() {
					return nil, fmt.Errorf("file %s: %s is not a directory", p, d)
				}
				continue
			}
			entries[d] = File{Path: d, Mode: fs.ModeDir | 0o755}
		}
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range slices.Sorted(maps.Keys(entries)) {
		f := entries[name]
		h := &tar.Header{Name: strings.TrimPrefix(name, "/"), Format: tar.FormatPAX}
		perm := int64(f.Mode.Perm())
		if f.Mode&fs.ModeSticky != 0 {
			perm |= 0o1000
		}
		switch {
		case f.Mode.IsDir():
			h.Typeflag, h.Name = tar.TypeDir, h.Name+"/"
			if perm == 0 {
				perm = 0o755
			}
		case f.Mode&fs.ModeSymlink != 0:
			h.Typeflag, h.Linkname, perm = tar.TypeSymlink, f.Link, 0o777
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.Data))
			if perm == 0 {
				perm = 0o644
			}
		}
		h.Mode = perm
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("file %s: %w", name, err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write(f.Data); err != nil {
				return nil, fmt.Errorf("file %s: %w", name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteFile writes the image to path, complete or not at all
// (internal/durable: a temporary file renamed into place).
func WriteFile(path, ref string, files []File, cfg Config) error {
	var b bytes.Buffer
	if err := Write(&b, ref, files, cfg); err != nil {
		return err
	}
	if err := durable.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("writing image %s: %w", ref, err)
	}
	return nil
}
