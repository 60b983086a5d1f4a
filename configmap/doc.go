// Package configmap will read the vip-configmap: kube-keepalived-vip's
// "VIP: namespace/service[:NAT|DR|PROXY]" entries and a structured key that
// carries the model of package config. It is built by issue #4; nothing here
// yet.
package configmap
