// Package vm_test runs the tests that need IPVS in a qemu machine
// (test/framework/vm): the host kernel has none. TestVM builds each package's
// test binary statically, runs them all in one boot and reports every
// guest test as a subtest of its own.
//
// KEEPVIP_VM_PKGS (space- or comma-separated, relative to the module root
// or import paths) chooses the packages; by default those of
// defaultPackages that exist and have tests. KEEPVIP_VM_RUN is passed to
// them as -test.run, KEEPVIP_VM_TEST_TIMEOUT as -test.timeout (default
// 5m), KEEPVIP_VM_ENV (space-separated KEY=VALUE) adds to their
// environment, and KEEPVIP_VM_CONSOLE=1 copies the guest console to stderr
// as it comes.
package vm_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keepvip/keepvip/test/framework/kubetest"
	"github.com/keepvip/keepvip/test/framework/netnstest"
	"github.com/keepvip/keepvip/test/framework/vm"
)

const (
	envPackages = "KEEPVIP_VM_PKGS"
	envRun      = "KEEPVIP_VM_RUN"
	envTimeout  = "KEEPVIP_VM_TEST_TIMEOUT"
	envConsole  = "KEEPVIP_VM_CONSOLE"
	envEnv      = "KEEPVIP_VM_ENV"
)

// buildTag is set when building the guest test binaries: tests that make
// sense only in the machine carry //go:build vmtest.
const buildTag = "vmtest"

// defaultPackages run in the machine when KEEPVIP_VM_PKGS is not set;
// those that do not exist yet or have no tests are left out.
var defaultPackages = []string{"./test/vm/guest", "./lvs", "./healthcheck", "./test/ipvs"}

// guestPkg is a package whose test binary runs in the machine.
type guestPkg struct {
	importPath, dir, rel string
	bin                  string // host path of the test binary
}

func TestVM(t *testing.T) {
	if vm.InGuest() {
		t.Skip("already in the VM")
	}
	if _, err := exec.LookPath("go"); err != nil {
		netnstest.Unavailable(t, "needs the go command to build the guest tests")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := vm.EnsureHost(ctx); err != nil {
		netnstest.Unavailable(t, err.Error())
	}

	root := moduleRoot(t)
	pkgs := packages(t, root)
	if len(pkgs) == 0 {
		t.Fatal("no package to test in the VM")
	}
	bins := t.TempDir()
	for i := range pkgs {
		p := &pkgs[i]
		p.bin = filepath.Join(bins, strings.ReplaceAll(p.rel, "/", "-")+".test")
		build := exec.Command("go", "test", "-c", "-tags", buildTag, "-o", p.bin, p.importPath)
		build.Dir = root
		build.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go test -c %s: %v\n%s", p.importPath, err, out)
		}
	}

	// The daemon itself, for the end-to-end tests (test/ipvs).
	keepvip := filepath.Join(bins, "keepvip")
	build := exec.Command("go", "build", "-o", keepvip, "./cmd/keepvip")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build keepvip: %v\n%s", err, out)
	}

	testTimeout := 5 * time.Minute
	if s := os.Getenv(envTimeout); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("%s: %v", envTimeout, err)
		}
		testTimeout = d
	}
	opts := vm.Options{
		Files:          map[string]string{},
		CommandTimeout: testTimeout + 30*time.Second,
		Timeout:        time.Duration(len(pkgs))*(testTimeout+time.Minute) + 5*time.Minute,
	}
	if d, ok := t.Deadline(); ok {
		opts.Timeout = min(opts.Timeout, time.Until(d)-20*time.Second)
	}
	opts.Env = append(strings.Fields(os.Getenv(envEnv)), "KEEPVIP_BIN="+path.Join(vm.GuestBinDir, "keepvip"))
	opts.Binaries = append(opts.Binaries, keepvip)
	if os.Getenv(envConsole) == "1" {
		opts.Console = os.Stderr
	}
	for _, p := range pkgs {
		if p.rel == kubePkg {
			kubeForGuest(t, ctx, root, &opts)
			// BIRD for the routing tests, with its shared libraries (FRR's
			// vtysh needs PAM, which the guest has not).
			for _, b := range []string{"/usr/sbin/bird", "/usr/sbin/birdc"} {
				if _, err := os.Stat(b); err != nil {
					t.Fatalf("the VM's routing tests need BIRD (%v): make deps installs it", err)
				}
				opts.Binaries = append(opts.Binaries, b)
			}
		}
	}
	for _, p := range pkgs {
		opts.Binaries = append(opts.Binaries, p.bin)
		// Each binary runs where its package's sources would be, with the
		// package's testdata, as go test runs it.
		gdir := "/src/" + p.rel
		if st, err := os.Stat(filepath.Join(p.dir, "testdata")); err == nil && st.IsDir() {
			opts.Files[gdir+"/testdata"] = filepath.Join(p.dir, "testdata")
		}
		cmd := fmt.Sprintf("mkdir -p %s && cd %s && exec %s -test.v=test2json -test.count=1 -test.timeout=%s",
			gdir, gdir, path.Join(vm.GuestBinDir, filepath.Base(p.bin)), testTimeout)
		if r := os.Getenv(envRun); r != "" {
			cmd += " -test.run '" + strings.ReplaceAll(r, "'", `'\''`) + "'"
		}
		opts.Commands = append(opts.Commands, []string{"sh", "-c", cmd + " 2>&1"})
	}

	res, err := vm.Run(ctx, opts)
	if res.Image != nil {
		t.Logf("VM: %s %s, boot %v, run %v", res.Image.Package, res.Image.Version,
			res.Boot.Round(time.Millisecond), res.Elapsed.Round(time.Millisecond))
	}
	for i, c := range res.Commands {
		p := pkgs[i]
		t.Run(p.rel, func(t *testing.T) { report(t, root, p, c) })
	}
	if err != nil {
		t.Fatal(err)
	}
}

