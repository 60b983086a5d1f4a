package vrrp

// What an Instance talks to: the socket, the addresses, the VIP filter,
// the announcer and the backlog of its socket, as interfaces (the Manager
// gives the real ones, the tests fakes), and the packets it receives.

import (
	"net/netip"
)

// sender writes one VRRP message from src to dst.
type sender interface {
	WritePacket(b []byte, src, dst netip.Addr) error
}

// addresser puts VIPs on an interface and takes them off again. Deleting a
// VIP the addresser did not add must do nothing.
type addresser interface {
	AddVIP(ifindex int, p netip.Prefix) error
	DeleteVIP(ifindex int, p netip.Prefix) error
}

// filterer drops or admits packets addressed to an address (Accept_Mode).
type filterer interface {
	Block(a netip.Addr) error
	Unblock(a netip.Addr) error
}

// announcer sends one gratuitous ARP or unsolicited NA per address and
// returns how many it sent.
type announcer interface {
	Announce(addrs []netip.Addr) (int, error)
}

// backlogger tells an instance whether adverts that have reached the host
// are still on their way to it: queued in the kernel's socket buffer, or
// read and not yet handed over by the socket reader (which may have been
// stalled too).
type backlogger interface {
	// backlog returns nil if everything received before the call has
	// been handed over (to deliver) or dropped, and otherwise a channel
	// closed once it has.
	backlog() <-chan struct{}
}

// instanceIO is what an instance does to the world, behind seams that tests
// replace.
type instanceIO struct {
	tx       sender
	addrs    addresser
	announce announcer
	filter   filterer
	// source returns the address to send from when Config.Source is unset.
	source  func(*Config) (netip.Addr, error)
	ifindex int
	// backlog, if set, is asked before an expired timer is acted on; nil:
	// the sender, if it is also the receiving socket (rawConn).
	backlog backlogger
	// peerLog limits the lines that received packets cause (nil: the
	// instance has its own). A Manager shares one among all its instances
	// and socket readers, so that its budget bounds the whole process.
	peerLog *logLimiter
	// leaving, if set, reports whether the instance stops for a keepvip
	// that takes over on this host (Manager.Leave): it leaves instead of
	// handing off.
	leaving func() bool
}

// received is an advert that passed decode, on its way to its instance.
type received struct {
	pkt Packet
	adv Advertisement
}
