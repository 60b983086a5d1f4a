package config

import (
	"fmt"
	"io"
	"os"
	"syscall"
)

// MaxFileSize bounds what ReadFile reads: far above any real
// configuration (a vip-configmap holds at most 1 MiB), far below what
// would cost the daemon its memory.
const MaxFileSize = 16 << 20

// ReadFile reads a configuration file for ParseFile. It refuses what is
// not a regular file (a FIFO would block a reload for ever, /dev/zero
// would never end) and a file larger than MaxFileSize, naming the path
// and the reason; a reload that fails so changes nothing that runs.
func ReadFile(path string) ([]byte, error) {
	// O_NONBLOCK: opening a FIFO does not wait for a writer; it has no
	// effect on a regular file.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("reading configuration: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("reading configuration %s: not a regular file (%s)", path, fi.Mode().Type())
	}
	if fi.Size() > MaxFileSize {
		return nil, tooLarge(path)
	}
	return ReadLimited(f, path)
}

// ReadLimited reads a configuration from r (standard input for
// `keepvip validate -`), at most MaxFileSize bytes.
func ReadLimited(r io.Reader, name string) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading configuration %s: %w", name, err)
	}
	if len(data) > MaxFileSize {
		return nil, tooLarge(name) // it grew while read
	}
	return data, nil
}

func tooLarge(name string) error {
	return fmt.Errorf("reading configuration %s: larger than %d MiB: not a configuration", name, MaxFileSize>>20)
}
