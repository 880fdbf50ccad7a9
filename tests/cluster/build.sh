#!/usr/bin/env bash
# Build (or reuse) the control-plane binaries the test cluster runs:
#   kube-apiserver, kube-controller-manager, kubectl  from k8s.io/kubernetes
#   etcd                                              from go.etcd.io/etcd/server/v3
# Versions are pinned in tests/cluster/k8sbuild/go.mod. Output goes to a cache directory outside
# the work tree, keyed by the Kubernetes version and a hash of go.mod/go.sum:
#   ${WAKEGATE_K8S_CACHE:-$HOME/.cache/wakegate}/k8s-<version>/
# A second run with the same pins returns at once. Concurrent runs serialise on a lock file.
# Prints the binary directory as its last line.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mod="$here/k8sbuild"
k8s_version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$mod/go.mod")"
cache_root="${WAKEGATE_K8S_CACHE:-$HOME/.cache/wakegate}"
out="$cache_root/k8s-$k8s_version"
pins="$(cat "$mod/go.mod" "$mod/go.sum" | sha256sum | cut -c1-16)"
bins=(kube-apiserver kube-controller-manager kubectl etcd)

# Tools the harness uses at run time: openssl (PKI), ip (netns, veth, bridge), nsenter and setpriv.
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
{ command -v nsenter && command -v setpriv; } >/dev/null 2>&1 || missing+=(util-linux)
if ((${#missing[@]})); then
  echo "cluster-build: installing ${missing[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

built() {
  [[ "$(cat "$out/.pins" 2>/dev/null)" == "$pins" ]] || return 1
  local b
  for b in "${bins[@]}"; do [[ -x "$out/$b" ]] || return 1; done
}

if built; then
  echo "cluster-build: reusing $out"
  echo "$out"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  for candidate in /usr/local/go/bin /usr/lib/go/bin; do
    [[ -x "$candidate/go" ]] && PATH="$candidate:$PATH"
  done
fi
command -v go >/dev/null 2>&1 || { echo "cluster-build: no Go toolchain on PATH" >&2; exit 1; }

mkdir -p "$cache_root"
exec 9>"$cache_root/k8s-$k8s_version.lock"
flock 9
if built; then  # another run finished the build while we waited for the lock
  echo "cluster-build: reusing $out"
  echo "$out"
  exit 0
fi

export GOFLAGS="-mod=readonly -buildvcs=false -trimpath"
export CGO_ENABLED=0
jobs="${WAKEGATE_BUILD_JOBS:-$(nproc)}"
staging="$out.tmp.$$"
rm -rf "$staging"
mkdir -p "$staging"
trap 'rm -rf "$staging"' EXIT

start=$SECONDS
echo "cluster-build: building Kubernetes $k8s_version and etcd into $out ($(go version | cut -d' ' -f3), -p $jobs)"
cd "$mod"
ldflags="-s -w"
ldflags+=" -X k8s.io/component-base/version.gitVersion=$k8s_version"
ldflags+=" -X k8s.io/component-base/version.gitMajor=$(cut -d. -f1 <<<"${k8s_version#v}")"
ldflags+=" -X k8s.io/component-base/version.gitMinor=$(cut -d. -f2 <<<"$k8s_version")"
ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"
ldflags+=" -X k8s.io/client-go/pkg/version.gitMajor=$(cut -d. -f1 <<<"${k8s_version#v}")"
ldflags+=" -X k8s.io/client-go/pkg/version.gitMinor=$(cut -d. -f2 <<<"$k8s_version")"
go build -p "$jobs" -ldflags="$ldflags" -o "$staging/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kubectl
go build -p "$jobs" -ldflags="-s -w" -o "$staging/etcd" go.etcd.io/etcd/server/v3
echo "$pins" >"$staging/.pins"

rm -rf "$out"
mv "$staging" "$out"
trap - EXIT
echo "cluster-build: done in $((SECONDS - start))s"
"$out/kube-apiserver" --version
"$out/etcd" --version | head -1
echo "$out"
