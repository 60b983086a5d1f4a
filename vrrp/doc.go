// Package vrrp implements the Virtual Router Redundancy Protocol, version 3
// (RFC 9568, with the RFC 5798 semantics keepalived follows) for IPv4 and
// IPv6, and version 2 (RFC 3768) for older IPv4 peers.
//
// The pieces, from the wire up:
//
//   - Advertisement is the packet codec: Marshal and ParseAdvertisement,
//     with VerifyChecksum accepting both IPv4 checksum forms in the field
//     (the RFC 5798 pseudo-header that keepalived requires, and the RFC 9568
//     message-only form).
//   - Instance is one virtual router: the state machine of RFC 9568 §6.4
//     (Initialize, Backup, Master) plus keepalived's Fault state for tracked
//     interfaces, run by one goroutine over an injected clock.
//   - Manager runs the instances of a host. Its Sync takes the full desired
//     set of Config values and starts, updates or stops instances to match.
//     It owns the raw sockets (one per interface and family, demultiplexed
//     by VRID), the gratuitous ARP / unsolicited NA sender and the VIPs it
//     adds with netlink, marked with AddrProto so that keepvip never removes
//     an address it did not add.
//
// Every received packet that is not used is counted by DropReason, in the
// keepvip_vrrp_packets_dropped_total metric and in the instance's Status.
//
// The package knows nothing of Kubernetes. The daemon gives the Manager
// the instances of config.Desired; their Status goes up to `keepvip
// status`, and their transitions to internal/announce.
package vrrp
