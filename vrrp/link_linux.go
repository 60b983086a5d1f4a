package vrrp

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// linkInfo is what keepvip follows about an interface.
type linkInfo struct {
	up    bool // administratively up and running (has carrier)
	index int
	mac   string
}

// linkWatcher follows the links and addresses of the host by netlink
// notifications. A subscription that fails (the netlink library ends it on
// any receive error, such as ENOBUFS after a burst of changes) is taken
// again after a second, and the links and addresses re-read, so that
// tracking never silently stops and what changed in between is not lost.
type linkWatcher struct {
	log *slog.Logger
	// onLink is called for every change of a link's state, index or MAC.
	onLink func(name string, info linkInfo)
	// onAddrGone is called when an address is removed.
	onAddrGone func(ifindex int, p netip.Prefix)
	// onAddrResync is called after every address subscription, once it
	// is in place: notifications from before it may have been lost, so
	// it lists the addresses and reconciles. If it fails, the subscription
	// is taken again later, and with it another listing.
	onAddrResync func() error

	mu    sync.Mutex
	links map[string]linkInfo
}

func linkUp(attrs *netlink.LinkAttrs) bool {
	return attrs.Flags&net.FlagUp != 0 && attrs.RawFlags&unix.IFF_RUNNING != 0
}

func infoOf(attrs *netlink.LinkAttrs) linkInfo {
	return linkInfo{up: linkUp(attrs), index: attrs.Index, mac: attrs.HardwareAddr.String()}
}

const (
	resubscribeAfter = time.Second
	netlinkRcvBuf    = 1 << 20
)

// start subscribes, then reads the current state, so that no change between
// the two is lost. It returns when the initial state is known; updates flow
// until done is closed.
func (w *linkWatcher) start(done <-chan struct{}) error {
	lch, lend, err := w.subscribeLinks(done)
	if err != nil {
		return err
	}
	ach, aend, err := w.subscribeAddrs(done)
	if err != nil {
		lend()
		go drain(lch)
		return err
	}
	fail := func(err error) error {
		lend()
		aend()
		go drain(lch)
		go drain(ach)
		return err
	}
	if err := w.relist(false); err != nil {
		return fail(err)
	}
	if w.onAddrResync != nil {
		if err := w.onAddrResync(); err != nil {
			return fail(err)
		}
	}
	go w.followLinks(done, lch, lend)
	go w.followAddrs(done, ach, aend)
	return nil
}

// subscription is one netlink subscription. The library closes its socket
// only when the done channel it was given closes, not when it fails, so
// each subscription gets a done of its own, closed by end (or with the
// watcher's): a failed one does not leave a socket behind that the kernel
// keeps queueing into.
type subscription struct {
	done chan struct{} // given to the library
	end  func()
}

func newSubscription(done <-chan struct{}) subscription {
	s := subscription{done: make(chan struct{})}
	ended := make(chan struct{})
	s.end = sync.OnceFunc(func() { close(ended) })
	go func() {
		select {
		case <-done:
		case <-ended:
		}
		close(s.done)
	}()
	return s
}

func (w *linkWatcher) subscribeLinks(done <-chan struct{}) (chan netlink.LinkUpdate, func(), error) {
	sub := newSubscription(done)
	ch := make(chan netlink.LinkUpdate, 256)
	err := netlink.LinkSubscribeWithOptions(ch, sub.done, netlink.LinkSubscribeOptions{
		ErrorCallback:     func(err error) { w.log.Warn("link notifications failed", "err", err) },
		ReceiveBufferSize: netlinkRcvBuf,
	})
	if err != nil {
		sub.end()
		return nil, nil, fmt.Errorf("subscribing to link changes: %w", err)
	}
	return ch, sub.end, nil
}

func (w *linkWatcher) subscribeAddrs(done <-chan struct{}) (chan netlink.AddrUpdate, func(), error) {
	sub := newSubscription(done)
	ch := make(chan netlink.AddrUpdate, 256)
	err := netlink.AddrSubscribeWithOptions(ch, sub.done, netlink.AddrSubscribeOptions{
		ErrorCallback:     func(err error) { w.log.Warn("address notifications failed", "err", err) },
		ReceiveBufferSize: netlinkRcvBuf,
	})
	if err != nil {
		sub.end()
		return nil, nil, fmt.Errorf("subscribing to address changes: %w", err)
	}
	return ch, sub.end, nil
}

