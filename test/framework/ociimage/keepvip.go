package ociimage

// KeepvipBinary is where the image holds keepvip.
const KeepvipBinary = "/usr/local/bin/keepvip"

// Keepvip is keepvip's image as the Dockerfile describes it: nothing but
// the static binary (keepvip talks to the kernel over netlink and needs no
// shell or tools), on PATH, as the entrypoint. TestKeepvipMatchesDockerfile
// holds the two together.
func Keepvip(binary []byte) ([]File, Config) {
	return []File{{Path: KeepvipBinary, Mode: 0o755, Data: binary}}, Config{
		Env:        []string{"PATH=/usr/local/bin"},
		Entrypoint: []string{"keepvip"},
		Cmd:        []string{"run", "--help"},
	}
}
