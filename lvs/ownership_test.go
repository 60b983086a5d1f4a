package lvs

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// kubeProxy is a service keepvip did not create, at a key keepvip wants.
func kubeProxy() Service {
	s := web(real("10.0.0.9", 7))
	s.Scheduler = "rr"
	return s
}

func stateKeys(t *testing.T, path string) (string, []string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var f stateFile
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("state file %s: %v", b, err)
	}
	var out []string
	for _, s := range f.Services {
		p, err := ParseProtocol(s.Proto)
		if s.Proto != "" && err != nil {
			t.Fatalf("state file protocol %q: %v", s.Proto, err)
		}
		out = append(out, Key{Addr: s.Addr, Port: s.Port, Proto: p}.String())
	}
	return f.BootID, out
}

func TestForeignServiceAtADesiredKeyIsRefused(t *testing.T) {
	k := newFakeKernel()
	k.put(kubeProxy())
	d, _ := newDirector(k, Options{Logger: discard(), StateFile: filepath.Join(t.TempDir(), "ipvs.json")})
	other := web(real("10.0.0.1", 1))
	other.Port = 81
	want := web(real("10.0.0.1", 1), real("10.0.0.2", 1))
	err := d.Sync(ctx, []Service{want, other})
	const msg = "IPVS service 192.0.2.100:80/tcp exists and was not created by keepvip (kube-proxy?); not touching it"
	if err == nil || !strings.Contains(err.Error(), msg) {
		t.Fatalf("Sync = %v; want %q", err, msg)
	}
	var no *NotOwnedError
	var se *ServiceError
	if !errors.As(err, &no) || no.Key != want.Key || !errors.As(err, &se) || se.Key != want.Key {
		t.Errorf("Sync error %v is not a ServiceError/NotOwnedError for %s", err, want.Key)
	}
	if got := k.takeLog(); !slices.Equal(got, []string{"add 192.0.2.100:81/tcp", "add-real 192.0.2.100:81/tcp 10.0.0.1:8080 nat weight 1"}) {
		t.Errorf("kernel operations %q; want only the other service created", got)
	}
	if e := d.Errors()[want.Key]; e == nil || e.Error() != msg {
		t.Errorf("Errors()[%s] = %v", want.Key, e)
	}
	// Update refuses it too, and an empty Sync leaves it.
	if err := d.Update(ctx, []Service{want}, []Key{want.Key}); !errors.As(err, &no) {
		t.Errorf("Update = %v; want a NotOwnedError", err)
	}
	if err := d.Sync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if got, ok := k.has(want.Key); !ok || got.Scheduler != "rr" || len(got.Reals) != 1 || got.Reals[0].Weight != 7 {
		t.Errorf("kube-proxy's service changed: %+v", got)
	}
	if _, ok := k.has(other.Key); ok {
		t.Error("keepvip's own service was not removed")
	}
	if len(d.Errors()) != 0 {
		t.Errorf("errors of services no longer desired: %v", d.Errors())
	}
}

// A service created by someone else after keepvip read the table: the
// kernel's EEXIST is a refusal, and keepvip does not take it over (nor
// delete it later).
func TestServiceCreatedBehindTheCacheIsRefused(t *testing.T) {
	k := newFakeKernel()
	d, _ := newDirector(k, Options{Logger: discard()})
	if err := d.Sync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	k.put(kubeProxy())
	var no *NotOwnedError
	if err := d.Sync(ctx, []Service{web(real("10.0.0.1", 1))}); !errors.As(err, &no) {
		t.Fatalf("Sync = %v; want a NotOwnedError", err)
	}
	if len(d.Owned()) != 0 {
		t.Errorf("owned = %v", d.Owned())
	}
	if err := d.Sync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if got, ok := k.has(web().Key); !ok || got.Scheduler != "rr" {
		t.Errorf("kube-proxy's service after an empty Sync: %+v, %v", got, ok)
	}
}

// Without a state file (first start, or a file lost) keepvip owns nothing:
// a desired service already in the kernel is refused, not adopted.
func TestNoStateFileAdoptsNothing(t *testing.T) {
	k := newFakeKernel()
	k.put(kubeProxy())
	d, _ := newDirector(k, Options{Logger: discard(), StateFile: filepath.Join(t.TempDir(), "ipvs.json")})
	var no *NotOwnedError
	if err := d.Sync(ctx, []Service{web(real("10.0.0.1", 1))}); !errors.As(err, &no) {
		t.Fatalf("Sync = %v; want a NotOwnedError", err)
	}
	if got := k.takeLog(); len(got) != 0 {
		t.Errorf("kernel operations %q", got)
	}
}

