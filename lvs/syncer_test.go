package lvs

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"strings"
	"syscall"
	"testing"
)

// fakeSync is the kernel's daemons: one per role, EEXIST and ESRCH as the
// kernel answers. foreign marks daemons someone else started.
type fakeSync struct {
	running map[SyncRole]SyncDaemon
	foreign map[SyncRole]bool
	log     []string
}

func newFakeSync() *fakeSync {
	return &fakeSync{running: map[SyncRole]SyncDaemon{}, foreign: map[SyncRole]bool{}}
}

func (f *fakeSync) start(d SyncDaemon) error {
	if _, ok := f.running[d.Role]; ok {
		return syscall.EEXIST
	}
	// The kernel fills in its defaults, and raises a backup's maximum
	// length to 1024 at least.
	d = d.normalized()
	if d.MaxLen == 0 {
		d.MaxLen = 1472
	}
	if d.Role == SyncBackup && d.MaxLen < 1024 {
		d.MaxLen = 1024
	}
	f.running[d.Role] = d
	f.log = append(f.log, "start "+d.String())
	return nil
}

func (f *fakeSync) stop(r SyncRole) error {
	if _, ok := f.running[r]; !ok {
		return syscall.ESRCH
	}
	if f.foreign[r] {
		return fmt.Errorf("stopped someone else's %s daemon", r)
	}
	delete(f.running, r)
	f.log = append(f.log, "stop "+r.String())
	return nil
}

func (f *fakeSync) list() ([]SyncDaemon, error) {
	var out []SyncDaemon
	for _, r := range []SyncRole{SyncMaster, SyncBackup} {
		if d, ok := f.running[r]; ok {
			out = append(out, d)
		}
	}
	return out, nil
}

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// VRRP transitions as the daemon gives them: master, backup, master; a
// restart adopts what runs; a foreign daemon is reported, never touched.
func TestSyncerRolesAndOwnership(t *testing.T) {
	k := newFakeSync()
	s := newSyncer(k, quietLog())
	master := SyncDaemon{Role: SyncMaster, Interface: "eth1", SyncID: 7}
	backup := SyncDaemon{Role: SyncBackup, Interface: "eth1", SyncID: 7}
	for _, step := range []struct {
		want []SyncDaemon
		log  string
	}{
		{[]SyncDaemon{backup}, "start backup on eth1, sync ID 7"},
		{[]SyncDaemon{master}, "stop backup|start master on eth1, sync ID 7"},
		{[]SyncDaemon{master}, ""},
		{[]SyncDaemon{backup}, "stop master|start backup on eth1, sync ID 7"},
		{[]SyncDaemon{{Role: SyncBackup, Interface: "eth1", SyncID: 8}}, "stop backup|start backup on eth1, sync ID 8"},
		{nil, "stop backup"},
	} {
		k.log = nil
		if err := s.Set(step.want); err != nil {
			t.Fatalf("Set(%v): %v", step.want, err)
		}
		if got := strings.Join(k.log, "|"); got != step.log {
			t.Errorf("Set(%v): %q; want %q", step.want, got, step.log)
		}
	}
	// A restarted keepvip finds its master running and adopts it.
	k.running[SyncMaster] = SyncDaemon{Role: SyncMaster, Interface: "eth1", SyncID: 7, MaxLen: 1472, Group: defaultSyncGroup4, Port: 8848, TTL: 1}
	s = newSyncer(k, quietLog())
	k.log = nil
	if err := s.Set([]SyncDaemon{master}); err != nil || len(k.log) != 0 {
		t.Fatalf("adopting a running daemon: %v %v", err, k.log)
	}
	if err := s.Set(nil); err != nil || strings.Join(k.log, "|") != "stop master" {
		t.Fatalf("stopping the adopted daemon: %v %v", err, k.log)
	}
	// Someone else's backup with another sync ID: reported, left.
	k.running[SyncBackup] = SyncDaemon{Role: SyncBackup, Interface: "eth0", SyncID: 1}
	k.foreign[SyncBackup] = true
	err := s.Set([]SyncDaemon{backup})
	if err == nil || !strings.Contains(err.Error(), "an IPVS sync daemon runs that keepvip did not start (backup on eth0, sync ID 1, group") {
		t.Errorf("Set with a foreign daemon in the way: %v", err)
	}
	if err := s.Set(nil); err != nil {
		t.Errorf("Set(nil) with a foreign daemon: %v", err)
	}
	if _, ok := k.running[SyncBackup]; !ok {
		t.Error("the foreign daemon was stopped")
	}
	if err := s.Set([]SyncDaemon{master, {Role: SyncMaster, Interface: "eth2"}}); err == nil {
		t.Error("two masters accepted")
	}
}

