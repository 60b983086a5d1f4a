package lvs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// fakeKernel is a map-backed IPVS table that records every operation and
// answers with the kernel's errors. It is safe for concurrent use, as the
// real one is (one request at a time).
type fakeKernel struct {
	mu   sync.Mutex
	svcs map[Key]*Service
	log  []string
	fail map[string]error // operation prefix -> error
	// hook, if set, is called before each operation ("services" for a
	// read), without the lock.
	hook func(op string)
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{svcs: map[Key]*Service{}, fail: map[string]error{}}
}

// do runs one operation: the hook, then the injected failure or f.
func (f *fakeKernel) do(op string, fn func() error) error {
	f.mu.Lock()
	hook := f.hook
	f.mu.Unlock()
	if hook != nil {
		hook(op)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for prefix, err := range f.fail {
		if strings.HasPrefix(op, prefix) {
			return err
		}
	}
	if err := fn(); err != nil {
		return err
	}
	if op != "services" { // reads are not logged
		f.log = append(f.log, op)
	}
	return nil
}

func (f *fakeKernel) Services(withReals func(Key) bool) ([]ServiceStatus, error) {
	var out []ServiceStatus
	err := f.do("services", func() error {
		for _, s := range f.svcs {
			c := ServiceStatus{Service: *s}
			c.Reals = nil
			if withReals == nil || withReals(s.Key) {
				c.Reals = slices.Clone(s.Reals)
				c.Conns = map[RealKey]Conns{}
				for i, r := range s.Reals {
					c.Conns[RealKey{r.Addr, r.Port}] = Conns{Active: i, Inactive: 2 * i}
				}
			}
			out = append(out, c)
		}
		return nil
	})
	return out, err
}

// put adds a service behind the Director's back (ipvsadm, kube-proxy).
func (f *fakeKernel) put(s Service) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s.Reals = slices.Clone(s.Reals)
	f.svcs[s.Key] = &s
}

func (f *fakeKernel) has(k Key) (Service, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.svcs[k]
	if !ok {
		return Service{}, false
	}
	c := *s
	c.Reals = slices.Clone(s.Reals)
	return c, true
}

func (f *fakeKernel) AddService(s *Service) error {
	return f.do(fmt.Sprintf("add %s", s.Key), func() error {
		if _, ok := f.svcs[s.Key]; ok {
			return syscall.EEXIST
		}
		c := *s
		c.Reals = nil
		f.svcs[s.Key] = &c
		return nil
	})
}

func (f *fakeKernel) UpdateService(s *Service) error {
	return f.do(fmt.Sprintf("edit %s %s", s.Key, s.Scheduler), func() error {
		c, ok := f.svcs[s.Key]
		if !ok {
			return syscall.ESRCH
		}
		c.Scheduler, c.Flags, c.Persistence, c.PersistenceMask = s.Scheduler, s.Flags, s.Persistence, s.PersistenceMask
		return nil
	})
}

func (f *fakeKernel) DeleteService(k Key) error {
	return f.do(fmt.Sprintf("del %s", k), func() error {
		delete(f.svcs, k)
		return nil
	})
}

func (f *fakeKernel) AddReal(k Key, r RealServer) error {
	return f.do(fmt.Sprintf("add-real %s %s", k, r), func() error {
		s, ok := f.svcs[k]
		if !ok {
			return syscall.ESRCH
		}
		s.Reals = slices.DeleteFunc(s.Reals, func(x RealServer) bool { return x.key() == r.key() })
		s.Reals = append(s.Reals, r)
		return nil
	})
}

func (f *fakeKernel) UpdateReal(k Key, r RealServer) error {
	return f.do(fmt.Sprintf("edit-real %s %s", k, r), func() error {
		s, ok := f.svcs[k]
		if !ok {
			return syscall.ESRCH
		}
		for i, x := range s.Reals {
			if x.key() == r.key() {
				s.Reals[i] = r
				return nil
			}
		}
		return syscall.ENOENT
	})
}

