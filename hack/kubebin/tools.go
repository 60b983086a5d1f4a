//go:build tools

// Package kubebin only pins the commands built from this module: the API
// server and kubectl for the API-server tests, and the kubelet, controller
// manager and scheduler for the real nodes (test/framework/kubetest).
//
//	go build -o DIR k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl \
//		k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-controller-manager \
//		k8s.io/kubernetes/cmd/kube-scheduler
package kubebin

import (
	_ "k8s.io/kubectl/pkg/cmd"
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	_ "k8s.io/kubernetes/cmd/kube-scheduler/app"
	_ "k8s.io/kubernetes/cmd/kubelet/app"
)
