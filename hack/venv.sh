#!/usr/bin/env bash
# Create .venv with the project installed editable. Idempotent: re-runs only when
# pyproject.toml changed. Wheels are cached under ~/.cache/strata so a fresh clone is fast.
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
want="$(sha256sum pyproject.toml | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$UV" venv --quiet --python "$PY" .venv
"$UV" pip install --quiet --python .venv/bin/python -e ".[$EXTRAS]"
echo "$want" > "$stamp"
echo "venv ready: .venv ($EXTRAS)"
