package vm

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

// readCPIO parses a newc archive: name -> mode and data.
func readCPIO(t *testing.T, b []byte) (map[string]uint32, map[string]string, []string) {
	t.Helper()
	modes, data := map[string]uint32{}, map[string]string{}
	var order []string
	align := func(n int) int { return (n + 3) &^ 3 }
	for off := 0; ; {
		if off+110 > len(b) || string(b[off:off+6]) != "070701" {
			t.Fatalf("no newc header at %d", off)
		}
		field := func(i int) int {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatalf("header field %d at %d: %v", i, off, err)
			}
			return int(v)
		}
		mode, size, namesize := field(1), field(6), field(11)
		name := string(b[off+110 : off+110+namesize-1])
		off = align(off + 110 + namesize)
		if name == "TRAILER!!!" {
			if off != len(b) {
				t.Fatalf("%d bytes after the trailer", len(b)-off)
			}
			return modes, data, order
		}
		modes[name], data[name] = uint32(mode), string(b[off:off+size])
		order = append(order, name)
		off = align(off + size)
	}
}

func TestCPIOWriter(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, []byte("hello, guest"), 0o750); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	c := newCPIOWriter(&buf)
	c.File("/usr/local/bin/tool", src, 0)
	c.Bytes("/etc/x", 0o644, []byte("abc"))
	c.Bytes("/etc/x", 0o644, []byte("second, ignored"))
	c.Symlink("/bin/sh", "dash")
	c.CharDev("/dev/console", 0o600, 5, 1)
	c.Dir("/tmp", 0o1777)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	modes, data, order := readCPIO(t, buf.Bytes())
	wantOrder := []string{"usr", "usr/local", "usr/local/bin", "usr/local/bin/tool", "etc", "etc/x", "bin", "bin/sh", "dev", "dev/console", "tmp"}
	if !reflect.DeepEqual(order, wantOrder) {
		t.Errorf("entries %v, want %v", order, wantOrder)
	}
	for name, want := range map[string]struct {
		mode uint32
		data string
	}{
		"usr/local/bin/tool": {sIFREG | 0o750, "hello, guest"},
		"etc/x":              {sIFREG | 0o644, "abc"},
		"bin/sh":             {sIFLNK | 0o777, "dash"},
		"dev/console":        {sIFCHR | 0o600, ""},
		"tmp":                {sIFDIR | 0o1777, ""},
		"usr":                {sIFDIR | 0o755, ""},
	} {
		if modes[name] != want.mode || data[name] != want.data {
			t.Errorf("%s: mode %o data %q, want %o %q", name, modes[name], data[name], want.mode, want.data)
		}
	}
	// The host's cpio agrees, where there is one.
	if cpio, err := exec.LookPath("cpio"); err == nil {
		cmd := exec.Command(cpio, "-t", "--quiet")
		cmd.Stdin = bytes.NewReader(buf.Bytes())
		out, err := cmd.CombinedOutput()
		if err != nil || strings.Fields(string(out))[3] != "usr/local/bin/tool" {
			t.Errorf("cpio -t: %v\n%s", err, out)
		}
	}
}

// guestBlock encodes a block as the guest's emit does.
func guestBlock(nonce string, i int, stream string, payload []byte) string {
	var z bytes.Buffer
	zw := gzip.NewWriter(&z)
	zw.Write(payload)
	zw.Close()
	enc := base64.StdEncoding.EncodeToString(z.Bytes())
	var lines []string
	for len(enc) > 76 {
		lines, enc = append(lines, enc[:76]), enc[76:]
	}
	lines = append(lines, enc)
	return fmt.Sprintf("%s BEGIN %d %s %d\r\n%s\r\n%s END %d %s\r\n", nonce, i, stream, len(payload),
		strings.Join(lines, "\r\n"), nonce, i, stream)
}

