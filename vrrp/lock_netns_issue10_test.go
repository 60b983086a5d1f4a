package vrrp

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/keepvip/keepvip/test/framework/netnstest"
)

// The lock is one per network namespace: a second Manager is refused
// whichever lock directory it uses (the abstract socket's holder is root),
// a Manager in another namespace gets its own, and a lock directory or
// file that others could write or open is made root's only, replaced or
// refused.
func TestLockIssue10OnePerNetns(t *testing.T) {
	if !netnstest.Enter(t) {
		return
	}
	dir, other := mkdirMode(t, 0o700), mkdirMode(t, 0o755)
	m := NewManager(Options{Logger: discard(), LockDir: dir})
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{dir, other} {
		err := NewManager(Options{Logger: discard(), LockDir: d}).Start()
		if err == nil || !strings.Contains(err.Error(), "another keepvip is running") {
			t.Errorf("second Manager with lock directory %s: Start = %v; want refused", d, err)
		} else {
			t.Logf("second Manager, lock directory %s: %v", d, err)
		}
	}
	// Another network namespace, same directory: its own lock.
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		lk, err := lockNetns(dir, discard())
		if err == nil {
			lk.release()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Errorf("locking another network namespace in the same directory: %v", err)
	}
	if err := m.Stop(); err != nil {
		t.Fatal(err)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 0 {
		t.Errorf("Stop left %v behind", left)
	}
	// What a killed keepvip leaves, in a namespace long gone, is removed by
	// the next start; a file someone holds is not.
	if err := os.WriteFile(filepath.Join(dir, "vrrp-netns-1.lock"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	held, err := os.OpenFile(filepath.Join(dir, "vrrp-netns-2.lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := unix.Flock(int(held.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	if lk, err := lockNetns(dir, discard()); err != nil {
		t.Fatal(err)
	} else {
		lk.release()
	}
	if left, _ := filepath.Glob(filepath.Join(dir, "*")); len(left) != 1 || filepath.Base(left[0]) != "vrrp-netns-2.lock" {
		t.Errorf("after a start and a stop, the lock directory holds %v; want only the held vrrp-netns-2.lock", left)
	}
	held.Close()
	os.Remove(held.Name())
	// Once stopped, the next one starts; with a lock file made loose by
	// hand, it makes its own.
	ns, err := netnsInode()
	if err != nil {
		t.Fatal(err)
	}
	loose := filepath.Join(dir, fmt.Sprintf("vrrp-netns-%d.lock", ns))
	if err := os.WriteFile(loose, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	lk, err := lockNetns(dir, discard())
	if err != nil {
		t.Fatalf("locking again after Stop: %v", err)
	}
	if fi, err := os.Stat(loose); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("lock file %s: %v, %v; want mode 0600", loose, fi.Mode(), err)
	}
	lk.release()

	// A lock file replaced by a symbolic link is made again.
	if err := os.Symlink("/etc/passwd", loose); err != nil {
		t.Fatal(err)
	}
	if lk, err := lockNetns(dir, discard()); err != nil {
		t.Errorf("lock file a symbolic link: %v", err)
	} else {
		lk.release()
	}
	// Directories of root's that others could write to are made root's
	// only (an emptyDir volume is 0777), unless they are shared (sticky);
	// others' directories and links are refused.
	for _, c := range []struct {
		perm, want os.FileMode
	}{{0o770, 0o750}, {0o777, 0o755}} {
		d := mkdirMode(t, c.perm)
		lk, err := lockNetns(d, discard())
		if err != nil {
			t.Errorf("lock directory of mode %v: %v", c.perm, err)
			continue
		}
		lk.release()
		if fi, err := os.Stat(d); err != nil || fi.Mode().Perm() != c.want {
			t.Errorf("lock directory of mode %v is now %v (%v); want %v", c.perm, fi.Mode().Perm(), err, c.want)
		}
	}
	shared := mkdirMode(t, 0o777|os.ModeSticky)
	nobodys := mkdirMode(t, 0o700)
	if err := os.Chown(nobodys, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(dir, link); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{shared, nobodys, link} {
		if lk, err := lockNetns(d, discard()); err == nil {
			lk.release()
			t.Errorf("lock directory %s was accepted", d)
		} else {
			t.Logf("refused: %v", err)
		}
	}
	if fi, err := os.Stat(shared); err != nil || fi.Mode().Perm() != 0o777 {
		t.Errorf("the shared directory was changed: %v (%v)", fi.Mode(), err)
	}
	// A missing one is created, root's and 0700.
	fresh := filepath.Join(t.TempDir(), "run", "keepvip")
	lk, err = lockNetns(fresh, discard())
	if err != nil {
		t.Fatal(err)
	}
	lk.release()
	if fi, err := os.Stat(fresh); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("created lock directory: %v, %v; want 0700", fi.Mode(), err)
	}
}
