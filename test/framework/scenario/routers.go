package scenario

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/keepvip/keepvip/test/framework/lab"
	"github.com/keepvip/keepvip/vrrp"
)

// impl starts one VRRP implementation on a node with the settings both
// implementations share in the benchmark: one IPv4 instance "vi", VRID 51,
// the given priority and advert interval, one VIP, default preemption and
// GARP settings.
type impl interface {
	Name() string
	Start(n *lab.Node, prio int, advert time.Duration, vip netip.Prefix) (router, error)
}

// router is one running daemon.
type router interface {
	WaitMaster(ctx context.Context) error
	WaitBackup(ctx context.Context) error
	// Crash kills the daemon with SIGKILL (the whole process group for
	// keepalived, whose VRRP child would otherwise send priority 0).
	Crash() error
	// Term sends SIGTERM and waits for the daemon to exit.
	Term(timeout time.Duration) error
}

type keepvipImpl struct{}

func (keepvipImpl) Name() string { return "keepvip" }

func (keepvipImpl) Start(n *lab.Node, prio int, advert time.Duration, vip netip.Prefix) (router, error) {
	cfg := fmt.Sprintf("instances:\n- name: vi\n  interface: eth0\n  vrid: 51\n  priority: %d\n  advertInterval: %s\n  vips: [%s]\n",
		prio, advert, vip)
	k, err := n.StartKeepvip(cfg)
	if err != nil {
		return nil, err
	}
	return &keepvipRouter{k}, nil
}

type keepvipRouter struct{ k *lab.Keepvip }

func (r *keepvipRouter) WaitMaster(ctx context.Context) error {
	return r.k.WaitState(ctx, "vi", vrrp.StateMaster)
}

// WaitBackup waits until the router is a backup that has heard a master.
func (r *keepvipRouter) WaitBackup(ctx context.Context) error {
	if err := r.k.WaitState(ctx, "vi", vrrp.StateBackup); err != nil {
		return err
	}
	for {
		in, err := r.k.Instance(ctx, "vi")
		if err == nil && in.Master.IsValid() {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("backup on %s heard no master: %w", r.k.Node().Name, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func (r *keepvipRouter) Crash() error                     { return r.k.Kill() }
func (r *keepvipRouter) Term(timeout time.Duration) error { return r.k.Stop(timeout) }

type keepalivedImpl struct{}

func (keepalivedImpl) Name() string { return "keepalived" }

func (keepalivedImpl) Start(n *lab.Node, prio int, advert time.Duration, vip netip.Prefix) (router, error) {
	k, err := n.StartKeepalived([]lab.KeepalivedInstance{{
		Name: "vi", VRID: 51, Priority: prio, AdvertInterval: advert, VIPs: []netip.Prefix{vip},
	}})
	if err != nil {
		return nil, err
	}
	return &keepalivedRouter{k}, nil
}

type keepalivedRouter struct{ k *lab.Keepalived }

func (r *keepalivedRouter) WaitMaster(ctx context.Context) error {
	return r.k.WaitState(ctx, "vi", "MASTER")
}
func (r *keepalivedRouter) WaitBackup(ctx context.Context) error {
	return r.k.WaitState(ctx, "vi", "BACKUP")
}
func (r *keepalivedRouter) Crash() error                     { return r.k.Kill() }
func (r *keepalivedRouter) Term(timeout time.Duration) error { return r.k.Stop(timeout) }