// kubePkg has the guest tests of Kubernetes mode and of routing with IPVS.
const kubePkg = "test/ipvs"

// kubeForGuest starts an API server on the host for the guest's
// Kubernetes tests and applies deploy/ to it. The guest reaches it over
// qemu's user network: the host's 127.0.0.1:PORT is 10.0.2.2:PORT there.
// The guest gets an admin kubeconfig (to play the cluster) and one for
// keepvip's ServiceAccount, in /kube, named by KEEPVIP_KUBECONFIG_ADMIN
// and KEEPVIP_KUBECONFIG_SA.
func kubeForGuest(t *testing.T, ctx context.Context, root string, opts *vm.Options) {
	t.Helper()
	cl := kubetest.StartT(t, kubetest.Options{})
	if out, err := cl.Kubectl(ctx, "apply", "-k", filepath.Join(root, "deploy")); err != nil {
		t.Fatalf("kubectl apply -k deploy/: %v\n%s", err, out)
	}
	sa, err := cl.ServiceAccountKubeconfig(ctx, "keepvip", "keepvip", "")
	if err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(cl.URL())
	if err != nil {
		t.Fatal(err)
	}
	server := "https://10.0.2.2:" + u.Port()
	dir := t.TempDir()
	for guest, src := range map[string]string{"/kube/admin.kubeconfig": cl.AdminKubeconfig(), "/kube/keepvip.kubeconfig": sa} {
		dst := filepath.Join(dir, path.Base(guest))
		if err := kubetest.Retarget(src, dst, server, "localhost"); err != nil {
			t.Fatal(err)
		}
		opts.Files[guest] = dst
	}
	opts.Env = append(opts.Env, "KEEPVIP_KUBECONFIG_ADMIN=/kube/admin.kubeconfig", "KEEPVIP_KUBECONFIG_SA=/kube/keepvip.kubeconfig")

	opts.UserNet = true
	t.Logf("API server for the guest at %s (host %s)", server, cl.URL())
}

// moduleRoot is the directory of go.mod.
func moduleRoot(t *testing.T) string {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		t.Fatalf("go env GOMOD: %v", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		t.Fatal("not in a Go module")
	}
	return filepath.Dir(mod)
}

// packages resolves the packages to test in the machine.
func packages(t *testing.T, root string) []guestPkg {
	names, explicit := defaultPackages, false
	if s := os.Getenv(envPackages); strings.TrimSpace(s) != "" {
		names, explicit = strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }), true
	}
	args := append([]string{"list", "-e", "-tags", buildTag, "-f",
		"{{.ImportPath}}\t{{.Dir}}\t{{len .TestGoFiles}}\t{{len .XTestGoFiles}}\t{{with .Error}}{{.Err}}{{end}}"}, names...)
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil && explicit {
		t.Fatalf("go list %s: %v\n%s", strings.Join(names, " "), err, stderr.String())
	}
	var pkgs []guestPkg
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		if line == "" {
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) != 5 {
			t.Fatalf("go list printed %q", line)
		}
		why := f[4]
		if why == "" && f[2] == "0" && f[3] == "0" {
			why = "no test files"
		}
		if why != "" {
			if explicit {
				t.Fatalf("%s: %s", f[0], why)
			}
			t.Logf("not run in the VM: %s: %s", f[0], why)
			continue
		}
		rel, err := filepath.Rel(root, f[1])
		if err != nil || strings.HasPrefix(rel, "..") {
			t.Fatalf("%s is outside the module", f[1])
		}
		pkgs = append(pkgs, guestPkg{importPath: f[0], dir: f[1], rel: filepath.ToSlash(rel)})
	}
	if len(pkgs) == 0 && !explicit && err != nil {
		t.Fatalf("go list: %v\n%s", err, stderr.String())
	}
	return pkgs
}

