// Command image writes keepvip's container image as an OCI image-layout
// archive (test/framework/ociimage), without a registry or a container
// engine: the same contents as the Dockerfile's image, loadable by
// containerd (`ctr -n k8s.io images import FILE`) and by tools that read
// OCI layouts (podman load, skopeo copy oci-archive:FILE ...).
//
//	go run ./hack/image -binary bin/keepvip -ref keepvip:dev -o bin/keepvip-image.tar
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/keepvip/keepvip/test/framework/ociimage"
)

func main() {
	binary := flag.String("binary", "bin/keepvip", "the static keepvip binary (make build)")
	ref := flag.String("ref", "keepvip:dev", "the image's name")
	out := flag.String("o", "bin/keepvip-image.tar", "the archive to write")
	flag.Parse()
	if err := write(*binary, *ref, *out); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func write(binary, ref, out string) error {
	b, err := os.ReadFile(binary)
	if err != nil {
		return err
	}
	files, cfg := ociimage.Keepvip(b)
	if err := ociimage.WriteFile(out, ref, files, cfg); err != nil {
		return err
	}
	fmt.Printf("%s: %s\n", out, ref)
	return nil
}
