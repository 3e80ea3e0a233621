#!/usr/bin/env bash
# hack/kind-e2e.sh — end to end on a real kind cluster (machines with Docker):
# build both images, load them into kind, helm install the operator, apply the samples,
# wait until the AgentDeployment is Ready. Keeps the cluster unless KIND_E2E_DELETE=1.
#
#   hack/kind-e2e.sh            # cluster "strata-e2e"
#   KIND_CLUSTER=x hack/kind-e2e.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CLUSTER="${KIND_CLUSTER:-strata-e2e}"
TAG="${STRATA_TAG:-0.1.0}"
NS_OPERATOR=strata-system
NS_APP="${STRATA_E2E_NAMESPACE:-strata-e2e}"
TIMEOUT="${STRATA_E2E_TIMEOUT:-300s}"

log() { printf '[kind-e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
need() { command -v "$1" >/dev/null || { log "ERROR: $1 is required"; exit 1; }; }
for tool in docker kind kubectl helm; do need "$tool"; done

if ! kind get clusters | grep -qx "$CLUSTER"; then
  log "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null

log "building images"
docker build -f "$ROOT/images/operator.Dockerfile" -t "strata-operator:$TAG" "$ROOT"
docker build -f "$ROOT/images/runtime.Dockerfile" -t "strata-runtime:$TAG" "$ROOT"
kind load docker-image --name "$CLUSTER" "strata-operator:$TAG" "strata-runtime:$TAG"

log "installing the chart"
helm upgrade --install strata "$ROOT/charts/strata" --namespace "$NS_OPERATOR" --create-namespace \
  --set image.tag="$TAG" --set image.pullPolicy=Never --wait --timeout "$TIMEOUT"

log "applying the samples in $NS_APP"
kubectl create namespace "$NS_APP" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$NS_APP" apply -k "$ROOT/manifests/samples"
# The sample uses the in-cluster image just loaded, no upstream LLM needed for readiness, and
# no Postgres (explicit postgresql would fail readiness without one): SQLite on the pod's volume.
kubectl -n "$NS_APP" patch agentdeployment support --type json -p '[{"op":"remove","path":"/spec/stores/postgres"}]'
kubectl -n "$NS_APP" patch agentdeployment support --type merge \
  -p "{\"spec\":{\"image\":\"strata-runtime:$TAG\",\"imagePullPolicy\":\"Never\",\"replicas\":{\"min\":1,\"max\":2}}}"

log "waiting for AgentDeployment/support Ready"
if ! kubectl -n "$NS_APP" wait agentdeployment/support --for=condition=Ready --timeout="$TIMEOUT"; then
  kubectl -n "$NS_APP" get agentdeployment support -o yaml
  kubectl -n "$NS_APP" get pods -o wide
  kubectl -n "$NS_OPERATOR" logs deploy/strata-operator --tail=200 || true
  exit 1
fi
kubectl -n "$NS_APP" get agentdeployments,deploy,svc,pdb,hpa,networkpolicy
log "OK"

if [[ "${KIND_E2E_DELETE:-0}" == 1 ]]; then
  kind delete cluster --name "$CLUSTER"
fi
