package rootonly

import (
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: the directories must be root's (run as make test does)")
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	base := t.TempDir()
	mk := func(name string, mode os.FileMode, uid int) string {
		p := filepath.Join(base, name)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, uid, 0); err != nil {
			t.Fatal(err)
		}
		return p
	}
	open := mk("open", 0o777, 0)
	if err := Dir(open, "test directory", "do harm", log); err != nil {
		t.Fatalf("a root-owned 0777 directory: %v", err)
	}
	if fi, _ := os.Stat(open); fi.Mode().Perm() != 0o755 {
		t.Errorf("a root-owned 0777 directory is %v after Dir, want 0755", fi.Mode().Perm())
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(open, link); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ dir, want string }{
		{mk("sticky", 0o777|os.ModeSticky, 0), "shared directory"},
		{mk("nobody", 0o700, 65534), "not owned by root (uid 65534): its owner could do harm"},
		{link, "symbolic link"},
	} {
		if err := Dir(c.dir, "test directory", "do harm", log); err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.dir) {
			t.Errorf("Dir(%s) = %v, want an error naming it and saying %q", c.dir, err, c.want)
		}
	}
	created := filepath.Join(base, "new", "dir")
	if err := Dir(created, "test directory", "do harm", log); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(created); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("a created directory: %v, %v; want 0700", fi, err)
	}
}

func TestPeer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	if _, err := Peer(path); !errors.Is(err, ErrNoListener) {
		t.Errorf("Peer of nothing = %v, want ErrNoListener", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	cred, err := Peer(path)
	if err != nil || cred == nil || int(cred.Pid) != os.Getpid() || int(cred.Uid) != os.Geteuid() {
		t.Errorf("Peer of our own socket = %+v, %v; want pid %d uid %d", cred, err, os.Getpid(), os.Geteuid())
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	if _, err := Peer(path); !errors.Is(err, ErrNoListener) {
		t.Errorf("Peer of a stale socket = %v, want ErrNoListener", err)
	}
}