// A setting the kernel changes (a backup's maximum length raised to 1024)
// does not make keepvip's own daemon someone else's; going back to a
// default setting restarts the daemon; a foreign daemon that matches only
// in role, interface and sync ID is not adopted.
func TestSyncerKernelChangesAndDefaults(t *testing.T) {
	k := newFakeSync()
	s := newSyncer(k, quietLog())
	small := SyncDaemon{Role: SyncBackup, Interface: "eth1", SyncID: 7, MaxLen: 512}
	if err := s.Set([]SyncDaemon{small}); err != nil {
		t.Fatal(err)
	}
	k.log = nil
	if err := s.Set([]SyncDaemon{small}); err != nil || len(k.log) != 0 {
		t.Fatalf("the same again, the kernel having raised the length: %v %v", err, k.log)
	}
	if _, ours, _ := s.Running(); !ours[0] {
		t.Error("keepvip's own daemon shows as someone else's")
	}
	custom := SyncDaemon{Role: SyncBackup, Interface: "eth1", SyncID: 7, Group: netip.MustParseAddr("239.1.1.1"), Port: 9000}
	if err := s.Set([]SyncDaemon{custom}); err != nil {
		t.Fatal(err)
	}
	k.log = nil
	if err := s.Set([]SyncDaemon{{Role: SyncBackup, Interface: "eth1", SyncID: 7}}); err != nil || strings.Join(k.log, "|") != "stop backup|start backup on eth1, sync ID 7" {
		t.Fatalf("back to the default group and port: %v %v; want a restart", err, k.log)
	}
	if d := k.running[SyncBackup]; d.Group != defaultSyncGroup4 || d.Port != 8848 {
		t.Errorf("running %v; want the default group and port", d.Long())
	}
	if err := s.Set(nil); err != nil {
		t.Fatal(err)
	}
	k.running[SyncMaster] = SyncDaemon{Role: SyncMaster, Interface: "eth1", SyncID: 7, MaxLen: 1472, Group: netip.MustParseAddr("239.9.9.9"), Port: 8848, TTL: 1}
	k.foreign[SyncMaster] = true
	s = newSyncer(k, quietLog())
	if err := s.Set([]SyncDaemon{{Role: SyncMaster, Interface: "eth1", SyncID: 7}}); err == nil || !strings.Contains(err.Error(), "did not start") {
		t.Errorf("a foreign daemon with another group: %v; want it reported, not adopted", err)
	}
	if err := s.Set(nil); err != nil {
		t.Errorf("Set(nil) with the foreign daemon: %v", err)
	}
}

// Over generated sequences of wanted daemons, with foreign daemons
// appearing and going at random: after every step a foreign daemon is
// untouched, a role not wanted runs no daemon of keepvip's, and each
// wanted role runs as asked unless a foreign daemon holds it (and then Set
// says so).
func TestSyncerProperty(t *testing.T) {
	ifaces := []string{"eth0", "eth1"}
	for seed := range uint64(200) {
		rng := rand.New(rand.NewPCG(seed, 3))
		k := newFakeSync()
		s := newSyncer(k, quietLog())
		for step := range 50 {
			if rng.IntN(8) == 0 { // someone else starts or stops a daemon
				r := SyncRole(1 + rng.IntN(2))
				if _, ok := k.running[r]; !ok {
					k.running[r] = SyncDaemon{Role: r, Interface: "eth9", SyncID: uint8(rng.IntN(3))}
					k.foreign[r] = true
				} else if k.foreign[r] {
					delete(k.running, r)
					delete(k.foreign, r)
				}
			}
			var want []SyncDaemon
			for _, r := range []SyncRole{SyncMaster, SyncBackup} {
				if rng.IntN(2) == 0 {
					want = append(want, SyncDaemon{Role: r, Interface: ifaces[rng.IntN(2)], SyncID: uint8(rng.IntN(3))})
				}
			}
			before := map[SyncRole]SyncDaemon{}
			for r, d := range k.running {
				if k.foreign[r] {
					before[r] = d
				}
			}
			err := s.Set(want)
			for r, d := range before {
				if k.running[r] != d {
					t.Fatalf("seed %d step %d: the foreign %s daemon changed: %v → %v", seed, step, r, d, k.running[r])
				}
			}
			for _, r := range []SyncRole{SyncMaster, SyncBackup} {
				if _, isWanted := func() (SyncDaemon, bool) {
					for _, w := range want {
						if w.Role == r {
							return w, true
						}
					}
					return SyncDaemon{}, false
				}(); !isWanted && !k.foreign[r] {
					if d, ok := k.running[r]; ok {
						t.Fatalf("seed %d step %d: keepvip's %v still runs, not wanted", seed, step, d)
					}
				}
			}
			for _, w := range want {
				got, ok := k.running[w.Role]
				switch {
				case k.foreign[w.Role] && !got.matches(w.normalized()):
					if err == nil || !strings.Contains(err.Error(), "did not start") {
						t.Fatalf("seed %d step %d: a foreign %s daemon holds the role and Set said %v", seed, step, w.Role, err)
					}
				case !ok || !got.matches(w.normalized()):
					t.Fatalf("seed %d step %d: want %v, runs %v (%v)", seed, step, w, got, err)
				}
			}
		}
	}
}
