// Package lvs programs Linux IPVS (the Linux Virtual Server) from a desired
// state: virtual services by address, port and protocol (TCP, UDP, SCTP) or
// firewall mark, with a scheduler, persistence, and real servers forwarded
// by NAT, direct routing or tunnelling, with weights and connection
// thresholds.
//
// A Director compares the desired state with an image of the kernel's
// table and sends only the difference: a service edited in place, a real
// server added, changed or removed. Sync reconciles everything keepvip owns;
// Update applies the services that changed, at a cost that does not grow
// with the table. The Director never flushes IPVS and never touches a
// virtual service it was not asked for (kube-proxy's, an operator's); it
// removes only services it created, remembered across restarts in a state
// file, and adopts a wanted service that already exists without
// re-creating it, so established connections survive a restart.
//
// New checks that the kernel has IPVS first (moby/ipvs does not: it logs
// and carries on) and names the missing module.
//
// The package knows nothing of Kubernetes, VRRP or health checks:
// internal/balancer drives the Director with the weights health allows.
package lvs
