//go:build tools

// Package kubebin only pins the commands built from this module:
//
//	go build -o DIR k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
package kubebin

import (
	_ "k8s.io/kubectl/pkg/cmd"
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
)
