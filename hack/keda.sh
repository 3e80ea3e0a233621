#!/usr/bin/env bash
# hack/keda.sh — KEDA v2 built from source (the Go module proxy) and installed in the kind cluster.
#
#   hack/keda.sh up        build (cached), images, load them into the kind cluster, install, wait
#   hack/keda.sh build     only the binaries: keda (operator) and keda-adapter (metrics API server)
#   hack/keda.sh images    the binaries in two FROM-scratch images (strata.local/keda*:<version>)
#   hack/keda.sh manifest  KEDA's own install manifest (its config/minimal: CRDs, RBAC, operator,
#                          metrics API server, APIService; no admission webhooks), our images in it
#   hack/keda.sh down      delete what `up` installed (the cluster itself is left alone)
#   hack/keda.sh status    what runs
#
# Everything is cached under ${STRATA_CACHE:-~/.cache/strata}/keda/<version>: a second `up` only
# loads and applies (seconds). The first build compiles KEDA and its scaler dependencies (every
# cloud SDK): ~1.5 GB of modules and tens of minutes on two busy cores, niced.
# KEDA_VERSION: v2.20.2 is the newest release whose go.mod asks for Go <= 1.26 and Kubernetes
# 0.35 libraries (the cluster's minor); v2.21 needs Go 1.27.
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/kind/lib.sh"

KEDA_VERSION="${KEDA_VERSION:-v2.20.2}"
KEDA_MODULE=github.com/kedacore/keda/v2
KEDA_CACHE="$STRATA_CACHE/keda/$KEDA_VERSION"
CLUSTER="${KIND_CLUSTER:-strata-e2e}"
KUBECONFIG_FILE="$ROOT/.cache/kind/kubeconfig"
KEDA_IMAGE="strata.local/keda:$KEDA_VERSION"
ADAPTER_IMAGE="strata.local/keda-metrics-apiserver:$KEDA_VERSION"
MANIFEST="$KEDA_CACHE/keda.yaml"
export PATH="$KIND_BIN:$KUBE_BIN:$PATH"

