// Package guest holds smoke tests that run only inside the IPVS test
// machine (test/framework/vm): that the kernel's IPVS answers over generic
// netlink, and that namespaces, veth and bridges work there. They carry
// the vmtest build tag: go test ./test/vm (make test-vm) builds them with
// it and runs them in the machine; the host never compiles them.
package guest
