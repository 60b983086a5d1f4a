package config

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestReadFileRefusesWhatIsNotAConfiguration(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("instances: []\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.yaml")
	if err := os.Symlink(good, link); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{good, link} {
		if b, err := ReadFile(p); err != nil || string(b) != "instances: []\n" {
			t.Errorf("ReadFile(%s) = %q, %v", p, b, err)
		}
	}

	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, []byte(strings.Repeat("#\n", MaxFileSize/2+1)), 0o600); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	zero := filepath.Join(dir, "zero.yaml")
	if err := os.Symlink("/dev/zero", zero); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ path, want string }{
		{big, "larger than 16 MiB"},
		{fifo, "not a regular file"},
		{zero, "not a regular file"},
		{dir, "not a regular file"},
		{filepath.Join(dir, "missing"), "no such file"},
	} {
		done := make(chan error, 1)
		go func() { _, err := ReadFile(c.path); done <- err }()
		select {
		case err := <-done:
			if err == nil || !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), c.path) {
				t.Errorf("ReadFile(%s) = %v, want an error naming the path and %q", c.path, err, c.want)
			}
		case <-time.After(10 * time.Second):
			// Not a timing assertion: a FIFO without a writer blocks for
			// ever; the bound only turns that hang into a failure.
			t.Fatalf("ReadFile(%s) did not return", c.path)
		}
	}
}