func TestParseRecords(t *testing.T) {
	const n = "KVnonce"
	big := bytes.Repeat([]byte("line of test output\n"), 5000)
	data := n + " READY 2.31\r\n" +
		"stray line from someone else\r\n" +
		n + " START 0 2.40\r\n" +
		guestBlock(n, 0, "out", big) +
		guestBlock(n, 0, "err", nil) +
		n + " EXIT 0 3 2.40 2.95 0\r\n" +
		n + " START 1 3.00\r\n" +
		guestBlock(n, 1, "out", []byte("partial\x00binary\xff")) +
		guestBlock(n, 1, "err", []byte("goroutine dump")) +
		n + " EXIT 1 137 3.00 10.00 1\r\n" +
		n + " DONE\r\n"
	p, err := parseRecords(n, []byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if !p.ready || !p.done || p.fail != "" || p.started != -1 || len(p.cmds) != 2 {
		t.Fatalf("parsed %+v", p)
	}
	c0, c1 := p.cmds[0], p.cmds[1]
	if c0.index != 0 || !bytes.Equal(c0.Stdout, big) || len(c0.Stderr) != 0 || c0.ExitCode != 3 ||
		c0.TimedOut || c0.Duration != 550*time.Millisecond {
		t.Errorf("command 0: index %d, %d bytes out, err %q, status %d, timed out %v, %v",
			c0.index, len(c0.Stdout), c0.Stderr, c0.ExitCode, c0.TimedOut, c0.Duration)
	}
	if string(c1.Stdout) != "partial\x00binary\xff" || string(c1.Stderr) != "goroutine dump" ||
		c1.ExitCode != 137 || !c1.TimedOut || c1.Duration != 7*time.Second {
		t.Errorf("command 1: %+v", c1)
	}

	// A machine that died in the middle of a command.
	p, err = parseRecords(n, []byte(n+" READY 1\n"+n+" START 0 1\n"+n+" BEGIN 0 out 10\nH4sI"))
	if err != nil || p.started != 0 || p.done || len(p.cmds) != 0 {
		t.Errorf("cut short: %+v, %v", p, err)
	}
	p, err = parseRecords(n, []byte(n+" FAIL insmod kernel/x.ko\n"))
	if err != nil || p.fail != "insmod kernel/x.ko" || p.ready {
		t.Errorf("fail: %+v, %v", p, err)
	}

	for name, bad := range map[string]string{
		"length":      strings.Replace(guestBlock(n, 0, "out", []byte("abc")), "out 3", "out 4", 1),
		"not base64":  n + " BEGIN 0 out 3\nnot base64!\n" + n + " END 0 out\n",
		"other index": guestBlock(n, 1, "out", []byte("abc")),
		"unknown":     n + " BOGUS\n",
	} {
		in := n + " START 0 1\n" + bad
		if _, err := parseRecords(n, []byte(in)); err == nil {
			t.Errorf("%s: no error for\n%s", name, in)
		}
	}
}

func TestShellQuote(t *testing.T) {
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Fatal("no sh on this machine")
	}
	args := []string{"plain", "with space", "it's", `"double"`, "$HOME `x` $(y) \\", "new\nline", "", "*"}
	script := "printf '%s\\0'"
	for _, a := range args {
		q, err := shellQuote(a)
		if err != nil {
			t.Fatal(err)
		}
		script += " " + q
	}
	out, err := exec.Command(sh, "-c", script).Output()
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
	if !reflect.DeepEqual(got, args) {
		t.Errorf("round trip: %q, want %q", got, args)
	}
	if _, err := shellQuote("nul\x00"); err == nil {
		t.Error("a NUL byte was accepted")
	}
}

func testIndex() *moduleIndex {
	return newModuleIndex([]module{
		{Name: "crc32c_generic", Path: "kernel/crypto/crc32c_generic.ko", Aliases: []string{"crc32c", "crypto-crc32c"}},
		{Name: "crc32c_intel", Path: "kernel/arch/x86/crypto/crc32c-intel.ko", Aliases: []string{"crc32c", "crypto-crc32c"}},
		{Name: "libcrc32c", Path: "kernel/lib/libcrc32c.ko", SoftPre: []string{"crc32c"}},
		{Name: "nf_defrag_ipv4", Path: "kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko"},
		{Name: "nf_defrag_ipv6", Path: "kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko"},
		{Name: "nf_conntrack", Path: "kernel/net/netfilter/nf_conntrack.ko", Depends: []string{"nf_defrag_ipv6", "nf_defrag_ipv4", "libcrc32c"}},
		{Name: "ip_vs", Path: "kernel/net/netfilter/ipvs/ip_vs.ko", Depends: []string{"nf_conntrack", "nf_defrag_ipv6", "libcrc32c"}},
		{Name: "ip_vs_rr", Path: "kernel/net/netfilter/ipvs/ip_vs_rr.ko", Depends: []string{"ip_vs"}},
		{Name: "a", Path: "a.ko", Depends: []string{"b"}},
		{Name: "b", Path: "b.ko", Depends: []string{"a"}},
		{Name: "c", Path: "c.ko", Depends: []string{"gone"}},
	}, []string{"kernel/net/unix/unix.ko"})
}

