#!/usr/bin/env bash
# hack/kind-e2e.sh — a real Kubernetes cluster (kind) whose pods are real containers, with our
# images loaded and the operator installed by its Helm chart. Used by `make e2e` and `make test`
# (tests/kind/ run against it).
#
#   hack/kind-e2e.sh up       docker engine, node image, cluster, routes, images, operator, KEDA when
#                             built (hack/keda.sh; STRATA_KIND_KEDA=auto|1|0) (idempotent)
#   hack/kind-e2e.sh down     delete the cluster and the routes (images and caches are kept)
#   hack/kind-e2e.sh status   what exists
#   hack/kind-e2e.sh env      print `export KUBECONFIG=...` for the cluster
#
# Where container images cannot be pulled (this project's CI), everything is built here, cached
# under ${STRATA_CACHE:-~/.cache/strata}/kind: a Debian rootfs (debootstrap), kind's base image from
# Debian packages, kubeadm/kubelet/kube-proxy/coredns/... from the Go module proxy, the node
# image. Where images can be pulled, STRATA_KIND_IMAGES=upstream uses kind's own node image
# and STRATA_IMAGE_BASE=python:3.11-slim-bookworm the official Python base.
# The cluster is single-node (no kindnetd offline); its API server and the two NodePorts the tests
# use (STRATA_E2E_NODEPORT, default 30080: the runtime; +1: the test upstream's control API)
# listen on 127.0.0.1 only.
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/kind/lib.sh"

CLUSTER="${KIND_CLUSTER:-strata-e2e}"
TAG="${STRATA_TAG:-0.1.0}"
MODE="${STRATA_KIND_IMAGES:-local}"
NS_OPERATOR=strata-system
NS_APP="${STRATA_E2E_NAMESPACE:-strata-e2e}"
NODEPORT="${STRATA_E2E_NODEPORT:-30080}"
STATE="$ROOT/.cache/kind"
KUBECONFIG_FILE="$STATE/kubeconfig"
HELM_BIN="$STRATA_CACHE/helm/${HELM_VERSION:-v3.22.0}/bin"
KIND="$KIND_BIN/kind"
export PATH="$KIND_BIN:$KUBE_BIN:$HELM_BIN:$PATH"

node_container() { echo "$CLUSTER-control-plane"; }
cluster_exists() { docker inspect "$(node_container)" >/dev/null 2>&1; }

kind_config() {
  cat <<YAML
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  apiServerAddress: 127.0.0.1
  serviceSubnet: $SERVICE_CIDR
  podSubnet: $POD_CIDR
$([[ "$MODE" == local ]] && echo "  disableDefaultCNI: true")
nodes:
- role: control-plane
  extraPortMappings:
  - {containerPort: $NODEPORT, hostPort: $NODEPORT, listenAddress: 127.0.0.1, protocol: TCP}
  - {containerPort: $((NODEPORT + 1)), hostPort: $((NODEPORT + 1)), listenAddress: 127.0.0.1, protocol: TCP}
kubeadmConfigPatches:
$([[ "$MODE" == local ]] && printf '%s\n' "- |" "  kind: ClusterConfiguration" "  imageRepository: $OFFLINE_REPO")
- |
  kind: KubeletConfiguration
  failCgroupV1: false
YAML
}

build_all() {
  local t0; t0="$(now)"
  bash "$ROOT/hack/kind/docker.sh" up
  bash "$ROOT/hack/control-plane.sh" build      # kubectl, helm (+ the control-plane binaries)
  if [[ "$MODE" == local ]]; then
    bash "$ROOT/hack/kind/build-bins.sh" all
    bash "$ROOT/hack/kind/debian.sh"
    bash "$ROOT/hack/kind/node-image.sh" all
  else
    bash "$ROOT/hack/kind/build-bins.sh" kind
  fi
  log "binaries and node image ready ($(elapsed "$t0"))"
}

