// Package rootonly keeps what only root may touch on a node where any
// local user shares keepvip's network namespace (a hostNetwork pod): the
// directories of its lock and status socket, and who listens on a unix
// socket. It knows nothing of VRRP or Kubernetes.
package rootonly

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// Dir makes sure dir exists (created 0700 if missing) and only root can
// create, remove or rename files in it: a directory root's own that
// group or others may write to is made writable by root only (an
// emptyDir volume is 0777), a shared one (sticky, as /tmp) or someone
// else's is refused. dir's parents are taken to be root's. what names dir in errors and logs ("status socket
// directory") and risk says what others could do if they could write to
// it ("replace keepvip's status socket").
func Dir(dir, what, risk string, log *slog.Logger) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating the %s: %w", what, err)
	}
	// Checked and changed through one descriptor, so that what is
	// checked is what is changed.
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	switch {
	case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR):
		if fi, lerr := os.Lstat(dir); lerr == nil && fi.Mode()&fs.ModeSymlink != 0 {
			return fmt.Errorf("%s %s is a symbolic link: name the directory itself", what, dir)
		}
		return fmt.Errorf("%s %s is not a directory", what, dir)
	case err != nil:
		return fmt.Errorf("opening the %s: %w", what, err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("checking the %s: %w", what, err)
	}
	perm := os.FileMode(st.Mode & 0o777)
	switch {
	case st.Uid != 0:
		return fmt.Errorf("%s %s is not owned by root (uid %d): its owner could %s", what, dir, st.Uid, risk)
	case perm&0o022 == 0:
		return nil
	case st.Mode&unix.S_ISVTX != 0:
		return fmt.Errorf("%s %s is a shared directory (mode %v, sticky): others could %s; use a directory of its own", what, dir, perm, risk)
	}
	if err := unix.Fchmod(fd, uint32(perm&^0o022)); err != nil {
		return fmt.Errorf("making %s %s writable by root only: %w", what, dir, err)
	}
	log.Info("the "+what+" was writable by group or others; made it writable by root only", "dir", dir, "from", perm, "to", perm&^0o022)
	return nil
}

// ErrNoListener is returned by Peer when no process listens on the
// socket (nothing there, or a stale socket file).
var ErrNoListener = errors.New("no process listens there")

// Peer returns the credentials of the process listening on the unix
// socket path (an abstract one if it starts with "@"), as the kernel
// recorded them when it listened.
func Peer(path string) (*unix.Ucred, error) {
	c, err := net.DialTimeout("unix", path, time.Second)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoListener, err)
	}
	defer c.Close()
	cred, err := ConnPeer(c.(*net.UnixConn))
	if err != nil {
		return nil, fmt.Errorf("asking who listens on %s: %w", path, err)
	}
	return cred, nil
}

// ConnPeer returns the credentials of the process at the other end of c:
// for a connection made, the listener's when it listened; for one
// accepted, the connecting process's when it connected.
func ConnPeer(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}