func names(mods []*module) []string {
	var s []string
	for _, m := range mods {
		s = append(s, m.Name)
	}
	return s
}

func TestLoadOrder(t *testing.T) {
	ix := testIndex()
	mods, err := ix.loadOrder([]string{"ip_vs_rr", "unix"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"nf_defrag_ipv6", "nf_defrag_ipv4", "crc32c_generic", "libcrc32c", "nf_conntrack", "ip_vs", "ip_vs_rr"}
	if got := names(mods); !reflect.DeepEqual(got, want) {
		t.Errorf("load order %v, want %v", got, want)
	}
	// Asked for, the other crc32c provider is the one libcrc32c gets.
	mods, err = ix.loadOrder([]string{"crc32c-intel", "libcrc32c"})
	if err != nil || !reflect.DeepEqual(names(mods), []string{"crc32c_intel", "libcrc32c"}) {
		t.Errorf("with crc32c-intel: %v, %v", names(mods), err)
	}
	dep := string(ix.modulesDep(must(ix.loadOrder([]string{"ip_vs"}))))
	if !strings.Contains(dep, "kernel/net/netfilter/ipvs/ip_vs.ko: kernel/net/netfilter/nf_conntrack.ko kernel/lib/libcrc32c.ko kernel/net/ipv4/netfilter/nf_defrag_ipv4.ko kernel/net/ipv6/netfilter/nf_defrag_ipv6.ko\n") {
		t.Errorf("modules.dep:\n%s", dep)
	}
	for _, bad := range []string{"a", "c", "nope"} {
		if _, err := ix.loadOrder([]string{bad}); err == nil {
			t.Errorf("loadOrder(%s) succeeded", bad)
		}
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestInitScript(t *testing.T) {
	mods := must(testIndex().loadOrder([]string{"ip_vs"}))
	s, err := initScript("KVx", "6.1.0-1-amd64", mods, []string{"A=b c", "Q='"},
		[][]string{{"echo", "it's"}, {"/usr/local/bin/x.test", "-test.v"}}, 90*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"load 'kernel/net/netfilter/ipvs/ip_vs.ko'\n",
		"export 'A=b c'\n",
		`export 'Q='\'''` + "\n",
		"run 0 90 'echo' 'it'\\''s'\n",
		"run 1 90 '/usr/local/bin/x.test' '-test.v'\n",
	} {
		if !strings.Contains(string(s), want) {
			t.Errorf("script lacks %q", want)
		}
	}
	if sh, err := exec.LookPath("sh"); err == nil {
		if out, err := exec.Command(sh, "-n", "-c", string(s)).CombinedOutput(); err != nil {
			t.Errorf("sh -n: %v\n%s", err, out)
		}
	}
	if _, err := initScript("KVx", "r", nil, []string{"1BAD=x"}, [][]string{{"true"}}, 0, ""); err == nil {
		t.Error("a bad environment name was accepted")
	}
	if _, err := initScript("KVx", "r", nil, nil, [][]string{{}}, 0, ""); err == nil {
		t.Error("an empty command was accepted")
	}
}

func TestCachedModule(t *testing.T) {
	for rel, want := range map[string]bool{
		"kernel/net/netfilter/ipvs/ip_vs.ko": true,
		"kernel/drivers/net/dummy.ko":        true,
		"kernel/drivers/net/ethernet/x.ko":   false,
		"kernel/fs/9p/9p.ko":                 false,
		"kernel/lib/libcrc32c.ko":            true,
		"modules.builtin":                    false,
	} {
		if got := cachedModule(rel); got != want {
			t.Errorf("cachedModule(%s) = %v", rel, got)
		}
	}
}
