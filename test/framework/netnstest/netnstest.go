// Package netnstest runs a test inside a fresh network namespace, by running
// the test binary again under unshare(1), so that tests can create
// interfaces and addresses without touching the host.
//
// Tests that need privileges call Require or Enter. Without root they skip
// with the reason, unless KEEPVIP_PRIVILEGED=1 is set (as `make test` does),
// in which case they fail: a privileged test that cannot run is a failure
// there, not a pass.
package netnstest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"
)

const (
	// EnvPrivileged, when "1", turns skips for missing privileges into
	// failures.
	EnvPrivileged = "KEEPVIP_PRIVILEGED"
	envChild      = "KEEPVIP_NETNS_CHILD"
)

// Require fails or skips t unless the process is root and the named
// commands are installed.
func Require(t testing.TB, commands ...string) {
	t.Helper()
	var missing []string
	if os.Geteuid() != 0 {
		missing = append(missing, "root")
	}
	for _, c := range commands {
		if _, err := exec.LookPath(c); err != nil {
			missing = append(missing, "command "+c)
		}
	}
	if len(missing) == 0 {
		return
	}
	Unavailable(t, "needs "+strings.Join(missing, ", "))
}

// TB is the part of testing.TB that Unavailable uses.
type TB interface {
	Helper()
	Skipf(format string, args ...any)
	Fatalf(format string, args ...any)
}

// Unavailable is the one policy for a privileged test that cannot run: it
// skips t with the reason, or fails it when KEEPVIP_PRIVILEGED=1.
func Unavailable(t TB, why string) {
	t.Helper()
	if os.Getenv(EnvPrivileged) == "1" {
		t.Fatalf("%s (%s=1: privileged tests must run)", why, EnvPrivileged)
	}
	t.Skipf("%s; run as root or with `make test`", why)
}

// Enter reports whether the caller is now inside a fresh network namespace
// and should run the test body. In the parent it runs the test again in
// a new namespace, reports that run's outcome as its own and returns false.
//
//	func TestX(t *testing.T) {
//		if !netnstest.Enter(t) {
//			return
//		}
//		// in a new network namespace
//	}
func Enter(t *testing.T) bool {
	t.Helper()
	if os.Getenv(envChild) == t.Name() {
		return true
	}
	Require(t, "unshare", "ip")
	parts := strings.Split(t.Name(), "/")
	for i, p := range parts {
		parts[i] = "^" + regexp.QuoteMeta(p) + "$"
	}
	timeout := 5 * time.Minute
	if d, ok := t.Deadline(); ok {
		timeout = time.Until(d) - 5*time.Second
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--net", "--", os.Args[0],
		"-test.run", strings.Join(parts, "/"), "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), envChild+"="+t.Name())
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	text := out.String()
	switch {
	case err != nil:
		t.Fatalf("test in a new network namespace failed (%v):\n%s", err, text)
	case strings.Contains(text, "no tests to run"):
		t.Fatalf("the namespace run matched no test:\n%s", text)
	case strings.Contains(text, "--- SKIP"):
		t.Fatalf("the test skipped inside its namespace:\n%s", text)
	case !strings.Contains(text, "--- PASS: "+t.Name()):
		t.Fatalf("the namespace run did not report a pass:\n%s", text)
	}
	t.Logf("ran in a new network namespace:\n%s", text)
	return false
}

// Sh runs a shell command line and fails t with its output if it fails.
func Sh(t testing.TB, cmdline string) string {
	t.Helper()
	out, err := exec.Command("sh", "-c", cmdline).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmdline, err, out)
	}
	return string(out)
}
