// Package scenario holds the stories told on the network-namespace lab
// (test/framework/lab) by make demo and make bench: the demo of an
// election, a failover and a handoff, then the Kubernetes path against a
// real API server (test/framework/kubetest); the failover benchmark of
// keepvip against keepalived; the BGP benchmark against FRR. hack/lab is
// the command that runs them. They need root; everything they create is
// removed when they return.
package scenario