func (f *fakeKernel) DeleteReal(k Key, r RealServer) error {
	return f.do(fmt.Sprintf("del-real %s %s", k, r), func() error {
		s, ok := f.svcs[k]
		if !ok {
			return syscall.ESRCH
		}
		s.Reals = slices.DeleteFunc(s.Reals, func(x RealServer) bool { return x.key() == r.key() })
		return nil
	})
}

func (f *fakeKernel) takeLog() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	l := f.log
	f.log = nil
	return l
}

var (
	ap  = netip.MustParseAddr
	ctx = context.Background()
)

func discard() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func web(reals ...RealServer) Service {
	return Service{Key: Key{Addr: ap("192.0.2.100"), Port: 80, Proto: TCP}, Scheduler: "wlc", Reals: reals}
}

func real(addr string, weight int) RealServer {
	return RealServer{Addr: ap(addr), Port: 8080, Forward: NAT, Weight: weight}
}

func TestSyncAppliesOnlyDifferences(t *testing.T) {
	k := newFakeKernel()
	d, err := newDirector(k, Options{Logger: discard()})
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name    string
		desired []Service
		want    []string
	}{
		{"create", []Service{web(real("10.0.0.1", 1), real("10.0.0.2", 1))}, []string{
			"add 192.0.2.100:80/tcp",
			"add-real 192.0.2.100:80/tcp 10.0.0.1:8080 nat weight 1",
			"add-real 192.0.2.100:80/tcp 10.0.0.2:8080 nat weight 1",
		}},
		{"same again changes nothing", []Service{web(real("10.0.0.2", 1), real("10.0.0.1", 1))}, nil},
		{"one weight", []Service{web(real("10.0.0.1", 1), real("10.0.0.2", 0))}, []string{
			"edit-real 192.0.2.100:80/tcp 10.0.0.2:8080 nat weight 0",
		}},
		{"one real in, one out", []Service{web(real("10.0.0.1", 1), real("10.0.0.3", 1))}, []string{
			"add-real 192.0.2.100:80/tcp 10.0.0.3:8080 nat weight 1",
			"del-real 192.0.2.100:80/tcp 10.0.0.2:8080 nat weight 0",
		}},
		{"scheduler edited in place", func() []Service {
			s := web(real("10.0.0.1", 1), real("10.0.0.3", 1))
			s.Scheduler = "rr"
			return []Service{s}
		}(), []string{"edit 192.0.2.100:80/tcp rr"}},
		{"removed", nil, []string{"del 192.0.2.100:80/tcp"}},
	}
	for _, st := range steps {
		if err := d.Sync(ctx, st.desired); err != nil {
			t.Fatalf("%s: Sync: %v", st.name, err)
		}
		if got := k.takeLog(); !slices.Equal(got, st.want) {
			t.Errorf("%s: kernel operations\n got %q\nwant %q", st.name, got, st.want)
		}
	}
}

func TestSyncNeverTouchesWhatItDoesNotOwn(t *testing.T) {
	k := newFakeKernel()
	// kube-proxy's service, and an operator's.
	kp := Service{Key: Key{Addr: ap("10.96.0.1"), Port: 443, Proto: TCP}, Scheduler: "rr", Reals: []RealServer{real("10.0.0.9", 1)}}
	k.svcs[kp.Key] = &kp
	d, _ := newDirector(k, Options{Logger: discard()})
	if err := d.Sync(ctx, []Service{web(real("10.0.0.1", 1))}); err != nil {
		t.Fatal(err)
	}
	if err := d.Sync(ctx, nil); err != nil {
		t.Fatal(err)
	}
	for _, op := range k.takeLog() {
		if strings.Contains(op, "10.96.0.1") {
			t.Errorf("touched a service it does not own: %s", op)
		}
	}
	if _, ok := k.svcs[kp.Key]; !ok {
		t.Error("removed kube-proxy's service")
	}
}

