package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keepvip/keepvip/vrrp"
)

// A keepvip with TakeOver and nobody to take over from starts at once,
// every time, on the status socket it served while it looked: a crashed
// keepvip's pod restarts so (deploy/ runs with --take-over), its socket
// left behind. The socket of the wait used to outlive it for a moment
// (the server's Close leaves the listener to a Serve that may not have
// begun), and keepvip refused its own socket as "in use": the pod
// crash-looped, with the VIP on the node and nobody running it.
func TestTakeOverWithNobodyStarts(t *testing.T) {
	if !enterWithEth0(t) {
		return
	}
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "keepvip.yaml")
	if err := os.WriteFile(cfgPath, []byte("instances:\n- {name: vi, interface: eth0, vrid: 5, advertInterval: 50ms, vips: [192.0.2.100/24]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "run", "keepvip.sock")
	if err := os.MkdirAll(filepath.Dir(sock), 0o700); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for round := range 30 {
		// A dead keepvip's socket: bound, never removed.
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		l.(*net.UnixListener).SetUnlinkOnClose(false)
		l.Close()

		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- Run(ctx, Options{ConfigFile: cfgPath, StatusSocket: sock, StateDir: dir, Logger: log, TakeOver: true})
		}()
		deadline := time.Now().Add(5 * time.Second)
		for {
			select {
			case err := <-done:
				cancel()
				t.Fatalf("round %d: Run with TakeOver and nobody to take over from ended: %v", round, err)
			default:
			}
			s, err := GetStatus(context.Background(), sock)
			if err == nil && len(s.Instances) == 1 && s.Instances[0].State != vrrp.StateInit {
				if s.Handover != nil {
					t.Errorf("round %d: status shows a handover: %+v", round, s.Handover)
				}
				break
			}
			if time.Now().After(deadline) {
				cancel()
				t.Fatalf("round %d: not running within 5s: %v", round, err)
			}
			time.Sleep(2 * time.Millisecond)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
	}
}
