package vm

import (
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// parsed is what the guest reported on ttyS1 (see initHead).
type parsed struct {
	ready, done bool
	fail        string
	started     int // a command that started and did not finish, or -1
	cmds        []parsedCmd
}

type parsedCmd struct {
	index int
	CommandResult
}

// parseRecords reads the data channel. Lines outside a BEGIN/END block
// that do not start with the nonce are ignored; inside one, anything but
// base64 is an error. A block cut short (the machine died) is dropped.
func parseRecords(nonce string, data []byte) (parsed, error) {
	p := parsed{started: -1}
	var (
		cur     *parsedCmd
		inBlock bool
		stream  string
		want    int
		payload []byte
	)
	lines := bytes.Split(data, []byte("\n"))
	for n, raw := range lines {
		line := string(bytes.Trim(raw, "\r"))
		rest, isRec := strings.CutPrefix(line, nonce+" ")
		if inBlock && !isRec {
			for _, ch := range line {
				if !strings.ContainsRune("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", ch) {
					return p, fmt.Errorf("line %d: not base64 inside a block: %.80q", n+1, line)
				}
			}
			payload = append(payload, line...)
			continue
		}
		if !isRec {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			return p, fmt.Errorf("line %d: empty record", n+1)
		}
		bad := func(why string) (parsed, error) {
			return p, fmt.Errorf("line %d: %s: %q", n+1, why, line)
		}
		idx := func(s string) (int, bool) {
			i, err := strconv.Atoi(s)
			return i, err == nil && cur != nil && cur.index == i
		}
		switch f[0] {
		case "READY":
			p.ready = true
		case "FAIL":
			p.fail = strings.TrimSpace(strings.TrimPrefix(rest, "FAIL"))
		case "DONE":
			if cur != nil {
				return bad("DONE while a command runs")
			}
			p.done = true
		case "START":
			if len(f) < 2 || cur != nil {
				return bad("unexpected START")
			}
			i, err := strconv.Atoi(f[1])
			if err != nil {
				return bad("bad index")
			}
			cur = &parsedCmd{index: i}
			p.started = i
		case "BEGIN":
			if len(f) != 4 || inBlock {
				return bad("unexpected BEGIN")
			}
			if _, ok := idx(f[1]); !ok {
				return bad("BEGIN for another command")
			}
			var err error
			if want, err = strconv.Atoi(f[3]); err != nil {
				return bad("bad length")
			}
			inBlock, stream, payload = true, f[2], nil
		case "END":
			if len(f) != 3 || !inBlock || f[2] != stream {
				return bad("unexpected END")
			}
			if _, ok := idx(f[1]); !ok {
				return bad("END for another command")
			}
			z, err := base64.StdEncoding.DecodeString(string(payload))
			if err != nil {
				return bad(fmt.Sprintf("base64: %v", err))
			}
			zr, err := gzip.NewReader(bytes.NewReader(z))
			if err != nil {
				return bad(fmt.Sprintf("gzip: %v", err))
			}
			b, err := io.ReadAll(zr)
			if err != nil {
				return bad(fmt.Sprintf("gzip: %v", err))
			}
			if len(b) != want {
				return bad(fmt.Sprintf("%d bytes where %d were announced", len(b), want))
			}
			switch stream {
			case "out":
				cur.Stdout = b
			case "err":
				cur.Stderr = b
			default:
				return bad("unknown stream")
			}
			inBlock = false
		case "EXIT":
			if len(f) != 6 || inBlock {
				return bad("unexpected EXIT")
			}
			if _, ok := idx(f[1]); !ok {
				return bad("EXIT for another command")
			}
			st, err1 := strconv.Atoi(f[2])
			s, err2 := strconv.ParseFloat(f[3], 64)
			e, err3 := strconv.ParseFloat(f[4], 64)
			if err1 != nil || err2 != nil || err3 != nil {
				return bad("bad numbers")
			}
			cur.ExitCode = st
			cur.Duration = time.Duration((e - s) * float64(time.Second)).Round(10 * time.Millisecond)
			cur.TimedOut = f[5] == "1"
			p.cmds = append(p.cmds, *cur)
			cur, p.started = nil, -1
		default:
			return bad("unknown record")
		}
	}
	return p, nil
}
