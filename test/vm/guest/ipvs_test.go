//go:build vmtest

package guest

import (
	"errors"
	"net"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/moby/ipvs"
	"golang.org/x/sys/unix"

	"github.com/keepvip/keepvip/test/framework/netnstest"
)

// requireVM skips the test outside the machine: the host kernel has no
// IPVS.
func requireVM(t *testing.T) {
	t.Helper()
}

func tcpService(vip string, port uint16, sched string) *ipvs.Service {
	return &ipvs.Service{
		AddressFamily: unix.AF_INET,
		Protocol:      unix.IPPROTO_TCP,
		Address:       net.ParseIP(vip).To4(),
		Port:          port,
		SchedName:     sched,
		Netmask:       0xffffffff,
	}
}

// TestIPVSServiceWithRealServers adds a virtual service and two real
// servers over the IPVS generic netlink family, reads them back, changes
// one, and deletes them all.
func TestIPVSServiceWithRealServers(t *testing.T) {
	requireVM(t)
	h, err := ipvs.New("")
	if err != nil {
		t.Fatalf("opening the IPVS generic netlink family: %v", err)
	}
	defer h.Close()

	svc := tcpService("192.0.2.10", 80, "wrr")
	if err := h.NewService(svc); err != nil {
		t.Fatalf("NewService: %v", err)
	}
	defer h.DelService(svc)
	want := map[string]int{"198.51.100.2": 1, "198.51.100.3": 3}
	for ip, w := range want {
		d := &ipvs.Destination{AddressFamily: unix.AF_INET, Address: net.ParseIP(ip).To4(), Port: 8080, Weight: w}
		if err := h.NewDestination(svc, d); err != nil {
			t.Fatalf("NewDestination %s: %v", ip, err)
		}
	}

	svcs, err := h.GetServices()
	if err != nil {
		t.Fatalf("GetServices: %v", err)
	}
	if len(svcs) != 1 || !svcs[0].Address.Equal(svc.Address) || svcs[0].Port != 80 ||
		svcs[0].Protocol != unix.IPPROTO_TCP || svcs[0].SchedName != "wrr" {
		t.Fatalf("GetServices = %+v, want the one added", svcs)
	}
	got := destinations(t, h, svc)
	if len(got) != len(want) {
		t.Fatalf("destinations = %v, want %v", got, want)
	}
	for ip, w := range want {
		if got[ip] != w {
			t.Errorf("destination %s weight %d, want %d", ip, got[ip], w)
		}
	}

	// ipvsadm, copied from the host with its libraries, sees the same.
	out, err := exec.Command("ipvsadm", "-Ln").CombinedOutput()
	if err != nil {
		t.Fatalf("ipvsadm -Ln: %v\n%s", err, out)
	}
	for _, s := range []string{"TCP  192.0.2.10:80 wrr", "198.51.100.2:8080", "198.51.100.3:8080"} {
		if !strings.Contains(string(out), s) {
			t.Errorf("ipvsadm -Ln lacks %q:\n%s", s, out)
		}
	}

	upd := &ipvs.Destination{AddressFamily: unix.AF_INET, Address: net.ParseIP("198.51.100.2").To4(), Port: 8080, Weight: 5}
	if err := h.UpdateDestination(svc, upd); err != nil {
		t.Fatalf("UpdateDestination: %v", err)
	}
	if got := destinations(t, h, svc); got["198.51.100.2"] != 5 {
		t.Errorf("after UpdateDestination, destinations = %v", got)
	}
	if err := h.DelDestination(svc, upd); err != nil {
		t.Fatalf("DelDestination: %v", err)
	}
	if got := destinations(t, h, svc); len(got) != 1 {
		t.Errorf("after DelDestination, destinations = %v", got)
	}
	if err := h.DelService(svc); err != nil {
		t.Fatalf("DelService: %v", err)
	}
	if svcs, err := h.GetServices(); err != nil || len(svcs) != 0 {
		t.Fatalf("after DelService, GetServices = %v, %v", svcs, err)
	}
}

func destinations(t *testing.T, h *ipvs.Handle, svc *ipvs.Service) map[string]int {
	t.Helper()
	ds, err := h.GetDestinations(svc)
	if err != nil {
		t.Fatalf("GetDestinations: %v", err)
	}
	m := map[string]int{}
	for _, d := range ds {
		m[d.Address.String()] = d.Weight
	}
	return m
}

// TestIPVSSchedulers creates a service with every scheduler keepvip may
// configure: each needs its module loaded (the guest has no autoloading
// from a full module tree).
func TestIPVSSchedulers(t *testing.T) {
	requireVM(t)
	h, err := ipvs.New("")
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for i, sched := range []string{"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "mh", "sed", "nq", "fo", "ovf"} {
		svc := tcpService("192.0.2.20", uint16(1000+i), sched)
		if err := h.NewService(svc); err != nil {
			t.Errorf("scheduler %s: %v", sched, err)
			continue
		}
		got, err := h.GetService(svc)
		if err != nil || got.SchedName != sched {
			t.Errorf("scheduler %s: read back %+v, %v", sched, got, err)
		}
		if err := h.DelService(svc); err != nil {
			t.Errorf("scheduler %s: DelService: %v", sched, err)
		}
	}
}

// TestIPVSDestinationNeedsLocalTable pins down a pitfall: in a namespace
// where no address was ever configured (lo down), IPVS refuses every real
// server with EINVAL. The kernel checks the destination's address type,
// and without a local routing table inet_addr_type() says RTN_BROADCAST.
// Bringing lo up (127.0.0.1/8 creates the local table) is enough.
func TestIPVSDestinationNeedsLocalTable(t *testing.T) {
	requireVM(t)
	const ns = "kv-einval"
	netnstest.Sh(t, "ip netns add "+ns)
	defer exec.Command("ip", "netns", "del", ns).Run()

	h, err := ipvs.New("/run/netns/" + ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	svc := tcpService("192.0.2.30", 80, "rr")
	if err := h.NewService(svc); err != nil {
		t.Fatalf("NewService in a fresh namespace: %v", err)
	}
	d := &ipvs.Destination{AddressFamily: unix.AF_INET, Address: net.ParseIP("198.51.100.30").To4(), Port: 80, Weight: 1}
	err = h.NewDestination(svc, d)
	if !errors.Is(err, syscall.EINVAL) {
		t.Errorf("NewDestination with lo down = %v, want EINVAL", err)
	}
	netnstest.Sh(t, "ip -n "+ns+" link set lo up")
	if err := h.NewDestination(svc, d); err != nil {
		t.Fatalf("NewDestination with lo up: %v", err)
	}
	ds, err := h.GetDestinations(svc)
	if err != nil || len(ds) != 1 {
		t.Fatalf("GetDestinations = %v, %v", ds, err)
	}
	// The root namespace does not see the other namespace's service.
	root, err := ipvs.New("")
	if err != nil {
		t.Fatal(err)
	}
	defer root.Close()
	svcs, err := root.GetServices()
	if err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(svcs, func(s *ipvs.Service) bool { return s.Address.Equal(svc.Address) }) {
		t.Errorf("the root namespace sees %s", svc.Address)
	}
}
