package daemon

import (
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keepvip/keepvip/config"
	"github.com/keepvip/keepvip/lvs"
	"github.com/keepvip/keepvip/vrrp"
)

// fakeSetter records what connSync asks of the kernel's daemons.
type fakeSetter struct {
	mu   sync.Mutex
	sets [][]lvs.SyncDaemon
	fail error
	c    chan struct{}
}

func newFakeSetter() *fakeSetter { return &fakeSetter{c: make(chan struct{}, 100)} }

func (f *fakeSetter) Set(want []lvs.SyncDaemon) error {
	f.mu.Lock()
	f.sets = append(f.sets, want)
	err := f.fail
	f.mu.Unlock()
	f.c <- struct{}{}
	return err
}

func (f *fakeSetter) Running() ([]lvs.SyncDaemon, []bool, error) { return nil, nil, nil }

// last returns the role of the last Set (0: none asked), waiting for Sets
// to settle.
func (f *fakeSetter) last(t *testing.T) lvs.SyncRole {
	t.Helper()
	for {
		select {
		case <-f.c:
			continue
		case <-time.After(100 * time.Millisecond):
		}
		break
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.sets) == 0 {
		t.Fatal("no Set")
	}
	w := f.sets[len(f.sets)-1]
	if len(w) == 0 {
		return 0
	}
	if len(w) != 1 {
		t.Fatalf("Set(%v): want one daemon", w)
	}
	return w[0].Role
}

func (f *fakeSetter) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.sets)
}

func newTestConnSync(t *testing.T, f *fakeSetter) *connSync {
	t.Helper()
	dir := t.TempDir() // sysctls written under it
	for _, k := range []string{"sync_threshold", "sync_refresh_period", "sync_persist_mode"} {
		p := filepath.Join(dir, "net", "ipv4", "vs", k)
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, nil, 0o644)
	}
	c := newConnSyncWith(slog.New(slog.NewTextHandler(io.Discard, nil)), prometheus.NewRegistry(), dir, f)
	t.Cleanup(c.stop)
	return c
}

func spec(instance string) *config.ConnSync {
	return &config.ConnSync{Instance: instance, Daemon: lvs.SyncDaemon{Interface: "eth0", SyncID: 1}}
}

// The role follows the instance, from transitions that came before the
// configuration too; a stopping keepvip's transitions move nothing; a
// failure keeps the role that runs and says why.
func TestConnSyncFollowsTheInstance(t *testing.T) {
	f := newFakeSetter()
	c := newTestConnSync(t, f)
	c.transition("web", vrrp.Transition{To: vrrp.StateBackup})
	c.transition("web", vrrp.Transition{To: vrrp.StateMaster})
	c.transition("db", vrrp.Transition{To: vrrp.StateBackup})
	c.apply(spec("web"))
	if r := f.last(t); r != lvs.SyncMaster {
		t.Fatalf("web master before the configuration came: %s; want master", r)
	}
	c.transition("db", vrrp.Transition{To: vrrp.StateMaster})
	c.transition("web", vrrp.Transition{To: vrrp.StateBackup})
	if r := f.last(t); r != lvs.SyncBackup {
		t.Fatalf("web backup: %s", r)
	}
	c.apply(spec("db"))
	if r := f.last(t); r != lvs.SyncMaster {
		t.Fatalf("the configuration now names db, master: %s", r)
	}
	// A failure: the role that runs stays, the error is shown.
	f.mu.Lock()
	f.fail = errors.New("no")
	f.mu.Unlock()
	c.transition("db", vrrp.Transition{To: vrrp.StateBackup})
	f.last(t)
	if st := c.status(); st.Role != "master" || st.Error == "" || st.State != "BACKUP" {
		t.Errorf("status after a failed switch: %+v; want master still running, the error, state BACKUP", st)
	}
	f.mu.Lock()
	f.fail = nil
	f.mu.Unlock()
	c.apply(spec("db"))
	if r := f.last(t); r != lvs.SyncBackup {
		t.Fatalf("after the failure: %s", r)
	}
	// Leaving: transitions move nothing.
	c.stop()
	n := f.count()
	c.transition("db", vrrp.Transition{To: vrrp.StateInit})
	time.Sleep(50 * time.Millisecond)
	if f.count() != n {
		t.Error("a transition while leaving moved the daemons")
	}
}

// Over generated sequences of transitions and configurations, the last
// Set always runs the role of the named instance's last state.
func TestConnSyncProperty(t *testing.T) {
	for seed := range uint64(30) {
		rng := rand.New(rand.NewPCG(seed, 5))
		f := newFakeSetter()
		c := newTestConnSync(t, f)
		names := []string{"a", "b"}
		state := map[string]vrrp.State{}
		named := ""
		for range 30 {
			if rng.IntN(4) == 0 {
				named = names[rng.IntN(2)]
				c.apply(spec(named))
			} else {
				n := names[rng.IntN(2)]
				s := []vrrp.State{vrrp.StateBackup, vrrp.StateMaster, vrrp.StateInit}[rng.IntN(3)]
				state[n] = s
				c.transition(n, vrrp.Transition{To: s})
			}
		}
		if named == "" {
			continue
		}
		want := lvs.SyncBackup
		if state[named] == vrrp.StateMaster {
			want = lvs.SyncMaster
		}
		if got := f.last(t); got != want {
			t.Fatalf("seed %d: %s is %s; the daemon runs %s, want %s", seed, named, state[named], got, want)
		}
	}
}
