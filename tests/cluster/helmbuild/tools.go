//go:build tools

// Package helmbuild records the command tests/cluster/build.sh compiles (helm, for the chart tests
// in tests/test_helm_chart.py) so `go mod tidy` keeps its dependencies. A module of its own, so
// that Helm's dependencies never move the control plane's pins in ../k8sbuild.
package helmbuild

import (
	_ "helm.sh/helm/v4/cmd/helm"
)
