# shellcheck shell=bash
# hack/kind/lib.sh — shared settings for hack/kind-e2e.sh and hack/kind/*.sh (sourced).
# shellcheck disable=SC2034  # settings for the scripts that source this file
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
STRATA_CACHE="${STRATA_CACHE:-$HOME/.cache/strata}"
KIND_CACHE="$STRATA_CACHE/kind"
KIND_BIN="$KIND_CACHE/bin"
K8S_VERSION="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$ROOT/hack/kube/go.mod")"
KUBE_BIN="$STRATA_CACHE/kube/$K8S_VERSION/bin"
KIND_VERSION="${KIND_VERSION:-v0.33.0}"
CRICTL_VERSION="${CRICTL_VERSION:-v1.37.0}"
COREDNS_VERSION="${COREDNS_VERSION:-v1.13.1}"
LOCAL_PATH_VERSION="${LOCAL_PATH_VERSION:-v0.0.30}"
PAUSE_VERSION="${PAUSE_VERSION:-3.10.1}"
ETCD_IMAGE_TAG="${ETCD_IMAGE_TAG:-3.6.6-0}"
# System images built here are named under a registry that never resolves: an accidental
# pull fails at once instead of reaching out.
OFFLINE_REPO="${STRATA_OFFLINE_REPO:-offline.invalid}"
LOCAL_DEBIAN="${STRATA_LOCAL_DEBIAN:-strata.local/debian:bookworm}"
NODE_IMAGE="${STRATA_KIND_NODE_IMAGE:-strata.local/kind-node:$K8S_VERSION}"
SERVICE_CIDR="${STRATA_KIND_SERVICE_CIDR:-10.96.0.0/16}"
POD_CIDR="${STRATA_KIND_POD_CIDR:-10.244.0.0/16}"

log() { printf '[kind-e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
now() { date +%s.%N; }
# apt_install LOGFILE PACKAGE...: Debian packages, as root; on a new machine apt's lists may be
# missing or old, so a failed install runs `apt-get update` once and tries again.
apt_install() {
  local logfile="$1"; shift
  local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -q -o DPkg::Lock::Timeout=600)
  mkdir -p "$(dirname "$logfile")"
  log "apt-get install $* (log $logfile)"
  "${apt[@]}" install -y "$@" >"$logfile" 2>&1 && return 0
  log "apt-get install failed; running apt-get update once and retrying"
  "${apt[@]}" update >>"$logfile" 2>&1 || true
  "${apt[@]}" install -y "$@" >>"$logfile" 2>&1 || { tail -20 "$logfile" >&2; die "apt-get install $* failed"; }
}
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }
