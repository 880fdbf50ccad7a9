#!/usr/bin/env bash
# Build (or reuse) the binaries the tests run:
#   kube-apiserver, kube-controller-manager, kubectl  from k8s.io/kubernetes
#   etcd                                              from go.etcd.io/etcd/server/v3
#   helm                                              from helm.sh/helm/v4 (the chart tests)
#   kube-router                                       from github.com/cloudnativelabs/kube-router/v2
#                                                     (its network-policy controller enforces the
#                                                     test cluster's NetworkPolicies)
# Versions are pinned in tests/cluster/k8sbuild/go.mod and, each in a module of its own so that their
# dependencies never move the control plane's pins, tests/cluster/helmbuild/go.mod and
# tests/cluster/netpolbuild/go.mod. Output goes to cache directories outside the work tree, each keyed
# by its version and a hash of its go.mod/go.sum:
#   ${WAKEGATE_K8S_CACHE:-$HOME/.cache/wakegate}/k8s-<version>/
#   ${WAKEGATE_K8S_CACHE:-$HOME/.cache/wakegate}/helm-<version>/
#   ${WAKEGATE_K8S_CACHE:-$HOME/.cache/wakegate}/kube-router-<version>/
# A second run with the same pins returns at once. Concurrent runs serialise on a lock file per build.
#
#   build.sh          all three; prints the Kubernetes binary directory as its last line
#   build.sh k8s      only the control plane (last line: its directory)
#   build.sh helm     only helm (last line: its directory)
#   build.sh netpol   only kube-router (last line: its directory)
set -euo pipefail

what="${1:-all}"
case "$what" in
  all | k8s | helm | netpol) ;;
  *) echo "usage: $0 [all|k8s|helm|netpol]" >&2; exit 2 ;;
esac

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${WAKEGATE_K8S_CACHE:-$HOME/.cache/wakegate}"