func TestRestartAdoptsWithoutRecreating(t *testing.T) {
	k := newFakeKernel()
	state := filepath.Join(t.TempDir(), "ipvs.json")
	d, _ := newDirector(k, Options{Logger: discard(), StateFile: state})
	stale := Service{Key: Key{Addr: ap("192.0.2.200"), Port: 53, Proto: UDP}, Scheduler: "rr"}
	if err := d.Sync(ctx, []Service{web(real("10.0.0.1", 1)), stale}); err != nil {
		t.Fatal(err)
	}
	k.takeLog()
	// A new process: the same desired web service is adopted as it is
	// (connections survive); the stale one, created by keepvip before the
	// restart, is removed; nothing else is touched.
	d2, err := newDirector(k, Options{Logger: discard(), StateFile: state})
	if err != nil {
		t.Fatal(err)
	}
	if err := d2.Sync(ctx, []Service{web(real("10.0.0.1", 1))}); err != nil {
		t.Fatal(err)
	}
	if got, want := k.takeLog(), []string{"del 192.0.2.200:53/udp"}; !slices.Equal(got, want) {
		t.Errorf("after restart: %q; want %q", got, want)
	}
	// A damaged state file does not stop the daemon.
	if err := writeFile(state, "{"); err != nil {
		t.Fatal(err)
	}
	if _, err := newDirector(k, Options{Logger: discard(), StateFile: state}); err != nil {
		t.Errorf("damaged state file: %v", err)
	}
}

