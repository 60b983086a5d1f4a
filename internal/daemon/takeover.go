package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/keepvip/keepvip/internal/handover"
	"github.com/keepvip/keepvip/vrrp"
)

// HandoverStatus is keepvip's replacement in place on this host (see
// package handover and Options.TakeOver).
type HandoverStatus struct {
	// WaitingFor: this keepvip waits to take over from the keepvip of
	// that pid, which runs on this host.
	WaitingFor int32 `json:"waitingFor,omitempty"`
	// Successor: the keepvip of that pid waits to take over from this
	// one; when this one stops, it leaves its VIPs and virtual servers
	// in place for it.
	Successor int32 `json:"successor,omitempty"`
	// TookOver is when this keepvip took over from the one before it,
	// and Masters the instances it took over as master.
	TookOver time.Time `json:"tookOver,omitzero"`
	Masters  []string  `json:"masters,omitempty"`
}

// waitToTakeOver waits, if another keepvip runs in this network namespace,
// until it is gone, and returns what it handed over (nil if it handed
// nothing over: it stopped as usual or died, and this keepvip starts as
// any does, resuming what it finds). Meanwhile the status socket, if it
// can be had (two pods on a node have one each; two processes on one host
// may share the path, and the running one has it), says whom it waits for,
// and says ready: the keepvip it waits for can be stopped now.
func waitToTakeOver(ctx context.Context, o Options) (*vrrp.Handover, error) {
	var waitingFor atomic.Int32
	if o.StatusSocket != "" {
		l, err := listenStatus(o.StatusSocket, o.Logger)
		if err != nil {
			o.Logger.Info("no status socket while waiting to take over; it comes with the takeover", "err", err)
		} else {
			mux := http.NewServeMux()
			mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) {
				writeStatus(w, Status{Version: o.Version, ConfigFile: o.ConfigFile, IPVS: "not used yet", Handover: &HandoverStatus{WaitingFor: waitingFor.Load()}})
			})
			mux.HandleFunc("GET /v1/health", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
			mux.HandleFunc("GET /v1/ready", func(w http.ResponseWriter, _ *http.Request) {
				pid := waitingFor.Load()
				if pid == 0 {
					http.Error(w, "starting", http.StatusServiceUnavailable)
					return
				}
				fmt.Fprintf(w, "ok: waiting to take over from keepvip pid %d\n", pid)
			})
			srv := serveHTTP(l, mux, o.Logger)
			defer func() {
				// The listener too, at once: Close alone leaves it to
				// Serve, which may not have begun, and the socket would
				// still take connections when keepvip listens again.
				srv.Close()
				l.Close()
			}()
		}
	}
	state, err := handover.Wait(ctx, handover.WaitOptions{
		Name:      handover.Name,
		Running:   vrrp.Running,
		OnWaiting: func(pid int32) { waitingFor.Store(pid) },
		Logger:    o.Logger,
	})
	if err != nil {
		return nil, err
	}
	if state == nil {
		o.Logger.Info("no keepvip to take over from: starting on its own")
		return nil, nil
	}
	var h vrrp.Handover
	if err := json.Unmarshal(state, &h); err != nil {
		// Whatever it left is found as a crashed keepvip's would be.
		o.Logger.Error("the keepvip before this one handed over something unreadable; starting as after a crash", "err", err)
		return nil, nil
	}
	o.Logger.Info("taking over from the keepvip before this one on this host", "masters", h.Masters)
	return &h, nil
}

// leave stops this keepvip for the successor s, which waits on this host
// to take over: the VIPs stay on their interfaces (masters send a last
// advert, see vrrp.Manager.Leave), the IPVS services and the ECMP VIPs
// stay, and the servers close, freeing the metrics port and the status
// socket's path for it. Only then is it told to go, with what it needs.
// BGP sessions and routes in a kernel table end with this process: the
// successor announces again once its sessions are up.
func (d *daemon) leave(s *handover.Successor, servers []shutdowner) error {
	d.log.Info("shutting down: a keepvip waits to take over on this host; leaving the VIPs and virtual servers in place for it", "successor", s.Pid)
	h := d.mgr.Leave()
	d.routing.stop()
	if d.lb != nil {
		d.lb.stop()
	}
	err := shutdownAll(servers)
	if gerr := s.Go(h); gerr != nil {
		// It died after it said it was ready: what was left is found
		// by the next keepvip as a crashed one's would be.
		d.log.Error("the successor did not get the word; the VIPs left for it wait for the next keepvip", "err", gerr)
		err = errors.Join(err, gerr)
	}
	d.log.Info("stopped: handed over", "successor", s.Pid, "masters", h.Masters)
	return err
}