// testEvent is a go test -json event.
type testEvent struct {
	Action  string
	Test    string
	Output  string
	Elapsed float64
}

// testNode is a guest test and its subtests, as test2json reported them.
type testNode struct {
	name     string
	action   string
	elapsed  float64
	output   strings.Builder
	children []*testNode
	byName   map[string]*testNode
}

func (n *testNode) child(name string) *testNode {
	if c := n.byName[name]; c != nil {
		return c
	}
	c := &testNode{name: name, byName: map[string]*testNode{}}
	n.byName[name] = c
	n.children = append(n.children, c)
	return c
}

// report turns one guest test binary's output into subtests of t.
func report(t *testing.T, root string, p guestPkg, c vm.CommandResult) {
	conv := exec.Command("go", "tool", "test2json", "-t", "-p", p.importPath)
	conv.Dir = root
	conv.Stdin = bytes.NewReader(c.Stdout)
	var stderr bytes.Buffer
	conv.Stderr = &stderr
	js, err := conv.Output()
	if err != nil {
		t.Fatalf("go tool test2json: %v\n%s\nguest output:\n%s", err, stderr.String(), c.Stdout)
	}
	tree := &testNode{byName: map[string]*testNode{}}
	var pkgOut strings.Builder
	failed := false
	for _, line := range bytes.Split(js, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var ev testEvent
		if err := json.Unmarshal(line, &ev); err != nil {
			t.Fatalf("test2json line %q: %v", line, err)
		}
		if ev.Test == "" {
			if ev.Action == "output" {
				pkgOut.WriteString(ev.Output)
			}
			continue
		}
		n := tree
		for _, part := range strings.Split(ev.Test, "/") {
			n = n.child(part)
		}
		switch ev.Action {
		case "output":
			n.output.WriteString(ev.Output)
		case "pass", "fail", "skip":
			n.action, n.elapsed = ev.Action, ev.Elapsed
			failed = failed || ev.Action == "fail"
		}
	}
	for _, n := range tree.children {
		reportNode(t, n)
	}
	// Benchmark figures measured in the guest go to stdout as they are,
	// for make bench.
	for _, line := range strings.Split(string(c.Stdout), "\n") {
		if strings.HasPrefix(line, "BENCH ") {
			fmt.Println(line)
		}
	}
	switch {
	case c.TimedOut:
		t.Errorf("the test binary timed out in the VM after %v:\n%s", c.Duration, pkgOut.String())
	case c.ExitCode != 0 && !failed:
		t.Errorf("the test binary exited with status %d in the VM:\n%s", c.ExitCode, pkgOut.String())
	case len(tree.children) == 0:
		t.Logf("no tests ran:\n%s", pkgOut.String())
	}
}

// Lines go test prints about a test's progress, which the host's own
// subtests repeat.
var progressRE = regexp.MustCompile(`(?m)^\s*(=== (RUN|PAUSE|CONT|NAME)\s|--- (PASS|FAIL|SKIP): ).*\n?`)

func reportNode(t *testing.T, n *testNode) {
	t.Run(n.name, func(t *testing.T) {
		for _, c := range n.children {
			reportNode(t, c)
		}
		out := strings.TrimRight(progressRE.ReplaceAllString(n.output.String(), ""), "\n")
		took := fmt.Sprintf("(%.2fs)", n.elapsed)
		if out != "" {
			took += ":\n"
		}
		switch n.action {
		case "pass":
			if out != "" {
				t.Log("passed in the VM " + took + out)
			}
		case "skip":
			t.Skip("skipped in the VM " + took + out)
		case "fail":
			t.Error("failed in the VM " + took + out)
		case "":
			// A subtest name with a '/' ("IPv4 /24") makes a level
			// of its own that go test reports nothing for: its
			// children have the results.
			if len(n.children) == 0 {
				t.Error("no result in the VM (the binary crashed or timed out):\n" + out)
			}
		default:
			t.Error("no result in the VM (the binary crashed or timed out):\n" + out)
		}
	})
}