// The owned set is void after a reboot: the state file says which boot it
// belongs to.
func TestStateFileFromAnotherBootOwnsNothing(t *testing.T) {
	k := newFakeKernel()
	state := filepath.Join(t.TempDir(), "ipvs.json")
	d, _ := newDirector(k, Options{Logger: discard(), StateFile: state, bootID: "boot-1"})
	if err := d.Sync(ctx, []Service{web(real("10.0.0.1", 1))}); err != nil {
		t.Fatal(err)
	}
	if boot, keys := stateKeys(t, state); boot != "boot-1" || !slices.Equal(keys, []string{"192.0.2.100:80/tcp"}) {
		t.Fatalf("state file: boot %q, %q", boot, keys)
	}
	// The same boot: adopted in place.
	d, _ = newDirector(k, Options{Logger: discard(), StateFile: state, bootID: "boot-1"})
	if err := d.Sync(ctx, []Service{web(real("10.0.0.1", 1))}); err != nil {
		t.Fatalf("same boot: %v", err)
	}
	// Another boot: the service at that key is someone else's now.
	k.takeLog()
	d, _ = newDirector(k, Options{Logger: discard(), StateFile: state, bootID: "boot-2"})
	var no *NotOwnedError
	if err := d.Sync(ctx, []Service{web(real("10.0.0.1", 2))}); !errors.As(err, &no) {
		t.Fatalf("after a reboot Sync = %v; want a NotOwnedError", err)
	}
	if got := k.takeLog(); len(got) != 0 {
		t.Errorf("after a reboot, kernel operations %q", got)
	}
	if boot, keys := stateKeys(t, state); boot != "boot-2" || len(keys) != 0 {
		t.Errorf("state file after a reboot: boot %q, %q", boot, keys)
	}
}

// Ownership is recorded before the service is created: a crash between
// the two leaves no service keepvip does not know it made.
func TestOwnershipIsWrittenAhead(t *testing.T) {
	k := newFakeKernel()
	state := filepath.Join(t.TempDir(), "ipvs.json")
	d, _ := newDirector(k, Options{Logger: discard(), StateFile: state})
	var recorded [][]string
	k.hook = func(op string) {
		if strings.HasPrefix(op, "add 192.0.2.100:") {
			_, keys := stateKeys(t, state)
			recorded = append(recorded, keys)
		}
	}
	other := web(real("10.0.0.1", 1))
	other.Port = 81
	if err := d.Sync(ctx, []Service{web(real("10.0.0.1", 1)), other}); err != nil {
		t.Fatal(err)
	}
	for _, keys := range recorded {
		if !slices.Equal(keys, []string{"192.0.2.100:80/tcp", "192.0.2.100:81/tcp"}) {
			t.Errorf("when a service was created the state file held %q", keys)
		}
	}
	if len(recorded) != 2 {
		t.Errorf("%d creations seen; want 2", len(recorded))
	}
	// A failed creation is not owned.
	k.hook = nil
	k.fail["add 192.0.2.100:82/tcp"] = syscall.ENOMEM
	third := other
	third.Port = 82
	if err := d.Sync(ctx, []Service{web(real("10.0.0.1", 1)), other, third}); err == nil {
		t.Fatal("Sync hid a failed creation")
	}
	if _, keys := stateKeys(t, state); len(keys) != 2 {
		t.Errorf("state file after a failed creation: %q", keys)
	}
}

// A cancelled Sync still records what it created.
func TestCancelledSyncRecordsWhatItCreated(t *testing.T) {
	k := newFakeKernel()
	state := filepath.Join(t.TempDir(), "ipvs.json")
	d, _ := newDirector(k, Options{Logger: discard(), StateFile: state})
	other := web(real("10.0.0.1", 1))
	other.Port = 81
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	k.hook = func(op string) {
		if strings.HasPrefix(op, "add-real 192.0.2.100:80/tcp") {
			cancel()
		}
	}
	err := d.Sync(cctx, []Service{web(real("10.0.0.1", 1)), other})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Sync = %v; want cancelled", err)
	}
	if _, keys := stateKeys(t, state); !slices.Equal(keys, []string{"192.0.2.100:80/tcp"}) {
		t.Errorf("state file after a cancelled Sync: %q; want the service it created", keys)
	}
	if _, ok := k.has(other.Key); ok {
		t.Error("created a service after the cancellation")
	}
	// And a restart owns it: it is removed when no longer wanted.
	k.hook = nil
	d, _ = newDirector(k, Options{Logger: discard(), StateFile: state})
	if err := d.Sync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := k.has(web().Key); ok {
		t.Error("the service created by the cancelled Sync is an orphan")
	}
}

func TestDamagedStateFileIsKept(t *testing.T) {
	state := filepath.Join(t.TempDir(), "ipvs.json")
	if err := writeFile(state, "{not json"); err != nil {
		t.Fatal(err)
	}
	k := newFakeKernel()
	k.put(kubeProxy())
	d, err := newDirector(k, Options{Logger: discard(), StateFile: state})
	if err != nil {
		t.Fatalf("damaged state file: %v", err)
	}
	if b, err := os.ReadFile(state + ".bak"); err != nil || string(b) != "{not json" {
		t.Errorf("%s.bak = %q, %v; want the damaged file", state, b, err)
	}
	// Nothing is owned, so nothing is touched.
	var no *NotOwnedError
	if err := d.Sync(ctx, []Service{web(real("10.0.0.1", 1))}); !errors.As(err, &no) {
		t.Errorf("Sync = %v; want a NotOwnedError", err)
	}
	if _, keys := stateKeys(t, state); len(keys) != 0 {
		t.Errorf("new state file: %q", keys)
	}
	if matches, _ := filepath.Glob(state + ".tmp"); len(matches) != 0 {
		t.Errorf("temporary file left: %v", matches)
	}
}

