#!/usr/bin/env bash
# `make bench`: every benchmark under bench/ (or those named: hack/bench.sh gateway cache), each
# run as a module from the repository root (`python -m bench.NAME`), printing JSON lines and a
# table. Local services and the control plane (the operator benchmark's) are started first.
# BENCH_ARGS is passed to every benchmark, e.g. BENCH_ARGS=--smoke for a quick pass of all.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/venv.sh dev
bash hack/services.sh up
bash hack/control-plane.sh up
eval "$(bash hack/services.sh env)"
eval "$(bash hack/control-plane.sh env)"
if [ "$#" -eq 0 ]; then
  for path in bench/[!_]*.py; do set -- "$@" "$(basename "$path" .py)"; done
fi
read -r -a extra <<<"${BENCH_ARGS:-}"
for name in "$@"; do
  echo "=== bench/$name.py ${extra[*]}"
  .venv/bin/python -m "bench.$name" "${extra[@]}"
done