create_cluster() {
  mkdir -p "$STATE"
  if cluster_exists; then
    [[ "$(docker inspect -f '{{.State.Running}}' "$(node_container)")" == true ]] || docker start "$(node_container)" >/dev/null
    "$KIND" get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_FILE"
    return 0
  fi
  local t0 image_args=(); t0="$(now)"
  [[ "$MODE" == local ]] && image_args=(--image "$NODE_IMAGE")
  log "creating kind cluster $CLUSTER"
  kind_config >"$STATE/kind-config.yaml"
  "$KIND" create cluster --name "$CLUSTER" "${image_args[@]}" --config "$STATE/kind-config.yaml" \
    --kubeconfig "$KUBECONFIG_FILE" --wait 180s
  log "cluster up in $(elapsed "$t0")"
}

load_images() {
  local t0; t0="$(now)"
  bash "$ROOT/hack/kind/app-images.sh"
  # kind skips an image whose ID the node already has.
  "$KIND" load docker-image --name "$CLUSTER" "strata-runtime:$TAG" "strata-operator:$TAG" \
    "strata-e2e-stores:$TAG" >/dev/null
  log "images built and loaded in $(elapsed "$t0")"
}

install_operator() {
  local t0 image_id; t0="$(now)"
  export KUBECONFIG="$KUBECONFIG_FILE"
  kubectl create namespace "$NS_APP" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
  # The pod template carries the image ID, so a rebuilt image with the same tag rolls the operator.
  image_id="$(docker image inspect -f '{{.Id}}' "strata-operator:$TAG")"
  # The chart installs its CRDs itself, as on a user's first install (the peering objects are
  # post-install hooks, created once their CRDs exist).
  # The e2e namespace's in-cluster upstream is an allowed model origin there.
  helm upgrade --install strata "$ROOT/charts/strata" --namespace "$NS_OPERATOR" --create-namespace \
    --set image.tag="$TAG" --set image.pullPolicy=Never --set replicaCount=1 \
    --set-string "podAnnotations.strata\\.dev/image-id=${image_id#sha256:}" \
    --set-json "watchNamespaces=[\"$NS_APP\"]" --set-json "secretAccess.namespaces={\"$NS_APP\": \"*\"}" \
    --set-json "baseUrlAllowList.namespaces={\"$NS_APP\": [\"http://upstream.$NS_APP.svc:9000\"]}" \
    --wait --timeout 300s >/dev/null
  log "operator installed in $(elapsed "$t0")"
}

# KEDA from source (hack/keda.sh). STRATA_KIND_KEDA=auto (default): installed when its binaries are
# already built (then it costs ~1 min), skipped otherwise (a cold build takes tens of minutes);
# 1: always, building it if needed; 0: never.
install_keda() {
  local mode="${STRATA_KIND_KEDA:-auto}" bin="$STRATA_CACHE/keda/${KEDA_VERSION:-v2.20.2}/bin"
  if [[ "$mode" == 0 || ( "$mode" == auto && ! -x "$bin/keda" ) ]]; then
    log "KEDA skipped (STRATA_KIND_KEDA=$mode; build it once with: hack/keda.sh build)"
    return 0
  fi
  bash "$ROOT/hack/keda.sh" up
}

up() {
  local t0; t0="$(now)"
  build_all
  bash "$ROOT/hack/kind/routes.sh" up          # before any pod can dial a Service address
  create_cluster
  load_images
  install_operator
  install_keda
  log "ready in $(elapsed "$t0"): export KUBECONFIG=$KUBECONFIG_FILE"
}

down() {
  if cluster_exists; then "$KIND" delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG_FILE"; fi
  bash "$ROOT/hack/kind/routes.sh" down
  rm -f "$KUBECONFIG_FILE"
  # CI leaves nothing running: also the dockerd that hack/kind/docker.sh started (if it did).
  if [[ "${CI:-}" == true ]]; then bash "$ROOT/hack/kind/docker.sh" down; fi
}

status() {
  if cluster_exists; then
    echo "cluster $CLUSTER: $(docker inspect -f '{{.State.Status}}' "$(node_container)")  KUBECONFIG=$KUBECONFIG_FILE"
    KUBECONFIG="$KUBECONFIG_FILE" kubectl get nodes,pods -A -o wide 2>&1 || true
  else
    echo "cluster $CLUSTER: absent"
    return 1
  fi
  bash "$ROOT/hack/kind/routes.sh" status
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) status ;;
  env) echo "export KUBECONFIG=$KUBECONFIG_FILE" ;;
  build) build_all ;;
  *) die "usage: $0 up|down|status|env|build" ;;
esac