// A service or real server removed behind keepvip's back is put back by
// the next change to it, not only by the periodic resync.
func TestRemovedBehindItsBackIsRepairedAtOnce(t *testing.T) {
	k := newFakeKernel()
	d, _ := newDirector(k, Options{Logger: discard()})
	if err := d.Sync(ctx, []Service{web(real("10.0.0.1", 1), real("10.0.0.2", 1))}); err != nil {
		t.Fatal(err)
	}
	k.mu.Lock()
	delete(k.svcs, web().Key) // ipvsadm -D
	k.mu.Unlock()
	k.takeLog()
	if err := d.Update(ctx, []Service{web(real("10.0.0.1", 1), real("10.0.0.2", 0))}, nil); err != nil {
		t.Fatalf("Update of a service removed behind keepvip's back: %v", err)
	}
	got, ok := k.has(web().Key)
	if !ok || len(got.Reals) != 2 {
		t.Fatalf("service not created again: %+v", got)
	}
	want := []string{"add 192.0.2.100:80/tcp", "add-real 192.0.2.100:80/tcp 10.0.0.1:8080 nat weight 1",
		"add-real 192.0.2.100:80/tcp 10.0.0.2:8080 nat weight 0"}
	if log := k.takeLog(); !slices.Equal(log, want) {
		t.Errorf("repair: %q; want %q", log, want)
	}
	// A real server removed by hand: changed, it is added again.
	k.mu.Lock()
	k.svcs[web().Key].Reals = k.svcs[web().Key].Reals[:1]
	k.mu.Unlock()
	if err := d.Update(ctx, []Service{web(real("10.0.0.1", 1), real("10.0.0.2", 3))}, nil); err != nil {
		t.Fatalf("Update of a real server removed behind keepvip's back: %v", err)
	}
	if got, _ := k.has(web().Key); len(got.Reals) != 2 || got.Reals[1].Weight != 3 {
		t.Errorf("real server not added again: %+v", got.Reals)
	}
}

// keep names services whose desired version is invalid: keepvip's stay as
// they are.
func TestSyncKeepsWhatItIsToldToKeep(t *testing.T) {
	k := newFakeKernel()
	d, _ := newDirector(k, Options{Logger: discard()})
	if err := d.Sync(ctx, []Service{web(real("10.0.0.1", 1))}); err != nil {
		t.Fatal(err)
	}
	k.takeLog()
	if err := d.Sync(ctx, nil, web().Key); err != nil {
		t.Fatal(err)
	}
	if got := k.takeLog(); len(got) != 0 {
		t.Errorf("a kept service was changed: %q", got)
	}
	if err := d.Sync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := k.has(web().Key); ok {
		t.Error("not removed once no longer kept")
	}
}

// Status reads the kernel without holding the Director: a health update
// goes through while a long read is in progress.
func TestStatusDoesNotHoldUpUpdates(t *testing.T) {
	k := newFakeKernel()
	d, _ := newDirector(k, Options{Logger: discard()})
	table := bigTable(10)
	if err := d.Sync(ctx, table); err != nil {
		t.Fatal(err)
	}
	reading, release := make(chan struct{}), make(chan struct{})
	var once bool
	k.hook = func(op string) {
		if op == "services" && !once {
			once = true
			close(reading)
			<-release
		}
	}
	done := make(chan error, 1)
	go func() {
		st, err := d.Status()
		if err == nil && len(st) != 10 {
			err = errors.New("wrong status")
		}
		done <- err
	}()
	<-reading
	updated := make(chan error, 1)
	go func() {
		s := table[3]
		s.Reals = slices.Clone(s.Reals)
		s.Reals[0].Weight = 0
		updated <- d.Update(ctx, []Service{s}, nil)
	}()
	select {
	case err := <-updated:
		if err != nil {
			t.Error(err)
		}
	case <-time.After(5 * time.Second):
		t.Error("Update waited for Status")
		close(release)
		<-updated
		release = nil
	}
	if release != nil {
		close(release)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

type closingKernel struct {
	*fakeKernel
	closed int
}

func (c *closingKernel) Close() error { c.closed++; return nil }

func TestCloseClosesTheHandle(t *testing.T) {
	k := &closingKernel{fakeKernel: newFakeKernel()}
	d, _ := newDirector(k, Options{Logger: discard()})
	if err := d.Sync(ctx, []Service{web(real("10.0.0.1", 1))}); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil || k.closed != 1 {
		t.Fatalf("Close = %v, closed %d times", err, k.closed)
	}
	if err := d.Sync(ctx, nil); err == nil {
		t.Error("Sync after Close succeeded")
	}
	if _, err := d.Status(); err == nil {
		t.Error("Status after Close succeeded")
	}
	if _, ok := k.has(web().Key); !ok {
		t.Error("Close removed a service")
	}
}