func TestSyncReportsBadServicesAndAppliesGoodOnes(t *testing.T) {
	k := newFakeKernel()
	d, _ := newDirector(k, Options{Logger: discard()})
	bad := web(real("10.0.0.1", 70000))
	bad.Key.Port = 81
	dr := web(RealServer{Addr: ap("10.0.0.5"), Port: 8080, Forward: DR, Weight: 1})
	dr.Key.Port = 82
	err := d.Sync(ctx, []Service{bad, web(real("10.0.0.1", 1)), dr})
	if err == nil {
		t.Fatal("Sync accepted a weight of 70000 and DR with port remapping")
	}
	for _, want := range []string{"192.0.2.100:81/tcp", "realServers[0].weight: 70000 is outside 0-65535",
		"192.0.2.100:82/tcp", "realServers[0].port: 8080: dr forwarding cannot change the port"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if _, ok := k.svcs[Key{Addr: ap("192.0.2.100"), Port: 80, Proto: TCP}]; !ok {
		t.Error("the valid service was not applied")
	}
}

func TestKernelErrorsKeepTheCacheTrue(t *testing.T) {
	k := newFakeKernel()
	d, _ := newDirector(k, Options{Logger: discard()})
	k.fail["add-real 192.0.2.100:80/tcp 10.0.0.2"] = errors.New("ENOMEM")
	err := d.Sync(ctx, []Service{web(real("10.0.0.1", 1), real("10.0.0.2", 1))})
	if err == nil || !strings.Contains(err.Error(), "adding real server 10.0.0.2:8080") {
		t.Fatalf("Sync error = %v", err)
	}
	// The failure is retried on the next Sync, and only it.
	delete(k.fail, "add-real 192.0.2.100:80/tcp 10.0.0.2")
	k.takeLog()
	if err := d.Sync(ctx, []Service{web(real("10.0.0.1", 1), real("10.0.0.2", 1))}); err != nil {
		t.Fatal(err)
	}
	if got := k.takeLog(); len(got) != 1 || !strings.HasPrefix(got[0], "add-real 192.0.2.100:80/tcp 10.0.0.2") {
		t.Errorf("retry = %q", got)
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		svc  Service
		want []string
	}{
		{"good", web(real("10.0.0.1", 1)), nil},
		{"no address", Service{Key: Key{Port: 80, Proto: TCP}, Scheduler: "rr"}, []string{"vip: a virtual service needs an address or a firewall mark"}},
		{"port 0", Service{Key: Key{Addr: ap("192.0.2.1"), Proto: TCP}, Scheduler: "rr"}, []string{"port: 0 is not a port"}},
		{"unknown scheduler", Service{Key: Key{Addr: ap("192.0.2.1"), Port: 1, Proto: TCP}, Scheduler: "fastest"}, []string{`scheduler: "fastest" is not an IPVS scheduler`}},
		{"flags on rr", Service{Key: Key{Addr: ap("192.0.2.1"), Port: 1, Proto: TCP}, Scheduler: "rr", Flags: FlagPort}, []string{"schedulerFlags: only sh and mh take flags"}},
		{"netmask without persistence", Service{Key: Key{Addr: ap("192.0.2.1"), Port: 1, Proto: TCP}, Scheduler: "rr", PersistenceMask: 24}, []string{"persistence.netmask: only with a persistence timeout"}},
		{"fractional persistence", Service{Key: Key{Addr: ap("192.0.2.1"), Port: 1, Proto: TCP}, Scheduler: "rr", Persistence: 1500 * time.Millisecond}, []string{"persistence.timeout: 1.5s is not whole seconds"}},
		{"weight", web(real("10.0.0.1", -1)), []string{"realServers[0].weight: -1 is outside 0-65535"}},
		{"family", web(RealServer{Addr: ap("2001:db8::1"), Port: 80, Weight: 1}), []string{"realServers[0].address: mixed address families are not supported: 2001:db8::1 is IPv6 and the virtual service is IPv4"}},
		// moby/ipvs does not send the real server's family: the kernel
		// would cut an IPv6 address to the service's IPv4 length.
		{"tun does not cross families", web(RealServer{Addr: ap("2001:db8::1"), Forward: TUN, Weight: 1}), []string{"realServers[0].address: mixed address families are not supported"}},
		{"tun to IPv4 from an IPv6 service", Service{Key: Key{Addr: ap("2001:db8::100"), Port: 80, Proto: TCP}, Scheduler: "rr",
			Reals: []RealServer{{Addr: ap("10.0.0.1"), Forward: TUN, Weight: 1}}}, []string{"realServers[0].address: mixed address families are not supported: 10.0.0.1 is IPv4 and the virtual service is IPv6"}},
		{"fwmark real of the other family", Service{Key: Key{Addr: netip.IPv6Unspecified(), FWMark: 7}, Scheduler: "rr",
			Reals: []RealServer{{Addr: ap("10.0.0.1"), Port: 80, Weight: 1}}}, []string{"realServers[0].address: mixed address families are not supported"}},
		{"nat without port", web(RealServer{Addr: ap("10.0.0.1"), Weight: 1}), []string{"realServers[0].port: 0: a NAT real server needs a port"}},
		{"dr remaps port", web(RealServer{Addr: ap("10.0.0.1"), Port: 8080, Forward: DR, Weight: 1}), []string{"realServers[0].port: 8080: dr forwarding cannot change the port"}},
		{"dr same port", web(RealServer{Addr: ap("10.0.0.1"), Port: 80, Forward: DR, Weight: 1}), nil},
		{"thresholds", web(RealServer{Addr: ap("10.0.0.1"), Port: 80, Weight: 1, Upper: 10, Lower: 20}), []string{"realServers[0].lowerThreshold: 20 is above the upperThreshold 10"}},
		// The kernel refuses l_threshold > u_threshold (ERANGE), 0 too.
		{"lower without upper", web(RealServer{Addr: ap("10.0.0.1"), Port: 80, Weight: 1, Lower: 5}), []string{"realServers[0].lowerThreshold: 5 needs an upperThreshold at least as large"}},
		{"equal thresholds", web(RealServer{Addr: ap("10.0.0.1"), Port: 80, Weight: 1, Upper: 5, Lower: 5}), nil},
		{"upper only", web(RealServer{Addr: ap("10.0.0.1"), Port: 80, Weight: 1, Upper: 5}), nil},
		{"twice", web(real("10.0.0.1", 1), real("10.0.0.1", 2)), []string{"realServers[1]: 10.0.0.1:8080 is listed twice"}},
		{"fwmark", Service{Key: Key{Addr: netip.IPv4Unspecified(), FWMark: 7}, Scheduler: "sh", Flags: FlagFallback | FlagPort}, nil},
		{"fwmark ipv6", Service{Key: Key{Addr: netip.IPv6Unspecified(), FWMark: 7}, Scheduler: "rr"}, nil},
		{"fwmark without family", Service{Key: Key{FWMark: 7}, Scheduler: "rr"}, []string{"family: a firewall-mark service needs its family"}},
		{"fwmark with an address", Service{Key: Key{Addr: ap("192.0.2.1"), FWMark: 7}, Scheduler: "rr"}, []string{"fwmark: a firewall-mark service has no address (got 192.0.2.1)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []string
			for _, e := range tt.svc.Validate() {
				got = append(got, e.Error())
			}
			if len(got) != len(tt.want) {
				t.Fatalf("Validate() = %q; want %q", got, tt.want)
			}
			for i := range got {
				if !strings.HasPrefix(got[i], tt.want[i]) {
					t.Errorf("error %d = %q; want prefix %q", i, got[i], tt.want[i])
				}
			}
		})
	}
}

// bigTable is n services with 10 real servers each.
func bigTable(n int) []Service {
	out := make([]Service, n)
	for i := range out {
		s := Service{Key: Key{Addr: netip.AddrFrom4([4]byte{10, 100, byte(i >> 8), byte(i)}), Port: 80, Proto: TCP}, Scheduler: "wlc"}
		for j := range 10 {
			s.Reals = append(s.Reals, RealServer{Addr: netip.AddrFrom4([4]byte{10, 200, byte(j), 1}), Port: 8080, Forward: NAT, Weight: 1})
		}
		out[i] = s
	}
	return out
}

func TestOneChangeInTenThousandIsOneOperation(t *testing.T) {
	k := newFakeKernel()
	d, _ := newDirector(k, Options{Logger: discard()})
	table := bigTable(10000)
	if err := d.Sync(ctx, table); err != nil {
		t.Fatal(err)
	}
	if d.ops != 110000 {
		t.Fatalf("initial sync did %d operations; want 110000", d.ops)
	}
	table[5000].Reals[3].Weight = 0
	if err := d.Sync(ctx, table); err != nil {
		t.Fatal(err)
	}
	if d.ops != 1 {
		t.Errorf("one real-server change cost %d kernel operations; want 1", d.ops)
	}
}

// The in-memory diff of a full desired table with one change: the cost a
// single endpoint change pays besides its one netlink operation.
func BenchmarkSyncOneChangeIn10k(b *testing.B) {
	k := newFakeKernel()
	d, _ := newDirector(k, Options{Logger: discard()})
	table := bigTable(10000)
	if err := d.Sync(ctx, table); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		table[i%10000].Reals[i%10].Weight ^= 1
		if err := d.Sync(ctx, table); err != nil {
			b.Fatal(err)
		}
	}
}

