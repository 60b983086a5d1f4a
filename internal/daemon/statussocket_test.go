package daemon

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keepvip/keepvip/test/framework/netnstest"
)

// The status socket's directory is one only root can write to: whoever
// else could would replace the socket, and `keepvip status` and `keepvip
// health` (the probes) would read their answers. A directory of root's
// that others may write to (an emptyDir volume is made 0777) is made so;
// a shared one (sticky, as /tmp) and another user's are refused.
func TestStatusSocketDirectory(t *testing.T) {
	netnstest.Require(t)
	d := &daemon{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	mkdir := func(mode os.FileMode, uid int) string {
		dir := filepath.Join(t.TempDir(), "run")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(dir, uid, uid); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	for _, tt := range []struct {
		name string
		mode os.FileMode
		uid  int
		want os.FileMode // 0: refused
		err  string
	}{
		{"emptyDir", 0o777, 0, 0o755, ""},
		{"group-writable", 0o770, 0, 0o750, ""},
		{"root's", 0o755, 0, 0o755, ""},
		{"shared", 0o777 | os.ModeSticky, 0, 0, "is a shared directory"},
		{"nobody's", 0o700, 65534, 0, "is not owned by root"},
	} {
		dir := mkdir(tt.mode, tt.uid)
		path := filepath.Join(dir, "keepvip.sock")
		srv, err := d.serveStatus(path)
		if srv != nil {
			srv.Close()
		}
		switch {
		case tt.want == 0 && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("%s directory (mode %v, uid %d): serveStatus = %v; want refused: %s", tt.name, tt.mode, tt.uid, err, tt.err)
		case tt.want != 0 && err != nil:
			t.Errorf("%s directory (mode %v): serveStatus = %v", tt.name, tt.mode, err)
		case tt.want != 0:
			if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != tt.want {
				t.Errorf("%s directory (mode %v) is now %v (%v); want %v", tt.name, tt.mode, fi.Mode(), err, tt.want)
			}
		}
		if tt.want == 0 {
			if fi, err := os.Stat(dir); err != nil || fi.Mode()&(os.ModePerm|os.ModeSticky) != tt.mode {
				t.Errorf("%s directory was changed: %v (%v); want %v", tt.name, fi.Mode(), err, tt.mode)
			}
		}
	}
}

// The socket is created 0600, not made so after: under an umask of 0 it
// is 0600 the moment it is bound.
func TestStatusSocketBoundPrivate(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	path := filepath.Join(t.TempDir(), "keepvip.sock")
	l, err := bindUnix(path, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket bound with umask 0: mode %v (%v); want 0600 from the start", fi.Mode(), err)
	}
}

// The status socket answers what /healthz and /readyz answer, for
// `keepvip health`: not healthy while the VRRP instances do not answer,
// not ready while starting, and healthy and ready once they do and it
// runs.
func TestStatusSocketHealth(t *testing.T) {
	stuck := &stuckInstances{release: make(chan struct{})}
	d := &daemon{log: slog.New(slog.NewTextHandler(io.Discard, nil)), health: newHealth(stuck, 200*time.Millisecond)}
	sock := filepath.Join(t.TempDir(), "keepvip.sock")
	srv, err := d.serveStatus(sock)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	ask := func(ready bool) error {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return GetHealth(ctx, sock, ready)
	}
	if err := ask(false); !errors.Is(err, ErrNotHealthy) || !strings.Contains(err.Error(), "not healthy: VRRP instances have not answered for") {
		t.Errorf("health with stuck instances = %v; want not healthy, and why", err)
	}
	if err := ask(true); !errors.Is(err, ErrNotReady) || !strings.Contains(err.Error(), "not ready: starting") {
		t.Errorf("readiness while starting = %v; want not ready", err)
	}
	close(stuck.release)
	d.mu.Lock()
	d.ready = true
	d.mu.Unlock()
	waitFor(t, "healthy", func() bool { return ask(false) == nil })
	if err := ask(true); err != nil {
		t.Errorf("readiness once running = %v", err)
	}
	// No keepvip on the socket: an error, not ErrNotHealthy.
	if err := GetHealth(context.Background(), sock+".none", false); err == nil || errors.Is(err, ErrNotHealthy) {
		t.Errorf("health with no keepvip = %v; want it could not ask", err)
	}
}
