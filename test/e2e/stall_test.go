package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keepvip/keepvip/test/framework/lab"
	"github.com/keepvip/keepvip/vrrp"
)

// A backup that is paused (SIGSTOP here; a GC pause, a starved CPU or a VM
// steal do the same) for longer than Master_Down_Interval while its master
// goes on advertising finds, when it runs again, its Master_Down_Timer
// expired and the master's adverts waiting in its socket. It must take
// them in and stay backup: no advert, no GARP, no transition (issue #10).
// keepalived 2.2.7, in the same lab, is the reference.

var (
	// stallPauses are longer than the backup's Master_Down_Interval
	// (360.9 ms for priority 100 at 100 ms adverts): the timer has
	// expired in wall time when the backup resumes.
	stallPauses = []time.Duration{500 * time.Millisecond, time.Second}
	// stallSettle is how long a round watches the backup after it
	// resumes: a spurious takeover happens as soon as it runs again (it
	// stepped back 1-5 ms later), and a wait for a reader that cannot
	// catch up would end within one interval.
	stallSettle = 3 * clAdv
)

// stallRounds is the number of pauses of each length (KEEPVIP_STALL_ROUNDS,
// default 10).
func stallRounds(t *testing.T) int {
	if s := os.Getenv("KEEPVIP_STALL_ROUNDS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("KEEPVIP_STALL_ROUNDS=%q", s)
		}
		return n
	}
	return 10
}

// stallRound is one pause of the backup.
type stallRound struct {
	pause          time.Duration
	stop, resume   time.Time
	until          time.Time // end of the watch
	transitions    []string  // the backup's transitions to MASTER in the round
	adverts, garps int       // sent by the backup in the round (advert watcher, capture)
	firstSend      time.Duration
	receivedDuring int // adverts the backup took in for the round (keepvip)
}

func (r stallRound) spurious() bool {
	return len(r.transitions) > 0 || r.adverts > 0 || r.garps > 0
}

// stallBackup is the implementation under test on the backup node.
type stallBackup struct {
	// pid leads the process group that SIGSTOP pauses.
	pid int
	// ready waits until the backup follows the master.
	ready func()
	// begin and end bracket a round: end returns the backup's
	// transitions to MASTER since begin, and how many adverts it took in.
	begin func()
	end   func(since time.Time) (masterTransitions []string, received int)
}