func writeFile(path, s string) error { return os.WriteFile(path, []byte(s), 0o600) }

func TestUpdateTouchesOnlyWhatItIsGiven(t *testing.T) {
	k := newFakeKernel()
	d, _ := newDirector(k, Options{Logger: discard()})
	table := bigTable(100)
	if err := d.Sync(ctx, table); err != nil {
		t.Fatal(err)
	}
	k.takeLog()
	s := table[7]
	s.Reals = slices.Clone(s.Reals)
	s.Reals[2].Weight = 0
	if err := d.Update(ctx, []Service{s}, []Key{table[9].Key, {Addr: ap("10.96.0.1"), Port: 443, Proto: TCP}}); err != nil {
		t.Fatal(err)
	}
	got := k.takeLog()
	want := []string{"edit-real 10.100.0.7:80/tcp 10.200.2.1:8080 nat weight 0", "del 10.100.0.9:80/tcp"}
	if !slices.Equal(got, want) {
		t.Errorf("Update operations\n got %q\nwant %q", got, want)
	}
	// A later full Sync with the same desired state has nothing to do
	// for the updated service.
	table[7] = s
	table = slices.Delete(table, 9, 10)
	if err := d.Sync(ctx, table); err != nil {
		t.Fatal(err)
	}
	if got := k.takeLog(); len(got) != 0 {
		t.Errorf("Sync after Update redid %q", got)
	}
}

