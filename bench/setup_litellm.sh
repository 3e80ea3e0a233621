#!/usr/bin/env bash
# Install the LiteLLM proxy (the gateway and cache benchmarks' peer) into its own venv, once.
#   bench/setup_litellm.sh          -> prints the venv's python path on success
# Pinned so that figures are comparable between runs; ~740 MB, kept out of the project venv.
# Installed with the project's uv (hack/venv.sh puts it in ~/.cache/strata/bin) and its wheel
# cache, so a reinstall takes seconds. Not part of the benchmarks' --smoke runs: a first install
# downloads ~740 MB and takes minutes.
set -euo pipefail
LITELLM_VERSION="${LITELLM_VERSION:-1.100.0}"
CACHE="${STRATA_CACHE:-$HOME/.cache/strata}"
VENV="${STRATA_LITELLM_VENV:-$CACHE/litellm-venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ -x "$VENV/bin/litellm" ] && "$VENV/bin/python" -c "import litellm, sys; from importlib.metadata import version; sys.exit(version('litellm') != '$LITELLM_VERSION')" 2>/dev/null; then
  echo "$VENV/bin/python"
  exit 0
fi
echo "[bench] installing litellm[proxy]==$LITELLM_VERSION into $VENV" >&2
rm -rf "$VENV"
if [ -x "$CACHE/bin/uv" ]; then
  export UV_CACHE_DIR="$CACHE/uv"
  "$CACHE/bin/uv" venv --quiet --python "$PYTHON" "$VENV" >&2
  "$CACHE/bin/uv" pip install --quiet --python "$VENV/bin/python" "litellm[proxy]==$LITELLM_VERSION" >&2
else
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip >&2
  "$VENV/bin/python" -m pip install -q "litellm[proxy]==$LITELLM_VERSION" >&2
fi
echo "$VENV/bin/python"
