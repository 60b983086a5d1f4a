// Package vm runs programs inside a throwaway qemu virtual machine that has
// IPVS, for the tests and benchmarks that the host kernel cannot run (it has
// no ip_vs, dummy or ipip).
//
// The machine is Debian's own kernel (the package linux-image-amd64 points
// at), booted under TCG at the uncompressed vmlinux's PVH entry, with an
// initramfs built for each run: a static busybox for the usual commands,
// dash as /bin/sh, iproute2's ip and ipvsadm (all from the host, with their
// shared libraries), the kernel modules IPVS and the lab need, the caller's
// binaries and a generated /init. The init mounts the usual file systems,
// brings up lo, loads the modules in dependency order, runs the commands
// one by one and powers the machine off. The guest has no network device.
//
// Each command's stdout, stderr, exit status and run time come back to the
// host over a second serial port (ttyS1), gzipped, as base64 blocks framed
// by lines that carry a random per-run nonce; the first serial port is the
// console, kept in Result.Console and included in every error.
//
// The kernel package is downloaded with apt-get once and cached, keyed by
// its package name and version, under $XDG_CACHE_HOME/keepvip-vm (or
// ~/.cache/keepvip-vm, or $KEEPVIP_VM_CACHE). See Prepare and Run.
//
// Tests meant only for the machine either carry //go:build vmtest (test/vm
// builds the guest binaries with that tag) or skip unless InGuest.
package vm