// One real-server change with 10,000 services (10 real servers each)
// present, through Update: what an endpoint change or a health result pays.
func BenchmarkUpdateOneChangeIn10k(b *testing.B) {
	k := newFakeKernel()
	d, _ := newDirector(k, Options{Logger: discard()})
	table := bigTable(10000)
	if err := d.Sync(ctx, table); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		s := table[i%10000]
		s.Reals = slices.Clone(s.Reals)
		s.Reals[i%10].Weight ^= 1
		table[i%10000] = s
		if err := d.Update(ctx, []Service{s}, nil); err != nil {
			b.Fatal(err)
		}
	}
}

func TestStatusShowsOwnedServicesWithConnections(t *testing.T) {
	k := newFakeKernel()
	other := Service{Key: Key{Addr: ap("10.96.0.1"), Port: 443, Proto: TCP}, Scheduler: "rr"}
	k.svcs[other.Key] = &other
	d, _ := newDirector(k, Options{Logger: discard()})
	if err := d.Sync(ctx, []Service{web(real("10.0.0.1", 1), real("10.0.0.2", 2))}); err != nil {
		t.Fatal(err)
	}
	st, err := d.Status()
	if err != nil {
		t.Fatal(err)
	}
	if len(st) != 1 || st[0].Key != web().Key || len(st[0].Reals) != 2 {
		t.Fatalf("status = %+v; want only keepvip's service", st)
	}
	if c := st[0].Conns[RealKey{ap("10.0.0.2"), 8080}]; c.Active != 1 || c.Inactive != 2 {
		t.Errorf("connections of 10.0.0.2 = %+v", c)
	}
}

func TestInvalidVersionKeepsWhatWorks(t *testing.T) {
	k := newFakeKernel()
	d, _ := newDirector(k, Options{Logger: discard()})
	if err := d.Sync(ctx, []Service{web(real("10.0.0.1", 1))}); err != nil {
		t.Fatal(err)
	}
	k.takeLog()
	err := d.Sync(ctx, []Service{web(real("10.0.0.1", 70000))})
	if err == nil || !strings.Contains(err.Error(), "kept as it was") {
		t.Fatalf("Sync of an invalid version = %v", err)
	}
	if got := k.takeLog(); len(got) != 0 {
		t.Errorf("an invalid version changed the kernel: %q", got)
	}
	if _, ok := k.svcs[web().Key]; !ok {
		t.Error("the working service was removed")
	}
}

// Status, Sync and Update may be called from different goroutines (the
// status socket, the reconciler, health changes); the kernel is never used
// by two at once. The fake kernel is not safe for concurrent use, so the
// race detector sees any overlap.
func TestConcurrentStatusAndUpdate(t *testing.T) {
	k := newFakeKernel()
	d, _ := newDirector(k, Options{Logger: discard()})
	table := bigTable(20)
	if err := d.Sync(ctx, table); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 200 {
			if _, err := d.Status(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := range 200 {
		s := table[i%20]
		s.Reals = slices.Clone(s.Reals)
		s.Reals[i%10].Weight = i % 3
		if err := d.Update(ctx, []Service{s}, nil); err != nil {
			t.Fatal(err)
		}
	}
	<-done
}
