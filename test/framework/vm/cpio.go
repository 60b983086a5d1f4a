package vm

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
)

// cpioWriter writes the "newc" cpio format the kernel unpacks as an
// initramfs. Paths are absolute guest paths; parent directories are added
// as needed and every path is written once (the first one wins).
type cpioWriter struct {
	w    *bufio.Writer
	ino  uint32
	seen map[string]bool
	err  error
}

const (
	sIFDIR  = 0o040000
	sIFREG  = 0o100000
	sIFLNK  = 0o120000
	sIFCHR  = 0o020000
	cpioPad = 4
)

func newCPIOWriter(w io.Writer) *cpioWriter {
	return &cpioWriter{w: bufio.NewWriterSize(w, 1<<20), seen: map[string]bool{}}
}

func (c *cpioWriter) header(name string, mode uint32, size int64, rdevMajor, rdevMinor uint32) {
	if c.err != nil {
		return
	}
	if size > 0xffffffff {
		c.err = fmt.Errorf("cpio: %s is too large (%d bytes)", name, size)
		return
	}
	c.ino++
	nlink := uint32(1)
	if mode&sIFDIR != 0 {
		nlink = 2
	}
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
	// devminor, rdevmajor, rdevminor, namesize, check
	_, c.err = fmt.Fprintf(c.w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, size, 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	if c.err != nil {
		return
	}
	if _, c.err = io.WriteString(c.w, name+"\x00"); c.err != nil {
		return
	}
	c.pad(110 + int64(len(name)) + 1)
}

func (c *cpioWriter) pad(n int64) {
	if c.err != nil {
		return
	}
	if r := n % cpioPad; r != 0 {
		_, c.err = c.w.Write(make([]byte, cpioPad-r))
	}
}

// claim normalises p and reports whether it is still free, adding its
// parent directories first.
func (c *cpioWriter) claim(p string) (string, bool) {
	p = path.Clean("/" + p)
	if p == "/" || c.seen[p] {
		return "", false
	}
	if dir := path.Dir(p); dir != "/" && !c.seen[dir] {
		c.Dir(dir, 0o755)
	}
	c.seen[p] = true
	return strings.TrimPrefix(p, "/"), true
}

// Dir adds a directory.
func (c *cpioWriter) Dir(p string, perm uint32) {
	if name, ok := c.claim(p); ok {
		c.header(name, sIFDIR|perm, 0, 0, 0)
	}
}

// Symlink adds a symbolic link to target.
func (c *cpioWriter) Symlink(p, target string) {
	if name, ok := c.claim(p); ok {
		c.header(name, sIFLNK|0o777, int64(len(target)), 0, 0)
		c.data(strings.NewReader(target), int64(len(target)))
	}
}

// CharDev adds a character device node.
func (c *cpioWriter) CharDev(p string, perm, major, minor uint32) {
	if name, ok := c.claim(p); ok {
		c.header(name, sIFCHR|perm, 0, major, minor)
	}
}

// Bytes adds a regular file with contents b.
func (c *cpioWriter) Bytes(p string, perm uint32, b []byte) {
	if name, ok := c.claim(p); ok {
		c.header(name, sIFREG|perm, int64(len(b)), 0, 0)
		c.data(strings.NewReader(string(b)), int64(len(b)))
	}
}

// File adds a regular file with the contents of the host file src
// (following symbolic links) and its permission bits, unless perm is not 0.
func (c *cpioWriter) File(p, src string, perm uint32) {
	if c.err != nil {
		return
	}
	f, err := os.Open(src)
	if err != nil {
		c.err = err
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		c.err = err
		return
	}
	if !st.Mode().IsRegular() {
		c.err = fmt.Errorf("cpio: %s is not a regular file", src)
		return
	}
	if perm == 0 {
		perm = uint32(st.Mode().Perm())
	}
	if name, ok := c.claim(p); ok {
		c.header(name, sIFREG|perm, st.Size(), 0, 0)
		c.data(f, st.Size())
	}
}

func (c *cpioWriter) data(r io.Reader, size int64) {
	if c.err != nil {
		return
	}
	n, err := io.Copy(c.w, io.LimitReader(r, size))
	if err == nil && n != size {
		err = fmt.Errorf("cpio: short read: %d of %d bytes", n, size)
	}
	if err != nil {
		c.err = err
		return
	}
	c.pad(size)
}

// Close writes the trailer and flushes. It returns the first error of any
// call.
func (c *cpioWriter) Close() error {
	c.header("TRAILER!!!", 0, 0, 0, 0)
	if c.err != nil {
		return c.err
	}
	return c.w.Flush()
}
