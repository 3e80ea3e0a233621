#!/usr/bin/env bash
# Install the LiteLLM proxy (the gateway benchmark's peer) into its own venv, once.
#   bench/setup_litellm.sh          -> prints the venv's python path on success
# Pinned so that figures are comparable between runs; ~740 MB, kept out of the project venv.
set -euo pipefail
LITELLM_VERSION="${LITELLM_VERSION:-1.100.0}"
VENV="${STRATA_LITELLM_VENV:-$HOME/.cache/strata/litellm-venv}"
PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null || PYTHON=python3
if [ -x "$VENV/bin/litellm" ] && "$VENV/bin/python" -c "import litellm, sys; from importlib.metadata import version; sys.exit(version('litellm') != '$LITELLM_VERSION')" 2>/dev/null; then
  echo "$VENV/bin/python"
  exit 0
fi
echo "[bench] installing litellm[proxy]==$LITELLM_VERSION into $VENV" >&2
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip >&2
"$VENV/bin/python" -m pip install -q "litellm[proxy]==$LITELLM_VERSION" >&2
echo "$VENV/bin/python"