# Tools the harness uses at run time: openssl (PKI), ip (netns, veth, bridge), nsenter and setpriv,
# and the userspace tools kube-router's network-policy controller drives: iptables (and
# iptables-save/-restore) and ipset.
if [[ "$what" != helm ]]; then
  missing=()
  command -v openssl >/dev/null 2>&1 || missing+=(openssl)
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  { command -v nsenter && command -v setpriv; } >/dev/null 2>&1 || missing+=(util-linux)
  { command -v iptables && command -v iptables-save && command -v iptables-restore; } >/dev/null 2>&1 ||
    missing+=(iptables)
  command -v ipset >/dev/null 2>&1 || missing+=(ipset)
  if ((${#missing[@]})); then
    echo "cluster-build: installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
fi

# pins MODULE_DIR: a short hash of the module's go.mod and go.sum (the cache key besides the version).
pins() { cat "$1/go.mod" "$1/go.sum" | sha256sum | cut -c1-16; }

# built OUT PINS BIN...: true when OUT holds every BIN, built from these pins.
built() {
  local out="$1" want="$2" b
  shift 2
  [[ "$(cat "$out/.pins" 2>/dev/null)" == "$want" ]] || return 1
  for b in "$@"; do [[ -x "$out/$b" ]] || return 1; done
}

go_toolchain() {
  if ! command -v go >/dev/null 2>&1; then
    local candidate
    for candidate in /usr/local/go/bin /usr/lib/go/bin; do
      [[ -x "$candidate/go" ]] && PATH="$candidate:$PATH"
    done
  fi
  command -v go >/dev/null 2>&1 || { echo "cluster-build: no Go toolchain on PATH" >&2; exit 1; }
  export GOFLAGS="-mod=readonly -buildvcs=false -trimpath"
  export CGO_ENABLED=0
}

jobs="${WAKEGATE_BUILD_JOBS:-$(nproc)}"

# cached_build LABEL NAME MODULE_DIR COMPILE BIN...: $cache_root/NAME when it holds every BIN built from
# MODULE_DIR's pins; otherwise, under a lock, `COMPILE STAGING_DIR` runs in MODULE_DIR and its output
# replaces the cache entry. Sets built_dir, and fresh=1 when it compiled.
cached_build() {
  local label="$1" name="$2" mod="$3" compile="$4"
  shift 4
  local out="$cache_root/$name" want lock
  want="$(pins "$mod")"
  built_dir="$out"
  fresh=0
  if built "$out" "$want" "$@"; then
    echo "cluster-build: reusing $out"
    return
  fi
  go_toolchain
  mkdir -p "$cache_root"
  exec {lock}>"$cache_root/$name.lock"
  flock "$lock"
  if built "$out" "$want" "$@"; then  # another run finished the build while we waited for the lock
    echo "cluster-build: reusing $out"
    exec {lock}>&-
    return
  fi

  local staging="$out.tmp.$$"
  rm -rf "$staging"
  mkdir -p "$staging"
  trap 'rm -rf "'"$staging"'"' EXIT
  local start=$SECONDS
  echo "cluster-build: building $label into $out ($(go version | cut -d' ' -f3), -p $jobs)"
  (cd "$mod" && "$compile" "$staging")
  echo "$want" >"$staging/.pins"
  rm -rf "$out"
  mv "$staging" "$out"
  trap - EXIT
  exec {lock}>&-
  echo "cluster-build: $label done in $((SECONDS - start))s"
  fresh=1
}

# module_version MODULE_DIR MODULE: the version go.mod requires, alone (`require M vX`) or in a block.
module_version() {
  local version
  version="$(awk -v m="$2" '$1 == "require" { $1 = ""; $0 = $0 } $1 == m && $2 ~ /^v/ {print $2; exit}' \
    "$1/go.mod")"
  [[ -n "$version" ]] || { echo "cluster-build: no $2 requirement in $1/go.mod" >&2; exit 1; }
  echo "$version"
}

# --- the control plane ----------------------------------------------------------------------------

compile_k8s() {
  local ldflags="-s -w" minor major
  major="$(cut -d. -f1 <<<"${k8s_version#v}")"
  minor="$(cut -d. -f2 <<<"$k8s_version")"
  ldflags+=" -X k8s.io/component-base/version.gitVersion=$k8s_version"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=$major"
  ldflags+=" -X k8s.io/component-base/version.gitMinor=$minor"
  ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitMajor=$major"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  go build -p "$jobs" -ldflags="$ldflags" -o "$1/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kubectl
  go build -p "$jobs" -ldflags="-s -w" -o "$1/etcd" go.etcd.io/etcd/server/v3
}

build_k8s() {
  k8s_version="$(module_version "$here/k8sbuild" k8s.io/kubernetes)"
  cached_build "Kubernetes $k8s_version and etcd" "k8s-$k8s_version" "$here/k8sbuild" compile_k8s \
    kube-apiserver kube-controller-manager kubectl etcd
  k8s_dir="$built_dir"
  if ((fresh)); then
    "$k8s_dir/kube-apiserver" --version
    "$k8s_dir/etcd" --version | head -1
  fi
}

# --- helm -----------------------------------------------------------------------------------------

compile_helm() {
  # What Helm's own Makefile stamps into a release build (version, clean tree; no git metadata here).
  local ldflags="-s -w"
  ldflags+=" -X helm.sh/helm/v4/internal/version.version=$helm_version"
  ldflags+=" -X helm.sh/helm/v4/internal/version.metadata="
  ldflags+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
  go build -p "$jobs" -ldflags="$ldflags" -o "$1/helm" helm.sh/helm/v4/cmd/helm
}

build_helm() {
  helm_version="$(module_version "$here/helmbuild" helm.sh/helm/v4)"
  cached_build "Helm $helm_version" "helm-$helm_version" "$here/helmbuild" compile_helm helm
  helm_dir="$built_dir"
  if ((fresh)); then "$helm_dir/helm" version --short; fi
}

# --- kube-router (the network-policy controller) ---------------------------------------------------

compile_netpol() {
  # What kube-router's own Makefile stamps (pkg/version.Version, .BuildDate); the release tag instead
  # of `git describe`, and an empty build date so that the same pins give the same binary.
  local ldflags="-s -w"
  ldflags+=" -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$netpol_version"
  ldflags+=" -X github.com/cloudnativelabs/kube-router/v2/pkg/version.BuildDate="
  go build -p "$jobs" -ldflags="$ldflags" -o "$1/kube-router" github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
}

build_netpol() {
  netpol_version="$(module_version "$here/netpolbuild" github.com/cloudnativelabs/kube-router/v2)"
  cached_build "kube-router $netpol_version" "kube-router-$netpol_version" "$here/netpolbuild" compile_netpol \
    kube-router
  netpol_dir="$built_dir"
  if ((fresh)); then "$netpol_dir/kube-router" --version; fi
}

k8s_dir=""
helm_dir=""
netpol_dir=""
case "$what" in
  helm) build_helm; echo "$helm_dir" ;;
  netpol) build_netpol; echo "$netpol_dir" ;;
  k8s) build_k8s; echo "$k8s_dir" ;;
  all) build_helm; build_netpol; build_k8s; echo "$k8s_dir" ;;
esac