klog() { printf '[keda %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

go_env() {
  export GOPATH="$STRATA_CACHE/go" GOMODCACHE="$STRATA_CACHE/go/pkg/mod" GOCACHE="$STRATA_CACHE/go/cache"
  export GOFLAGS="-modcacherw -p=${STRATA_BUILD_JOBS:-2}" CGO_ENABLED=0 GOOS=linux GOARCH=amd64 GOTOOLCHAIN=local
  GO="$(command -v go || echo /usr/local/go/bin/go)"
  [[ -x "$GO" ]] || die "no 'go' found (PATH or /usr/local/go/bin)"
}

# The module's source directory in the module cache (downloaded once from the proxy).
source_dir() {
  go_env
  (cd "$STRATA_CACHE" && "$GO" mod download -json "$KEDA_MODULE@$KEDA_VERSION") |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

build() {
  local bin="$KEDA_CACHE/bin" src tmp t0
  if [[ -x "$bin/keda" && -x "$bin/keda-adapter" ]]; then return 0; fi
  go_env  # here too: source_dir's own call runs in the $(...) subshell, so GO would not reach the build
  t0="$(now)"; src="$(source_dir)"; [[ -d "$src" ]] || die "could not download $KEDA_MODULE@$KEDA_VERSION"
  mkdir -p "$KEDA_CACHE"; tmp="$KEDA_CACHE/bin.tmp.$$"; rm -rf "$tmp"
  klog "building keda $KEDA_VERSION (operator, metrics API server) from $src"
  # The module's own go.mod/go.sum (with its replace directives): a build inside its directory.
  (cd "$src" && nice -n 10 "$GO" build -trimpath \
      -ldflags "-s -w -X=$KEDA_MODULE/version.Version=${KEDA_VERSION#v} -X=$KEDA_MODULE/version.GitCommit=module-proxy" \
      -o "$tmp/" ./cmd/operator ./cmd/adapter) >"$KEDA_CACHE/build.log" 2>&1 ||
    { tail -30 "$KEDA_CACHE/build.log" >&2; rm -rf "$tmp"; die "go build of keda failed"; }
  mv "$tmp/operator" "$tmp/keda"; mv "$tmp/adapter" "$tmp/keda-adapter"
  rm -rf "$bin"; mv "$tmp" "$bin"
  klog "built in $(elapsed "$t0")"
}

# One static binary on scratch, as non-root (the manifests ask runAsNonRoot).
image() {
  local tag="$1" binary="$2" ctx="$KEDA_CACHE/ctx/$2" stamp
  stamp="$(sha256sum "$KEDA_CACHE/bin/$binary" | cut -c1-16)"
  [[ "$(docker image inspect -f '{{index .Config.Labels "dev.strata.inputs"}}' "$tag" 2>/dev/null)" == "$stamp" ]] && return 0
  rm -rf "$ctx"; mkdir -p "$ctx"; cp "$KEDA_CACHE/bin/$binary" "$ctx/"
  printf 'FROM scratch\nCOPY %s /%s\nUSER 65532:65532\nENTRYPOINT ["/%s"]\n' "$binary" "$binary" "$binary" >"$ctx/Dockerfile"
  docker build -q --label "dev.strata.inputs=$stamp" -t "$tag" "$ctx" >/dev/null || die "docker build $tag failed"
  klog "$tag ready ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
}

images() { build; image "$KEDA_IMAGE" keda; image "$ADAPTER_IMAGE" keda-adapter; }

manifest() {
  local src
  src="$(source_dir)"
  kubectl kustomize "$src/config/minimal" |
    sed -e "s#image: ghcr.io/kedacore/keda:.*#image: $KEDA_IMAGE#" \
        -e "s#image: ghcr.io/kedacore/keda-metrics-apiserver:.*#image: $ADAPTER_IMAGE#" \
        -e "s#imagePullPolicy: Always#imagePullPolicy: Never#" \
        -e "s#^\( *\)- --enable-cert-rotation=true#&\n\1- --enable-webhook-patching=false#" >"$MANIFEST.tmp"
  # No admission webhooks here, so the operator's certificate rotation must not wait for one.
  if ! { grep -q "image: $KEDA_IMAGE" "$MANIFEST.tmp" && grep -q "image: $ADAPTER_IMAGE" "$MANIFEST.tmp" &&
          grep -q -- "- --enable-webhook-patching=false" "$MANIFEST.tmp"; }; then
    die "KEDA's manifest has other image names than expected"
  fi
  mv "$MANIFEST.tmp" "$MANIFEST"
}

up() {
  local t0; t0="$(now)"
  images
  manifest
  export KUBECONFIG="$KUBECONFIG_FILE"
  kubectl get --raw /readyz >/dev/null || die "the kind cluster is not up (hack/kind-e2e.sh up)"
  "$KIND_BIN/kind" load docker-image --name "$CLUSTER" "$KEDA_IMAGE" "$ADAPTER_IMAGE" >/dev/null
  # Server-side: KEDA's CRDs are too large for the last-applied annotation of a client-side apply.
  kubectl apply --server-side --force-conflicts -f "$MANIFEST" >/dev/null
  kubectl -n keda rollout status deploy/keda-operator --timeout=300s >/dev/null
  kubectl -n keda rollout status deploy/keda-metrics-apiserver --timeout=300s >/dev/null
  kubectl wait apiservice/v1beta1.external.metrics.k8s.io --for=condition=Available --timeout=180s >/dev/null
  klog "KEDA $KEDA_VERSION running in $(elapsed "$t0")"
}

down() {
  [[ -f "$MANIFEST" ]] || manifest
  KUBECONFIG="$KUBECONFIG_FILE" kubectl delete --ignore-not-found --wait=false -f "$MANIFEST" >/dev/null
}

status() {
  ls -l "$KEDA_CACHE/bin" 2>/dev/null || echo "not built ($KEDA_CACHE/bin)"
  KUBECONFIG="$KUBECONFIG_FILE" kubectl -n keda get deploy,pods 2>&1 || true
}

case "${1:-}" in
  up) up ;;
  build) build ;;
  images) images ;;
  manifest) manifest; echo "$MANIFEST" ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|build|images|manifest|down|status" >&2; exit 2 ;;
esac
