// Package durable writes the files keepvip keeps across restarts (the
// IPVS services it owns, the last applied vip-configmap) so that a crash
// or a power cut leaves the old file or the new one, never a part.
package durable

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// WriteFile replaces path with data, made perm: written to path+".tmp"
// in the same directory (created 0700 if missing), flushed to disk,
// renamed over path, and the directory flushed so that the rename is
// too. One writer per path: the temporary name is fixed, so that a
// writer that died leaves one file behind, not one per attempt.
func WriteFile(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	err = errors.Join(err, f.Close())
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("writing %s: %w", path, err)
	}
	df, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("writing %s: flushing its directory: %w", path, err)
	}
	defer df.Close()
	if err := df.Sync(); err != nil {
		return fmt.Errorf("writing %s: flushing its directory: %w", path, err)
	}
	return nil
}
