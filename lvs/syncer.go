package lvs

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
)

// syncKernel is what a Syncer needs of the kernel.
type syncKernel interface {
	start(SyncDaemon) error
	stop(SyncRole) error
	list() ([]SyncDaemon, error)
}

// The kernel's defaults for a daemon's optional settings (ip_vs_sync.c).
var defaultSyncGroup4 = netip.MustParseAddr("224.0.0.81")

const (
	defaultSyncPort = 8848
	defaultSyncTTL  = 1
)

// normalized is d with the kernel's defaults filled in, so that a setting
// left out and the same setting given compare equal, and going back to a
// default is a change. MaxLen stays 0 (the kernel's choice depends on the
// interface's MTU): 0 matches whatever the kernel chose.
func (d SyncDaemon) normalized() SyncDaemon {
	if !d.Group.IsValid() {
		d.Group = defaultSyncGroup4
	}
	if d.Port == 0 {
		d.Port = defaultSyncPort
	}
	if d.TTL == 0 {
		d.TTL = defaultSyncTTL
	}
	return d
}

// matches reports whether running runs as asked (normalized) asks.
func (running SyncDaemon) matches(asked SyncDaemon) bool {
	a := asked
	if a.MaxLen == 0 {
		a.MaxLen = running.MaxLen
	}
	return running == a
}

// owned is a daemon keepvip started or adopted: what it asked, and what
// the kernel reports running (the kernel may change a setting, e.g. raise
// a backup's maximum length, or ignore the settings of Linux 4.3 on an
// older kernel): ownership is decided on the latter.
type owned struct {
	asked, actual SyncDaemon
}

// Syncer keeps the kernel's IPVS sync daemons as asked. It changes only
// the daemons it started, or found running exactly as asked: a daemon
// someone else runs (ipvsadm --start-daemon, keepalived) with other
// settings is reported and left alone.
type Syncer struct {
	k   syncKernel
	log *slog.Logger

	mu    sync.Mutex
	owned map[SyncRole]owned
}

// NewSyncer returns a Syncer over the kernel's daemons.
func NewSyncer(log *slog.Logger) *Syncer { return newSyncer(&syncNetlink{}, log) }

func newSyncer(k syncKernel, log *slog.Logger) *Syncer {
	if log == nil {
		log = slog.Default()
	}
	return &Syncer{k: k, log: log, owned: map[SyncRole]owned{}}
}

// Set makes the daemons want (at most one per role): what is not wanted
// and is keepvip's stops, what is wanted and missing starts, and one of
// keepvip's asked for with other settings is restarted (the kernel cannot
// change a running daemon). Stops come first, so that going from backup to
// master stops the backup before the master starts.
func (s *Syncer) Set(want []SyncDaemon) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	wanted := map[SyncRole]SyncDaemon{}
	for _, d := range want {
		if d.Role != SyncMaster && d.Role != SyncBackup {
			return fmt.Errorf("IPVS sync daemon %s: neither master nor backup", d)
		}
		if _, dup := wanted[d.Role]; dup {
			return fmt.Errorf("IPVS sync daemons: two %s daemons asked for; the kernel runs one", d.Role)
		}
		wanted[d.Role] = d.normalized()
	}
	list, err := s.k.list()
	if err != nil {
		return err
	}
	running := map[SyncRole]SyncDaemon{}
	for _, d := range list {
		running[d.Role] = d
	}
	var errs []error
	var starts []SyncDaemon
	for _, role := range []SyncRole{SyncMaster, SyncBackup} {
		w, isWanted := wanted[role]
		r, isRunning := running[role]
		o, isOwned := s.owned[role]
		ours := isRunning && isOwned && r == o.actual
		switch {
		case !isRunning:
			delete(s.owned, role)
			if isWanted {
				starts = append(starts, w)
			}
		case isWanted && ours && o.asked == w:
			// as asked
		case isWanted && !ours && r.matches(w):
			s.owned[role] = owned{asked: w, actual: r} // adopted: what a restarted keepvip started
		case isWanted && !ours:
			errs = append(errs, fmt.Errorf("an IPVS sync daemon runs that keepvip did not start (%s): stop it (ipvsadm --stop-daemon %s) or ask for the same settings", r.Long(), role))
		case isWanted: // ours, asked for with other settings
			if err := s.k.stop(role); err != nil {
				errs = append(errs, err)
				continue
			}
			delete(s.owned, role)
			starts = append(starts, w)
		case ours: // not wanted any more
			if err := s.k.stop(role); err != nil {
				errs = append(errs, err)
				continue
			}
			delete(s.owned, role)
			s.log.Info("IPVS sync daemon stopped", "role", role.String(), "interface", r.Interface, "syncID", r.SyncID)
		default:
			delete(s.owned, role) // someone else's: left alone
		}
	}
	for _, w := range starts {
		if err := s.k.start(w); err != nil {
			errs = append(errs, err)
			continue
		}
		actual, err := s.readBack(w.Role)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		s.owned[w.Role] = owned{asked: w, actual: actual}
		if !actual.matches(w) {
			s.log.Warn("the kernel runs the IPVS sync daemon with other settings than asked (a kernel before 4.3 ignores group, port, TTL and maxLen)",
				"asked", w.Long(), "running", actual.Long())
		}
		s.log.Info("IPVS sync daemon started", "daemon", actual.Long())
	}
	return errors.Join(errs...)
}

// readBack returns the daemon of role as the kernel runs it.
func (s *Syncer) readBack(role SyncRole) (SyncDaemon, error) {
	list, err := s.k.list()
	if err != nil {
		return SyncDaemon{}, err
	}
	for _, d := range list {
		if d.Role == role {
			return d, nil
		}
	}
	return SyncDaemon{}, fmt.Errorf("the IPVS sync %s daemon started is not running", role)
}

// Running returns the daemons that run, master first, and whether each is
// keepvip's.
func (s *Syncer) Running() ([]SyncDaemon, []bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	list, err := s.k.list()
	if err != nil {
		return nil, nil, err
	}
	ours := make([]bool, len(list))
	for i, d := range list {
		o, ok := s.owned[d.Role]
		ours[i] = ok && d == o.actual
	}
	return list, ours, nil
}
