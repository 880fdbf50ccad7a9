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

# --- the control plane ----------------------------------------------------------------------------

build_k8s() {
  local mod="$here/k8sbuild"
  local k8s_version out want
  k8s_version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$mod/go.mod")"
  out="$cache_root/k8s-$k8s_version"
  want="$(pins "$mod")"
  local bins=(kube-apiserver kube-controller-manager kubectl etcd)

  if built "$out" "$want" "${bins[@]}"; then
    echo "cluster-build: reusing $out"
    k8s_dir="$out"
    return
  fi
  go_toolchain
  mkdir -p "$cache_root"
  exec 9>"$cache_root/k8s-$k8s_version.lock"
  flock 9
  if built "$out" "$want" "${bins[@]}"; then  # another run finished the build while we waited for the lock
    echo "cluster-build: reusing $out"
    exec 9>&-
    k8s_dir="$out"
    return
  fi

  local staging="$out.tmp.$$"
  rm -rf "$staging"
  mkdir -p "$staging"
  trap 'rm -rf "'"$staging"'"' EXIT

  local start=$SECONDS
  echo "cluster-build: building Kubernetes $k8s_version and etcd into $out ($(go version | cut -d' ' -f3), -p $jobs)"
  local ldflags="-s -w"
  ldflags+=" -X k8s.io/component-base/version.gitVersion=$k8s_version"
  ldflags+=" -X k8s.io/component-base/version.gitMajor=$(cut -d. -f1 <<<"${k8s_version#v}")"
  ldflags+=" -X k8s.io/component-base/version.gitMinor=$(cut -d. -f2 <<<"$k8s_version")"
  ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitMajor=$(cut -d. -f1 <<<"${k8s_version#v}")"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitMinor=$(cut -d. -f2 <<<"$k8s_version")"
  (
    cd "$mod"
    go build -p "$jobs" -ldflags="$ldflags" -o "$staging/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kubectl
    go build -p "$jobs" -ldflags="-s -w" -o "$staging/etcd" go.etcd.io/etcd/server/v3
  )
  echo "$want" >"$staging/.pins"

  rm -rf "$out"
  mv "$staging" "$out"
  trap - EXIT
  exec 9>&-
  echo "cluster-build: Kubernetes done in $((SECONDS - start))s"
  "$out/kube-apiserver" --version
  "$out/etcd" --version | head -1
  k8s_dir="$out"
}

# --- helm -----------------------------------------------------------------------------------------

build_helm() {
  local mod="$here/helmbuild"
  local helm_version out want
  # `require helm.sh/helm/v4 vX` alone, or a line of a `require (...)` block.
  helm_version="$(awk '$1 == "require" { $1 = ""; $0 = $0 } $1 == "helm.sh/helm/v4" && $2 ~ /^v/ {print $2; exit}' \
    "$mod/go.mod")"
  [[ -n "$helm_version" ]] || { echo "cluster-build: no helm.sh/helm/v4 requirement in $mod/go.mod" >&2; exit 1; }
  out="$cache_root/helm-$helm_version"
  want="$(pins "$mod")"

  if built "$out" "$want" helm; then
    echo "cluster-build: reusing $out"
    helm_dir="$out"
    return
  fi
  go_toolchain
  mkdir -p "$cache_root"
  exec 8>"$cache_root/helm-$helm_version.lock"
  flock 8
  if built "$out" "$want" helm; then
    echo "cluster-build: reusing $out"
    exec 8>&-
    helm_dir="$out"
    return
  fi

  local staging="$out.tmp.$$"
  rm -rf "$staging"
  mkdir -p "$staging"
  trap 'rm -rf "'"$staging"'"' EXIT

  local start=$SECONDS
  echo "cluster-build: building Helm $helm_version into $out ($(go version | cut -d' ' -f3), -p $jobs)"
  # What Helm's own Makefile stamps into a release build (version, clean tree; no git metadata here).
  local ldflags="-s -w"
  ldflags+=" -X helm.sh/helm/v4/internal/version.version=$helm_version"
  ldflags+=" -X helm.sh/helm/v4/internal/version.metadata="
  ldflags+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
  (
    cd "$mod"
    go build -p "$jobs" -ldflags="$ldflags" -o "$staging/helm" helm.sh/helm/v4/cmd/helm
  )
  echo "$want" >"$staging/.pins"

  rm -rf "$out"
  mv "$staging" "$out"
  trap - EXIT
  exec 8>&-
  echo "cluster-build: Helm done in $((SECONDS - start))s"
  "$out/helm" version --short
  helm_dir="$out"
}

# --- kube-router (the network-policy controller) ---------------------------------------------------

build_netpol() {
  local mod="$here/netpolbuild"
  local netpol_version out want
  # `require github.com/cloudnativelabs/kube-router/v2 vX` alone, or a line of a `require (...)` block.
  netpol_version="$(awk '$1 == "require" { $1 = ""; $0 = $0 }
    $1 == "github.com/cloudnativelabs/kube-router/v2" && $2 ~ /^v/ {print $2; exit}' "$mod/go.mod")"
  [[ -n "$netpol_version" ]] ||
    { echo "cluster-build: no github.com/cloudnativelabs/kube-router/v2 requirement in $mod/go.mod" >&2; exit 1; }
  out="$cache_root/kube-router-$netpol_version"
  want="$(pins "$mod")"

  if built "$out" "$want" kube-router; then
    echo "cluster-build: reusing $out"
    netpol_dir="$out"
    return
  fi
  go_toolchain
  mkdir -p "$cache_root"
  exec 7>"$cache_root/kube-router-$netpol_version.lock"
  flock 7
  if built "$out" "$want" kube-router; then
    echo "cluster-build: reusing $out"
    exec 7>&-
    netpol_dir="$out"
    return
  fi

  local staging="$out.tmp.$$"
  rm -rf "$staging"
  mkdir -p "$staging"
  trap 'rm -rf "'"$staging"'"' EXIT

  local start=$SECONDS
  echo "cluster-build: building kube-router $netpol_version into $out ($(go version | cut -d' ' -f3), -p $jobs)"
  # What kube-router's own Makefile stamps (pkg/version.Version, .BuildDate); the release tag instead
  # of `git describe`, and an empty build date so that the same pins give the same binary.
  local ldflags="-s -w"
  ldflags+=" -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$netpol_version"
  ldflags+=" -X github.com/cloudnativelabs/kube-router/v2/pkg/version.BuildDate="
  (
    cd "$mod"
    go build -p "$jobs" -ldflags="$ldflags" -o "$staging/kube-router" \
      github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
  )
  echo "$want" >"$staging/.pins"

  rm -rf "$out"
  mv "$staging" "$out"
  trap - EXIT
  exec 7>&-
  echo "cluster-build: kube-router done in $((SECONDS - start))s"
  "$out/kube-router" --version
  netpol_dir="$out"
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