// stallRun pauses the backup stallRounds times for each of stallPauses
// while the master advertises, and reports every round. a and b are the
// master's and the backup's nodes; the client captures.
func stallRun(t *testing.T, b *lab.Node, client *lab.Node, impl string, backup stallBackup) []stallRound {
	t.Helper()
	capt, err := client.StartCapture("arp or ip proto 112")
	if err != nil {
		t.Fatal(err)
	}
	w, err := lab.StartAdvertWatcher(client)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	n := stallRounds(t)
	var rounds []stallRound
	for _, pause := range stallPauses {
		for range n {
			backup.ready()
			// A random phase against the master's adverts.
			time.Sleep(time.Duration(time.Now().UnixNano() % int64(clAdv)))
			backup.begin()
			r := stallRound{pause: pause, stop: time.Now()}
			if err := unix.Kill(-backup.pid, unix.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			time.Sleep(pause)
			if err := unix.Kill(-backup.pid, unix.SIGCONT); err != nil {
				t.Fatal(err)
			}
			r.resume = time.Now()
			time.Sleep(stallSettle)
			r.until = time.Now()
			r.transitions, r.receivedDuring = backup.end(r.stop)
			for _, ad := range w.Adverts() {
				if ad.Src == b.IPv4.Addr() && !ad.Time.Before(r.stop) && ad.Time.Before(r.until) {
					if r.adverts == 0 {
						r.firstSend = ad.Time.Sub(r.resume)
					}
					r.adverts++
				}
			}
			rounds = append(rounds, r)
		}
	}
	garps, err := capt.Fields("arp.opcode == 1 && arp.src.proto_ipv4 == arp.dst.proto_ipv4 && eth.src == "+b.MAC.String(), "frame.time_epoch")
	if err != nil {
		t.Fatal(err)
	}
	for _, g := range garps {
		ts, err := strconv.ParseFloat(g[0], 64)
		if err != nil {
			t.Fatal(err)
		}
		at := time.Unix(0, int64(ts*1e9))
		for i := range rounds {
			if !at.Before(rounds[i].stop) && at.Before(rounds[i].until) {
				rounds[i].garps++
			}
		}
	}
	for _, pause := range stallPauses {
		spurious, total := 0, 0
		var details []string
		for i, r := range rounds {
			if r.pause != pause {
				continue
			}
			total++
			if r.spurious() {
				spurious++
				details = append(details, fmt.Sprintf("round %d: %d transitions to MASTER %v, %d adverts (first %v after resuming), %d GARPs",
					i, len(r.transitions), r.transitions, r.adverts, r.firstSend.Round(100*time.Microsecond), r.garps))
			}
		}
		t.Logf("%s backup paused %v (Master_Down_Interval %v) %d times while the master advertised every %v: %d spurious takeovers",
			impl, pause, clMDI(100), total, clAdv, spurious)
		faultBench(t, fmt.Sprintf("fault_paused_backup_%dms_spurious_takeovers_%s", pause.Milliseconds(), impl), float64(spurious), fmt.Sprintf("of-%d-pauses", total))
		for _, d := range details {
			t.Logf("  %s", d)
		}
	}
	return rounds
}

// TestStalledBackupKeepvip: two keepvip nodes, a master (priority 150) and
// a backup (100), 100 ms adverts; the backup is paused.
func TestStalledBackupKeepvip(t *testing.T) {
	c := newClCluster(t)
	c.start("a", clConfig(clV4(150)))
	c.start("b", clConfig(clV4(100)))
	c.waitState("a", "v4", vrrp.StateMaster)
	c.waitBackupOf("b", "v4", c.v4("a"), 150)
	kb := c.kv["b"]
	var before vrrp.Status
	rounds := stallRun(t, c.nodes["b"], c.client, "keepvip", stallBackup{
		pid: kb.Proc().PID(),
		ready: func() {
			c.waitBackupOf("b", "v4", c.v4("a"), 150)
			c.waitState("a", "v4", vrrp.StateMaster)
		},
		begin: func() { before = c.mustInst("b", "v4") },
		end: func(since time.Time) ([]string, int) {
			s := c.mustInst("b", "v4")
			var out []string
			for _, tr := range clSince(s, since) {
				if tr.To == vrrp.StateMaster {
					out = append(out, fmt.Sprintf("%v after the pause began (%s)", tr.At.Sub(since).Round(100*time.Microsecond), tr.Reason))
				}
			}
			return out, int(s.AdvertsReceived - before.AdvertsReceived)
		},
	})
	for i, r := range rounds {
		if r.spurious() {
			t.Errorf("round %d: the backup, paused %v, took over from a live master: %d transitions to MASTER %v, %d adverts, %d GARPs",
				i, r.pause, len(r.transitions), r.transitions, r.adverts, r.garps)
		}
		// The adverts that came during the pause were taken in, not
		// dropped: one per interval, give or take the phase.
		if want := int((r.pause + stallSettle) / clAdv); r.receivedDuring < want-2 {
			t.Errorf("round %d: the backup took in %d adverts over the pause of %v and the %v after; want about %d", i, r.receivedDuring, r.pause, stallSettle, want)
		}
	}
	s := c.mustInst("a", "v4")
	if trs := clSince(s, rounds[0].stop); len(trs) > 0 {
		t.Errorf("the master changed state while its backup was paused: %s", clTrString(trs))
	}
	if d := c.mustInst("b", "v4").Drops; d["queue-full"] > 0 {
		t.Errorf("the backup dropped adverts for want of room: %v", d)
	}
	t.Logf("figure: the backup logged %d times that queued adverts reset an expired timer (at most once per 10 s)",
		strings.Count(kb.Log(), "a timer expired while adverts were queued"))
}

// TestStalledBackupKeepalived is the reference: keepalived 2.2.7 in the
// same lab with the same priorities and interval. It only reports.
func TestStalledBackupKeepalived(t *testing.T) {
	lab.Require(t, "keepalived", "tshark")
	c := newClCluster(t)
	inst := func(prio int) []lab.KeepalivedInstance {
		return []lab.KeepalivedInstance{{Name: "VI4", VRID: clVRID, Priority: prio, AdvertInterval: clAdv, VIPs: []netip.Prefix{clVIP4}}}
	}
	ka, err := c.nodes["a"].StartKeepalived(inst(150))
	if err != nil {
		t.Fatal(err)
	}
	kb, err := c.nodes["b"].StartKeepalived(inst(100))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ka.WaitState(ctx, "VI4", "MASTER"); err != nil {
		t.Fatal(err)
	}
	if err := kb.WaitState(ctx, "VI4", "BACKUP"); err != nil {
		t.Fatal(err)
	}
	// SIGSTOP goes to keepalived's process group: its VRRP child must be
	// in it.
	vrrpPID, err := kb.VRRPPID()
	if err != nil {
		t.Fatal(err)
	}
	if pgid, err := unix.Getpgid(vrrpPID); err != nil || pgid != kb.Proc().PID() {
		t.Fatalf("keepalived's VRRP child %d is in process group %d (%v), not %d", vrrpPID, pgid, err, kb.Proc().PID())
	}
	wait := func(k *lab.Keepalived, state string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), clWait)
		defer cancel()
		if err := k.WaitState(ctx, "VI4", state); err != nil {
			t.Fatal(err)
		}
	}
	stallRun(t, c.nodes["b"], c.client, "keepalived", stallBackup{
		pid: kb.Proc().PID(),
		ready: func() {
			wait(kb, "BACKUP")
			wait(ka, "MASTER")
		},
		begin: func() {},
		end: func(since time.Time) ([]string, int) {
			var out []string
			for _, h := range kb.History() {
				if !h.Time.Before(since) && h.Kind == "INSTANCE" && h.State == "MASTER" {
					out = append(out, fmt.Sprintf("%v after the pause began (%s)", h.Time.Sub(since).Round(100*time.Microsecond), h.Line))
				}
			}
			return out, 0
		},
	})
}
