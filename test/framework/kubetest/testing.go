package kubetest

import (
	"context"
	"testing"
	"time"
)

// StartT starts a cluster for t and stops it in t.Cleanup. It never skips:
// any error fails the test, because the harness is expected to work
// wherever the tests run (`make test` installs etcd and prebuilds the
// binaries). opts.Dir defaults to t.TempDir() and opts.Logf to t.Logf.
// When the test fails, the end of both servers' logs is logged, since the
// scratch directory is usually deleted afterwards.
func StartT(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.Logf == nil {
		opts.Logf = t.Logf
	}
	ctx := t.Context()
	// Fail with our own message, not go test's timeout panic, if a cold
	// build or a stuck start-up would run past the test deadline.
	if dt, ok := t.(interface{ Deadline() (time.Time, bool) }); ok {
		if d, ok := dt.Deadline(); ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithDeadline(ctx, d.Add(-10*time.Second))
			defer cancel()
		}
	}
	c, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("%v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			etcd, api := c.LogFiles()
			t.Logf("end of %s:\n%s", etcd, fileTail(etcd, 20))
			t.Logf("end of %s:\n%s", api, fileTail(api, 40))
		}
		if err := c.Stop(); err != nil {
			t.Errorf("%v", err)
		}
	})
	return c
}
