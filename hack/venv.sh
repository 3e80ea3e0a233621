#!/usr/bin/env bash
# Create .venv with the project installed editable, at the versions pinned in uv.lock.
# Idempotent: re-runs only when pyproject.toml or uv.lock changed. Wheels are cached under
# ~/.cache/strata so a fresh clone is fast. The local embedder weights that no wheel ships
# (bge-small-en-v1.5) are fetched into .venv/share/strata/models by images/fetch_models.py
# (pinned sha256, cached under ~/.cache/strata/models; nothing happens when they are in place).
#
# uv.lock is the lock file (`uv lock`, universal: every platform and Python >= 3.11). Locally a
# changed pyproject.toml re-locks (keeping every other pin) and the new uv.lock is to be committed
# with it; in CI (CI=true) a lock that does not match pyproject.toml is an error.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${STRATA_CACHE:-$HOME/.cache/strata}"
EXTRAS="${1:-dev}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
mkdir -p "$CACHE"
export UV_CACHE_DIR="$CACHE/uv" UV_LINK_MODE=copy
UV="$CACHE/bin/uv"
if [ ! -x "$UV" ]; then
  "$PY" -m pip install --quiet --target "$CACHE/uv-pkg" uv
  mkdir -p "$CACHE/bin"
  ln -sf "$CACHE/uv-pkg/bin/uv" "$UV"
fi
stamp=".venv/.strata-installed-$EXTRAS"
# The checkout's path too: the project is installed editable, so a venv that another checkout
# (a git worktree sharing it through a symlink) synced last points at that checkout's code.
inputs_hash() { { pwd; cat pyproject.toml; cat uv.lock 2>/dev/null || true; } | sha256sum | cut -c1-16; }
models() { .venv/bin/python images/fetch_models.py; }
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(inputs_hash)" ]; then
  models
  exit 0
fi
if [ "${CI:-}" = "true" ]; then
  lock=(--locked)
else
  before="$(inputs_hash)"
  "$UV" lock --quiet --python "$PY"
  [ "$before" = "$(inputs_hash)" ] || echo "uv.lock updated for pyproject.toml: commit both" >&2
  lock=(--frozen)
fi
# --inexact: leave alone what someone added to the venv by hand (sync only adds and updates).
"$UV" sync --quiet --inexact "${lock[@]}" --python "$PY" --extra "$EXTRAS"
models
inputs_hash >"$stamp"
echo "venv ready: .venv ($EXTRAS)"
