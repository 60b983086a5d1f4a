package lab_test

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keepvip/keepvip/test/framework/lab"
)

// TestCaptureMissesNothing checks that a capture holds every packet sent
// from the moment StartCapture returns to the moment Fields (which stops
// it) is called: traffic starts at once and the capture is stopped as
// soon as the traffic ends, with no sleep on either side. tshark prints
// "Capturing on" before it has even started dumpcap, and dumpcap stopped
// by SIGINT drops what it has not read from its ring yet (up to one block
// timeout, 250 ms): a capture trusted at either edge loses packets there,
// as TestKeepalivedFailover's capture lost the new master's GARPs.
func TestCaptureMissesNothing(t *testing.T) {
	t.Parallel()
	l := newLab(t, "tshark")
	a, b, _ := threeNodes(t, l)
	for round := range 3 {
		capt, err := b.StartCapture("icmp")
		if err != nil {
			t.Fatal(err)
		}
		p, err := lab.StartProber(ctxTimeout(t, 10*time.Second), a, b.IPv4.Addr(), 2*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(100 * time.Millisecond)
		p.Stop()
		rows, err := capt.Fields("icmp.type == 8 && ip.src == "+a.IPv4.Addr().String(), "icmp.seq")
		if err != nil {
			t.Fatal(err)
		}
		captured := map[string]bool{}
		for _, r := range rows {
			captured[r[0]] = true
		}
		// Every request that was answered reached b, so its capture must
		// hold it (the last one may have been cut short by Stop).
		var answered, missing []int
		for _, pr := range p.Probes() {
			if !pr.Replied() {
				continue
			}
			answered = append(answered, pr.Seq)
			if !captured[strconv.Itoa(pr.Seq)] {
				missing = append(missing, pr.Seq)
			}
		}
		t.Logf("round %d: %d echo requests answered, %d captured", round, len(answered), len(rows))
		if len(answered) < 10 {
			t.Fatalf("round %d: only %d echo requests answered", round, len(answered))
		}
		if len(missing) > 0 {
			t.Errorf("round %d: the capture lacks %d of the %d answered echo requests: sequence numbers %v",
				round, len(missing), len(answered), compactSeqs(missing))
		}
	}
}

// compactSeqs writes runs of consecutive numbers as "a-b".
func compactSeqs(seqs []int) string {
	var parts []string
	for i := 0; i < len(seqs); {
		j := i
		for j+1 < len(seqs) && seqs[j+1] == seqs[j]+1 {
			j++
		}
		if j > i {
			parts = append(parts, fmt.Sprintf("%d-%d", seqs[i], seqs[j]))
		} else {
			parts = append(parts, strconv.Itoa(seqs[i]))
		}
		i = j + 1
	}
	return strings.Join(parts, " ")
}
