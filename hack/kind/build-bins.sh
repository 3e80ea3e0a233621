#!/usr/bin/env bash
# hack/kind/build-bins.sh — build every binary the local kind node and system images need,
# from the Go module proxy (and gcc for pause), cached under $STRATA_CACHE/kind/.
#
#   kind, crictl, coredns, local-path-provisioner  `go install pkg@version`
#   kubeadm, kubelet, kube-proxy                   from a copy of hack/kube (the control plane's
#                                                  wrapper module) with the three commands as tools
#   pause                                          `gcc -static` of Kubernetes' own pause.c
# kube-apiserver, -controller-manager, -scheduler, kubectl and etcd come from
# `hack/control-plane.sh build` (same module, same cache). Each step is skipped when its
# binary and stamp are present, so a warm run takes well under a second.
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

go_env() {
  export GOPATH="$STRATA_CACHE/go" GOMODCACHE="$STRATA_CACHE/go/pkg/mod" GOCACHE="$STRATA_CACHE/go/cache"
  export GOFLAGS="-modcacherw -p=${STRATA_BUILD_JOBS:-2}" CGO_ENABLED=0 GOTOOLCHAIN=local
  GO="$(command -v go || echo /usr/local/go/bin/go)"
}

# go_install <name> <pkg@version>
go_install() {
  local name="$1" pkg="$2" stamp="$2 -s -w"
  [[ -x "$KIND_BIN/$name" && "$(cat "$KIND_BIN/.$name.stamp" 2>/dev/null)" == "$stamp" ]] && return 0
  go_env
  local t0; t0="$(now)"; log "building $name ($pkg)"
  mkdir -p "$KIND_BIN"
  (cd "$STRATA_CACHE" && GOBIN="$KIND_BIN.tmp.$$" nice -n 10 "$GO" install -trimpath -ldflags='-s -w' "$pkg") \
    >"$KIND_CACHE/build-$name.log" 2>&1 || { tail -30 "$KIND_CACHE/build-$name.log" >&2; die "go install $pkg failed"; }
  mv "$KIND_BIN.tmp.$$/$name" "$KIND_BIN/$name"; rm -rf "$KIND_BIN.tmp.$$"
  echo "$stamp" >"$KIND_BIN/.$name.stamp"; log "built $name in $(elapsed "$t0")"
}

kube_ldflags() {
  local minor="${K8S_VERSION#v1.}" pkg x=""; minor="${minor%%.*}"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    x+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    x+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "-s -w$x"
}

build_node_kube() {
  local stamp b ok=1 mod="$KIND_CACHE/kube-mod"
  stamp="$({ cat "$ROOT/hack/kube/go.mod" "$ROOT/hack/kube/go.sum"; kube_ldflags; } | sha256sum | cut -c1-16)"
  for b in kubeadm kubelet kube-proxy; do [[ -x "$KIND_BIN/$b" ]] || ok=0; done
  [[ "$(cat "$KIND_BIN/.kube.stamp" 2>/dev/null)" == "$stamp" ]] || ok=0
  ((ok)) && return 0
  go_env
  local t0; t0="$(now)"; log "building kubeadm, kubelet, kube-proxy $K8S_VERSION (cold ~3-4 min; log $KIND_CACHE/build-kube.log)"
  rm -rf "$mod"; mkdir -p "$mod" "$KIND_BIN"
  cp "$ROOT/hack/kube/go.mod" "$ROOT/hack/kube/go.sum" "$mod/"
  (
    cd "$mod"
    "$GO" mod edit -module strata.dev/hack/kindnode \
      -tool=k8s.io/kubernetes/cmd/kubeadm -tool=k8s.io/kubernetes/cmd/kubelet -tool=k8s.io/kubernetes/cmd/kube-proxy
    "$GO" mod tidy
    nice -n 10 "$GO" build -trimpath -ldflags="$(kube_ldflags)" -o "$KIND_BIN/" \
      k8s.io/kubernetes/cmd/kubeadm k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
  ) >"$KIND_CACHE/build-kube.log" 2>&1 || { tail -30 "$KIND_CACHE/build-kube.log" >&2; die "kubeadm/kubelet/kube-proxy build failed"; }
  echo "$stamp" >"$KIND_BIN/.kube.stamp"; log "built kubeadm, kubelet, kube-proxy in $(elapsed "$t0")"
}

build_pause() {
  [[ -x "$KIND_BIN/pause" ]] && return 0
  local src
  src="$(ls -d "$STRATA_CACHE/go/pkg/mod/k8s.io/kubernetes@$K8S_VERSION/build/pause/linux/pause.c" 2>/dev/null)" \
    || die "pause.c not in the module cache (build kubeadm first)"
  gcc -Os -Wall -Werror -static -DVERSION="v$PAUSE_VERSION" -o "$KIND_BIN/pause" "$src"
}

mkdir -p "$KIND_CACHE"
case "${1:-all}" in
  kind) go_install kind "sigs.k8s.io/kind@$KIND_VERSION" ;;
  kube) build_node_kube ;;
  all)
    go_install kind "sigs.k8s.io/kind@$KIND_VERSION"
    build_node_kube
    build_pause
    go_install crictl "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
    go_install local-path-provisioner "github.com/rancher/local-path-provisioner@$LOCAL_PATH_VERSION"
    go_install coredns "github.com/coredns/coredns@$COREDNS_VERSION"
    ;;
  *) die "usage: $0 [all|kind|kube]" ;;
esac
