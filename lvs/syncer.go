package lvs

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
)

// syncKernel is what a Syncer needs of the kernel.
type syncKernel interface {
	start(SyncDaemon) error
	stop(SyncRole) error
	list() ([]SyncDaemon, error)
}

// Syncer keeps the kernel's IPVS sync daemons as asked. It changes only
// the daemons it started, or found running exactly as asked: a daemon
// someone else runs (ipvsadm --start-daemon, keepalived) with other
// settings is reported and left alone.
type Syncer struct {
	k   syncKernel
	log *slog.Logger

	mu    sync.Mutex
	owned map[SyncRole]SyncDaemon
}

// NewSyncer returns a Syncer over the kernel's daemons.
func NewSyncer(log *slog.Logger) *Syncer { return newSyncer(&syncNetlink{}, log) }

func newSyncer(k syncKernel, log *slog.Logger) *Syncer {
	if log == nil {
		log = slog.Default()
	}
	return &Syncer{k: k, log: log, owned: map[SyncRole]SyncDaemon{}}
}

// Set makes the daemons want (at most one per role): what is not wanted
// and is keepvip's stops, what is wanted and missing starts, and one of
// keepvip's whose settings changed is restarted (the kernel cannot change
// a running daemon). Stops come first, so that going from backup to
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
		wanted[d.Role] = d
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
		ours := isRunning && isOwned && r.equal(o)
		switch {
		case !isRunning:
			delete(s.owned, role)
			if isWanted {
				starts = append(starts, w)
			}
		case isWanted && r.equal(w):
			s.owned[role] = w // adopted: what a restarted keepvip started
		case isWanted && !ours:
			errs = append(errs, fmt.Errorf("an IPVS sync daemon runs that keepvip did not start (%s): stop it (ipvsadm --stop-daemon %s) or ask for the same settings", r, role))
		case isWanted: // ours, with other settings
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
		s.owned[w.Role] = w
		s.log.Info("IPVS sync daemon started", "role", w.Role.String(), "interface", w.Interface, "syncID", w.SyncID)
	}
	return errors.Join(errs...)
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
		ours[i] = ok && d.equal(o)
	}
	return list, ours, nil
}
