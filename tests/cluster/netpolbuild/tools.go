//go:build tools

// Package netpolbuild records the command tests/cluster/build.sh compiles (kube-router, whose
// network-policy controller enforces NetworkPolicies in the test cluster; tests/isolation) so
// `go mod tidy` keeps its dependencies. A module of its own, so that kube-router's dependencies
// never move the control plane's pins in ../k8sbuild.
package netpolbuild

import (
	_ "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"
)
