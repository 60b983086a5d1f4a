package vrrp

import (
	"fmt"
	"net"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// linkWatcher follows the link state of every interface by netlink
// notifications. A link is up when it is administratively up and running
// (it has carrier).
type linkWatcher struct {
	mu     sync.Mutex
	up     map[string]bool
	notify func(name string, up bool)
}

func linkUp(attrs *netlink.LinkAttrs) bool {
	return attrs.Flags&net.FlagUp != 0 && attrs.RawFlags&unix.IFF_RUNNING != 0
}

// start subscribes, then reads the current state, so that no change between
// the two is lost. It returns when the initial state is known; updates flow
// until done is closed.
func (w *linkWatcher) start(done <-chan struct{}) error {
	ch := make(chan netlink.LinkUpdate, 64)
	if err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{}); err != nil {
		return fmt.Errorf("subscribing to link changes: %w", err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("listing links: %w", err)
	}
	w.mu.Lock()
	w.up = map[string]bool{}
	for _, l := range links {
		w.up[l.Attrs().Name] = linkUp(l.Attrs())
	}
	w.mu.Unlock()
	go func() {
		for u := range ch {
			name := u.Attrs().Name
			up := u.Header.Type != unix.RTM_DELLINK && linkUp(u.Attrs())
			w.mu.Lock()
			was, known := w.up[name]
			w.up[name] = up
			w.mu.Unlock()
			if !known || was != up {
				w.notify(name, up)
			}
		}
	}()
	return nil
}

// snapshot returns the state of the named links.
func (w *linkWatcher) snapshot(names []string) map[string]bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make(map[string]bool, len(names))
	for _, n := range names {
		out[n] = w.up[n]
	}
	return out
}
