//go:build vmtest

package guest

import (
	"fmt"
	"os/exec"
	"testing"

	"github.com/keepvip/keepvip/test/framework/netnstest"
)

// TestVethBetweenNamespaces connects two network namespaces with a veth
// pair and pings across.
func TestVethBetweenNamespaces(t *testing.T) {
	requireVM(t)
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", "kv-a").Run()
		exec.Command("ip", "netns", "del", "kv-b").Run()
	})
	for _, c := range []string{
		"ip netns add kv-a",
		"ip netns add kv-b",
		"ip link add kv-a0 netns kv-a type veth peer name kv-b0 netns kv-b",
		"ip -n kv-a link set lo up",
		"ip -n kv-b link set lo up",
		"ip -n kv-a addr add 192.0.2.1/24 dev kv-a0",
		"ip -n kv-b addr add 192.0.2.2/24 dev kv-b0",
		"ip -n kv-a link set kv-a0 up",
		"ip -n kv-b link set kv-b0 up",
	} {
		netnstest.Sh(t, c)
	}
	t.Log(netnstest.Sh(t, "ip netns exec kv-a ping -c 1 -W 5 192.0.2.2"))
	t.Log(netnstest.Sh(t, "ip netns exec kv-b ping -c 1 -W 5 192.0.2.1"))
}

// TestBridgeBetweenNamespaces joins two namespaces through a bridge in
// the root namespace, as the lab's routers are.
func TestBridgeBetweenNamespaces(t *testing.T) {
	requireVM(t)
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", "kv-c").Run()
		exec.Command("ip", "netns", "del", "kv-d").Run()
		exec.Command("ip", "link", "del", "kv-br0").Run()
	})
	netnstest.Sh(t, "ip link add kv-br0 type bridge && ip link set kv-br0 up")
	for i, ns := range []string{"kv-c", "kv-d"} {
		for _, c := range []string{
			"ip netns add " + ns,
			"ip link add " + ns + "-br type veth peer name eth0 netns " + ns,
			"ip link set " + ns + "-br master kv-br0 up",
			"ip -n " + ns + " link set lo up",
			fmt.Sprintf("ip -n %s addr add 192.0.2.%d/24 dev eth0", ns, 11+10*i),
			"ip -n " + ns + " link set eth0 up",
		} {
			netnstest.Sh(t, c)
		}
	}
	t.Log(netnstest.Sh(t, "ip netns exec kv-c ping -c 1 -W 5 192.0.2.21"))
}