// relist reads every link and, with notify, reports what changed.
func (w *linkWatcher) relist(notify bool) error {
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("listing links: %w", err)
	}
	now := map[string]linkInfo{}
	for _, l := range links {
		now[l.Attrs().Name] = infoOf(l.Attrs())
	}
	w.mu.Lock()
	old := w.links
	w.links = now
	w.mu.Unlock()
	if !notify {
		return nil
	}
	for name, info := range now {
		if old[name] != info {
			w.onLink(name, info)
		}
	}
	for name := range old {
		if _, ok := now[name]; !ok {
			w.onLink(name, linkInfo{})
		}
	}
	return nil
}

func (w *linkWatcher) followLinks(done <-chan struct{}, ch chan netlink.LinkUpdate, end func()) {
	for {
		for u := range ch {
			name := u.Attrs().Name
			info := infoOf(u.Attrs())
			if u.Header.Type == unix.RTM_DELLINK {
				info = linkInfo{}
			}
			w.mu.Lock()
			was, known := w.links[name]
			w.links[name] = info
			w.mu.Unlock()
			if !known || was != info {
				w.onLink(name, info)
			}
		}
		// The subscription ended: stopped, or failed.
		end()
		for {
			select {
			case <-done:
				return
			case <-time.After(resubscribeAfter):
			}
			nch, nend, err := w.subscribeLinks(done)
			if err == nil {
				if err = w.relist(true); err != nil {
					nend()
					go drain(nch)
				}
			}
			if err != nil {
				w.log.Warn("following links again", "err", err)
				continue
			}
			ch, end = nch, nend
			break
		}
		w.log.Info("following link changes again")
	}
}

func (w *linkWatcher) followAddrs(done <-chan struct{}, ch chan netlink.AddrUpdate, end func()) {
	for {
		for u := range ch {
			if u.NewAddr {
				continue
			}
			a, ok := netip.AddrFromSlice(u.LinkAddress.IP)
			if !ok {
				continue
			}
			bits, _ := u.LinkAddress.Mask.Size()
			w.onAddrGone(u.LinkIndex, netip.PrefixFrom(a.Unmap(), bits))
		}
		end()
		for {
			select {
			case <-done:
				return
			case <-time.After(resubscribeAfter):
			}
			nch, nend, err := w.subscribeAddrs(done)
			// Subscribed first, listed second: a removal from now on
			// is either in the list or notified.
			if err == nil && w.onAddrResync != nil {
				if err = w.onAddrResync(); err != nil {
					nend()
					go drain(nch)
				}
			}
			if err != nil {
				w.log.Warn("following addresses again", "err", err)
				continue
			}
			ch, end = nch, nend
			break
		}
		w.log.Info("following address changes again")
	}
}

// drain reads an abandoned subscription's channel until the library closes
// it, so that its goroutine, which blocks on sending, can end.
func drain[T any](ch chan T) {
	for range ch {
	}
}

// snapshot returns the state of the named links.
func (w *linkWatcher) snapshot(names []string) map[string]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]bool, len(names))
	for _, n := range names {
		out[n] = w.links[n].up
	}
	return out
}

// kernelRemoved tells why the kernel itself removed the addresses of
// ifindex, or "" when it did not. An interface set administratively down
// loses its IPv6 addresses (unless keep_addr_on_down is set; IPv4 ones
// stay) and one deleted loses all, each with its own notification: no
// other program removed them. The kernel sends the link's change before the
// removals, but on the link subscription, which is read by another
// goroutine than the address one: the watcher may not have seen it yet, so
// the link is read now. A link that went down and up again before this
// runs reads up: its removals then look like anyone's.
func kernelRemoved(ifindex int) string {
	l, err := netlink.LinkByIndex(ifindex)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound) || errors.Is(err, unix.ENODEV):
		return "its interface was deleted"
	case err != nil:
		return ""
	case l.Attrs().Flags&net.FlagUp == 0:
		return "interface " + l.Attrs().Name + " was set down, which removes its IPv6 addresses"
	}
	return ""
}
